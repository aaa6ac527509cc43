"""LLM-based audio-visual speech recognition as an ESPnet plugin."""
