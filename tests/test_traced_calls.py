"""fit, predict and evaluate inside the user's own jax.jit: refused by name, where model(X) runs there."""

from __future__ import annotations

import numpy as np
import pytest

import nnx

jax = pytest.importorskip("jax")


@pytest.mark.parametrize("name", ["predict", "unchecked predict", "evaluate", "fit"])
def test_predict_evaluate_and_fit_under_jit_say_to_call_the_model(name: str) -> None:
    # predict read X on the host for its finite check and failed with JAX's TracerArrayConversionError (with
    # check_finite=False, with "Cannot apply JAX transformations to a function lowered and compiled")
    model = nnx.Sequential(nnx.Dense(3, 2), backend="jax", dtype="float32", seed=0)
    X, y = np.ones((4, 3), dtype=np.float32), np.zeros((4, 2), dtype=np.float32)
    calls = {"predict": lambda x: model.predict(x), "unchecked predict": lambda x: model.predict(x, check_finite=False),
             "evaluate": lambda x: model.evaluate(x, y, loss="mse")["loss"],
             "fit": lambda x: model.fit(x, y, loss="mse", epochs=1, verbose=0).history["loss"][0]}
    with pytest.raises(TypeError, match=r"cannot run inside traced code.*call the model itself, model\(X\)"):
        jax.jit(calls[name])(X)
    # what the message says works, with the numbers predict gives outside
    np.testing.assert_allclose(np.asarray(jax.jit(lambda x: model(x))(X)), np.asarray(model.predict(X)), rtol=1e-6)
