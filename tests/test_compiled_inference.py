"""predict, evaluate and validation as compiled programs on JAX: the op-by-op numbers, one trace per shape,
the weights as inputs (never constants), and op by op wherever the compiler cannot take the model."""

from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
from test_container_differential import ContLazyTable  # makes its table at its first call
from test_jax_differential import _scale_by_closure  # a layer class reading a closure variable

import nnx
from nnx.training import compiled_inference

pytest.importorskip("jax")


def _data(rows=32, features=5, classes=3):  # two batches of 16: one batch shape to compile
    gen = np.random.default_rng(0)
    X = gen.normal(size=(rows, features))
    return X, gen.integers(0, classes, size=rows), gen.uniform(0.5, 2.0, size=rows)


def _model(backend, dtype="float64"):
    return nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.Tanh(), nnx.Dropout(0.3), nnx.Dense(8, 3),
                          nnx.Softmax(), backend=backend, dtype=dtype, seed=3, regularizer=nnx.regularizers.L2(1e-2))


def _programs(model):
    held = compiled_inference._PROGRAMS.get(model)
    return {} if held is None else held[1]


def _op_by_op_copy(model):
    """The same model with the same weights and buffers, on JAX run op by op."""
    reference = nnx.Sequential.from_config(model.get_config(), backend=nnx.get_backend("jax").with_fastpath(False))
    reference.load_state_dict(model.state_dict())
    return reference


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_compiled_inference_gives_the_op_by_op_numbers(dtype, rtol):
    X, y, w = _data()
    model = _model("jax", dtype)
    history = model.fit(X, y, loss="cross_entropy", optimizer="adam", lr=0.05, epochs=1, batch_size=16,
                        metrics=["accuracy"], validation_data=(X[:16], y[:16]), verbose=0)
    reference = _op_by_op_copy(model)

    def batches(with_weights):
        return [(X[i:i + 16], y[i:i + 16]) + ((w[i:i + 16],) if with_weights else ()) for i in range(0, len(X), 16)]

    for m in (model, reference):
        assert m.backend.fastpath_enabled == (m is model)
    for kwargs in ({"X": X, "y": y, "sample_weight": w, "batch_size": 16}, {"X": X, "y": y},
                   {"X": batches(True)}, {"X": batches(False)}):
        got, want = (m.evaluate(loss="cross_entropy", metrics=["accuracy"], **kwargs) for m in (model, reference))
        assert got["loss"] == pytest.approx(want["loss"], rel=rtol) and got["accuracy"] == want["accuracy"]
    # the last epoch's validation ran on these weights, in the program evaluate uses
    assert history["val_loss"][-1] == model.evaluate(X[:16], y[:16], loss="cross_entropy")["loss"]
    assert history["val_loss"][-1] == pytest.approx(reference.evaluate(X[:16], y[:16], loss="cross_entropy")["loss"],
                                                    rel=rtol)
    for got, want in ((model.predict(X, batch_size=16), reference.predict(X, batch_size=16)),
                      (model.predict(batches(False)), reference.predict(batches(False)))):
        np.testing.assert_allclose(model.backend.to_host(got), reference.backend.to_host(want), rtol=rtol,
                                   atol=rtol)
    assert _programs(model) and not _programs(reference)


def test_one_trace_per_shape_and_the_weights_are_inputs():
    X, y, _ = _data()
    model = _model("jax")
    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=16, verbose=0)
    first = model.evaluate(X, y, loss="cross_entropy")["loss"]
    program = _programs(model)[next(k for k in _programs(model) if k[0] == "evaluate")]
    assert program.traces == 1
    assert model.evaluate(X, y, loss="cross_entropy")["loss"] == first and program.traces == 1  # no new trace
    model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=16, verbose=0)  # new weights, same program
    after = model.evaluate(X, y, loss="cross_entropy")["loss"]
    assert after != first and program.traces == 1
    assert after == pytest.approx(_op_by_op_copy(model).evaluate(X, y, loss="cross_entropy")["loss"], rel=1e-12)
    model.predict(X)
    outputs = _programs(model)[("outputs", len(model.layers))]
    model.predict(X[:7])
    assert outputs.traces == 2  # a new shape traces once more


def test_a_replaced_forward_runs_at_every_call():
    X, y, _ = _data()
    model = _model("jax")
    dense = model.layers[0]
    calls = []
    plain = dense.forward
    dense.forward = lambda X, training=False: calls.append(training) or plain(X, training)
    model.predict(X)
    model.predict(X)
    assert calls == [False, False]
    assert not _programs(model)


def test_a_users_layer_setting_changed_after_predict_is_used():
    """Found by mutation testing: no test changed a user's layer setting between two predicts, so a program key
    without the layers' settings (the first program kept serving: 1.0 where 2.5 is right) went unseen."""
    from test_derived_user_code import ScaledBySetting

    X, _, _ = _data()
    model = nnx.Sequential(nnx.Dense(5, 3), ScaledBySetting(2.0), backend="jax", dtype="float64", seed=0)
    first = np.asarray(model.predict(X))
    model.layers[1].scale = 5.0
    np.testing.assert_allclose(np.asarray(model.predict(X)), 2.5 * first, rtol=1e-12)
    reference = _op_by_op_copy(model)
    reference.layers[1].scale = 5.0  # (a user's layer's config holds its constructor's arguments: custom_layers.md)
    np.testing.assert_allclose(np.asarray(model.predict(X)), np.asarray(reference.predict(X)), rtol=1e-12)


class Concrete(nnx.Layer):
    """A user's layer whose forward needs concrete values (a Python float of the data)."""

    def forward(self, X, training=False):
        return X * float(self.xp.max(X))

    def backward(self, dY, need_dX=True):
        raise NotImplementedError


def test_a_layer_that_needs_concrete_values_runs_op_by_op():
    X, y, _ = _data()
    model = nnx.Sequential(nnx.Dense(5, 3), Concrete(), backend="jax", dtype="float64", seed=0)
    reference = nnx.Sequential(nnx.Dense(5, 3), Concrete(), backend=nnx.get_backend("jax").with_fastpath(False),
                               dtype="float64", seed=0)
    for _ in range(2):  # the failed trace is not tried again
        got = model.backend.to_host(model.predict(X))
        np.testing.assert_array_equal(got, reference.backend.to_host(reference.predict(X)))
    assert all(program is None for program in _programs(model).values())


def test_the_programs_do_not_keep_the_model_alive():
    X, y, _ = _data()
    model = _model("jax")
    model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy"])
    assert _programs(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


class NoisyAtInference(nnx.Layer):
    """A user's layer that draws from the model's stream at inference too (Monte Carlo dropout)."""

    def forward(self, X, training=False):
        return X * (self.rng.uniform(tuple(X.shape), self.dtype) < 0.5)

    def backward(self, dY, need_dX=True):
        return dY


def test_a_pass_that_draws_random_numbers_draws_fresh_ones_each_call_as_op_by_op():
    X, _, _ = _data()
    outputs = {}
    for fast in (True, False):
        for seed in (1, 2):
            model = nnx.Sequential(nnx.Dense(5, 3), NoisyAtInference(), dtype="float64", seed=seed,
                                   backend=nnx.get_backend("jax").with_fastpath(fast))
            calls = [np.asarray(model.backend.to_host(model.predict(X))) for _ in range(2)]
            outputs[fast, seed] = calls, model.dropout_rng.counter
    for seed in (1, 2):
        (compiled, counter), (op_by_op, expected) = outputs[True, seed], outputs[False, seed]
        assert counter == expected == 2
        for a, b in zip(compiled, op_by_op, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        assert not np.array_equal(compiled[0] != 0, compiled[1] != 0)  # a fresh mask each call


class TracksInference(nnx.Layer):
    """A user's layer that keeps, at inference, the largest input seen (a buffer) and how many batches it saw."""

    def build(self, input_shape):
        self.peak = self.add_buffer("peak", ())

    def forward(self, X, training=False):
        if not training:
            self.peak.value = self.xp.maximum(self.peak.value, self.xp.max(X))
            self.batches = getattr(self, "batches", 0) + 1
        return X

    def backward(self, dY, need_dX=True):
        return dY


def test_a_pass_that_updates_a_buffer_or_python_state_keeps_it_as_op_by_op():
    X, _, _ = _data()
    kept = {}
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(5, 3), TracksInference(), dtype="float64", seed=0,
                               backend=nnx.get_backend("jax").with_fastpath(fast))
        outputs = [np.asarray(model.backend.to_host(model.predict(X * scale))) for scale in (1.0, 3.0, 1.0)]
        kept[fast] = outputs, float(model.buffers()[0].value), model.layers[1].batches
    (compiled, peak, batches), (op_by_op, expected_peak, expected_batches) = kept[True], kept[False]
    assert peak == pytest.approx(expected_peak, rel=1e-12) and peak > 0
    assert batches == expected_batches == 3
    for a, b in zip(compiled, op_by_op, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


class Above:
    """A user's metric object with a setting changed between two evaluations."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, xp, y, Z, from_logits=False):
        return xp.mean(xp.astype(Z > self.threshold, Z.dtype))


def test_a_metric_objects_setting_changed_between_evaluations_is_used():
    X, y, _ = _data()
    results = {}
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(5, 1), dtype="float64", seed=0,
                               backend=nnx.get_backend("jax").with_fastpath(fast))
        metric = Above(0.0)
        first = model.evaluate(X, y, loss="mse", metrics=[("above", metric)])["above"]
        metric.threshold = 1e9
        results[fast] = first, model.evaluate(X, y, loss="mse", metrics=[("above", metric)])["above"]
    assert results[True] == results[False]
    assert results[False][1] == 0.0 < results[False][0]


_FORWARDS: list[int] = []


class CountedTanh(nnx.Tanh):
    """Tanh that notes every run of its forward (outside the layer: a changed attribute would run op by op)."""

    def forward(self, X, training=False):
        _FORWARDS.append(int(X.shape[0]))
        return super().forward(X, training)


def test_evaluate_in_batches_traces_one_forward_per_batch_shape():
    """evaluate(X, y, batch_size=b) traced one forward per batch into one program: on 6,400 rows with
    batch_size=32 (as Keras users call it) a 200-fold unrolled program, 8 s of compiling a tiny model."""
    X, y, w = _data(rows=41)
    model = nnx.Sequential(nnx.Dense(5, 8), CountedTanh(), nnx.Dense(8, 3), backend="jax", dtype="float64", seed=0)
    reference = _op_by_op_copy(model)
    _FORWARDS.clear()
    got = model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy"], sample_weight=w, batch_size=4)
    assert sorted(set(_FORWARDS)) == [1, 4] and len(_FORWARDS) <= 3  # each batch shape traced once (and checked)
    want = reference.evaluate(X, y, loss="cross_entropy", metrics=["accuracy"], sample_weight=w, batch_size=4)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12) and got["accuracy"] == want["accuracy"]
    whole = model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy"], sample_weight=w)
    assert got["loss"] == pytest.approx(whole["loss"], rel=1e-12) and got["accuracy"] == whole["accuracy"]


# -- settings outside a layer changed between two predicts (found by mutation testing) -----------------------------

class Mut4FrozenScale(nnx.Layer):
    """Scales by the largest value of a frozenset kept as a class attribute."""

    SCALES = frozenset({2.0})

    def forward(self, X, training=False):
        return X * max(self.SCALES)

    def backward(self, dY, need_dX=True):
        return dY * max(self.SCALES)


class Mut4SignedScale(nnx.Layer):
    """Multiplies by the sign of a class attribute (``copysign``: 0.0 gives +1, -0.0 gives -1)."""

    ZERO = 0.0

    def forward(self, X, training=False):
        xp = self.xp
        return X * xp.copysign(xp.ones_like(X), xp.asarray(self.ZERO, dtype=X.dtype))

    def backward(self, dY, need_dX=True):
        raise NotImplementedError


LAMBDA_SCALE = 2.0  # a module global `Mut4LambdaScaled` reads only inside a lambda


class Mut4LambdaScaled(nnx.Layer):
    """Scales by a module global read only inside a lambda of its forward (a code object nested in forward's)."""

    def forward(self, X, training=False):
        scaled = lambda: LAMBDA_SCALE  # noqa: E731
        return X * scaled()

    def backward(self, dY, need_dX=True):  # (predict only: a read here would be watched on its own)
        raise NotImplementedError


@pytest.mark.parametrize("kind", ["frozenset", "negative zero", "closure", "global in a lambda"])
def test_a_setting_outside_the_layer_changed_between_predicts_is_used(kind, monkeypatch):
    """Found by mutation testing: a class attribute holding a frozenset, a float class attribute going from 0.0 to
    -0.0 (equal, but not the same setting), a closure variable of the function that made the layer's class, and a
    module global read only inside a lambda were each unwatched or told apart too coarsely: the second predict on JAX
    reused the first program and gave the first setting's numbers."""
    closure_scaled, set_closure_scale = _scale_by_closure()  # its own variable, 1.0 at first
    layer, change, ratio = {
        "frozenset": (Mut4FrozenScale, lambda: monkeypatch.setattr(Mut4FrozenScale, "SCALES", frozenset({3.0})), 1.5),
        "negative zero": (Mut4SignedScale, lambda: monkeypatch.setattr(Mut4SignedScale, "ZERO", -0.0), -1.0),
        "closure": (closure_scaled, lambda: set_closure_scale(1.5), 1.5),
        "global in a lambda": (Mut4LambdaScaled,
                               lambda: monkeypatch.setattr(sys.modules[__name__], "LAMBDA_SCALE", 3.0), 1.5),
    }[kind]
    X, _, _ = _data()
    model = nnx.Sequential(nnx.Dense(5, 3), layer(), backend="jax", dtype="float64", seed=0)
    first = np.asarray(model.predict(X))
    change()
    np.testing.assert_allclose(np.asarray(model.predict(X)), ratio * first, rtol=1e-12)
    assert _programs(model)  # compiled, not op by op


ABOVE_THRESHOLD = 0.0  # a module global `_above_threshold` reads


def _above_threshold(xp, y, Z, from_logits=False):
    """A user's metric function reading a module global."""
    return xp.mean(xp.astype(Z > ABOVE_THRESHOLD, Z.dtype))


def test_a_global_a_metric_function_reads_changed_between_evaluations_is_used(monkeypatch):
    """Found by mutation testing: the module globals a user's metric function reads were not among the settings of
    the evaluate program, so a threshold changed between two evaluations on JAX kept scoring with the first one."""
    X, y, _ = _data()
    results = {}
    for fast in (True, False):
        monkeypatch.setattr(sys.modules[__name__], "ABOVE_THRESHOLD", 0.0)
        model = nnx.Sequential(nnx.Dense(5, 1), dtype="float64", seed=0,
                               backend=nnx.get_backend("jax").with_fastpath(fast))
        first = model.evaluate(X, y, loss="mse", metrics=[("above", _above_threshold)])["above"]
        monkeypatch.setattr(sys.modules[__name__], "ABOVE_THRESHOLD", 1e9)
        results[fast] = first, model.evaluate(X, y, loss="mse", metrics=[("above", _above_threshold)])["above"]
    assert results[True] == results[False]
    assert results[False][1] == 0.0 < results[False][0]


class Mut4HeldMask(nnx.Layer):
    """Multiplies by a NumPy mask it holds (neither a parameter nor a buffer)."""

    def __init__(self):
        super().__init__()
        self.mask = np.ones(3)

    def forward(self, X, training=False):
        return X * self.backend.asarray(self.mask, dtype=X.dtype)

    def backward(self, dY, need_dX=True):
        return dY * self.backend.asarray(self.mask, dtype=dY.dtype)


def test_a_held_array_rebound_then_written_in_place_between_predicts_is_used():
    """Found by mutation testing: with the check for a held array the layer rebinds off, the program traced for the
    first mask kept serving, and the predicts on JAX after the mask was rebound (or then written in place) gave the
    first mask's numbers."""
    X, _, _ = _data()
    model = nnx.Sequential(nnx.Dense(5, 3), Mut4HeldMask(), backend="jax", dtype="float64", seed=0)
    first = np.asarray(model.predict(X))
    model.layers[1].mask = np.full(3, 2.0)  # rebound
    np.testing.assert_allclose(np.asarray(model.predict(X)), 2.0 * first, rtol=1e-12)
    model.layers[1].mask[...] = 3.0  # written in place
    np.testing.assert_allclose(np.asarray(model.predict(X)), 3.0 * first, rtol=1e-12)


def test_a_table_a_layer_makes_at_its_first_call_then_set_by_the_user_is_used():
    """Found by mutation testing: the program took the ``is None`` branch of its trace; a table the user set there
    afterwards was read by the op-by-op pass but the program kept making its ones (2.0 times off)."""
    X, _, _ = _data()
    model = nnx.Sequential(nnx.Dense(5, 3), ContLazyTable(), backend="jax", dtype="float64", seed=0)
    first = np.asarray(model.predict(X))
    model.layers[1].table = model.backend.asarray(np.full(3, 2.0))
    np.testing.assert_allclose(np.asarray(model.predict(X)), 2.0 * first, rtol=1e-12)
