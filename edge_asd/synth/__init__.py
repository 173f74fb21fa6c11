"""``edge-asd synth``: synthetic machine sounds in the DCASE layout."""
