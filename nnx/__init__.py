"""nnx: neural networks written once against the Python array API standard."""

__version__ = "0.1.0"
