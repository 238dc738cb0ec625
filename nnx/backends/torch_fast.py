"""The optional fast path of the torch adapter: the NumPy fast path's layout, with torch's own kernels.

What it handles, and how it decides, is `nnx.backends.numpy_fast`'s: the same declarations by exact
class (layers, loss heads, elementwise optimizers), the same flat parameter buffer with a fresh flat
gradient buffer per step (`FlatParams`: reference counts do not see torch views, so none is reused),
the same single optimizer update over that buffer (`FusedUpdate`, which runs the optimizer's own
portable rule on the flat pieces, with torch's in-place operators). Only the training step's
arithmetic is torch's here: `TorchTrainStep` calls torch functions directly (no array-API
wrapper between), writes matmuls with ``out=``, applies ReLU in place and keeps its intermediate
buffers from step to step, on the model's device.

It computes the portable path's numbers operation for operation: ``X @ W`` then ``+ b`` (not a fused
``addmm``, whose accumulation order differs), ReLU's backward as ``where(x > 0, dY, 0)`` written into
dY, and the loss heads of `numpy_fast` (which share one ``exp`` between value and gradient). Its
differences from the portable path are those `numpy_fast` documents for its heads.

``torch.compile`` is not used: at the shapes measured (issue 12) the eager step here already runs
below native torch eager, and compiling costs seconds per shape and dtype.
"""

from __future__ import annotations

from operator import is_
from typing import Any

from .numpy_fast import _DENSE, _HEAD_BCE_LOGITS, _HEAD_CE_LOGITS, _HEAD_MSE, _RELU, FastPath, Kernels, TrainStep

__all__ = ["TorchFastPath", "TorchKernels", "TorchTrainStep"]


class _TorchOps:
    """The few NumPy-style creation calls the shared fast-path code makes, bound to one torch device."""

    __name__ = "torch"

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.device = torch, device

    def empty(self, shape: Any, dtype: Any = None) -> Any:
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def ones(self, shape: Any, dtype: Any = None) -> Any:
        return self.torch.ones(shape, dtype=dtype, device=self.device)

    def zeros(self, shape: Any, dtype: Any = None) -> Any:
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.device)


class TorchKernels(Kernels):
    """`Kernels` for torch on one device: creation calls bound to it, views found through ``_base``.

    Args:
        torch: the torch module.
        device: the `torch.device` arrays are made on.
    """

    def __init__(self, torch: Any, device: Any) -> None:  # no super().__init__: nothing of NumPy's applies
        self.m = _TorchOps(torch, device)
        self.torch = torch
        self.device = device
        self.counts_views = False  # a torch view holds its base in C++, unseen by Python's reference counts

    @staticmethod
    def base(x: Any) -> Any:
        """The tensor `x` is a view of (torch keeps the root), or None."""
        return x._base

    @staticmethod
    def numel(x: Any) -> int:
        """The number of elements of `x`."""
        return x.numel()


class TorchFastPath(FastPath):
    """`FastPath` for torch tensors on `device`; reached as ``backend.fastpath`` of the torch adapter.

    Args:
        torch: the torch module.
        device: the backend's `torch.device`.
    """

    def __init__(self, torch: Any, device: Any) -> None:
        super().__init__(torch)
        self.kernels = TorchKernels(torch, device)


class TorchTrainStep(TrainStep):
    """`numpy_fast.TrainStep` with torch's kernels: same plan, buffers and results, torch calls."""

    k: TorchKernels  # the fast path of a torch backend hands its steps torch's kernels

    def _buffers_for(self, X: Any) -> dict:
        n = X.shape[0]
        bufs = self._buffers.get(n)
        if bufs is not None and bufs["dtype"] == X.dtype:
            return bufs
        if len(self._buffers) >= 4:
            self._buffers.clear()
        torch, device, dtype = self.k.torch, self.k.device, X.dtype
        out: list[Any] = [None] * len(self.ops)
        dx: list[Any] = [None] * len(self.ops)
        mask: list[Any] = [None] * len(self.ops)
        for i, (kind, layer) in enumerate(self.ops):
            if kind == _DENSE:
                if i != self.last_dense:
                    out[i] = torch.empty((n, layer.out_features), dtype=dtype, device=device)
                if i > 0:
                    dx[i] = torch.empty((n, layer.in_features), dtype=dtype, device=device)
            elif kind == _RELU:
                mask[i] = torch.empty((n, self.ops[i - 1][1].out_features), dtype=torch.bool, device=device)
        bufs = {"out": out, "dx": dx, "mask": mask, "rows": torch.arange(n, device=device), "head": None,
                "dtype": dtype, "zero": torch.zeros((), dtype=dtype, device=device),
                "one": torch.ones((), dtype=dtype, device=device)}
        self._buffers[n] = bufs
        return bufs

    def __call__(self, X: Any, y: Any) -> tuple[Any, Any, None]:
        torch = self.k.torch
        mm, gt, where, tsum = torch.mm, torch.gt, torch.where, torch.sum
        bufs = self._buffers_for(X)
        out, dx, mask, zero = bufs["out"], bufs["dx"], bufs["mask"], bufs["zero"]
        inputs = [None] * len(self.ops)
        Z = X
        for kind, i, layer, wp, bp, _, _ in self.plan:
            if kind == _DENSE:
                inputs[i] = Z
                buf = out[i]
                Z = mm(Z, wp.value) if buf is None else mm(Z, wp.value, out=buf)
                Z.add_(bp.value)
            elif kind == _RELU:
                Z.clamp_min_(0)  # max(z, 0) in place, NaN kept as the portable maximum keeps it
                inputs[i] = Z
            else:
                Z = layer.forward(Z, True)
        value, dY = self._head(Z, y, bufs)
        grads = self.flat.new_grads()  # fresh every step: a p.grad someone kept is never overwritten
        for kind, i, layer, wp, bp, jw, jb in self.backward_plan:
            if kind == _DENSE:
                gw, gb = grads[jw], grads[jb]
                mm(inputs[i].T, dY, out=gw)
                tsum(dY, 0, out=gb)
                wp.grad = gw
                bp.grad = gb
                if i:
                    dY = mm(dY, wp.value.T, out=dx[i])
            elif kind == _RELU:
                mk = gt(inputs[i], 0, out=mask[i])
                dY = where(mk, dY, zero, out=dY)  # the portable where(x > 0, dY, 0), written into dY
            else:
                dY = layer.backward(dY, need_dX=i > 0)
        return value, Z, None

    def _head(self, Z: Any, y: Any, bufs: dict) -> tuple[Any, Any]:
        torch, kind = self.k.torch, self.head_kind
        if kind == _HEAD_CE_LOGITS and y.ndim == 1 and Z.ndim == 2 and not y.is_floating_point():
            n = Z.shape[0]
            P = bufs["head"]
            if P is None or P.shape != Z.shape or P.dtype != Z.dtype:
                P = bufs["head"] = torch.empty_like(Z)
            rows = bufs["rows"]
            torch.sub(Z, Z.amax(1, keepdim=True), out=P)
            picked = P[rows, y].sum()
            P.exp_()
            total = P.sum(1, keepdim=True)
            scale = 1 / n
            value = (total.log().sum() - picked) * scale
            # the portable gradient (softmax * 1 - onehot) * scale, operation for operation
            P.div_(total)
            P[rows, y] -= 1
            P.mul_(scale)
            return value, P
        if kind == _HEAD_BCE_LOGITS and y.shape == Z.shape:
            # the portable softplus and sigmoid share exp(-|z|); computed once here, with the same rounding
            scale = 1 / Z.numel()
            e = Z.abs().neg_().exp_()
            t = Z.clamp_min(0)
            t.add_(torch.log1p(e)).sub_(y * Z)
            value = t.sum() * scale
            g = torch.where(Z >= 0, bufs["one"], e)
            e.add_(1)
            g.div_(e).sub_(y).mul_(scale)
            return value, g
        if kind == _HEAD_MSE and y.shape == Z.shape:
            diff = Z - y
            value = (diff * diff).sum() * (1 / Z.numel())
            diff.mul_(2 / Z.numel())
            return value, diff
        return self.head.value_and_grad(y, Z, check=False)

    def gradient_total(self, value: Any, params: list[Any]) -> Any:
        """As `numpy_fast.TrainStep.gradient_total`; a 0-d tensor (read with ``math.isfinite`` on the CPU)."""
        flat = self.flat
        grads, views = flat.grads, flat.grad_views
        # every binding checked: a gradient rebound to a new tensor (not written in place) must be summed itself
        if grads is None or len(views) != len(params) or not all(map(is_, [p.grad for p in params], views)):
            return None
        return value + grads.sum()


TorchFastPath.step_class = TorchTrainStep
