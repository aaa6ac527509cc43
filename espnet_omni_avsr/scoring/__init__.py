"""Scoring: WER with sclite (cross-checked with jiwer) and the RESULTS.md tables."""
