"""MED-VT++ audio-visual segmentation on AVSBench S4 / MS3 (train, test, losses, metrics)."""
