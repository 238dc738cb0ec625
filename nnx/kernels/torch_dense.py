"""Dense on torch: the layer's products and sums, with its gradients written where offered.

``torch.mm`` and ``torch.sum`` take an ``out=`` tensor. A product's bits depend on where
its result lies: into a view 8 bytes past a 64-byte boundary, ``X.T @ dY`` of a (16, 9) and
a (16, 3) float64 array differed from the call without ``out=`` in the last bit (227 of 720
shapes and offsets tried), and at every 64-byte-aligned offset it agreed. So a result is
written into an offered array only where that array starts as the allocator would start a
new one: at 64 bytes on the CPU, 256 on CUDA. See `nnx.kernels.dense` for the offers.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..layers.parameter import in_model_dtype
from .dense import DenseKernel

# where torch's allocators start a new tensor's memory, by device type (CUDA's caching allocator: 512)
ALLOCATOR_ALIGNMENT = {"cpu": 64, "cuda": 256}


def _writable(out: Any, like: Any) -> bool:
    """Whether a result of `like`'s dtype and device may go into `out` with the bits of a new tensor."""
    if out is None or out.dtype != like.dtype or out.device != like.device:
        return False
    alignment = ALLOCATOR_ALIGNMENT.get(out.device.type)
    return alignment is not None and out.data_ptr() % alignment == 0


class TorchDenseKernel(DenseKernel):
    """Runs one `nnx.Dense` in a training step on torch (see the module docstring)."""

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        # the library itself: this kernel is declared for the torch backend only, which has imported it
        self._torch = importlib.import_module("torch")

    def product(self, a: Any, b: Any, out: Any = None) -> Any:
        # `torch.mm`: what `@` runs for two matrices (a Dense's products always are), without its dispatch on
        # the operands' dimensions, which costs a small network's step about 1.5 us
        if a.dtype != b.dtype:
            raise self._mixed_dtypes(a, b)
        if not _writable(out, a):
            return self._torch.mm(a, b)
        return self._torch.mm(a, b, out=out)

    def _mixed_dtypes(self, a: Any, b: Any) -> TypeError:
        """torch's matmul refuses two dtypes ("expected m1 and m2 to have the same dtype"), naming no parameter;
        the usual cause is a parameter rebound to an array of another dtype, here or in an earlier layer."""
        params = self.layer.parameters()
        held = ", ".join(f"{p.name!r} {str(p.value.dtype).removeprefix('torch.')}" for p in params)
        mixed = (f"a {type(self.layer).__name__} layer's product mixes {str(a.dtype).removeprefix('torch.')} and "
                 f"{str(b.dtype).removeprefix('torch.')} (its parameters: {held})")
        if all(str(p.value.dtype).removeprefix("torch.") == str(self.layer.dtype) for p in params):
            # its own parameters are the model's: what differs came in (a layer of the user's computing in another)
            return TypeError(f"{mixed}: its parameters are the model's dtype, so the other came from an earlier "
                             "layer, where a parameter holds another dtype than the model's "
                             f"({self.layer.dtype}) or a layer of yours computes in another; {in_model_dtype()}")
        return TypeError(f"{mixed}: a parameter of the model holds another dtype than the model's "
                         f"({self.layer.dtype}); {in_model_dtype()}")

    def column_sum(self, dY: Any, out: Any = None) -> Any:
        if not _writable(out, dY):
            return self._torch.sum(dY, dim=0)
        return self._torch.sum(dY, dim=0, out=out)
