"""Data in and out: DCASE names and layout, audio reading and segmentation, hand-made features, submission files."""
