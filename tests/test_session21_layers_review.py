"""Session 21 review of the layers other than Dense and of the callbacks, as a PyTorch / Keras user meets them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx


def _data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, (X[:, :1] > 0).astype(float)


@pytest.mark.parametrize(("metric", "monitor", "recorded"), [
    ("acc", "val_acc", "val_accuracy"), ("Accuracy", "val_Accuracy", "val_accuracy"), ("acc", "acc", "accuracy")])
def test_monitor_of_a_metric_recorded_under_another_name_says_that_name(metric: str, monitor: str,
                                                                        recorded: str, tmp_path: Any) -> None:
    # Keras logs metrics=["acc"] as "acc", so Keras code monitors "val_acc"; nnx records it as "accuracy". The
    # error said "add 'acc' to fit's metrics", which the user had done: it must name what is recorded instead
    X, y = _data()
    for callback in (nnx.callbacks.EarlyStopping(monitor, mode="max"),
                     nnx.callbacks.ModelCheckpoint(str(tmp_path / "m.npz"), monitor=monitor, save_best_only=True,
                                                   mode="max")):
        model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), seed=0)
        with pytest.raises(ValueError, match=f"is recorded as .*: monitor '{recorded}'") as info:
            model.fit(X, y, loss="bce", epochs=1, metrics=[metric], validation_split=0.25, callbacks=[callback])
        assert "add '" not in str(info.value)


def _host(model: Any, value: Any) -> np.ndarray:
    return np.array(model.backend.to_host(value))  # a writable copy (JAX's host view is read-only)


_SCHEDULES = {
    "StepLR": (lambda: nnx.callbacks.StepDecay(2, 0.5), lambda o, t: t.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    "ExponentialLR": (lambda: nnx.callbacks.ExponentialDecay(0.8),
                      lambda o, t: t.optim.lr_scheduler.ExponentialLR(o, 0.8)),
    "CosineAnnealingLR": (lambda: nnx.callbacks.CosineDecay(5, min_lr=1e-3),
                          lambda o, t: t.optim.lr_scheduler.CosineAnnealingLR(o, 5, eta_min=1e-3)),
}


@pytest.mark.parametrize("name", sorted(_SCHEDULES))
def test_schedules_give_torch_rates_and_weights_across_a_resumed_fit(backend: Any, name: str) -> None:
    # torch steps its scheduler after each epoch, so epoch e trains at f(e); a second fit goes on counting
    torch = pytest.importorskip("torch")
    ours, theirs = _SCHEDULES[name]
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(32, 3)), rng.normal(size=(32, 1))
    model = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    ref = torch.nn.Linear(3, 1, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(_host(model, model.state_dict()["0.weight"]).T.copy()))
        ref.bias.copy_(torch.from_numpy(_host(model, model.state_dict()["0.bias"])))
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
    scheduler, rates = theirs(opt, torch), []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        for i in range(0, 32, 8):
            opt.zero_grad()
            ((ref(torch.from_numpy(X[i:i + 8])) - torch.from_numpy(y[i:i + 8])) ** 2).mean().backward()
            opt.step()
        scheduler.step()
    first = model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.5), epochs=3,
                      batch_size=8, shuffle=False, callbacks=[ours()])
    second = model.fit(X, y, epochs=2, batch_size=8, shuffle=False, callbacks=[ours()])
    np.testing.assert_allclose(first.history["lr"] + second.history["lr"], rates, rtol=1e-12)
    np.testing.assert_allclose(_host(model, model.state_dict()["0.weight"]), ref.weight.detach().numpy().T,
                               rtol=1e-10, atol=1e-12)


def test_restore_best_weights_restores_batchnorm_running_statistics(backend: Any) -> None:
    # the best epoch's buffers come back with its weights, as a torch state_dict snapshot would hold them
    rng = np.random.default_rng(2)
    X = rng.normal(size=(64, 5)) * 3 + 2
    y = (X[:, :1] > 2).astype(float)
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=1)
    snapshots = []

    class SnapshotsForRestoreReview(nnx.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            snapshots.append({k: _host(model, v).copy() for k, v in model.state_dict().items()})

    stop = nnx.callbacks.EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    history = model.fit(X, y, loss="bce", optimizer="sgd", lr=2.0, epochs=25, batch_size=16,
                        validation_data=(X[:16] + rng.normal(size=(16, 5)), y[:16]),
                        callbacks=[SnapshotsForRestoreReview(), stop])
    assert stop.best_epoch is not None and stop.best_epoch < len(history) - 1  # a later epoch was worse
    best = snapshots[stop.best_epoch]
    final = {k: _host(model, v) for k, v in model.state_dict().items()}
    assert {"1.running_mean", "1.running_var"} <= set(final)
    for key, value in final.items():
        np.testing.assert_array_equal(value, best[key], err_msg=key)


def test_batchnorm_in_fit_trains_as_torch_batchnorm1d(backend: Any) -> None:
    # train-mode batch statistics, torch's momentum and unbiased running variance, eval-mode predictions
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 5)) * 3 + 2, rng.normal(size=(40, 1))
    model = nnx.Sequential(nnx.Dense(5, 4), nnx.BatchNorm(4, momentum=0.2), nnx.Tanh(), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=1)
    state = {k: torch.from_numpy(_host(model, v).copy()) for k, v in model.state_dict().items()}
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4, momentum=0.2), torch.nn.Tanh(),
                              torch.nn.Linear(4, 1)).double()
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(state[f"{i}.weight"].T)
            ref[i].bias.copy_(state[f"{i}.bias"])
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, 40, 8):
            opt.zero_grad()
            ((ref(torch.from_numpy(X[i:i + 8])) - torch.from_numpy(y[i:i + 8])) ** 2).mean().backward()
            opt.step()
    ref.eval()
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=3,
              batch_size=8, shuffle=False)
    got = {k: _host(model, v) for k, v in model.state_dict().items()}
    np.testing.assert_allclose(got["1.running_mean"], ref[1].running_mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["1.running_var"], ref[1].running_var.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_host(model, model.predict(X)), ref(torch.from_numpy(X)).detach().numpy(),
                               rtol=1e-9, atol=1e-11)


def test_torch_attribute_names_of_dropout_and_leaky_relu_set_the_layer(backend: Any) -> None:
    # a torch dropout schedule sets `module.p` (LeakyReLU's slope is `negative_slope`, in Keras 3 too); on nnx's
    # layers those were new attributes nothing read, so training went on at the old rate without a word
    X = np.ones((64, 8))
    model = nnx.Sequential(nnx.Dense(8, 8), nnx.Dropout(0.5), nnx.LeakyReLU(0.1), backend=backend,
                           dtype="float64", seed=0)
    dropout, leaky = model.layers[1], model.layers[2]
    assert (dropout.p, leaky.negative_slope) == (0.5, 0.1)
    dropout.p, leaky.negative_slope = 0.0, 0.25
    assert (dropout.rate, leaky.alpha) == (0.0, 0.25)
    H = model.layers[0].forward(model.backend.asarray(X), training=True)
    np.testing.assert_array_equal(_host(model, dropout.forward(H, training=True)), _host(model, H))
    assert dropout.get_config()["rate"] == 0.0 and leaky.get_config()["alpha"] == 0.25
