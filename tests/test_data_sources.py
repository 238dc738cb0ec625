"""What fit, evaluate and predict accept as data beyond plain arrays, as PyTorch and Keras users pass it.

tests/test_out_of_core.py covers memmaps, generators, steps_per_epoch and iterables of (X, y) tuples; here: the
habits that fall between them (batches as lists, as a torch DataLoader yields them, a torch Dataset of samples,
an indexable object of batches), and the numbers History records from batches of unequal sizes.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback


def _model(backend="numpy", seed=3):
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype="float64", seed=seed)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float64)


def _as_lists(X, y, size):
    """Batches as a torch DataLoader yields them: lists [X, y]."""
    return [[X[i:i + size], y[i:i + size]] for i in range(0, X.shape[0], size)]


class _BatchLosses(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, batch, logs=None):
        self.seen.append((float(logs["loss"]), logs["size"]))


def test_epoch_loss_weighs_batches_of_unequal_sizes_by_their_rows():
    """A 5-row batch beside a 30-row one counts for 5 rows in History's loss, the last batch once (as Keras's
    epoch loss, a mean over the samples): the per-batch losses the callback saw, weighted by rows."""
    X, y = _data(35)
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 2.0, size=35)
    cuts = [0, 5, 35]
    batches = [(X[a:b], y[a:b], w[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    seen = _BatchLosses()
    history = _model().fit(batches, loss="bce", epochs=1, optimizer="sgd", lr=1e-3, callbacks=[seen])
    assert [s for _, s in seen.seen] == [5, 30]
    want = sum(v * s for v, s in seen.seen) / 35
    assert history["loss"][0] == pytest.approx(want, rel=1e-12)
    if "jax" in nnx.available_backends():  # without a callback, JAX runs the epoch as compiled chunks
        chunked = _model("jax").fit(batches, loss="bce", epochs=1, optimizer="sgd", lr=1e-3)
        assert chunked.execution_mode == "chunks"
        assert chunked["loss"][0] == pytest.approx(want, rel=1e-12)


def test_validation_data_as_a_short_list_of_list_batches_is_batches():
    """list(loader) of a torch DataLoader with 2 or 3 batches: [[X0, y0], [X1, y1]] is two batches, as fit and
    evaluate read it, not a pair (X_val=[X0, y0], y_val=[X1, y1]) refused as 'validation X must be an array'."""
    X, y = _data(60)
    kw = dict(loss="bce", epochs=1, batch_size=60, shuffle=False)
    want = _model().fit(X, y, validation_data=(X, y), **kw)["val_loss"]
    for size in (30, 20):  # two and three batches
        for data in (_as_lists(X, y, size), tuple(_as_lists(X, y, size))):
            got = _model().fit(X, y, validation_data=data, **kw)["val_loss"]
            np.testing.assert_allclose(got, want, rtol=1e-12)
    # a pair of arrays given as a list, and nested-list rows, are still arrays
    np.testing.assert_allclose(_model().fit(X, y, validation_data=[X, y], **kw)["val_loss"], want, rtol=1e-12)
    np.testing.assert_allclose(_model().fit(X, y, validation_data=(X.tolist(), y.tolist()), **kw)["val_loss"],
                               want, rtol=1e-12)


class SampleDataset:
    """A torch-style map-style dataset: one sample per index, `__len__`, no `__iter__` and no shape."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return self.X.shape[0]

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def test_a_dataset_of_samples_is_named_not_taken_for_an_array():
    """fit(TensorDataset(...)) said 'y is required when X is an array', predict(dataset) failed inside the cast
    (torch: AttributeError 'no attribute dtype'): the object is named, with a way to batch it that this model
    takes (a torch DataLoader yields torch tensors, which a NumPy model refuses: it used to be advised here)."""
    X, y = _data()
    ds, m = SampleDataset(X, y), _model()
    match = r"X is a SampleDataset, indexed by position .*yielding \(X, y\) batches as NumPy arrays \(.*only a model " \
            r"on backend='torch'"
    with pytest.raises(TypeError, match=match):
        m.fit(ds, loss="bce", epochs=1)
    with pytest.raises(TypeError, match=match):
        m.evaluate(ds)
    with pytest.raises(TypeError, match=match):
        m.predict(ds)
    with pytest.raises(TypeError, match=r"validation_data is a SampleDataset, indexed by position"):
        m.fit(X, y, validation_data=ds, loss="bce", epochs=1)


def test_a_torch_tensor_dataset_is_named_and_its_dataloader_trains():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    X, y = _data()
    ds = TensorDataset(torch.tensor(X), torch.tensor(y))
    m = _model("torch")
    for call in (lambda: m.fit(ds, loss="bce", epochs=1), lambda: m.predict(ds), lambda: m.evaluate(ds)):
        with pytest.raises(TypeError, match=r"X is a TensorDataset, indexed by position .*DataLoader\(dataset, "
                                            r"batch_size=\.\.\.\), which yields"):
            call()
    # the DataLoader's [X, y] lists train as the same (X, y) tuples, for fit, evaluate and predict alike
    want = _model("torch").fit([(X[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)], loss="bce", epochs=2)
    got = m.fit(DataLoader(ds, batch_size=16), loss="bce", epochs=2, validation_data=DataLoader(ds, batch_size=32))
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
    np.testing.assert_allclose(m.backend.to_host(m.predict(DataLoader(ds, batch_size=16))),
                               m.backend.to_host(m.predict(X)), rtol=0, atol=1e-12)
    assert m.evaluate(DataLoader(ds, batch_size=16))["loss"] == pytest.approx(got["val_loss"][-1], rel=1e-12)


class StreamLoader:
    """As a torch DataLoader over an IterableDataset: re-iterable, with a __len__ that raises TypeError."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        raise TypeError("object of type 'Stream' has no len()")


def test_a_loader_whose_len_raises_is_read_to_its_end():
    """A DataLoader over a torch IterableDataset has __len__, which raises TypeError: fit, evaluate, predict and
    validation_data failed with it before reading a batch; its passes are read until they end, as a generator's."""
    X, y = _data()
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)]
    m = _model()
    want = _model().fit(batches, loss="bce", epochs=2, validation_data=batches)
    got = m.fit(StreamLoader(batches), loss="bce", epochs=2, validation_data=StreamLoader(batches))
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
    np.testing.assert_allclose(got["val_loss"], want["val_loss"], rtol=1e-12)
    assert m.evaluate(StreamLoader(batches))["loss"] == pytest.approx(got["val_loss"][-1], rel=1e-12)
    np.testing.assert_allclose(m.predict(StreamLoader([b[0] for b in batches])), m.predict(X), rtol=0, atol=1e-12)


def test_arrays_given_in_one_argument_are_named():
    """fit((X, y)) or evaluate([X, y]), as a torch user holds a dataset, reads an iterable of two batches, X and
    y: the error says that arrays go in as two arguments."""
    X, y = _data()
    m = _model()
    for call in (lambda: m.fit((X, y), loss="bce"), lambda: m.fit([X, y], loss="bce"), lambda: m.evaluate([X, y])):
        with pytest.raises(TypeError, match=r"batch 1 must be a tuple \(X, y\).*got ndarray of shape \(40, 4\); "
                                             r"arrays go in as two arguments, fit\(X, y\)"):
            call()


def test_a_generator_function_passed_uncalled_is_named():
    """fit(gen) for fit(gen()): it was 'y is required when X is an array', evaluate's 'steps applies to an
    iterable of batches', predict's 'X must hold numbers, got dtype object'."""
    X, y = _data()

    def batches():
        while True:
            yield X[:8], y[:8]

    m = _model()
    match = r"is a function \(batches\), not data: pass what it returns, batches\(\)"
    for call in (lambda: m.fit(batches, loss="bce", steps_per_epoch=2), lambda: m.evaluate(batches, steps=2),
                 lambda: m.predict(batches), lambda: m.fit(X, y, validation_data=batches, validation_steps=1)):
        with pytest.raises(TypeError, match=match):
            call()
    assert len(m.fit(batches(), loss="bce", steps_per_epoch=2, epochs=2)["loss"]) == 2


class KerasStyleBatches:
    """A Keras ``Sequence`` / ``PyDataset`` written without Keras: ``__len__`` batches read by position, reshuffled
    in ``on_epoch_end``; slicing past the end gives empty batches, never an IndexError."""

    def __init__(self, X, y, size, iterable=False):
        self.X, self.y, self.size = X, y, size
        self.order = np.arange(X.shape[0])
        self.calls: list[str] = []
        if iterable:  # a Keras 2 Sequence also iterates over its items
            self.__class__ = type("IterableKerasStyleBatches", (KerasStyleBatches,),
                                  {"__iter__": lambda s: (s[i] for i in range(len(s)))})

    def __len__(self):
        return -(-self.X.shape[0] // self.size)

    def __getitem__(self, i):
        rows = self.order[i * self.size:(i + 1) * self.size]
        return self.X[rows], self.y[rows]

    def on_epoch_begin(self):
        self.calls.append("begin")

    def on_epoch_end(self):
        self.calls.append("end")
        self.order = np.random.default_rng(len(self.calls)).permutation(self.order)


@pytest.mark.parametrize("iterable", [False, True], ids=["read-by-position", "with-iter"])
def test_a_keras_style_sequence_trains_and_its_epoch_hooks_run_as_keras_calls_them(iterable):
    """A Keras Sequence's on_epoch_end (where it reshuffles) was never called, so every epoch read the first
    order, without a word; one without __iter__ was refused. Each pass now runs between on_epoch_begin and
    on_epoch_end, for training and validation alike, and equals training on the batches the hooks made."""
    X, y = _data(30)
    seq, val = KerasStyleBatches(X, y, 8, iterable), KerasStyleBatches(X[:10], y[:10], 5, iterable)
    seen = []

    class Orders(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([seq[i] for i in range(len(seq))])

    model = _model()
    history = model.fit(seq, loss="bce", epochs=3, optimizer="sgd", lr=0.1, validation_data=val,
                        callbacks=[Orders()])
    assert seq.calls == ["begin", "end"] * 3 and val.calls == ["begin", "end"] * 3
    assert len(history["val_loss"]) == 3
    assert not np.array_equal(seen[0][0][0], seen[1][0][0])  # the hook's reshuffle reached the next epoch
    twin = _model()  # plain SGD keeps no state between fits: one fit per epoch on the batches the hooks made
    for batches in seen:
        twin.fit(batches, loss="bce", epochs=1, optimizer="sgd", lr=0.1)
    assert np.array_equal(twin.predict(X), model.predict(X))
    assert np.array_equal(model.predict(KerasStyleBatches(X, y, 8, iterable)), model.predict(X))


@pytest.mark.parametrize("shuffle", [False, True], ids=["in order", "shuffled"])
@pytest.mark.parametrize("ranks, rank", [(2, 0), (2, 1), (3, 2), (7, 6), (9, 8)])
def test_a_ranks_window_of_each_batch_is_the_rows_slicing_gives(backend, shuffle, ranks, rank):
    """A data-parallel rank's rows of each batch (`ArrayBatches.epoch(window=...)`), cut in one operation with the
    other ranks' rows between them, are the rows that slicing the whole batch gives, including the empty share of
    a rank past a small last batch's rows and a window that ends at the last row."""
    from nnx.distributed import rank_rows
    from nnx.training.data import ArrayBatches

    host_X = np.arange(23 * 3, dtype=np.float64).reshape(23, 3)
    host_y, host_w = np.arange(23) % 2, np.linspace(0.5, 1.5, 23)
    model = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    source = ArrayBatches(model, backend.asarray(host_X), backend.asarray(host_y), backend.asarray(host_w),
                          batch_size=8, shuffle=shuffle)
    perm = copy.deepcopy(model.shuffle_rng).permutation(23) if shuffle else np.arange(23)  # the epoch's own draw

    def window(total):
        return slice(*rank_rows(total, rank, ranks))

    batches = list(source.epoch(window=window))
    assert len(batches) == 3
    for (Xb, yb, wb), start in zip(batches, (0, 8, 16), strict=True):
        total = min(8, 23 - start)
        rows = perm[start:start + total][window(total)]
        np.testing.assert_array_equal(backend.to_host(Xb), host_X[rows])
        np.testing.assert_array_equal(backend.to_host(yb), host_y[rows])
        np.testing.assert_array_equal(backend.to_host(wb), host_w[rows])
