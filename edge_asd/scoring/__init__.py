"""Stage 2: detectors on embeddings, the report's scoring rules, thresholds, drift and the DCASE metrics."""
