"""Desktop export: trained runs -> ONNX / TensorRT -> one deployment bundle.

May import torch and :mod:`edge_asd`; the runtime never imports this package.
"""
