"""Session 21 review of the losses, regularizers and the arguments of fit that shape what is trained on.

Each test compares with what a PyTorch or Keras user expects: torch.nn.functional's losses and autograd
for the numbers, Keras's documented rules for sample_weight, class_weight, validation_split and
steps_per_epoch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _to_numpy(a):
    try:
        return np.asarray(a)
    except Exception:  # noqa: BLE001 - a device array: through its backend
        return np.asarray(nnx.get_backend(a).to_host(a))


def _same_weights(a, b, tol):
    wa, wb = a.state_dict(), b.state_dict()
    for k in wa:
        np.testing.assert_allclose(_to_numpy(wb[k]), _to_numpy(wa[k]), rtol=0, atol=tol, err_msg=k)


class _SeenRows(Callback):
    """Counts the batches each epoch trained on."""

    def __init__(self):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


class _Loader:
    """A torch-DataLoader-like re-iterable with a len(): every iter() starts a new pass."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.passes += 1
        yield from self.batches


def _binary_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] - 0.5 * X[:, 2] > 0).astype(np.float64)
    return X, y


def _binary_model(backend, dtype):
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype=dtype, seed=7)


@pytest.mark.parametrize("make", [list, _Loader])
def test_steps_per_epoch_over_a_re_iterable_continues_the_pass_as_keras(backend, dtype, make):
    """Keras (tf.data, a torch DataLoader): with steps_per_epoch below the batches a pass holds, the next epoch
    continues where the last one stopped, so every batch is trained on; restarting each epoch trained on the
    first steps_per_epoch batches only and never saw the rest, without a word."""
    X, y = _binary_data()
    batches = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]  # 8 batches
    whole = _binary_model(backend, dtype)
    whole.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, batch_size=8, shuffle=False, epochs=2)
    parts, seen = _binary_model(backend, dtype), _SeenRows()
    source = make(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pass that holds whole epochs runs out of nothing
        history = parts.fit(source, loss="bce", optimizer="sgd", lr=0.1, epochs=8, steps_per_epoch=2,
                            callbacks=[seen])
    assert seen.per_epoch == [2] * 8 and len(history["loss"]) == 8
    if isinstance(source, _Loader):
        assert source.passes == 2
    _same_weights(whole, parts, 1e-12 if dtype == "float64" else 1e-5)


def test_steps_per_epoch_not_dividing_a_pass_ends_the_epoch_at_the_pass_end_with_a_warning():
    """A pass of 3 batches at steps_per_epoch=2: epoch 2 gets the third batch alone (and says so, as Keras
    warns), epoch 3 starts a new pass; the batches trained on are the pass's, in order."""
    X, y = _binary_data(24)
    batches = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]
    order = []

    class Tagged(_Loader):
        def __iter__(self):
            self.passes += 1
            for i, b in enumerate(self.batches):
                order.append(i)
                yield b

    m, seen = _binary_model("numpy", "float64"), _SeenRows()
    with pytest.warns(UserWarning, match=r"ran out after 1 of the 2 batches steps_per_epoch.*continues the pass"):
        m.fit(Tagged(batches), loss="bce", epochs=3, steps_per_epoch=2, callbacks=[seen], prefetch=False)
    assert seen.per_epoch == [2, 1, 2] and order == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("loss", [nnx.losses.CrossEntropy(from_logits=False), nnx.losses.BinaryCrossEntropy()])
def test_probability_losses_refuse_a_softplus_output_up_front(loss):
    """Softplus's outputs lie in (0, inf), not [0, 1]: a loss reading them as probabilities is refused before
    training, as after a Dense or a ReLU. Looking at the first batch let it through (softplus of small logits
    is about 0.7), and cross-entropy then pushed every output up without bound, its loss falling below 0."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 4)) * 0.1
    outputs = 3 if isinstance(loss, nnx.losses.CrossEntropy) else 1
    y = rng.integers(0, outputs if outputs > 1 else 2, 32).astype(np.float64)
    m = nnx.Sequential(nnx.Dense(4, outputs), nnx.Softplus(), seed=0)
    with pytest.raises(ValueError, match="ends in Softplus, whose outputs are not bounded to"):
        m.fit(X, y, loss=loss, epochs=1)
