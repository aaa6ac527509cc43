"""Inference on raw media: a face video with its sound -> mouth crops + 16 kHz audio (media.py),
long clips cut at pauses (segments.py), task choice and batched decoding (transcriber.py); the
command line is bin/transcribe.py."""
