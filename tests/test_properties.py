"""Property-based tests over random architectures, on every installed backend.

Hypothesis draws models of depth 1-5 (Dense layers) with widths 1-32, every activation
layer, optional Dropout, every loss, with and without regularizers, and checks:

* analytic gradients match central differences (`nnx.check_gradients`, float64);
* `predict` equals `forward(training=False)`;
* `save`/`load` round-trips exactly, on the same backend and onto another one;
* `state_dict`/`load_state_dict` round-trips exactly and does not alias;
* the same seed gives the same training run twice.

Each property runs a modest number of examples per backend (see `EXAMPLES`; scale them
with NNX_HYPOTHESIS_SCALE). The number of examples actually tried is counted per
property and backend and appended as JSON to the file named by NNX_HYPOTHESIS_COUNTS.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tally import write_counts

import nnx
from nnx import regularizers
from nnx.losses import BinaryCrossEntropy, CrossEntropy

SCALE = float(os.environ.get("NNX_HYPOTHESIS_SCALE", "1"))

# Examples per property on each backend: eager JAX compiles every new shape, and
# array_api_strict and torch pay ~0.5 ms per tiny op, so they get fewer. Every property runs on
# all seven backend cases (array_api_strict three times) with one shared strategy, so one run draws
# about 30 architectures per property in all, and each backend meets several; more examples made
# this file a sixth of the suite's time (the save/load one loads onto JAX, which compiles each).
EXAMPLES = {"numpy": 12, "array_api_strict": 4, "torch": 5, "jax": 3, "cupy": 8}
# Finite differences cost two forward passes per parameter: cap the parameter count there. The input and output
# layers' widths are not capped (any of 1-32 comes up), the hidden layers' are. Where each operation costs most
# (array_api_strict, three backend cases, and torch) the caps are low: a backward that is right for 100 weights is
# right for 250, and this property is half of this file's time; NumPy keeps the wide models.
GRADCHECK_MAX_PARAMS = {"numpy": 1200, "array_api_strict": 100, "torch": 125, "jax": 150, "cupy": 200}
# Eager JAX compiles each operation for each new shape (~0.1 s apiece, ~10 s for a new model), so
# there widths and batch sizes come from a small pool that spans the range and lets shapes repeat.
JAX_WIDTHS = [1, 3, 32]
JAX_ROWS = [0, 1, 7]


def _widths(backend, low: int = 1, high: int = 32):
    if backend.name == "jax":
        return st.sampled_from([w for w in JAX_WIDTHS if low <= w <= high] or [low])
    return st.integers(low, high)


def _rows(backend, low: int, high: int):
    if backend.name == "jax":
        return st.sampled_from([r for r in JAX_ROWS if low <= r <= high] or [high])
    return st.integers(low, high)

COUNTS: dict[str, dict[str, int]] = {}


def _count(prop: str, backend) -> None:
    per = COUNTS.setdefault(prop, {})
    per[backend.spec] = per.get(backend.spec, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts({"file": "test_properties", "examples": COUNTS})


def _run(backend, test, factor: float = 1.0) -> None:
    """Run a @given test with this backend's example budget."""
    n = max(1, int(EXAMPLES[backend.name] * SCALE * factor))
    settings(max_examples=n, deadline=None, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(test)()


# -- strategies ---------------------------------------------------------------------------

ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "softmax", "identity"]
LOSSES = ["mse", "mae", "bce", "bce_logits", "ce_logits", "ce_probs"]
REGULARIZERS = [None, "l1", "l2", "elasticnet"]


def _activation(name: str, alpha: float) -> nnx.Layer:
    return {"sigmoid": nnx.Sigmoid, "tanh": nnx.Tanh, "relu": nnx.ReLU, "softmax": nnx.Softmax,
            "identity": nnx.Identity}.get(name, lambda: nnx.LeakyReLU(alpha))()


def _regularizer(name: str | None, strength: float):
    if name is None:
        return None
    if name == "elasticnet":
        return regularizers.ElasticNet(strength, strength / 2)
    return {"l1": regularizers.L1, "l2": regularizers.L2}[name](strength)


@st.composite
def architectures(draw, backend, max_params: int | None = None):
    """A dict describing a model: layers, loss, data shapes; `build` turns it into a Sequential."""
    loss = draw(st.sampled_from(LOSSES))
    depth = draw(st.integers(1, 5))
    n_in = draw(_widths(backend))
    n_out = draw(_widths(backend, 2, 5)) if loss.startswith("ce") else draw(_widths(backend, 1, 4))
    widths = [n_in]
    budget = max_params
    for i in range(depth - 1):
        # With a parameter budget, later widths shrink to fit (never below 1).
        cap = 32
        if budget is not None:
            remaining = depth - i
            cap = max(1, min(32, (budget // remaining - 1) // (widths[-1] + 1)))
        widths.append(draw(_widths(backend, 1, cap)))
        if budget is not None:
            budget -= (widths[-2] + 1) * widths[-1]
    if budget is not None and depth > 1 and budget < (widths[-1] + 1) * n_out:
        widths[-1] = 1  # keep the last layer affordable too (its input is a hidden width; never the model's input)
    widths.append(n_out)
    layers = []
    for i in range(depth):
        layers.append(("dense", widths[i], widths[i + 1], draw(st.sampled_from(["he", "glorot", "lecun"])),
                       draw(st.sampled_from(REGULARIZERS)) if draw(st.booleans()) else None))
        if i < depth - 1:
            layers.append(("act", draw(st.sampled_from(ACTIVATIONS)), draw(st.sampled_from([0.0, 0.01, 0.3]))))
            if draw(st.booleans()):
                layers.append(("dropout", draw(st.sampled_from([0.1, 0.3, 0.6]))))
    head = None
    if loss in ("mse", "mae"):
        head = draw(st.sampled_from([None, *ACTIVATIONS]))
    elif loss == "bce":
        head = "sigmoid"
    elif loss == "ce_probs":
        head = "softmax"
    if head is not None:
        layers.append(("act", head, 0.1))
    return {
        "layers": layers,
        "loss": loss,
        "model_regularizer": draw(st.sampled_from(REGULARIZERS)),
        "strength": draw(st.sampled_from([1e-3, 0.05])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "n_in": n_in,
        "n_out": n_out,
    }


def build(arch: dict, backend, dtype: str = "float64", seed: int | None = None) -> nnx.Sequential:
    layers = []
    for spec in arch["layers"]:
        if spec[0] == "dense":
            reg = _regularizer(spec[4], arch["strength"])
            layers.append(nnx.Dense(spec[1], spec[2], init=spec[3], regularizer=reg))
        elif spec[0] == "act":
            layers.append(_activation(spec[1], spec[2]))
        else:
            layers.append(nnx.Dropout(spec[1]))
    return nnx.Sequential(*layers, backend=backend, dtype=dtype, seed=arch["seed"] if seed is None else seed,
                          regularizer=_regularizer(arch["model_regularizer"], arch["strength"]))


def make_loss(arch: dict):
    return {"mse": "mse", "mae": "mae", "bce": "bce", "bce_logits": BinaryCrossEntropy(from_logits=True),
            "ce_logits": CrossEntropy(from_logits=True), "ce_probs": CrossEntropy(from_logits=False)}[arch["loss"]]


def make_data(arch: dict, n: int, data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs from a seeded normal (never exactly on a ReLU kink) and targets fitting the loss."""
    gen = np.random.default_rng(data_seed)
    X = gen.normal(size=(n, arch["n_in"]))
    loss = arch["loss"]
    if loss in ("mse", "mae"):
        y = gen.normal(size=(n, arch["n_out"]))
    elif loss.startswith("bce"):
        y = gen.uniform(size=(n, arch["n_out"]))  # soft labels are allowed
        y[: n // 2] = np.round(y[: n // 2])
    else:
        y = gen.integers(0, arch["n_out"], size=n)
    return X, y


def _host_state(model) -> dict[str, np.ndarray]:
    return {k: np.array(model.backend.to_host(v), copy=True) for k, v in model.state_dict().items()}


def _n_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def _other_backends(backend) -> list[str]:
    return [name for name in nnx.available_backends() if name != backend.name] or [backend.name]


# -- properties --------------------------------------------------------------------------

def test_gradients_match_finite_differences(backend):
    max_params = GRADCHECK_MAX_PARAMS[backend.name]

    @given(arch=architectures(backend, max_params=max_params), n=_rows(backend, 1, 4),
           data_seed=st.integers(0, 2**16))
    def check(arch, n, data_seed):
        _count("gradients", backend)
        model = build(arch, backend, "float64")
        assert _n_params(model) <= max_params + 32 * 5
        # Non-zero biases: with zero biases a row zeroed by dropout puts a ReLU exactly on its kink. Weights at
        # least 1e-4 from 0: central differences (step 1e-6) across L1's kink at 0 are no derivative (a weight
        # drawn at 2.6e-7 gave an error of 0.0018)
        gen = np.random.default_rng(data_seed + 1)
        model.load_state_dict({k: (gen.normal(0, 0.1, size=v.shape) if k.endswith("bias")
                                   else np.where(np.abs(v) < 1e-4, np.where(v < 0, -1e-4, 1e-4), v))
                               for k, v in _host_state(model).items()})
        X, y = make_data(arch, n, data_seed)
        err = nnx.check_gradients(model, X, y, make_loss(arch))
        assert err < 1e-5, f"gradient error {err:.3g} for {arch}"

    _run(backend, check)


def test_predict_equals_forward_in_inference_mode(backend, dtype):
    @given(arch=architectures(backend), n=_rows(backend, 0, 20), data_seed=st.integers(0, 2**16),
           batch=_rows(backend, 1, 8), trained=st.booleans())
    def check(arch, n, data_seed, batch, trained):
        _count("predict == forward(training=False)", backend)
        model = build(arch, backend, dtype)
        X, y = make_data(arch, max(n, 1), data_seed)
        if trained:
            model.fit(X, y, loss=make_loss(arch), optimizer="sgd", lr=1e-3, epochs=1, batch_size=4)
        X = X[:n]
        forward = model.backend.to_host(model.forward(X, training=False))
        predicted = model.backend.to_host(model.predict(X))
        assert predicted.shape == (n, arch["n_out"])
        tol = 1e-5 if dtype == "float32" else 1e-12
        if model.backend.can_compile:
            # predict runs one compiled program, forward op by op: the compiler may fuse a product and the add
            # after it into one rounding (seen: a 1 -> 3 Dense's X @ W + b, 1 ulp in float64), so the two agree
            # to the tolerance of every compiled-against-op-by-op comparison here (tests/test_compiled_inference.py)
            np.testing.assert_allclose(predicted, forward, rtol=tol, atol=tol)
        else:  # the same operations in the same order
            np.testing.assert_array_equal(predicted, forward)
        # Inference is deterministic (dropout off) and batching does not change the answer.
        np.testing.assert_array_equal(model.backend.to_host(model.predict(X)), predicted)
        np.testing.assert_allclose(model.backend.to_host(model.predict(X, batch_size=batch)), predicted,
                                   rtol=tol, atol=tol)
        if n and not trained:
            assert np.all(np.isfinite(predicted)), "finite inputs and weights gave a non-finite output"

    _run(backend, check)


def test_save_load_round_trips_exactly(backend, dtype, tmp_path_factory):
    others = _other_backends(backend)

    @given(arch=architectures(backend), data_seed=st.integers(0, 2**16), train=st.booleans(),
           optimizer=st.sampled_from(["adam", "sgd", "rmsprop", "adamw", "momentum", "adagrad"]),
           target=st.sampled_from(others))
    def check(arch, data_seed, train, optimizer, target):
        _count("save/load round trip", backend)
        model = build(arch, backend, dtype)
        X, y = make_data(arch, 12, data_seed)
        if train:
            model.fit(X, y, loss=make_loss(arch), optimizer=optimizer, lr=1e-3, epochs=1, batch_size=5)
        path = tmp_path_factory.mktemp("ckpt") / "model.npz"
        model.save(path)
        before = _host_state(model)

        same = nnx.load(path)
        assert same.backend == model.backend and same.dtype == model.dtype
        assert same.get_config() == model.get_config()
        assert same.epochs_trained == model.epochs_trained
        for k, v in _host_state(same).items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
            assert v.dtype == before[k].dtype
        np.testing.assert_array_equal(same.backend.to_host(same.predict(X)), model.backend.to_host(model.predict(X)))
        if train:
            saved, loaded = model.optimizer.state_dict(), same.optimizer.state_dict()
            assert saved["hyperparams"] == loaded["hyperparams"] and saved["step"] == loaded["step"]
            for i, entry in saved["state"].items():
                for key, arr in entry.items():
                    np.testing.assert_array_equal(model.backend.to_host(arr),
                                                  same.backend.to_host(loaded["state"][i][key]))

        moved = nnx.load(path, backend=target)
        assert moved.backend.name == target
        for k, v in _host_state(moved).items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} on {target}")
        tol = 1e-4 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(moved.backend.to_host(moved.predict(X)), model.backend.to_host(model.predict(X)),
                                   rtol=tol, atol=tol)
        # and back: a file written on the other backend loads here bit for bit
        moved.save(path)
        back = nnx.load(path, backend=backend)
        for k, v in _host_state(back).items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} back from {target}")

    # JAX compiles a whole training epoch for every new architecture and optimizer (~35 s an example on
    # 2 busy cores, the suite's slowest test); the file format is the same code on every backend
    _run(backend, check, factor=0.5 if backend.name == "jax" else 1.0)


def test_state_dict_round_trips_and_does_not_alias(backend, dtype):
    @given(arch=architectures(backend), data_seed=st.integers(0, 2**16), host=st.booleans())
    def check(arch, data_seed, host):
        _count("state_dict round trip", backend)
        model = build(arch, backend, dtype)
        other = build(arch, backend, dtype, seed=(arch["seed"] + 1) % 2**32)
        state = _host_state(model) if host else model.state_dict()
        other.load_state_dict(state)
        expected = _host_state(model)
        got = _host_state(other)
        assert got.keys() == expected.keys()
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
        X, y = make_data(arch, 6, data_seed)
        np.testing.assert_array_equal(other.backend.to_host(other.predict(X)), model.backend.to_host(model.predict(X)))
        # Training the source afterwards must not move the copy (no shared buffers).
        model.fit(X, y, loss=make_loss(arch), optimizer="sgd", lr=0.1, epochs=1)
        for k, v in _host_state(other).items():
            np.testing.assert_array_equal(v, expected[k], err_msg=f"{k} changed with the source model")
        # and a state_dict round trip through the model itself is the identity
        snapshot = _host_state(other)
        other.load_state_dict(other.state_dict())
        for k, v in _host_state(other).items():
            np.testing.assert_array_equal(v, snapshot[k], err_msg=k)

    _run(backend, check)


def test_same_seed_same_result(backend, dtype):
    @given(arch=architectures(backend), data_seed=st.integers(0, 2**16),
           optimizer=st.sampled_from(["adam", "sgd", "rmsprop"]), batch=st.sampled_from([None, 3]))
    def check(arch, data_seed, optimizer, batch):
        _count("same seed, same result", backend)
        X, y = make_data(arch, 10, data_seed)
        runs = []
        for _ in range(2):
            model = build(arch, backend, dtype)
            history = model.fit(X, y, loss=make_loss(arch), optimizer=optimizer, lr=1e-2, epochs=2, batch_size=batch,
                                check_finite=False)
            runs.append((_host_state(model), history.history["loss"],
                         model.backend.to_host(model.forward(X, training=True))))  # a dropout draw too
        (w1, l1, f1), (w2, l2, f2) = runs
        for k in w1:
            np.testing.assert_array_equal(w1[k], w2[k], err_msg=k)
        np.testing.assert_array_equal(np.array(l1), np.array(l2))
        np.testing.assert_array_equal(f1, f2)

    _run(backend, check, factor=0.5 if backend.name == "jax" else 1.0)  # JAX compiles every new architecture


def test_accumulate_with_clipping_equals_a_larger_batch(backend):
    """fit(batch_size=b, accumulate=k) == fit(batch_size=k*b) under random clipping settings (float64;
    no dropout, whose masks depend on the batch shapes drawn)."""
    @given(arch=architectures(backend), n=_rows(backend, 1, 20), data_seed=st.integers(0, 2**16),
           b=st.integers(1, 5), k=st.integers(1, 4), clip_norm=st.sampled_from([None, 1e-2, 0.5, 1e3]),
           clip_value=st.sampled_from([None, 1e-3, 0.1]), optimizer=st.sampled_from(["adam", "sgd", "rmsprop"]))
    def check(arch, n, data_seed, b, k, clip_norm, clip_value, optimizer):
        _count("accumulate + clip == larger batch", backend)
        arch = dict(arch, layers=[spec for spec in arch["layers"] if spec[0] != "dropout"])
        X, y = make_data(arch, n, data_seed)
        runs = []
        for batch, acc in ((b, k), (b * k, 1)):
            model = build(arch, backend, "float64")
            history = model.fit(X, y, loss=make_loss(arch), optimizer=optimizer, lr=1e-2, epochs=2,
                                batch_size=batch, accumulate=acc, clip_norm=clip_norm, clip_value=clip_value)
            runs.append((_host_state(model), history["loss"], model.optimizer.step_count))
        (w1, l1, s1), (w2, l2, s2) = runs
        assert s1 == s2 == 2 * -(-n // (b * k))
        for name in w1:
            np.testing.assert_allclose(w1[name], w2[name], rtol=1e-9, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(l1, l2, rtol=1e-9, atol=1e-12)

    _run(backend, check, factor=0.5)
