"""AVGRID: the generated GRID-style audio-visual corpus embedded in the avgrid recipe (see generate.py)."""
