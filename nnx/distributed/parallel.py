"""Data-parallel `fit`: each rank's slice of every global batch, the gradient average, and what keeps ranks equal.

`fit(..., distributed=comm)` builds one `DataParallelFit` and asks it, at fixed points:

- `begin`: rank 0's parameters, buffers and random streams go to every rank, and dropout
  draws the global batch's mask (see `GlobalBatchDropout`);
- `shard`: the batch source yields this rank's contiguous slice of every global batch (gathering
  only those rows where it can);
- the `AverageGradients` stage (after accumulation, before clipping) turns each rank's
  mean gradient over its slice into the mean over the global batch, with one collective;
- the finite check after the all-reduce (`TrainStep.gradients_finite`): a rank whose own step was
  not finite poisons the buffer it all-reduces (`AverageGradients.poison`), so every rank sees it
  and refuses (and raises) together, with no collective of its own;
- `epoch_logs`: the epoch's loss and metrics over every rank's rows, the same on every rank;
- `end_epoch`: rank 0's buffers (BatchNorm's running statistics) to every rank.

Why the average is exact: every loss nnx reports is a mean over rows (or over elements,
a fixed number per row), and a regularizer's gradient is added to every rank's gradient.
A rank with ``n_r`` of the global batch's ``N`` rows scales its gradient by ``n_r / N``
and the sum over ranks is the gradient of the global batch, penalty included, whatever
way ``N`` splits. A rank whose slice is empty (a last batch smaller than the world) runs
one row of the batch with weight 0, so its random streams advance as everyone else's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import array_api_compat
import numpy as np

from ..backends import backend_name_of
from ..layers.parameter import Parameter
from ..training.transforms import GradientTransform
from .comm import Communicator


def rank_rows(rows: int, rank: int, size: int) -> tuple[int, int]:
    """The (start, stop) of `rank`'s contiguous share of `rows`; the first ``rows % size`` ranks get one more."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shared_buffer(grads: list[Any]) -> Any:
    """The one flat NumPy/CuPy buffer that `grads` are consecutive views of, or None.

    The NumPy fast path gives every step a fresh flat gradient buffer with a view per
    parameter; reducing that buffer in place is one collective and keeps the views the
    fused optimizer update checks by identity.
    """
    if not grads or backend_name_of(grads[0]) not in ("numpy", "cupy"):
        return None
    root = grads[0].base
    if root is None or root.ndim != 1 or not root.flags.c_contiguous:
        return None
    total = 0
    for g in grads:
        if g.base is not root:
            return None
        total += g.size
    return root if total == root.size else None


class AverageGradients(GradientTransform):
    """The gradient stage of data-parallel training: the global batch's mean gradient on every rank.

    Args:
        comm: the `Communicator` across which gradients are averaged.

    The batch source tells it each batch's local and global row counts (`add_rows`); when the
    update is due it scales this rank's gradients by its share of the rows and all-reduces them
    in one collective (in place on the fast path's flat buffer, else on one concatenated array).
    """

    def __init__(self, comm: Communicator) -> None:
        self.comm = comm
        self._local = 0
        self._global = 0
        self._poisoned = False

    def poison(self) -> None:
        """This rank's step was not finite: the next all-reduce hands NaN to every rank (no extra collective)."""
        self._poisoned = True

    def add_rows(self, local: int, total: int) -> None:
        """Count one batch: `local` of its `total` rows were computed here."""
        self._local += local
        self._global += total

    def apply(self, params: list[Parameter], rows: int) -> bool:
        local, total = self._local, self._global
        self._local = self._global = 0
        grads = [p for p in params if p.grad is not None]
        if not grads or total == 0:
            return True
        share = local / total if not self._poisoned else float("nan")
        self._poisoned = False
        buf = shared_buffer([p.grad for p in grads])
        if buf is not None:
            if share != 1.0:
                buf *= share
            self.comm.allreduce(buf)
            return True
        xp = array_api_compat.array_namespace(grads[0].grad)
        flat = xp.concat([xp.reshape(p.grad, (-1,)) for p in grads]) * share
        flat = self.comm.allreduce(flat)
        start = 0
        for p in grads:
            stop = start + int(np.prod(p.shape))
            p.grad = xp.reshape(flat[start:stop], p.shape)
            start = stop
        return True

    def reset(self) -> None:
        self._local = self._global = 0
        self._poisoned = False

    def __repr__(self) -> str:
        return f"AverageGradients({self.comm!r})"


class GlobalBatchDropout:
    """Makes a rank's dropout mask the rows of the global batch's mask that its slice holds.

    Single-process training draws one mask for the whole batch. Every rank shares the same
    stream, so each draws that whole mask and keeps its rows: N ranks give the single-process
    answer exactly, at the cost of drawing N times the random numbers. Installed on the model's
    dropout stream for the duration of a fit.
    """

    def __init__(self, rng: Any) -> None:
        self.rng = rng
        self.window: tuple[int, int, int] | None = None  # (start, stop, global rows) of this step's slice
        self._draw = rng.uniform

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        window = self.window
        if window is None or not shape or shape[0] != window[1] - window[0]:
            return self._draw(shape, dtype)
        start, stop, total = window
        whole = self._draw((total, *shape[1:]), dtype)
        return whole[start:stop, ...]

    def install(self) -> None:
        self.rng.uniform = self.uniform

    def uninstall(self) -> None:
        if vars(self.rng).get("uniform") == self.uniform:
            del self.rng.uniform


class ShardedBatches:
    """A batch source's global batches, cut to this rank's contiguous slice.

    Args:
        source: the global batch source (`ArrayBatches`, `HostBatches`, `IterableBatches`).
        parallel: the `DataParallelFit` told each slice's rows.
    """

    def __init__(self, source: Any, parallel: DataParallelFit) -> None:
        self.source = source
        self.parallel = parallel
        self.steps = source.steps

    def epoch(self) -> Iterator[tuple[Any, Any, Any]]:
        """This epoch's slices, one per global batch.

        A source that knows its batches' sizes (``slices``: arrays, memmaps) gathers only this
        rank's rows; an iterable's batches arrive whole and are cut here.
        """
        slices = getattr(self.source, "slices", None)
        if slices is not None:
            it = self.source.epoch(window=self.window)
            totals: Iterator[int] = (part.stop - part.start for part in slices)
        else:
            it = self.source.epoch()
            totals = iter(())
        try:
            for Xb, yb, wb in it:
                total = next(totals) if slices is not None else int(Xb.shape[0])
                part = self.window(total)
                self.parallel.batch(part.start, part.stop, total, self.local_rows(total))
                if slices is None:
                    Xb, yb, wb = Xb[part, ...], _cut(yb, part), _cut(wb, part)
                yield Xb, yb, wb
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def local_rows(self, total: int) -> int:
        """Rows of a global batch of `total` that this rank computes (0 when the world is bigger)."""
        start, stop = rank_rows(total, self.parallel.comm.rank, self.parallel.comm.size)
        return stop - start

    def window(self, total: int) -> slice:
        """This rank's rows of a global batch of `total`; one row (weighted 0) where its share is empty,
        so that every stream advances as on the others."""
        start, stop = rank_rows(total, self.parallel.comm.rank, self.parallel.comm.size)
        return slice(start, stop) if stop > start else slice(0, 1)


def _cut(a: Any, part: slice) -> Any:
    return None if a is None else a[part, ...]


class DataParallelFit:
    """The data-parallel parts of one `fit` call on communicator `comm` (see the module docstring)."""

    def __init__(self, model: Any, comm: Communicator) -> None:
        if not isinstance(comm, Communicator):
            raise TypeError(f"distributed must be an nnx.distributed communicator (nnx.distributed.init()), "
                            f"got {type(comm).__name__}")
        self.model = model
        self.comm = comm
        self.transform = AverageGradients(comm)
        self.dropout = GlobalBatchDropout(model.dropout_rng)
        self.local_rows = 0
        self.is_root = comm.rank == 0

    def shard(self, batches: Any) -> ShardedBatches:
        """`batches` cut to this rank's slices."""
        return ShardedBatches(batches, self)

    def batch(self, start: int, stop: int, total: int, local: int) -> None:
        """Record the slice of the step about to run."""
        self.local_rows = local
        self.dropout.window = (start, stop, total)
        self.transform.add_rows(local, total)

    def begin(self) -> None:
        """Every rank starts from rank 0's weights, buffers and random streams."""
        model, comm = self.model, self.comm
        for a in [*model.parameters(), *model.buffers()]:
            a.value = comm.broadcast(a.value, root=0)
        streams = comm.broadcast_object((model.shuffle_rng.bit_generator.state, model.dropout_rng.get_state()))
        model.shuffle_rng.bit_generator.state = streams[0]
        model.dropout_rng.set_state(streams[1])
        self.dropout.install()

    def end(self) -> None:
        """Undo `begin`'s change to the dropout stream."""
        self.dropout.window = None
        self.dropout.uninstall()

    def end_epoch(self) -> None:
        """Rank 0's buffers on every rank (as torch DDP's broadcast_buffers); ranks computed them on their slices."""
        for b in self.model.buffers():
            b.value = self.comm.broadcast(b.value, root=0)

    def epoch_logs(self, weighted_loss: float, rows: int, metric_fns: dict, targets: list[Any], outputs: list[Any],
                   from_logits: bool) -> dict[str, float]:
        """The epoch's loss (row-weighted over every rank) and metrics (over every rank's outputs, in batch order).

        Gathered and summed in rank order on every rank, so every History is bit-for-bit the same.
        """
        be = self.model.backend
        mine = (weighted_loss, rows,
                [None if t is None else be.to_host(t) for t in targets] if metric_fns else None,
                [None if z is None else be.to_host(z) for z in outputs] if metric_fns else None)
        everyone = self.comm.allgather_object(mine)
        total = sum(part[0] for part in everyone)
        n = sum(part[1] for part in everyone)
        logs = {"loss": total / n}
        if metric_fns:
            # batch b's rows are rank 0's slice, then rank 1's, ...: the single-process order
            y_parts, z_parts = [], []
            for b in range(max(len(part[2]) for part in everyone)):
                for part in everyone:
                    if b < len(part[2]) and part[2][b] is not None:
                        y_parts.append(part[2][b])
                        z_parts.append(part[3][b])
            y = be.asarray(np.concatenate(y_parts, axis=0), argname="targets")
            Z = be.asarray(np.concatenate(z_parts, axis=0), argname="outputs")
            logs.update(self.model.metric_values(metric_fns, y, Z, from_logits))
        return logs
