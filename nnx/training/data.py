"""Where training batches come from: device arrays, host arrays bigger than memory, or iterables of batches.

A batch source yields ``(X, y, sample_weight or None)`` per step, already on
the model's backend and validated, and knows how many steps an epoch has when
it can (``steps``, else None). `fit`, `evaluate` and `predict` only iterate
over `epoch()`.

- `ArrayBatches`: arrays already on the device (NumPy arrays in memory go here,
  as fast as before).
- `HostBatches`: a `np.memmap` or any array-like with ``shape`` and row
  indexing (an h5py dataset, ...): each batch's rows are gathered on the host
  in the order of the same permutation `ArrayBatches` draws, so the batches
  equal in-memory training on the same data, and moved to the device one at
  a time.
- `IterableBatches`: a list, a re-iterable object or a one-shot generator of
  ``(X, y)`` / ``(X, y, sample_weight)`` batches (or of X batches for predict).

The last two validate every batch through the model's ``prepare_*`` methods and
prepare batch k+1 in a background thread while step k runs (`prefetched`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import queue
import threading
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

from ..backends.host import gather_rows, host_companion, may_share_memory
from ..protocols import Model

# Which rows of a batch of n rows to keep: a data-parallel rank's slice (a pure function of n).
Window = Callable[[int], slice]

# Bytes of training data above which an epoch gathers each shuffled batch instead of copying X once.
COPY_LIMIT = 16 * 2**20

# Bytes of one batch that predict and evaluate read from host data (a memmap, ...) when given no batch_size.
HOST_BATCH_BYTES = 16 * 2**20


def batch_slices(n_samples: int, batch_size: int) -> list[slice]:
    """Consecutive batches covering n_samples; the last may be smaller."""
    return [slice(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]


def copy_fits(xp: Any, X: Any) -> bool:
    """Whether float array `X` is small enough (`COPY_LIMIT`) that an epoch may copy it whole in shuffled order;
    above it each shuffled batch is gathered from X, so that training never holds X twice."""
    return int(X.shape[0]) * math.prod(X.shape[1:]) * xp.finfo(X.dtype).bits // 8 <= COPY_LIMIT


class ArrayBatches:
    """Batches of arrays already on the model's device, reshuffled every epoch.

    Args:
        model: the `Sequential` (its backend moves the permutation; its shuffle RNG draws it).
        X, y: device arrays with the same number of rows; `y` may be None (prediction).
        sample_weight: per-row weights on the device, or None.
        batch_size: rows per step (the last step may be smaller).
        shuffle: draw a new permutation each epoch (the same on every backend).
    """

    # reading a batch runs the library's and the backend's code only, none of the user's (a training step may then
    # follow the last one without looking again at what only such code could change: `TrainStep.back_to_back`)
    library_only = True

    def __init__(self, model: Model, X: Any, y: Any, sample_weight: Any, batch_size: int, shuffle: bool) -> None:
        self.model = model
        self.X, self.y, self.w = X, y, sample_weight
        self.n_samples = int(X.shape[0])
        self.slices = batch_slices(self.n_samples, batch_size)
        self.steps = len(self.slices)
        self.shuffle = shuffle
        small = copy_fits(model.xp, X)
        # A shuffled copy of a big X would double what training holds in memory: gather each batch instead.
        self._gather = shuffle and not small
        # Cutting every batch at once (`Backend.split_rows`) holds the epoch's batches together: small data only.
        self._split = small

    def epoch(self, window: Window | None = None) -> Iterator[tuple[Any, Any, Any]]:
        """This epoch's batches, in order; `window` keeps only those rows of each (a data-parallel rank's slice)."""
        be = self.model.backend
        X, y, w = self.X, self.y, self.w
        parts = self.slices if window is None else [_within(part, window) for part in self.slices]
        perm = None
        if self.shuffle:
            perm = be.asarray(self.model.shuffle_rng.permutation(self.n_samples), argname="permutation")
            if not self._gather:
                X = be.take_rows(X, perm)
            y = None if y is None else be.take_rows(y, perm)
            w = None if w is None else be.take_rows(w, perm)
        # every batch is cut at once (`Backend.split_rows`; a data-parallel rank's slices with the rows between
        # them); X only when small, since its batches (and those rows) are then held together
        covered = window is None  # the parts cover the rows in order
        rows = self._pieces(perm if self._gather else X, parts, self._gather or self._split, covered)
        ys, ws = self._pieces(y, parts, True, covered), self._pieces(w, parts, True, covered)
        for b in range(len(parts)):
            Xb = be.take_rows(self.X, rows[b]) if self._gather else rows[b]
            yield Xb, None if ys is None else ys[b], None if ws is None else ws[b]

    def _pieces(self, a: Any, parts: list[slice], at_once: bool, covered: bool) -> Any:
        """`a`'s rows of each part (in order, not overlapping; `covered`: all the rows), indexed by batch (None for
        None): cut in one operation where allowed, with the rows no part takes as pieces of their own, else sliced
        part by part when asked for."""
        if a is None:
            return None
        if not at_once:
            return _LazyRows(a, parts)
        if covered:
            return self.model.backend.split_rows(a, [part.stop - part.start for part in parts])
        sizes, kept, at = [], [], 0
        for part in parts:
            if part.start > at:
                sizes.append(part.start - at)
            kept.append(len(sizes))
            sizes.append(part.stop - part.start)
            at = part.stop
        if at < int(a.shape[0]):
            sizes.append(int(a.shape[0]) - at)
        pieces = self.model.backend.split_rows(a, sizes)
        return pieces if len(kept) == len(sizes) else [pieces[i] for i in kept]


class _LazyRows:
    """``a[parts[b]]`` made when batch b is asked for, so that a big array is never cut all at once."""

    def __init__(self, a: Any, parts: list[slice]) -> None:
        self.a, self.parts = a, parts

    def __getitem__(self, b: int) -> Any:
        return self.a[self.parts[b], ...]


def _within(part: slice, window: Window) -> slice:
    """The rows of batch `part` that `window` keeps, as a slice of the whole data."""
    keep = window(part.stop - part.start)
    return slice(part.start + keep.start, part.start + keep.stop)


# -- what kind of data is it -------------------------------------------------------------------
def is_batch_iterable(data: Any) -> bool:
    """Whether `data` (given without y) is an iterable of batches rather than one array: something with
    ``__iter__``, or a Keras-style sequence of batches (`is_batch_sequence`)."""
    if data is None or hasattr(data, "shape") or isinstance(data, (str, bytes)):
        return False
    return hasattr(data, "__iter__") or is_batch_sequence(data)


def is_batch_sequence(data: Any) -> bool:
    """Whether `data` is read by position as a Keras ``Sequence`` or ``PyDataset`` is: ``__len__`` batches, each
    ``data[i]``, with an ``on_epoch_end`` (or ``on_epoch_begin``) hook, and no ``__iter__`` of its own. Keras's
    contract says its items are whole batches; a torch ``Dataset`` of samples has no such hook."""
    if hasattr(data, "__iter__") or not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return False
    return any(callable(getattr(data, hook, None)) for hook in ("on_epoch_end", "on_epoch_begin"))


def _new_pass(data: Any) -> Iterator[Any]:
    """A pass over a re-iterable: its own iterator, or a batch sequence's items 0 to ``len - 1`` (Python's
    fallback iteration would read on until an IndexError, which slicing past the end never raises)."""
    if is_batch_sequence(data):
        return (data[i] for i in range(len(data)))
    return iter(data)


def refuse_unreadable(data: Any, argname: str, backend_spec: str) -> None:
    """TypeError for data that is neither an array nor an iterable of batches but was taken for an array (and refused
    for a missing y, or failed inside the cast): a function, such as a generator function passed uncalled, and an
    object read by position (``__getitem__`` and ``__len__``) without a shape or an array interface: a torch
    ``Dataset`` (``TensorDataset``) of samples, or an indexable sequence of batches, whose items are samples or
    batches as only its author knows. `backend_spec`, the model's backend: a torch ``DataLoader``, which batches such
    a dataset, yields torch tensors, which only a model on torch takes."""
    if data is None or isinstance(data, (list, tuple, str, bytes)) or hasattr(data, "shape") \
            or hasattr(data, "__iter__") or is_batch_sequence(data):
        return
    if any(hasattr(data, a) for a in ("__array__", "__array_interface__", "__dlpack__", "__cuda_array_interface__")):
        return
    if callable(data):
        name = getattr(data, "__name__", type(data).__name__)
        raise TypeError(f"{argname} is a function ({name}), not data: pass what it returns, {name}() (a generator "
                        "function called gives the generator of batches)")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        batching = ("wrap a dataset of samples (a torch Dataset such as TensorDataset) in a "
                    "torch.utils.data.DataLoader(dataset, batch_size=...), which yields (X, y) batches"
                    if backend_spec.partition(":")[0] == "torch" else
                    "iterate a dataset of samples in batches yourself, yielding (X, y) batches as NumPy arrays"
                    f"{'' if backend_spec == 'numpy' else f' or {backend_spec} arrays'} (a torch DataLoader yields "
                    "torch tensors, which only a model on backend='torch' takes)")
        raise TypeError(f"{argname} is a {type(data).__name__}, indexed by position but neither an array (it has no "
                        f"shape) nor an iterable of batches (it has no __iter__): {batching}; give a sequence of "
                        "batches an __iter__ (or, as a Keras Sequence has, an on_epoch_end method), or pass a list "
                        "of them")


def batch_shaped(model: Model, a: Any) -> bool:
    """Whether `a` is an array with one more axis than the model's samples (a batch of X), as far as it knows."""
    ndim = getattr(a, "ndim", None)
    if ndim is None:
        return False
    return ndim >= 2 if model.input_shape is None else ndim == len(model.input_shape) + 1


def holds_inputs(model: Model, item: Any) -> bool:
    """Whether a batch given to predict is an (X, ...) tuple or list, such as a torch DataLoader's [X, y],
    rather than X itself (which may be a list of rows, or a row written as a tuple of numbers)."""
    if isinstance(item, tuple):
        return bool(item) and not isinstance(item[0], numbers.Number) and getattr(item[0], "ndim", None) != 0
    return isinstance(item, list) and bool(item) and batch_shaped(model, item[0])


def n_rows(data: Any, argname: str) -> int:
    """Rows of a host array-like (its ``shape[0]``, else ``len``)."""
    shape = getattr(data, "shape", None)
    try:
        return int(shape[0]) if shape is not None else len(data)
    except (TypeError, IndexError):
        raise TypeError(f"{argname} must be an array with a batch axis, got {type(data).__name__}") from None


def host_batch_rows(data: Any, n: int) -> int:
    """Rows of host array-like `data` (of `n` rows) in a batch of about `HOST_BATCH_BYTES`: what predict and
    evaluate read at a time without a batch_size, so that data bigger than memory is never read whole."""
    row = math.prod(int(d) for d in data.shape[1:]) * int(getattr(getattr(data, "dtype", None), "itemsize", 8))
    return max(1, min(n, HOST_BATCH_BYTES // max(1, row)))


def prefetch_depth(prefetch: Any) -> int:
    """Batches prepared ahead: True is 1, False is 0, or an int >= 0."""
    if isinstance(prefetch, bool):
        return int(prefetch)
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be True, False or an int >= 0 (batches prepared ahead), got {prefetch!r}")
    return prefetch


class BatchPreparer:
    """Checks one host batch and puts it on the device through the model's ``prepare_*`` methods.

    Args:
        model: the `Sequential`.
        loss: the `Loss` targets are checked against; None for inputs only (predict).
        class_weight: {class: weight} multiplied into each batch's sample weights, or None.
        check_finite: refuse NaN/inf in X and y (as `fit` and `evaluate` do for arrays).
    """

    def __init__(self, model: Model, loss: Any = None, class_weight: Any = None, check_finite: bool = True) -> None:
        self.model, self.loss, self.class_weight, self.check_finite = model, loss, class_weight, check_finite

    def __call__(self, X: Any, y: Any, w: Any, where: str) -> tuple[Any, Any, Any]:
        model = self.model
        X_d = model.prepare_inputs(X, f"X of {where}")
        rows = int(X_d.shape[0])
        if rows == 0:
            raise ValueError(f"X of {where} has 0 samples; every batch needs at least one")
        if self.check_finite:
            model.require_finite(X_d, f"X of {where}", X)
        if self.loss is None:
            return X_d, None, None
        if y is None:
            raise ValueError(f"{where} has no targets: batches must be (X, y) or (X, y, sample_weight)")
        y_d = model.prepare_targets(y, self.loss, rows, f"y of {where}", f"X of {where}")
        if self.check_finite:
            model.require_finite(y_d, f"y of {where}", y)
        w_d = model.prepare_sample_weight(w, self.class_weight, y_d, self.loss, rows, f"sample_weight of {where}")
        return X_d, y_d, w_d


class HostBatches:
    """Batches gathered from host array-likes (memmap, h5py, ...) and moved to the device one at a time.

    Args:
        model: the `Sequential` (its shuffle RNG draws the same permutation `ArrayBatches` would).
        X, y, sample_weight: host array-likes with the same number of rows; y and sample_weight may be None.
        batch_size: rows per step (the last step may be smaller).
        shuffle: a new permutation each epoch.
        prepare: the `BatchPreparer` every batch goes through.
        prefetch: batches prepared ahead in a background thread (0: none).
        rows: the (start, stop) range of rows used (validation_split holds out the end).
    """

    def __init__(self, model: Model, X: Any, y: Any, sample_weight: Any, batch_size: int, shuffle: bool,
                 prepare: BatchPreparer, prefetch: int = 1, rows: tuple[int, int] | None = None,
                 name: str = "X") -> None:
        n = n_rows(X, name)
        for arg, label in ((y, "y"), (sample_weight, "sample_weight")):
            if arg is not None and n_rows(arg, label) != n:
                raise ValueError(f"{name} has {n} samples but {label} has {n_rows(arg, label)}")
        self.model, self.prepare, self.depth, self.shuffle = model, prepare, prefetch, shuffle
        self.X, self.y, self.w = X, host_companion(model, y, "y"), host_companion(model, sample_weight, "sample_weight")
        self.start, self.stop = rows if rows is not None else (0, n)
        self.n_samples = self.stop - self.start
        if self.n_samples <= 0:
            raise ValueError(f"{name} has 0 samples; at least one is needed")
        self.slices = batch_slices(self.n_samples, batch_size)
        self.steps = len(self.slices)
        self.name = name

    def epoch(self, window: Window | None = None) -> Iterator[tuple[Any, Any, Any]]:
        """This epoch's batches, in order (the permutation is drawn now, in the calling thread).

        `window` keeps only those rows of each batch, so a data-parallel rank reads only its slice.
        """
        perm = self.model.shuffle_rng.permutation(self.n_samples) + self.start if self.shuffle else None
        parts = self.slices if window is None else [_within(part, window) for part in self.slices]

        def produce() -> Iterator[tuple[Any, Any, Any]]:
            for b, part in enumerate(parts):
                rows = slice(part.start + self.start, part.stop + self.start) if perm is None else perm[part]
                yield self.prepare(gather_rows(self.X, rows), _gather(self.y, rows), _gather(self.w, rows),
                                   f"batch {b + 1}")  # counted from 1, as every message counts

        return prefetched(produce(), self.depth)


class IterableBatches:
    """Batches from an iterable: re-iterated each epoch, or continued where it stopped if it is one-shot
    (or with `continues` and a `steps` limit).

    Args:
        data: a list or re-iterable of batches, or a one-shot iterator (a generator).
        prepare: the `BatchPreparer` every batch goes through.
        steps: batches per epoch; None runs until the iterable ends.
        prefetch: batches prepared ahead in a background thread (0: none).
        targets: batches are (X, y) / (X, y, sample_weight); False: X or (X, ...) whose first item is used
            (a tuple, or a list whose first item is a batch of X, as a torch DataLoader yields).
        name: the argument's name in error messages ("X", "validation_data").
        steps_name: the argument that set `steps`, named when the iterable runs out before them.
        continues: with `steps`, an epoch continues the pass of a re-iterable where the last one stopped, and a
            new pass starts once one has ended, as Keras's ``steps_per_epoch`` reads a dataset: every batch is
            trained on, where restarting each epoch would read only the first `steps` batches of every pass.
    """

    def __init__(self, data: Any, prepare: BatchPreparer, steps: int | None = None, prefetch: int = 1,
                 targets: bool = True, name: str = "X", steps_name: str = "steps", continues: bool = False) -> None:
        if getattr(data, "__iter__", None) is None and not is_batch_sequence(data):
            raise TypeError(f"{name} must be an array or an iterable of batches, got {type(data).__name__}")
        # an iterator (a generator) is its own; asking a re-iterable for one here would start a pass
        # (a seeded torch DataLoader draws from its generator on iter(), shifting every later shuffle)
        self.one_shot = isinstance(data, Iterator)
        self.data, self.prepare, self.depth, self.targets, self.name = data, prepare, prefetch, targets, name
        self.limit, self.steps_name = steps, steps_name
        self.steps = steps if steps is not None or self.one_shot else _length(data)
        self._epoch = 0
        self._last: int | None = None  # batches the previous epoch got
        # the pass of a re-iterable an epoch continues (`continues`), or None where the next epoch starts one
        self._pass: Iterator[Any] | None = None
        self._continues = continues and steps is not None and not self.one_shot

    def epoch(self) -> Iterator[tuple[Any, Any, Any]]:
        """This epoch's batches: the iterable afresh, or the one-shot iterator (or the pass it `continues`) from
        where it stopped."""
        epoch, last = self._epoch, self._last
        self._epoch += 1
        continued = self._continues and self._pass is not None
        self._hook("on_epoch_begin")
        source: Iterator[Any] = self.data if self.one_shot else _new_pass(self.data) if not continued else \
            cast(Iterator[Any], self._pass)
        if self._continues:
            self._pass = source
        if self.limit is not None:
            source = itertools.islice(source, self.limit)

        def produce() -> Iterator[tuple[Any, Any, Any]]:
            count = 0
            for count, item in enumerate(self._continued(source, continued), start=1):
                where = f"batch {count}" + (f" of {self.name}" if self.name != "X" else "")
                given = self._unpack(item, where)
                yield _detached(self.prepare.model, self.prepare(*given, where), given)
            self._last = count
            if self._continues and count < cast(int, self.limit):
                self._pass = None  # this pass has ended: the next epoch starts a new one
            if count == 0:
                raise ValueError(self._empty_message(epoch, last))

        return self._counted(prefetched(produce(), self.depth))

    def _continued(self, source: Iterator[Any], continued: bool) -> Iterator[Any]:
        """`source`; where it continues a pass that ended exactly with the last epoch (it yields nothing), a new
        pass instead."""
        first = next(source, _NOTHING)
        if first is _NOTHING and continued:
            self._pass = _new_pass(self.data)
            source = itertools.islice(self._pass, cast(int, self.limit))
            first = next(source, _NOTHING)
        if first is not _NOTHING:
            yield first
            yield from source

    def _counted(self, items: Generator[Any, None, None]) -> Iterator[Any]:
        """`items`, with a warning (in the consumer's thread) when they end before the `limit` asked for:
        a pass with fewer batches than `steps_per_epoch` says must not go unnoticed (Keras warns too)."""
        count = 0
        with contextlib.closing(items):  # closing this generator stops the prefetch thread at once
            for count, item in enumerate(items, start=1):  # noqa: B007 - count is read after the loop
                yield item
        self._hook("on_epoch_end")
        if self.limit is not None and count < self.limit:
            if self._continues:
                warnings.warn(f"{self.name} ran out after {count} of the {self.limit} batches {self.steps_name} "
                              "asks for (each epoch continues the pass where the last one stopped, as in Keras; "
                              f"the next starts a new pass); this epoch used {count}. Give an iterable whose "
                              f"batches per pass are a multiple of {self.steps_name}", UserWarning, stacklevel=2)
                return
            one_shot = " (a one-shot iterator continues where the last pass stopped)" if self.one_shot else ""
            warnings.warn(f"{self.name} ran out after {count} of the {self.limit} batches {self.steps_name} asks "
                          f"for{one_shot}; this pass used {count}. Give an iterable that holds at least "
                          f"{self.steps_name} batches per pass, or a smaller {self.steps_name}",
                          UserWarning, stacklevel=2)

    def _hook(self, name: str) -> None:
        """Call the re-iterable's own ``on_epoch_begin`` / ``on_epoch_end`` around each pass an epoch reads, as Keras
        calls a ``keras.utils.Sequence``'s or ``PyDataset``'s (which reshuffle their indices there); an iterator's
        are not called (a generator has none, and a one-shot iterator has no passes)."""
        hook = None if self.one_shot else getattr(self.data, name, None)
        if callable(hook):
            hook()

    def _unpack(self, item: Any, where: str) -> tuple[Any, Any, Any]:
        if not self.targets:
            return (item[0] if holds_inputs(self.prepare.model, item) else item), None, None
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            got = f"a tuple of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
            # fit((X, y)) or evaluate([X, y]), arrays in one argument, is read as an iterable of two batches
            shape = getattr(item, "shape", None)
            hint = "" if shape is None else (f" of shape {tuple(shape)}; arrays go in as two arguments, fit(X, y) or "
                                             "evaluate(X, y), and an iterable yields batches")
            raise TypeError(f"{where} must be a tuple (X, y) or (X, y, sample_weight), got {got}{hint}")
        return item[0], item[1], item[2] if len(item) == 3 else None

    def _empty_message(self, epoch: int, last: int | None) -> str:
        if self.one_shot and epoch > 0:
            return (f"{self.name} is a one-shot iterator (e.g. a generator) and is exhausted: it yielded no batches "
                    f"for pass {epoch + 1} (the pass before got {last}). Pass a re-iterable (a list of batches, or "
                    "an object whose __iter__ starts over), or a generator that never ends with steps_per_epoch= "
                    "(validation_steps= for validation_data)")
        if epoch > 0 and last:
            return (f"{self.name} yielded no batches for pass {epoch + 1} (the pass before got {last}): its "
                    "__iter__ must start over on every call, as a list's or a torch DataLoader's does")
        return f"{self.name} yielded no batches; at least one is needed"


def _length(data: Any) -> int | None:
    """``len(data)``, or None where it has none: a torch DataLoader over an IterableDataset has a ``__len__`` that
    raises TypeError, and its passes are read to their end, as a generator's."""
    try:
        return len(data)
    except TypeError:
        return None


_NOTHING = object()  # what `next` gives for an exhausted iterator in `IterableBatches._continued`


def _detached(model: Model, prepared: tuple[Any, Any, Any], given: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """A prepared batch that shares no memory with the arrays the iterable yielded (copies only of those that
    would): a generator may refill the same arrays for its next batch, which the prefetch thread asks for while
    the step still reads this one, and the epoch's metrics read every batch's targets at its end."""
    xp = model.xp
    return cast(tuple[Any, Any, Any], tuple(
        xp.asarray(a, copy=True) if a is not None and may_share_memory(a, g) else a
        for a, g in zip(prepared, given, strict=True)))


def _gather(data: Any, rows: Any) -> Any:
    return None if data is None else gather_rows(data, rows)


# -- prefetch ------------------------------------------------------------------------------------
POLL_S = 0.05  # how often a blocked producer or consumer looks whether the other side gave up
JOIN_S = 5.0  # how long closing waits for the producer to finish the batch it is preparing

_ITEM, _END, _ERROR = "item", "end", "error"


def prefetched(source: Iterator[Any], depth: int) -> Generator[Any, None, None]:
    """`source`'s items, produced up to `depth` ahead by a background thread (depth 0: in this thread).

    An exception in the producer is raised here with its own type; closing the
    returned generator (an error or Ctrl-C in the consumer, an early stop) stops
    the producer after the item it is working on.
    """
    if depth <= 0:
        yield from source
        return
    worker = _Prefetcher(source, depth)
    try:
        yield from worker.items()
    finally:
        worker.close()


class _Prefetcher:
    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nnx-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put((_ITEM, item)):
                    break
            else:
                self._put((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it with its own type
            self._put((_ERROR, exc))
        finally:
            close: Callable[[], None] | None = getattr(self._source, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: S110 - the consumer has the error that matters
                    pass

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def items(self) -> Iterator[Any]:
        while True:
            try:
                kind, value = self._queue.get(timeout=POLL_S)  # a timeout keeps Ctrl-C deliverable
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch prefetch thread ended without handing over a batch") from None
                continue
            if kind == _ITEM:
                yield value
            elif kind == _END:
                return
            else:
                raise value

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_S)
