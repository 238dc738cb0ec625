"""The gradient average of data-parallel training, and how a batch (or a flat array) is cut between ranks."""

from __future__ import annotations

from typing import Any

import array_api_compat

from ..backends import get_backend
from ..layers.parameter import Parameter
from ..training.flat import flat_layout
from ..training.transforms import GradientTransform
from .comm import Communicator


def rank_rows(rows: int, rank: int, size: int) -> tuple[int, int]:
    """The (start, stop) of `rank`'s contiguous share of `rows`; the first ``rows % size`` ranks get one more."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class AverageGradients(GradientTransform):
    """The gradient stage of data-parallel training: the global batch's mean gradient on every rank.

    Args:
        comm: the `Communicator` across which gradients are averaged.
        backend: the model's `Backend`, which joins and cuts the gradients (`concat_flat`, `split_flat`); by default
            the one of the gradients' library.

    The batch source tells it each batch's local and global row counts (`add_rows`); when the
    update is due it scales this rank's gradients by its share of the rows and all-reduces them
    in one collective on one concatenated array. Under the loss reduction ``mean_with_sample_weight``
    each rank's gradient is a mean over its slice's sum of weights, so the share is that sum over the
    global batch's (one number summed over the ranks first); where the global batch's weights sum to
    0 the shares are by rows.
    """

    def __init__(self, comm: Communicator, backend: Any = None) -> None:
        self.comm = comm
        self.backend = backend
        self._local_rows = 0
        self._global_rows = 0
        self._local_weight: Any = None  # this rank's sum of weights since the last update (a 0-d array), or None
        self._poisoned = False
        self._device_ok: Any = None  # the deferred finite check's flag as 1.0 or 0.0 (a 0-d array), or None
        self._joined: tuple[Any, list[Any]] | None = None  # the last all-reduce's result and its pieces (`take_joined`)

    def poison(self) -> None:
        """This rank's step was not finite: the next all-reduce hands NaN to every rank (no extra collective)."""
        self._poisoned = True

    def poison_unless(self, ok: Any) -> None:
        """Under the deferred (on-device) finite check: `ok`, 1.0 while this rank's steps were finite and 0.0
        after one was not (a 0-d array in the gradients' dtype), poisons the next all-reduce where it is 0,
        with nothing read on the host."""
        self._device_ok = ok

    def add_rows(self, local: int, total: int, weight: Any = None) -> None:
        """Count one batch: `local` of its `total` rows were computed here, with sum of weights `weight`
        (a 0-d array) where the batch counts by its weights (`nnx.training.weights.counts_by_weight`)."""
        self._local_rows += local
        self._global_rows += total
        if weight is not None:
            self._local_weight = weight if self._local_weight is None else self._local_weight + weight

    def take_share(self) -> Any:
        """This rank's share of the rows (or of the weights) counted since the last update (NaN when poisoned),
        and start over; None when no rows were counted (on every rank alike: nothing to reduce).

        A share of the weights is a 0-d array, found with one all-reduce of this rank's sum of weights
        (on the device, nothing read on the host); a share of the rows, a float.
        """
        local, total, weight, ok = self._local_rows, self._global_rows, self._local_weight, self._device_ok
        poisoned = self._poisoned
        AverageGradients.reset(self)  # the counts alone: a subclass's reset also forgets this step's gradients
        if total == 0:
            return None
        if poisoned:
            return float("nan")
        share = self._share_of_weight(local, total, weight) if weight is not None else local / total
        # a rank whose own step was not finite scales by 1/0: its gradients, and so everyone's sum, are not finite
        return share if ok is None else share / ok

    def _share_of_weight(self, local: int, total: int, weight: Any) -> Any:
        """This rank's sum of weights over the global batch's (one all-reduce); by rows where that is 0."""
        xp = array_api_compat.array_namespace(weight)
        everyone = self.comm.allreduce(xp.stack([weight]))[0]  # a new array: the collective may work in place
        some = everyone != 0
        # weights that sum to 0 over the global batch leave each rank's loss 0 (and the penalty): shares by rows
        by_weight = weight / xp.where(some, everyone, xp.ones_like(everyone))
        return xp.where(some, by_weight, xp.full_like(weight, local / total))

    def apply(self, params: list[Parameter], rows: int) -> bool:
        self._joined = None
        share = self.take_share()
        grads = [p for p in params if p.grad is not None]
        if not grads or share is None:
            return True
        backend = self.backend if self.backend is not None else get_backend(grads[0].grad)
        flat = backend.concat_flat([p.grad for p in grads])
        if not isinstance(share, float) or share != 1.0:  # a share of the weights is a 0-d array
            # in place where the library's arrays take writes (the concatenation is a fresh array): a second new
            # buffer a step cost the medium network's step at batch 512 about 0.1 ms in page faults on NumPy
            flat *= share
        flat = self.comm.allreduce(flat)
        shapes, bounds, _ = flat_layout(grads)
        for p, grad in zip(grads, backend.split_flat(flat, bounds, shapes), strict=True):
            # the concatenation promotes gradients of mixed dtypes (a user's float64 parameter in a float32 model)
            # to one: each gets its own back, as its parameter and the single-process step have it
            p.grad = grad if grad.dtype == p.grad.dtype else backend.xp.astype(grad, p.grad.dtype)
        self._joined = flat, [p.grad for p in grads]
        return True

    def take_joined(self) -> tuple[Any, list[Any]] | None:
        joined, self._joined = self._joined, None
        return joined

    def reset(self) -> None:
        self._joined = None
        self._local_rows = self._global_rows = 0
        self._local_weight = None
        self._poisoned = False
        self._device_ok = None

    def __repr__(self) -> str:
        return f"AverageGradients({self.comm!r})"
