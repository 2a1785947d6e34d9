"""Torch-free serving side of binary Group-Net segmentation.

`seg_service.kernels` holds the packed-bit XNOR-popcount kernels, `seg_service.runtime` reads packed
`.gnpk` models and runs them, and `seg_service.api` is the FastAPI server (`seg-service`). Nothing
under this package may import torch: the serving install has only the `serve` extra.
"""

__version__ = "0.1.0"
