"""The ``edge-asd`` command line."""
