"""Models of one definition share their compiled programs (JAX); a model that may hold constants does not."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import nnx
from nnx.training import shared_programs
from nnx.training.compiled import compiled_step_of
from nnx.training.epoch import epoch_program_of

pytest.importorskip("jax")


class Scaled(nnx.Layer):
    """A user's layer with a plain setting kept in an attribute; counts how often its forward runs."""

    calls = 0

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, X, training=False):
        type(self).calls += 1  # once per trace when compiled, once per call op by op
        return X * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor if need_dX else None


class Shifted(nnx.Layer):
    """A user's layer holding an array that is neither a parameter nor a buffer: a trace captures it."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift_by = shift
        self.shift = None

    def build(self, input_shape) -> None:
        self.shift = self.xp.full(input_shape, self.shift_by, dtype=self.backend.float_dtype(self.dtype),
                                  device=self.backend.device)

    def forward(self, X, training=False):
        return X + self.shift

    def backward(self, dY, need_dX=True):
        return dY if need_dX else None


def _data():
    """32 rows: four full batches of 8, so each fit compiles one step shape (a last, partial batch is another)."""
    gen = np.random.default_rng(3)
    X = gen.normal(size=(32, 4))
    return X, (X[:, 0] - X[:, 1] > 0).astype(float)


def _model(*middle, seed: int = 5) -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), *middle, nnx.Dropout(0.25), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend="jax", dtype="float64", seed=seed)


def _fit(model, epochs: int = 2):
    X, y = _data()
    return model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=epochs, batch_size=8, metrics=["accuracy"],
                     validation_data=(X[:10], y[:10]), verbose=0)


def _weights(model) -> dict:
    return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def test_a_model_of_the_same_definition_takes_the_programs_without_tracing():
    shared_programs.clear()
    first = _model(Scaled(2.0))
    first_history = _fit(first)
    traced = Scaled.calls
    second = _model(Scaled(2.0))
    second_history = _fit(second)
    assert Scaled.calls == traced  # nothing traced again: the epoch, validation and metrics programs were taken
    assert second_history.execution_mode == "epoch"
    np.testing.assert_array_equal(second_history["loss"], first_history["loss"])
    np.testing.assert_array_equal(second_history["val_accuracy"], first_history["val_accuracy"])
    for name, value in _weights(first).items():
        np.testing.assert_array_equal(_weights(second)[name], value, err_msg=name)
    # what tracing taught the first model's step, the second one's knows too
    assert compiled_step_of(second).traces == compiled_step_of(first).traces
    assert compiled_step_of(second).draws_per_step == compiled_step_of(first).draws_per_step == 1
    assert epoch_program_of(second).compiles == epoch_program_of(first).compiles


def test_a_layer_built_from_other_constructor_arguments_to_the_same_settings_takes_the_programs():
    """``BatchNorm()`` takes its width from the layer before; a loaded model's config says ``BatchNorm(6)``. Found in
    review: the arguments as given were part of the programs' key, so a loaded model traced everything again."""
    shared_programs.clear()
    _fit(_model(nnx.BatchNorm(), Scaled(2.0)))
    traced = Scaled.calls
    _fit(_model(nnx.BatchNorm(6), Scaled(2.0)))
    assert Scaled.calls == traced


def test_the_dropout_stream_goes_on_after_a_taken_program():
    """The masks a step draws are known without a trace: later epochs draw new masks, as the first model's do."""
    shared_programs.clear()
    first, second = _model(), _model()
    _fit(first)
    _fit(second)
    _fit(first, epochs=1)
    _fit(second, epochs=1)
    assert second.dropout_rng.counter == first.dropout_rng.counter > 0
    for name, value in _weights(first).items():
        np.testing.assert_array_equal(_weights(second)[name], value, err_msg=name)


def test_a_different_plain_setting_is_a_different_program():
    shared_programs.clear()
    X, _ = _data()
    _fit(_model(Scaled(2.0)))
    traced = Scaled.calls
    other = _model(Scaled(3.0))
    _fit(other)
    assert Scaled.calls > traced  # its own trace
    on_numpy = other.to("numpy")
    np.testing.assert_allclose(other.backend.to_host(other.predict(X)), on_numpy.predict(X), rtol=1e-12)


def test_models_clipped_differently_compile_programs_of_their_own():
    """Found by mutation testing: with the gradient transforms left out of the shared programs' key, a model
    clipped at another norm took the first one's program (2.7 off the plain loop); only a torch comparison
    caught that, by chance. Each fit here equals the plain loop's."""
    shared_programs.clear()
    X, y = _data()
    for clip in (0.05, 5.0):
        fits = []
        for fast in (True, False):
            model = nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), dtype="float64",
                                   seed=5, backend=nnx.get_backend("jax").with_fastpath(fast))
            model.fit(X, y, loss="bce", optimizer="sgd", lr=0.5, epochs=2, batch_size=8, clip_norm=clip)
            fits.append(_weights(model))
        for name, value in fits[1].items():
            np.testing.assert_allclose(fits[0][name], value, rtol=1e-12, atol=1e-14, err_msg=f"{name} at {clip}")


def test_a_layer_holding_an_array_keeps_its_programs_to_itself():
    shared_programs.clear()
    X, _ = _data()
    models = [_model(Shifted(shift)) for shift in (0.0, 1.5)]
    assert all(shared_programs.definition(m) is None for m in models)
    for m in models:
        _fit(m, epochs=1)
        expected = m.to("numpy").predict(X)
        np.testing.assert_allclose(m.backend.to_host(m.predict(X)), expected, rtol=1e-12)


def test_a_user_model_class_is_another_definition_and_another_seed_is_not():
    class MyModel(nnx.Sequential):
        """A model class of the user's own may keep anything in its attributes."""

    assert shared_programs.definition(MyModel(nnx.Dense(4, 1), backend="jax")) is None
    assert shared_programs.definition(_model(Scaled(2.0))) == shared_programs.definition(_model(Scaled(2.0)))
    # the dropout stream's seed is an input of the programs, not a constant
    assert shared_programs.definition(_model(Scaled(2.0))) == shared_programs.definition(_model(Scaled(2.0), seed=6))


@pytest.mark.parametrize("callbacks", [[], [nnx.callbacks.TerminateOnNaN()]], ids=["epoch", "step"])
def test_models_of_other_seeds_take_the_programs_and_draw_their_own_masks(callbacks):
    """A cross-validation's or a seed sweep's models compile once, not once per seed (a program is megabytes)."""
    shared_programs.clear()
    X, y = _data()

    def fit(seed, fast=True):
        model = nnx.Sequential(nnx.Dense(4, 6), Scaled(2.0), nnx.Dropout(0.25), nnx.Dense(6, 1), nnx.Sigmoid(),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=seed)
        model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
        return _weights(model)

    first = fit(5)
    traced, programs = Scaled.calls, len(shared_programs._TABLE)
    others = {seed: fit(seed) for seed in (6,)}
    assert Scaled.calls == traced and len(shared_programs._TABLE) == programs
    for seed, weights in others.items():  # each model's own masks, as op by op
        plain = fit(seed, fast=False)
        assert not np.allclose(weights["0.weight"], first["0.weight"])
        for name, value in plain.items():
            np.testing.assert_allclose(weights[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


def test_a_shared_program_does_not_keep_its_first_model_alive():
    shared_programs.clear()
    first = _model(Scaled(2.0))
    _fit(first, epochs=1)
    traced = Scaled.calls
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None
    _fit(_model(Scaled(2.0)), epochs=1)
    assert Scaled.calls == traced  # the program outlived the model it was traced from


class ScaledMSE(nnx.losses.MSE):
    """A user's loss with a constant its config does not name."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def rows(self, xp, y_true, y_pred):
        losses, grad = super().rows(xp, y_true, y_pred)
        return losses * self.scale, grad * self.scale


def test_losses_that_differ_outside_their_config_are_evaluated_each_with_its_own():
    shared_programs.clear()
    X, y = _data()
    model = _model()
    values = [model.evaluate(X, y, loss=ScaledMSE(scale))["loss"] for scale in (1.0, 3.0)]
    assert values[1] == pytest.approx(3 * values[0], rel=1e-12)


def test_programs_compiled_under_other_xla_options_are_not_taken(monkeypatch):
    from nnx.backends import jax as jax_adapter

    shared_programs.clear()
    _fit(_model(Scaled(2.0)), epochs=1)
    traced = Scaled.calls
    monkeypatch.setitem(jax_adapter.COMPILER_OPTIONS, "xla_cpu_enable_fast_min_max", False)
    _fit(_model(Scaled(2.0)), epochs=1)
    assert Scaled.calls > traced


def test_many_input_shapes_each_trace_once_and_give_the_op_by_op_numbers():
    shared_programs.clear()
    X, _ = _data()
    model = _model(Scaled(2.0))
    sizes = range(1, 2 * shared_programs.RECENT + 2)
    first = [model.backend.to_host(model.predict(X[:n])) for n in sizes]
    traced = Scaled.calls
    again = [model.backend.to_host(model.predict(X[:n])) for n in reversed(sizes)]
    assert Scaled.calls == traced  # an older shape is looked up, not traced again
    on_numpy = model.to("numpy")
    for n, a, b in zip(sizes, first, reversed(again), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, on_numpy.predict(X[:n]), rtol=1e-12)


def test_the_settings_watch_reads_what_layer_settings_reads_after_every_kind_of_change():
    """JAX's compiled step asks for the layers' settings every step through a `SettingsWatch`, which compares
    plain values in place instead of describing every attribute: it must see each change `layer_settings` sees."""
    model = nnx.Sequential(nnx.Dense(3, 4), Scaled(2.0), nnx.Dropout(0.1), nnx.Dense(4, 1), backend="jax")
    watch = shared_programs.SettingsWatch()
    first = watch.current(model)
    assert first == shared_programs.layer_settings(model)
    changes = [
        lambda: setattr(model.layers[1], "factor", 3.0),  # a float
        lambda: setattr(model.layers[2], "rate", 0.0),
        lambda: setattr(model.layers[1], "factor", 3),  # the same number as an int
        lambda: setattr(model.layers[1], "extra", "added"),  # an attribute added
        lambda: setattr(model.layers[1], "sizes", [1, 2]),  # a list, then changed in place
        lambda: model.layers[1].sizes.append(3),
        lambda: delattr(model.layers[1], "sizes"),
        lambda: setattr(model.layers[1], "factor", float("nan")),
    ]
    seen = [first]
    for change in changes:
        change()
        assert watch.current(model) == shared_programs.layer_settings(model)
        seen.append(watch.current(model))
    assert all(repr(a) != repr(b) for a, b in zip(seen[:-1], seen[1:], strict=True))  # each change was seen


def test_a_live_models_programs_are_bounded_and_it_trains_the_same(monkeypatch):
    """Found in review: each SharedProgram kept every program it compiled (one per input signature) and each model
    an epoch program per batch size, as long as it lived: a server predicting on ever new row counts grew 1.8 MiB a
    size, a notebook fitting with ever new batch sizes 4.3 MiB. Both now drop the least recently used, and a layout
    dropped is compiled again (or taken from the table) with the same numbers."""
    monkeypatch.setattr(shared_programs, "OWN_PROGRAMS", 3)
    gc.collect()
    before = {id(p) for p in gc.get_objects() if type(p) is shared_programs.SharedProgram}  # (other tests' models)
    monkeypatch.setattr(nnx.training.epoch, "MAX_LAYOUTS", 2)
    X, y = _data()
    model, again = _model(), _model()
    for batch_size in (8, 5, 7, 8):
        model.fit(X, y, loss="bce", optimizer="adam", epochs=1, batch_size=batch_size, verbose=0)
    for batch_size in (8, 5, 7, 8):
        again.fit(X, y, loss="bce", optimizer="adam", epochs=1, batch_size=batch_size, verbose=0)
    assert len(epoch_program_of(model)._programs) == 2
    for rows in range(1, 9):
        model.predict(X[:rows])
    held = [p for p in gc.get_objects() if type(p) is shared_programs.SharedProgram and id(p) not in before]
    assert held and max(len(p._programs) for p in held) <= 3
    shared_programs.clear()  # the table's programs too: the first layout is compiled again
    fresh = _model()
    for batch_size in (8, 5, 7, 8):
        fresh.fit(X, y, loss="bce", optimizer="adam", epochs=1, batch_size=batch_size, verbose=0)
    np.testing.assert_allclose(np.asarray(model.predict(X[:6])), np.asarray(fresh.predict(X[:6])), rtol=0, atol=0)
    for key, value in _weights(model).items():
        np.testing.assert_array_equal(value, _weights(again)[key], err_msg=key)
        np.testing.assert_array_equal(value, _weights(fresh)[key], err_msg=key)


def test_a_layout_dropped_and_taken_again_from_the_table_counts_no_trace(monkeypatch):
    """Found in review of e557858: a program a model had dropped and took back from the table added its trace counts
    again, so `compiles` (documented as the traces) counted 24 where 14 programs were traced."""
    monkeypatch.setattr(nnx.training.epoch, "MAX_LAYOUTS", 2)
    X, y = _data()
    model = _model()
    for batch_size in (8, 5, 7) * 2:
        model.fit(X, y, loss="bce", optimizer="adam", epochs=1, batch_size=batch_size, verbose=0)
    assert epoch_program_of(model).compiles == 3
