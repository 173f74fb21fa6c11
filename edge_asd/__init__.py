"""edge-asd: two-stage anomalous sound detection for machine-condition monitoring.

This package is the on-device runtime. It depends on numpy, onnxruntime, faiss,
paho-mqtt, sounddevice, soundfile and ducc0 (its FFT) only, and must never import torch (the
desktop side lives in the ``train`` and ``export`` packages, which import this
one, never the other way round).
"""

__version__ = "0.1.0"
