"""Scoring with a deployment bundle: the bundle, the extractor back ends, the clip scorer, enrollment."""
