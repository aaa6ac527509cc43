"""Data preparation: corpus generation, face/mouth processing, noise mixing."""
