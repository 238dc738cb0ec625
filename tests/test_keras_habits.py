"""The Model API as a Keras user drives it: Keras's argument orders, names and habits either work as in Keras or
fail with an error that says what nnx takes, never a silent non-result or an error about something else."""

import os

import numpy as np
import pytest

import nnx


def _data():
    X = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    return X, (X[:, 0] > 0).astype("float32")


def _model(seed=0):
    return nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 1), nnx.Sigmoid(), seed=seed)


def test_keras_positional_batch_size_and_epochs_are_named_as_the_mistake():
    # Keras: fit(x, y, batch_size, epochs) and evaluate(x, y, batch_size); nnx's third argument is the loss
    X, y = _data()
    model = _model()
    with pytest.raises(TypeError, match="batch_size"):
        model.fit(X, y, 32, 10)
    with pytest.raises(TypeError, match="batch_size"):
        model.evaluate(X, y, 32)
    assert model.epochs_trained == 0 and model.optimizer is None


def test_predict_with_keras_positional_verbose_is_refused_not_read_as_steps():
    # Keras: predict(x, batch_size, verbose); read as steps=1, an iterable of batches gave its first batch only
    X, _ = _data()
    model = _model()
    with pytest.raises(TypeError):
        model.predict([X[:4], X[4:8], X[8:]], 4, 1)
    with pytest.raises(TypeError):
        model.predict(X, 4, 0)
    assert model.predict([X[:4], X[4:8], X[8:]], 4).shape == (12, 1)
    assert model.predict([X[:4], X[4:8], X[8:]], steps=2).shape == (8, 1)


def test_keras_only_keywords_raise_rather_than_being_ignored():
    X, y = _data()
    model = _model()
    for kwargs in ({"initial_epoch": 1}, {"workers": 2}, {"use_multiprocessing": True}, {"x": X}):
        with pytest.raises(TypeError, match=next(iter(kwargs))):
            model.fit(**({"X": X} if "x" not in kwargs else {}), y=y, **kwargs)
    with pytest.raises(TypeError, match="verbose"):
        model.predict(X, verbose=0)
    with pytest.raises(TypeError, match="return_dict"):
        model.evaluate(X, y, return_dict=True)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(X, y, steps_per_epoch=2)
    assert model.epochs_trained == 0


def test_history_and_epochs_zero_as_keras_keeps_them():
    X, y = _data()
    model = _model()
    assert model.fit(X, y, epochs=2).epoch == [0, 1]
    again = model.fit(X, y, epochs=1, validation_split=0.25)
    assert again.epoch == [2] and sorted(again.history) == ["loss", "val_loss"] and model.history is again
    none = model.fit(X, y, epochs=0)
    assert none.epoch == [] and none.history == {} and model.epochs_trained == 3


def test_state_dict_is_a_copy_and_load_state_dict_copies_in():
    model = _model()
    before = model.predict(np.ones((1, 3), "float32"))
    state = model.state_dict()
    state["0.weight"][...] = 7.0
    np.testing.assert_array_equal(model.predict(np.ones((1, 3), "float32")), before)
    other = _model(seed=1)
    given = {k: np.array(v) for k, v in _model().state_dict().items()}
    other.load_state_dict(given)
    given["0.weight"][...] = 7.0
    np.testing.assert_array_equal(other.predict(np.ones((1, 3), "float32")), before)


def test_class_weight_leaves_classes_not_named_at_one_as_keras():
    X, y = _data()
    weighted = _model().fit(X, y, class_weight={1: 2.0}, shuffle=False).history["loss"]
    by_rows = _model().fit(X, y, sample_weight=np.where(y == 1, 2.0, 1.0), shuffle=False).history["loss"]
    np.testing.assert_allclose(weighted, by_rows, rtol=1e-6)


def test_validation_freq_validates_every_nth_epoch_counted_across_fits_as_keras():
    """Keras's validation_freq=2 was a TypeError; it now validates after epochs 2, 4, ... of the model's count
    (which goes on across fits, as Keras's from initial_epoch), with the numbers of validating every epoch."""
    X, y = _data()
    Xv, yv = X[:5] + 0.1, y[:5]
    every, some = _model(), _model()
    every.fit(X, y, loss="bce", epochs=7, batch_size=4, validation_data=(Xv, yv), shuffle=False)
    history = some.fit(X, y, loss="bce", epochs=4, batch_size=4, validation_data=(Xv, yv), shuffle=False,
                       validation_freq=np.int64(2))
    assert history.epochs_of("val_loss") == [1, 3] and history.epochs_of("loss") == [0, 1, 2, 3]
    later = some.fit(X, y, epochs=3, batch_size=4, validation_data=(Xv, yv), shuffle=False, validation_freq=2)
    assert later.epochs_of("val_loss") == [5]  # epochs 5 to 7 of the model: the 6th validates
    assert history["val_loss"] + later["val_loss"] == [every.history["val_loss"][i] for i in (1, 3, 5)]
    assert np.array_equal(some.predict(X), every.predict(X))  # validating changes nothing in training


def test_callbacks_monitoring_a_validation_value_skip_the_epochs_between_validations(tmp_path):
    """EarlyStopping, ModelCheckpoint(save_best_only) and ReduceLROnPlateau said val_loss 'is not in the epoch
    logs' on an epoch fit did not validate; they skip it, as Keras's do (patience counts validated epochs)."""
    from nnx.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau

    X, y = _data()
    seen = []

    class Seen(nnx.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, "val_loss" in logs))

    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)  # nothing improves by 10
    plateau = ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5, min_delta=10.0)
    model = _model()
    best = ModelCheckpoint(str(tmp_path / "best_{epoch}.npz"), save_best_only=True)
    history = model.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, epochs=9, batch_size=4,
                        validation_split=0.25, validation_freq=3, callbacks=[stop, plateau, best, Seen()])
    # validated after epochs 3 and 6: the first sets the best, the second exhausts a patience of one
    assert [e for e, validated in seen if validated] == [2, 5] and len(history.epoch) == 6
    assert stop.best_epoch == 2 and model.optimizer.lr == 0.05
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved[0] == "best_3.npz" and set(saved) <= {"best_3.npz", "best_6.npz"}  # at validations only


def test_a_checkpoint_path_naming_a_validation_value_saves_at_the_validated_epochs_only(tmp_path):
    """ModelCheckpoint("m_{epoch}_{val_loss:.3f}.npz") saving every epoch beside validation_freq=2 stopped the fit
    with a bare KeyError 'val_loss' at the first epoch that did not validate; an epoch without the value the path
    names saves nothing, as save_best_only's monitor skips it (5a91252). A path naming only what every epoch logs
    still saves every epoch."""
    from nnx.callbacks import ModelCheckpoint

    X, y = _data()
    named = ModelCheckpoint(str(tmp_path / "m_{epoch}_{val_loss:.3f}.npz"))
    best_by_loss = ModelCheckpoint(str(tmp_path / "b_{epoch}_{val_loss:.3f}.npz"), monitor="loss", save_best_only=True)
    every = ModelCheckpoint(str(tmp_path / "e_{epoch}.npz"))
    history = _model().fit(X, y, loss="bce", epochs=4, batch_size=4, validation_split=0.25, validation_freq=2,
                           callbacks=[named, best_by_loss, every])
    assert [os.path.basename(p).split("_")[1] for p in named.saved] == ["2", "4"]
    assert named.saved[-1].endswith(f"m_4_{history['val_loss'][-1]:.3f}.npz")
    assert len(every.saved) == 4
    # the best by loss is kept among the epochs it could name: its best is the last one it saved
    assert all("_2_" in p or "_4_" in p for p in best_by_loss.saved) and best_by_loss.saved
    assert best_by_loss.best == history["loss"][-1]


def test_validation_freq_without_validation_or_below_one_is_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="validation_freq=2 .* no validation_data"):
        _model().fit(X, y, loss="bce", validation_freq=2)
    with pytest.raises(ValueError, match="validation_freq"):
        _model().fit(X, y, loss="bce", validation_split=0.25, validation_freq=0)
