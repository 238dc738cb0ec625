"""predict refuses NaN and inf in its input as evaluate does, and the same flag turns the check off."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


def _model(backend, dtype):
    return nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2), backend=backend, dtype=dtype, seed=0)


# with the check off, inf reaches the matmul on purpose and NumPy says "invalid value" about it
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_predict_refuses_non_finite_input_with_the_flag_to_turn_it_off(backend, dtype, rng, bad):
    model = _model(backend, dtype)
    X = rng.standard_normal((10, 3))
    X[4, 1] = bad
    for call in (lambda **kw: model.predict(X, **kw), lambda **kw: model.predict(X, batch_size=3, **kw),
                 lambda **kw: model.evaluate(X, np.zeros((10, 2)), loss="mse", **kw)):
        with pytest.raises(ValueError, match="X contains NaN or inf"):
            call()
        call(check_finite=False)  # the caller's choice: no check, the outputs follow the input
    out = model.backend.to_host(model.predict(X, check_finite=False))
    assert not np.isfinite(out[4]).all() and np.isfinite(np.delete(out, 4, axis=0)).all()


def test_predict_checks_every_batch_read_one_by_one(backend, dtype, rng):
    model = _model(backend, dtype)
    good, bad = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="X of batch 2 contains NaN or inf"):
        model.predict([good, bad], prefetch=False)
    assert model.predict([good, bad], prefetch=False, check_finite=False).shape == (8, 2)
