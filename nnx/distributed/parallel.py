"""Data-parallel `fit`: each rank's slice of every global batch, the gradient average, and what keeps ranks equal.

`fit(..., distributed=comm)` builds one `DataParallelFit` and asks it, at fixed points:

- `begin`: rank 0's parameters, buffers and random streams go to every rank; each step, the
  dropout stream draws the global batch's mask and hands this rank its rows (``DeviceRNG.rows``):
  N ranks give the single-process masks exactly, at the cost of drawing N times the numbers;
- `shard`: the batch source yields this rank's contiguous slice of every global batch (gathering
  only those rows where it can);
- the `AverageGradients` stage (after accumulation, before clipping) turns each rank's
  mean gradient over its slice into the mean over the global batch, with one collective;
- the finite check after the all-reduce (`TrainStep.gradients_finite`): a rank whose own step was
  not finite poisons the buffer it all-reduces (`AverageGradients.poison`), so every rank sees it
  and refuses (and raises) together, with no collective of its own;
- `epoch_logs`: the epoch's loss and metrics over every rank's rows, the same on every rank;
- `end_epoch`: rank 0's buffers (BatchNorm's running statistics) to every rank.

With ``DataParallel(comm, shard_update=True)`` the average and the optimizer update are sharded
(ZeRO-1, `nnx.distributed.sharded.ShardedUpdate`): a reduce-scatter, the rule on this rank's slice,
an all-gather of the parameters.

Why the average is exact: every loss nnx reports is a mean over rows (or over elements,
a fixed number per row), and a regularizer's gradient is added to every rank's gradient.
A rank with ``n_r`` of the global batch's ``N`` rows scales its gradient by ``n_r / N``
and the sum over ranks is the gradient of the global batch, penalty included, whatever
way ``N`` splits. Under ``mean_with_sample_weight`` a rank's loss is a mean over its slice's
sum of weights ``W_r`` instead, and it scales by ``W_r / W`` (``W`` summed over the ranks: one
number). A rank whose slice is empty (a last batch smaller than the world) runs one row of the
batch with weight 0, so its random streams advance as everyone else's.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backends import backend_name_of, get_backend
from ..backends.host import gather_rows, is_out_of_core
from ..layers.normalization import BatchNorm
from ..training.data import ArrayBatches, HostBatches
from ..training.step import TrainStep
from ..training.transforms import CallbackHook, CallbackLook, GradientTransform
from ..training.weights import counts_by_weight
from .average import AverageGradients, rank_rows
from .comm import Communicator
from .sharded import ShardedUpdate


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
        rank's rows; an iterable's batches arrive whole and are cut here, each after the ranks agreed
        that they all got it, of one size (`DataParallelFit.agree_on_batch`), and the epoch's first
        one after they agreed that they got the same rows (`DataParallelFit.agree_on_contents`).
        """
        slices = getattr(self.source, "slices", None)
        it = self.source.epoch(window=self.window) if slices is not None else self.source.epoch()
        try:
            if slices is not None:
                for index, part in enumerate(slices):
                    self.parallel.check_slices(index, part.stop - part.start)
                for (Xb, yb, wb), part in zip(it, slices, strict=True):
                    total = part.stop - part.start
                    window = self.window(total)
                    self.parallel.batch(window.start, window.stop, total, self.local_rows(total), wb)
                    yield Xb, yb, wb
                return
            for index in itertools.count():
                try:
                    Xb, yb, wb = next(it)
                    got: int | BaseException | None = int(Xb.shape[0])
                except StopIteration:
                    got = None
                except Exception as exc:  # every rank must hear of it, or the others wait in the next collective
                    got = exc
                if not self.parallel.agree_on_batch(index, got):
                    return
                assert isinstance(got, int)
                self.parallel.check_slices(index, got)
                if index == 0:
                    self.parallel.agree_on_contents(Xb, yb, wb)
                part = self.window(got)
                self.parallel.batch(part.start, part.stop, got, self.local_rows(got), _cut(wb, part))
                yield Xb[part, ...], _cut(yb, part), _cut(wb, part)
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


# the facts about the data, whose error says how to give it
DATA_FACTS = ("data", "weights", "data contents", "validation data contents", "validation")
# what the ranks drew from the model's random stream (`DeviceRNG.rows`) and how they came apart
STREAM_HINT = (" Each rank draws the whole batch's random numbers and keeps its rows: a draw whose first axis has "
               "as many entries as this rank's rows is cut from a draw of the batch's rows. A layer's draw whose "
               "first axis is not the batch's rows (one number per batch, a mask shaped like a weight) is cut where "
               "it matches some rank's rows alone. Draw one number per batch as a 0-d array "
               "(self.rng.uniform((), dtype)), which is never cut; train a layer that draws other shapes in one "
               "process")
# rows read from each array to tell whether the ranks hold the same data (spread over it, first and last included)
DIGEST_ROWS = 16
# how far two ranks' validation logs may differ (rounding on a device) and still be the same validation
VALIDATION_RTOL = 1e-6


def _sampled_rows(a: Any, backend: Any) -> np.ndarray:
    """`DIGEST_ROWS` rows of `a` spread over it, first and last included, on the host: a few rows read, whatever
    the size of the data (a backend's array, a NumPy array, a memmap or an h5py-like array-like)."""
    n = int(a.shape[0]) if hasattr(a, "shape") else len(a)
    rows = np.unique(np.linspace(0, max(n - 1, 0), num=min(n, DIGEST_ROWS)).round().astype(np.int64))
    if backend.owns(a):
        return np.asarray(backend.to_host(backend.xp.take(a, backend.asarray(rows, argname="rows"), axis=0)))
    if isinstance(a, np.ndarray) or is_out_of_core(a):
        return np.asarray(gather_rows(a, rows))
    host = get_backend(a).to_host(a) if backend_name_of(a) is not None else a
    return np.asarray(host)[rows, ...]


def _digest(arrays: Any, backend: Any) -> str:
    """A digest of a few rows of each of `arrays` (None for an absent one): equal on ranks that hold the same data,
    and almost surely not on ranks that each hold their own shard of it."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        host = np.ascontiguousarray(_sampled_rows(a, backend))
        h.update(repr((host.dtype.str, host.shape)).encode())
        h.update(host.tobytes())
    return h.hexdigest()[:16]


def _data_digest(source: Any, backend: Any) -> str | None:
    """The digest of the arrays `fit` cuts into batches; None for an iterable (its batches are compared by size)."""
    if isinstance(source, (ArrayBatches, HostBatches)):
        return _digest((source.X, source.y, source.w), backend)
    return None


def _validation_arrays(validation_data: Any) -> bool:
    """Whether validation_data is arrays (X_val, y_val[, sample_weight]) in a tuple or a list, as `fit` reads it."""
    return isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3) and \
        all(a is None or hasattr(a, "shape") for a in validation_data)


def _validation_digest(validation_data: Any, backend: Any) -> str | None:
    """The digest of validation_data given as arrays (X_val, y_val[, sample_weight]); None otherwise."""
    return _digest(validation_data, backend) if _validation_arrays(validation_data) else None


def _validation_kind(validation_data: Any, steps: int | None) -> tuple[str | None, int | None]:
    """How validation_data is given, as the ranks compare it: None, "arrays" or "iterable", with validation_steps."""
    if validation_data is None:
        return None, steps
    return ("arrays" if _validation_arrays(validation_data) else "iterable"), steps


def _same_log(a: Any, b: Any) -> bool:
    """Whether two ranks' values of one validation log agree: equal, both NaN, or within rounding (a device's
    reductions need not give the same last bits twice)."""
    if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=VALIDATION_RTOL, abs_tol=1e-12)


def _stream_digest(rng: Any) -> str:
    """A digest of a random stream's state (a generator's state may be thousands of numbers)."""
    return hashlib.sha256(repr(rng.get_state()).encode()).hexdigest()[:16]


def _describe(t: GradientTransform) -> tuple:
    """A gradient transform as the ranks compare it: its class and its public numbers and names."""
    settings = sorted((k, v) for k, v in vars(t).items()
                      if not k.startswith("_") and isinstance(v, (bool, int, float, str)))
    return (type(t).__name__, settings)


def _layers(model: Any) -> list[tuple[str, str]]:
    """The model's layers as the ranks compare them: each one's path and its class with its settings (``get_config``
    less the registered name). Models alike in their parameters' shapes may still compute other functions (another
    activation, another dropout rate, a layer more without parameters), and their gradients would be averaged."""
    described = []
    for path, layer in model.named_layers():
        try:
            config = {k: v for k, v in layer.get_config().items() if k != "type"}
        except Exception:  # noqa: BLE001 - a user's get_config that fails here fails in save too; compare the class
            config = {}
        described.append((path, f"{type(layer).__qualname__} {config}"))
    return described


def _first_difference(values: list[Any]) -> str:
    """Where the ranks' lists of (path, description) first differ: that entry on each rank (``ended`` past its end)."""
    at = next(i for i in itertools.count() if any(i >= len(v) or v[i] != values[0][i] for v in values))
    path = next((v[at][0] for v in values if at < len(v)), str(at))
    return f"layer {path}, " + "; ".join(f"rank {r}: {v[at][1] if at < len(v) else 'no such layer'}"
                                         for r, v in enumerate(values))


def _updated_parameters(model: Any, optimizer: Any) -> list[str]:
    """The names of the parameters `optimizer` updates, as the ranks compare them (its position for one that is
    not the model's)."""
    mine = {id(p) for p in model.parameters()}
    return [str(p.name) if id(p) in mine else f"#{i} (not the model's)" for i, p in enumerate(optimizer.params)]


def _class_weights(class_weight: Any) -> Any:
    """`class_weight` as the ranks compare it (None, or its items as floats in class order)."""
    if class_weight is None:
        return None
    return sorted((str(k), float(v)) for k, v in dict(class_weight).items())


class DataParallel:
    """How `fit(distributed=...)` trains across processes: the communicator, and whether the update is sharded.

    Args:
        comm: the `Communicator` of the job (``nnx.distributed.init()``).
        shard_update: shard the optimizer update across the ranks (ZeRO-1): a reduce-scatter of the
            gradients, the optimizer's rule on this rank's slice of the parameters, an all-gather of
            the parameters. It needs an ``elementwise`` optimizer and, after the average, only
            shardable transforms (``clip_norm``, ``clip_value``); anything else raises a ValueError
            when `fit` starts. False (the default) all-reduces the gradients and updates every parameter
            on every rank. ``fit(distributed=comm)`` is ``DataParallel(comm)``.
    """

    def __init__(self, comm: Communicator, shard_update: bool = False) -> None:
        if not isinstance(comm, Communicator):
            raise TypeError(f"DataParallel: comm must be an nnx.distributed communicator (nnx.distributed.init()), "
                            f"got {type(comm).__name__}")
        if not isinstance(shard_update, bool):
            raise TypeError(f"DataParallel: shard_update must be True or False, got {shard_update!r}")
        self.comm = comm
        self.shard_update = shard_update

    def __repr__(self) -> str:
        return f"DataParallel({self.comm!r}, shard_update={self.shard_update})"


class DataParallelFit:
    """The data-parallel parts of one `fit` call (see the module docstring).

    Args:
        model: the model being trained.
        distributed: a `Communicator` or a `DataParallel`.
    """

    def __init__(self, model: Any, distributed: Any) -> None:
        if isinstance(distributed, Communicator):
            distributed = DataParallel(distributed)
        if not isinstance(distributed, DataParallel):
            raise TypeError(f"distributed must be an nnx.distributed communicator (nnx.distributed.init()) or "
                            f"nnx.distributed.DataParallel, got {type(distributed).__name__}")
        self.model = model
        self.comm = comm = distributed.comm
        self.shard_update = distributed.shard_update
        self.transform: AverageGradients = ShardedUpdate(comm) if self.shard_update else \
            AverageGradients(comm, model.backend)
        self.local_rows = 0
        self.local_weight: Any = 0  # what this rank's slice of the batch counts for (`batch`)
        self.totals: list[int] = []  # this epoch's global batch sizes, as this rank's source gave them
        self.first_bad: int | None = None  # the first batch whose step was not finite on this rank (`poison`)
        self.batches: Any = None  # the sharded source (`shard`)
        # the fit's loss, gradient stage and finite check, told by `train_step`
        self.loss: Any = None
        self.transforms: list[GradientTransform] = []
        self.check_finite = True
        self.refused: ValueError | None = None  # why the sharded update cannot run this fit (`train_step`)
        self.validation_kind: str | None = None  # how validation_data is given (`begin`)
        self.is_root = comm.rank == 0
        # the fewest rows a slice may hold in training: BatchNorm normalises each rank's slice by its own statistics
        self.min_rows = 2 if any(isinstance(layer, BatchNorm) for _, layer in model.named_layers()) else 1

    def shard(self, batches: Any) -> ShardedBatches:
        """`batches` cut to this rank's slices."""
        self.batches = ShardedBatches(batches, self)
        return self.batches

    def train_step(self, loss: Any, optimizer: Any, transforms: list[GradientTransform], check_finite: bool) -> Any:
        """The fit's `TrainStep`; sharded, the transforms after the average run on each rank's slice inside it."""
        self.loss, self.transforms, self.check_finite = loss, list(transforms), check_finite
        if not self.shard_update:
            return TrainStep(self.model, loss, optimizer, transforms, check_finite, compile_passes=True)
        at = next(i for i, t in enumerate(transforms) if t is self.transform)
        sharded = self.transform
        assert isinstance(sharded, ShardedUpdate)
        try:
            sharded.bind(optimizer, self.model.backend, transforms[at + 1:], check_finite)
        except ValueError as exc:
            # raised in `begin`, on every rank: a refusal on some ranks alone (a gradient hook given to rank 0 only)
            # would leave the others waiting in the first collective. This step never runs.
            self.refused = exc
            return TrainStep(self.model, loss, optimizer, transforms, check_finite)
        return TrainStep(self.model, loss, optimizer, transforms[:at + 1], check_finite, flat_update=sharded,
                         compile_passes=True)

    def poison(self, batch: int) -> None:
        """This rank's step at `batch` was not finite: the next all-reduce carries that to every rank."""
        self.transform.poison()
        if self.first_bad is None:
            self.first_bad = batch

    def poison_unless(self, ok: Any) -> None:
        """Under the deferred (on-device) finite check: `ok`, the device flag of this rank's steps so far this
        epoch, poisons the next all-reduce where it is False, so every rank refuses the update together (a rank
        whose loss alone is not finite would otherwise update apart from the others and raise alone)."""
        model = self.model
        self.transform.poison_unless(model.xp.astype(ok, model.backend.float_dtype(model.dtype)))

    def anywhere(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank: one all-reduce of one number (a decision one rank made on its own
        slice, such as TerminateOnNaN's, that every rank must follow at the same batch)."""
        return float(self.comm.allreduce(np.asarray([1.0 if flag else 0.0]), op="max")[0]) > 0.0

    def first_refused(self, batch: int) -> int:
        """The batch to name when the update due at `batch` is refused: the first any rank found not finite on its
        own (with accumulation, a batch before the update), else `batch`. A collective, on the refusal only."""
        mine = batch if self.first_bad is None else self.first_bad
        return int(self.comm.allreduce(np.asarray([mine], dtype=np.int64), op="min")[0])

    def gradients_finite(self, step: Any) -> bool:
        """Whether the averaged gradients of this step are finite, the same verdict on every rank."""
        sharded = self.transform
        if isinstance(sharded, ShardedUpdate):
            return sharded.finite
        return step.gradients_finite()

    def agree_on_batch(self, index: int, got: int | BaseException | None) -> bool:
        """Whether every rank's iterable gave batch `index` (`got`: its rows, None where it ended, the exception
        reading it raised); False where every one ended. One collective per batch, for batches that arrive whole.

        Where the ranks differ, each raises (the rank whose read failed, its own exception) instead of leaving the
        others waiting in a collective it never joins, or cutting slices from batches of other sizes.
        """
        everyone = self.comm.allgather_object(repr(got) if isinstance(got, BaseException) else got)
        if isinstance(got, BaseException):
            raise got
        failed = [(r, part) for r, part in enumerate(everyone) if isinstance(part, str)]
        if failed:
            rank, error = failed[0]
            raise RuntimeError(f"data-parallel fit: rank {rank} failed reading batch {index + 1} of its data "
                               f"({error}); every rank stops")
        if all(part is None for part in everyone):
            return False
        if any(part != everyone[0] for part in everyone):
            told = "; ".join(f"rank {r}: {'ended' if part is None else part}" for r, part in enumerate(everyone))
            raise ValueError(f"data-parallel fit: the ranks' batches had other sizes this epoch (global rows of "
                             f"batch {index + 1}, {told}); nothing of it was trained. Every rank must read the same "
                             "batches, as many on each")
        return True

    def check_slices(self, index: int, total: int) -> None:
        """The same ValueError on every rank where global batch `index` (`total` rows) leaves some rank a slice
        too small to train on (BatchNorm: 1 row), instead of that rank alone raising while the others wait."""
        size = self.comm.size
        if self.min_rows < 2 or total // size >= self.min_rows:
            return  # a slice of 0 rows runs a placeholder row, which counts for nothing
        raise ValueError(f"data-parallel fit: batch {index + 1} of {total} rows, cut between {size} ranks, leaves a "
                         f"rank a slice of {max(total // size, 1)} row; BatchNorm normalises each rank's slice by its "
                         f"own statistics and needs at least {self.min_rows} rows in each. Give every batch (the last "
                         f"holds the rows batch_size leaves over) at least {self.min_rows * size} rows, or use "
                         "fewer ranks")

    def agree_on_contents(self, X: Any, y: Any, w: Any) -> None:
        """Raise the same ValueError on every rank unless every rank's iterable gave this batch the same rows (a
        digest of a few of them; one collective, at each epoch's first batch). Ranks reading their own shard
        (DistributedSampler) or shuffling apart would otherwise each train on its slice of another batch: a
        fraction of the data, without a word."""
        everyone = self.comm.allgather_object(_digest((X, y, w), self.model.backend))
        if any(d != everyone[0] for d in everyone):
            told = "; ".join(f"rank {r}: {d}" for r, d in enumerate(everyone))
            raise ValueError("data-parallel fit: the ranks' iterables gave other batches (a digest of a few rows of "
                             f"the epoch's first batch, {told}). Every rank must read the same batches, whole: "
                             "do not shard the data between the ranks (no DistributedSampler), and seed any "
                             "shuffling or augmentation alike on every rank; fit cuts each batch between the ranks")

    def batch(self, start: int, stop: int, total: int, local: int, weights: Any = None) -> None:
        """Record the slice of the step about to run: rows `start`:`stop` of `total`, `local` of them this rank's
        (0: a placeholder row), weighted by `weights` (this slice's, or None).

        The slice counts for its rows, or for its sum of weights where the loss divides by that
        (`nnx.training.weights.counts_by_weight`); a placeholder for nothing.
        """
        self.local_rows = local
        self.totals.append(total)
        self.model.dropout_rng.rows = (start, stop, total)
        if counts_by_weight(self.loss, weights):
            xp = self.model.xp
            self.local_weight = xp.sum(weights) if local else xp.sum(weights) * 0
            self.transform.add_rows(local, total, self.local_weight)
        else:
            self.local_weight = local
            self.transform.add_rows(local, total)

    def begin(self, epochs: int, validation_data: Any = None, metrics: list[str] | None = None,
              validation_steps: int | None = None) -> None:
        """Check that every rank runs the same fit (`agree`), then start every rank from rank 0's weights, buffers
        and random streams. `metrics`: the names of the metrics this rank's fit scores."""
        facts = self.facts(epochs, validation_data, metrics, validation_steps)
        self.validation_kind = facts["validation"][0]
        self.agree("as fit starts", facts)
        if self.refused is not None:
            raise self.refused  # on every rank alike: `agree` compared it
        model, comm = self.model, self.comm
        for a in [*model.parameters(), *model.buffers()]:
            a.value = comm.broadcast(a.value, root=0)
        streams = comm.broadcast_object((model.shuffle_rng.bit_generator.state, model.dropout_rng.get_state()))
        model.shuffle_rng.bit_generator.state = streams[0]
        model.dropout_rng.set_state(streams[1])

    def facts(self, epochs: int, validation_data: Any = None, metrics: list[str] | None = None,
              validation_steps: int | None = None) -> dict[str, Any]:
        """What every rank's fit must share, or the ranks' collectives would pair up wrongly (a hang, or
        slices cut from batches of other sizes) or their weights drift apart without a word.

        The data's contents are compared by a digest of a few rows of each array: ranks that each hold their own
        shard (as DistributedSampler hands out) would otherwise train on their slices of different batches, a
        fraction of the data, without a word; validation_data alike, whose logs decide checkpoints and stops."""
        model, opt = self.model, self.model.optimizer
        source = getattr(self.batches, "source", None)
        prepare = getattr(source, "prepare", None)
        slices = getattr(source, "slices", None)
        return {
            "backend": model.backend.name,
            "dtype": str(model.dtype),
            "parameter shapes": [tuple(int(d) for d in p.shape) for p in model.parameters()],
            "layers": _layers(model),
            "regularizer": None if model.regularizer is None else model.regularizer.get_config(),
            "epochs trained": model.epochs_trained,
            "epochs": epochs,
            "loss": repr(self.loss),
            # every rank scores its metrics over every rank's outputs: other names would give Histories apart
            "metrics": list(metrics or []),
            "optimizer": (type(opt).__name__, repr(sorted(opt.hyperparams.items()))),
            "optimizer steps and state": (opt.step_count, sorted((int(i), sorted(st)) for i, st in opt.state.items())),
            # a layer frozen on some ranks alone (left out of their optimizer): every rank averages the same
            # gradients, but each updates its own parameters and the weights part without a word
            "parameters the optimizer updates": _updated_parameters(model, opt),
            "data": (type(source).__name__, getattr(source, "n_samples", None), getattr(source, "steps", None),
                     None if not slices else slices[0].stop - slices[0].start, getattr(source, "shuffle", None)),
            "weights": (getattr(source, "w", None) is not None,
                        _class_weights(getattr(prepare, "class_weight", None))),
            "data contents": _data_digest(source, model.backend),
            "validation data contents": _validation_digest(validation_data, model.backend),
            # an iterable's batches are compared by the logs they give (`agree_on_validation`)
            "validation": _validation_kind(validation_data, validation_steps),
            # callbacks' on_backward and on_gradients left out: one that only looks (GradientAnalyzer) may run on
            # rank 0 alone
            "gradient stage": [_describe(t) for t in self.transforms
                               if t is not self.transform and not isinstance(t, (CallbackHook, CallbackLook))],
            "check_finite": self.check_finite,
            "shard_update": self.shard_update,
            "what refuses the sharded update": None if self.refused is None else str(self.refused),
        }

    def agree(self, what: str, facts: dict[str, Any]) -> None:
        """Raise the same ValueError on every rank where the ranks' `facts` differ (one collective)."""
        everyone = self.comm.allgather_object(facts)
        for name in facts:
            values = [part.get(name) for part in everyone]
            if any(v != values[0] for v in values):
                told = _first_difference(values) if name == "layers" else \
                    "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
                digest = " (a digest of a few rows of each array)" if name.endswith("contents") else ""
                whole = (" Give every rank the whole data set, not its own shard: batch_size is the global batch, "
                         "and fit cuts each batch between the ranks itself") if name in DATA_FACTS else \
                    STREAM_HINT if name == "random stream" else ""
                raise ValueError(f"data-parallel fit: the ranks differ in {name} {what}{digest} ({told}). Every rank "
                                 "must run the same fit: the same model, data, arguments, optimizer state and "
                                 f"callbacks.{whole}")

    def agree_on_validation(self, epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        """Validation_data given as an iterable: rank 0's validation logs of this epoch on every rank, or the same
        ValueError on every rank where the ranks' logs differ (one collective an epoch, before the callbacks read
        them). Arrays were compared by a digest as fit started; their logs are returned as they are.

        Every rank validates on the whole validation data: ranks that each read their own shard of an iterable (as
        DistributedSampler hands out) would each log, and rank 0 checkpoint by, their own val_loss, and their
        Histories would part without a word.
        """
        if self.validation_kind != "iterable":
            return logs
        everyone = self.comm.allgather_object(logs)
        first = everyone[0]
        for part in everyone[1:]:
            if part.keys() != first.keys() or not all(_same_log(part[k], first[k]) for k in first):
                told = "; ".join(f"rank {q}: {({f'val_{k}': v for k, v in sorted(p.items())})}"
                                 for q, p in enumerate(everyone))
                raise ValueError(f"data-parallel fit: the ranks' validation logs differ after epoch {epoch + 1} "
                                 f"({told}). Every rank must validate on the same, whole validation data: give every "
                                 "rank the same validation_data (and validation_steps), not its own shard")
        return dict(first)

    def end_of_epoch(self, epoch: int, handles_non_finite: bool | None) -> None:
        """After the epoch's callbacks: every rank must stop together and keep one learning rate (a callback that
        ran on some ranks only, such as EarlyStopping or ReduceLROnPlateau, would leave the others waiting or
        training on other weights), and run the same collectives at each step (`handles_non_finite`: whether a
        callback takes non-finite steps itself, which a callback may have switched on some ranks alone; None
        where no epoch follows)."""
        opt = self.model.optimizer
        hook = next((t for t in self.transforms if isinstance(t, CallbackHook)), None)
        self.agree(f"after the callbacks of epoch {epoch + 1}",
                   {"stop_training": bool(self.model.stop_training), "learning rate": float(opt.lr),
                    "optimizer hyper-parameters": repr(sorted((k, v) for k, v in opt.hyperparams.items() if k != "lr")),
                    # a callback's on_gradients that replaced gradients on some ranks alone: their weights drifted
                    "steps whose gradients on_gradients replaced": 0 if hook is None else hook.replaced,
                    # every rank drew every batch's numbers whole: a stream apart trained on other masks
                    "random stream": _stream_digest(self.model.dropout_rng),
                    "whether a callback handles non-finite steps": handles_non_finite})

    def end(self) -> None:
        """The dropout stream draws as asked again."""
        self.model.dropout_rng.rows = None

    def end_epoch(self) -> None:
        """Rank 0's buffers on every rank (as torch DDP's broadcast_buffers; ranks computed them on their
        slices) and, sharded, every rank's slice of the optimizer state, so that a checkpoint holds all of it."""
        for b in self.model.buffers():
            b.value = self.comm.broadcast(b.value, root=0)
        if isinstance(self.transform, ShardedUpdate):
            self.transform.gather_state()

    def epoch_logs(self, values: list[float], weights: list[float], metric_fns: dict, targets: list[Any],
                   outputs: list[Any], from_logits: bool) -> dict[str, float]:
        """The epoch's loss (its batches' `values` weighted by what this rank's slices counted for, over every
        rank) and metrics (over every rank's outputs, in batch order).

        Gathered and summed in rank order on every rank, so every History is bit-for-bit the same. Where
        every weight was 0 the loss is the plain mean of rank 0's values, as one process's (its slices are
        never placeholders, and every rank's value of a batch is then its penalty alone).
        """
        be = self.model.backend
        weighted = float(sum(w * v for w, v in zip(weights, values, strict=True)))
        totals, self.totals = self.totals, []
        mine = (weighted, float(sum(weights)), sum(values) / max(len(values), 1),
                [None if t is None else be.to_host(t) for t in targets] if metric_fns else None,
                [None if z is None else be.to_host(z) for z in outputs] if metric_fns else None, totals)
        everyone = self.comm.allgather_object(mine)
        if any(part[5] != totals for part in everyone):
            told = "; ".join(f"rank {r}: {part[5]}" for r, part in enumerate(everyone))
            raise ValueError(f"data-parallel fit: the ranks' batches had other sizes this epoch (global rows per "
                             f"batch, {told}), so their slices overlapped or missed rows. Every rank must read the "
                             "same batches")
        total = sum(part[0] for part in everyone)
        n = sum(part[1] for part in everyone)
        logs = {"loss": total / n if n else everyone[0][2]}
        if metric_fns and not any(z is not None for part in everyone for z in part[4]):
            # stopped (TerminateOnNaN) at the epoch's first step: no batch to score, as in one process
            logs.update(dict.fromkeys(metric_fns, math.nan))
        elif metric_fns:
            # batch b's rows are rank 0's slice, then rank 1's, ...: the single-process order
            y_parts, z_parts = [], []
            for b in range(max(len(part[3]) for part in everyone)):
                for part in everyone:
                    if b < len(part[3]) and part[3][b] is not None:
                        y_parts.append(part[3][b])
                        z_parts.append(part[4][b])
            y = be.asarray(np.concatenate(y_parts, axis=0), argname="targets")
            Z = be.asarray(np.concatenate(z_parts, axis=0), argname="outputs")
            logs.update(self.model.metric_values(metric_fns, y, Z, from_logits))
        return logs
