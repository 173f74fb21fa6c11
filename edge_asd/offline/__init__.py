"""``edge-asd score``: DCASE-named clips into submission files, a user's own recordings window by window."""
