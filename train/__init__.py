"""Desktop side of edge-asd: stage-1 feature-extractor training (and, beside it, stage 2).

Kept import-light on purpose: ``import train`` must not pull in torch, so that the
``edge-asd-train --help`` path and tools that only read run folders stay fast.
Import the submodules (``train.stage1``, ``train.embed``, ...) for the API.
"""
