"""The daemon's evidence store is :class:`edge_asd.io.evidence.EvidenceStore`, below the daemon so that
``edge-asd score`` keeps anomalous windows with it too; this name stays for code written against it."""

from edge_asd.io.evidence import EvidenceStore

__all__ = ["EvidenceStore"]
