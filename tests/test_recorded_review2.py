"""Second review of the recorded passes (`nnx.training.recorded`): a step that fails, and what a failed step leaves.
Each case runs as it runs and with the backend's `tape` switched off (the plain passes), and compares what the
model holds afterwards bit for bit, gradients included."""

from __future__ import annotations

import pytest
from test_recorded import Counts, _bits, _data

import nnx


@pytest.fixture
def recording_backend(backend):
    if backend.tape() is None:
        pytest.skip(f"{backend.name}'s arrays do not tell what is done to them: nothing is recorded")
    return backend


def _batchnorm(backend):
    return nnx.Sequential(nnx.Dense(6, 4), nnx.BatchNorm(4), nnx.ReLU(), nnx.Dense(4, 1), backend=backend,
                          dtype="float64", seed=3)


def _held(model):
    """Everything a user can read off the model after a fit: weights, buffers and each p.grad."""
    return ([_bits(p.value) for p in model.parameters()] + [_bits(b.value) for b in model.buffers()]
            + [None if p.grad is None else _bits(p.grad) for p in model.parameters()])


def _both(monkeypatch, backend, fits):
    """`fits(model)` -> list of outcomes, run with the recorded passes and with the plain ones."""
    results = []
    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(backend), "tape", lambda self: None)
            model = _batchnorm(backend)
            results.append(fits(model) + [_held(model)])
    return results


def _raises(fit):
    try:
        fit()
    except ValueError as exc:
        return str(exc)
    return None


def test_a_step_that_raises_leaves_the_gradients_the_plain_passes_leave(monkeypatch, recording_backend, rng):
    """The last batch holds one row, which BatchNorm refuses in training: the fit raises there, plainly and while
    the passes are recorded alike, and p.grad still holds the last step's gradients (the plain step raised in its
    forward, before its backward cleared them), not None."""
    X, y = _data(rng, 17, 6, 1, "binary")

    def fits(model):
        return [_raises(lambda: model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8,
                                          shuffle=False))]
    got, plain = _both(monkeypatch, recording_backend, fits)
    assert plain[0] is not None and "BatchNorm" in plain[0]
    assert got == plain


def test_a_later_fits_first_batch_that_raises_leaves_the_gradients(monkeypatch, recording_backend, rng):
    """A later fit whose first batch (one row) BatchNorm refuses: nothing recorded holds for it, so it runs plainly
    and raises; the gradients of the earlier fit's last step are still there, as plainly."""
    X, y = _data(rng, 16, 6, 1, "binary")

    def fits(model):
        model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=2, batch_size=8, shuffle=False)
        return [_raises(lambda: model.fit(X[:1], y[:1], epochs=1, batch_size=8))]
    got, plain = _both(monkeypatch, recording_backend, fits)
    assert plain[0] is not None and "BatchNorm" in plain[0]
    assert got == plain


def test_a_fit_that_raised_in_the_model_does_not_stop_later_fits_replaying(monkeypatch, recording_backend, rng):
    """The model's own error (a one-row BatchNorm batch) raised while the passes were recorded: that says nothing
    of whether they can be replayed, so the next fit, with a batch size that fits, replays them again."""
    X, y = _data(rng, 17, 6, 1, "binary")
    model = _batchnorm(recording_backend)
    with pytest.raises(ValueError, match="BatchNorm"):
        model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8, shuffle=False)
    counts = Counts(monkeypatch)
    model.fit(X[:16], y[:16], epochs=3, batch_size=8)
    assert counts.replayed >= 4


def test_a_recording_does_not_keep_parameter_arrays_the_model_let_go(recording_backend, rng):
    import gc
    import weakref

    X, y = _data(rng, 32, 6, 1, "binary")
    model = _batchnorm(recording_backend)
    model.fit(X, y, loss="bce_with_logits", epochs=2, batch_size=8)
    old = [weakref.ref(p.value) for p in model.parameters()]
    model.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    gc.collect()
    assert all(ref() is None for ref in old)
