"""Bad input, everywhere public.

Every public constructor and method is called with wrong types, wrong shapes, wrong
dtypes, NaN and inf, empty arrays (0 samples, 0 features) and arrays from another
backend. Each call must either work correctly (finite results from finite inputs) or
raise ValueError/TypeError whose message names the offending argument -- never
AttributeError, IndexError, KeyError, a hang or a silent NaN.

The hand-written catalogue is crossed with every argument of every entry point, and
hypothesis adds random junk on top. Counts of the calls made are appended to the file
named by NNX_HYPOTHESIS_COUNTS.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tally import write_counts

import nnx
from nnx import losses, optim, regularizers
from nnx.backends import BackendUnavailableError

SCALE = float(os.environ.get("NNX_HYPOTHESIS_SCALE", "1"))
CALLS: dict[str, int] = {}


def _tally(kind: str) -> None:
    CALLS[kind] = CALLS.get(kind, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts({"file": "test_fuzz_inputs", "calls": CALLS})


@contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging (SIGALRM; a no-op off the main thread or without it)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"call did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


PROBLEMS: list[str] = []


@pytest.fixture(autouse=True)
def _verdict():
    """Each test collects every contract violation it finds, then fails once listing them all."""
    PROBLEMS.clear()
    yield
    if PROBLEMS:
        found = list(PROBLEMS)
        PROBLEMS.clear()
        pytest.fail(f"{len(found)} contract violation(s):\n" + "\n".join(found), pytrace=False)


def contract(kind: str, call, names, ok=None, also=()):
    """Run `call()`: it returns (then `ok(result)` checks the result) or raises ValueError/TypeError
    naming one of `names`. `also` lists other exception types that are documented there.
    Violations are collected in PROBLEMS (see `_verdict`)."""
    _tally(kind)
    names = (names,) if isinstance(names, str) else tuple(names)
    with time_limit(120):
        try:
            result = call()
        except (ValueError, TypeError) as exc:
            message = str(exc)
            if not any(name in message for name in names):
                PROBLEMS.append(f"{kind}: {type(exc).__name__} does not name {names}: {message[:200]!r}")
            return exc
        except also as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - the point of the test
            PROBLEMS.append(f"{kind}: raised {type(exc).__name__} instead of ValueError/TypeError: {exc!r:.200}")
            return exc
    if ok is not None:
        try:
            ok(result)
        except (AssertionError, pytest.fail.Exception) as exc:
            PROBLEMS.append(f"{kind}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return result


# -- junk -------------------------------------------------------------------------------

def _other_backend_arrays(backend, host: np.ndarray) -> list[tuple[str, object]]:
    out = []
    for name in nnx.available_backends():
        if name not in (backend.name, "numpy"):
            out.append((f"{name} array", nnx.get_backend(name).asarray(host)))
    return out


def junk_arrays(backend, n: int, f: int, role: str = "X") -> list[tuple[str, object, str]]:
    """(label, value, expectation): "ok" must work, "finite" must work or raise, "nan" holds NaN/inf,
    "bad" must raise."""
    gen = np.random.default_rng(1)
    good = gen.normal(size=(n, f))
    nan = good.copy()
    nan[0, 0] = np.nan
    inf = good.copy()
    inf[-1, -1] = np.inf
    readonly = good.copy()
    readonly.flags.writeable = False
    wide = gen.normal(size=(n, 2 * f))
    cases = [
        ("None", None, "bad"), ("str", "abc", "bad"), ("int", 3, "bad"), ("float", 2.5, "bad"),
        ("dict", {"a": 1}, "bad"), ("object", object(), "bad"), ("bytes", b"abc", "bad"), ("empty list", [], "bad"),
        ("ragged list", [[1.0] * f, [2.0] * (f + 1)], "bad"), ("strings", np.full((n, f), "a"), "bad"),
        ("object array", good.astype(object), "bad"), ("complex", good.astype(complex), "bad"),
        ("datetime", np.full((n, f), np.datetime64("2020-01-01")), "bad"),
        ("1-D", good[:, 0] if f > 1 else good[0], "bad"), ("3-D", good[:, :, None], "bad"),
        ("0-D", np.float64(1.0), "bad"),
        ("too many features", gen.normal(size=(n, f + 1)), "bad"), ("0 features", np.zeros((n, 0)), "bad"),
        ("0 samples", np.zeros((0, f)), "finite"),
        ("NaN", nan, "nan"), ("inf", inf, "nan"), ("huge", good * 1e300, "huge"),
        ("int dtype", np.round(good).astype(np.int64), "ok"), ("bool dtype", good > 0, "ok"),
        ("float16", good.astype(np.float16), "ok"), ("uint8", np.abs(np.round(good)).astype(np.uint8), "ok"),
        ("float32", good.astype(np.float32), "ok"), ("list of lists", good.tolist(), "ok"),
        ("fortran order", np.asfortranarray(good), "ok"), ("strided view", wide[:, ::2], "ok"),
        ("read-only", readonly, "ok"), ("numpy scalar rows", [list(map(np.float64, row)) for row in good], "ok"),
    ]
    cases += [(label, value, "bad") for label, value in _other_backend_arrays(backend, good)]
    if backend.name == "array_api_strict":  # another device of the same library is moved, not refused
        other = "device1" if backend.device_label is None else None
        target = nnx.get_backend(f"array_api_strict:{other}" if other else "array_api_strict")
        cases.append(("same library, other device", target.asarray(good), "ok"))
    return cases


JUNK_SCALARS = [None, "abc", "1", 1.5, -1, 0, True, False, math.nan, math.inf, -math.inf, 10**30, [1], {}, (),
                object(), np.int64(2), np.float32(0.5), 1 + 2j, b"x"]


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))


def _host(model, x) -> np.ndarray:
    return np.asarray(model.backend.to_host(x))


# -- models under test ------------------------------------------------------------------------

N, F = 6, 3


def _model(backend, dtype, head: str = "regression", seed: int = 0):
    out = {"regression": [nnx.Dense(4, 2)], "binary": [nnx.Dense(4, 1), nnx.Sigmoid()],
           "multiclass": [nnx.Dense(4, 3), nnx.Softmax()]}[head]
    return nnx.Sequential(nnx.Dense(F, 4), nnx.Tanh(), nnx.Dropout(0.2), *out, backend=backend, dtype=dtype, seed=seed)


def _targets(head: str, n: int = N) -> np.ndarray:
    gen = np.random.default_rng(2)
    if head == "regression":
        return gen.normal(size=(n, 2))
    if head == "binary":
        return (gen.uniform(size=n) > 0.5).astype(float)
    return gen.integers(0, 3, size=n)


def _good_X(n: int = N) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, F))


def _refused(*results) -> bool:
    """Whether every one of these `contract` results refused its input (ValueError/TypeError). A refused call
    leaves the model as it was, so a loop over junk values keeps its model until a call accepts a value (and may
    train it or step it): a fresh model per value was most of these loops' time (hundreds of them, ~1 ms each,
    ~4 ms on JAX), and a refused call that did change the model would show in the next value's checks."""
    return all(isinstance(result, (ValueError, TypeError)) for result in results)


def _expect(expectation: str, label: str):
    """A result checker for an array-valued call, given what the input was."""
    def ok(result):
        assert expectation != "bad", f"{label}: accepted input that is not valid"
        if expectation in ("ok", "finite") and result is not None:
            arrays = result if isinstance(result, (list, tuple)) else [result]
            for a in arrays:
                host = np.asarray(nnx.get_backend(a).to_host(a)) if not isinstance(a, np.ndarray) else a
                assert _finite(host), f"{label}: finite input gave non-finite output"
    return ok


# -- the model's array arguments ------------------------------------------------------------

def test_predict_forward_with_bad_X(backend, dtype):
    model = _model(backend, dtype)
    # predict's programs (JAX) traced before any training forward: a layer then holds no array the traces read,
    # so the training forwards below do not make every later predict trace and compile again (~35 compiles)
    model.predict(_good_X())
    model.predict(_good_X(), batch_size=4)
    for label, X, expectation in junk_arrays(backend, N, F):
        for name, call in (("predict", lambda X=X: model.predict(X)),
                           ("predict batched", lambda X=X: model.predict(X, batch_size=4)),
                           ("forward", lambda X=X: model.forward(X)),
                           ("forward training", lambda X=X: model.forward(X, training=True)),
                           ("__call__", lambda X=X: model(X))):
            result = contract(f"{name}(X={label})", call, "X", ok=_expect(expectation, f"{name} X={label}"))
            if expectation == "ok" and not isinstance(result, Exception):
                assert tuple(result.shape) == (N, 2), f"{name} X={label}: shape {tuple(result.shape)}"
            if label == "0 samples" and not isinstance(result, Exception):
                assert tuple(result.shape) == (0, 2)


@pytest.mark.parametrize("head", ["regression", "binary", "multiclass"])
def test_fit_and_evaluate_with_bad_X(backend, dtype, head):
    y = _targets(head)
    model = None
    for label, X, expectation in junk_arrays(backend, N, F):
        if model is None:
            model = _model(backend, dtype, head)

        def fit_ok(history, label=label, expectation=expectation):
            assert expectation in ("ok", "huge"), f"fit accepted X={label}"
            assert not any(np.isnan(history["loss"])), f"fit(X={label}) reported a NaN loss"

        def eval_ok(scores, label=label, expectation=expectation):
            assert expectation in ("ok", "huge"), f"evaluate accepted X={label}: {scores}"
            assert not any(math.isnan(v) for v in scores.values()), f"evaluate(X={label}) gave {scores}"

        # FloatingPointError is fit's documented answer to a loss that stops being finite. Every fit of this
        # module trains its N rows at fit's default batch size: one compiled epoch per head on JAX, shared by
        # these tests and test_fit_arguments (a partial last batch would be another, larger program)
        fitted = contract(f"fit(X={label})", lambda X=X, m=model: m.fit(X, y, epochs=1), "X", ok=fit_ok,
                          also=(FloatingPointError,))
        evaluated = contract(f"evaluate(X={label})", lambda X=X, m=model: m.evaluate(X, y), "X", ok=eval_ok)
        if not _refused(fitted, evaluated):
            model = None


def junk_targets(backend, head: str) -> list[tuple[str, object, str]]:
    good = _targets(head)
    cases = [(label, value, exp) for label, value, exp in junk_arrays(backend, N, 2 if head == "regression" else 1)
             if label not in ("1-D", "0 samples", "bool dtype", "uint8", "float16", "int dtype", "0-D",
                              "too many features")]
    cases += [("wrong length", np.concatenate([good, good[:1]]), "bad"), ("too short", good[:-1], "bad"),
              ("0 samples", good[:0], "bad")]
    if head == "regression":
        cases += [("1-D for 2 outputs", good[:, 0], "bad"), ("3 columns", np.ones((N, 3)), "bad"),
                  ("int dtype", np.round(good).astype(int), "ok")]
    elif head == "binary":
        cases += [("outside [0, 1]", good * 3 - 1, "bad"), ("negative", -good, "bad"),
                  ("column", good[:, None], "ok"), ("bool", good > 0.5, "ok"), ("soft labels", good * 0.5 + 0.25, "ok"),
                  ("2 columns", np.ones((N, 2)), "bad")]
    else:
        cases += [("out of range", good + 3, "bad"), ("negative class", good - 3, "bad"),
                  ("non-integer floats", good + 0.5, "bad"), ("integer floats", good.astype(float), "ok"),
                  ("one-hot", np.eye(3)[good], "ok"), ("one-hot wrong width", np.eye(4)[good], "bad"),
                  ("column of labels", good[:, None], "ok"), ("uint8 labels", good.astype(np.uint8), "ok"),
                  ("bool", good > 0, "bad"), ("float32 labels", good.astype(np.float32), "ok")]
    return cases


@pytest.mark.parametrize("head", ["regression", "binary", "multiclass"])
def test_fit_and_evaluate_with_bad_y(backend, dtype, head):
    X = _good_X()
    model = None
    for label, y, expectation in junk_targets(backend, head):
        if model is None:
            model = _model(backend, dtype, head)

        def ok(result, label=label, expectation=expectation):
            assert expectation in ("ok", "huge"), f"accepted y={label}"
            values = result["loss"] if isinstance(result, nnx.History) else list(result.values())
            if expectation == "ok":
                assert all(math.isfinite(v) for v in values), f"y={label} gave non-finite {values}"
            assert not any(math.isnan(v) for v in values), f"y={label} gave NaN: {values}"

        fpe = (FloatingPointError,)  # fit's documented answer to a loss that stops being finite
        results = [
            contract(f"fit(y={label}, {head})", lambda y=y, m=model: m.fit(X, y, epochs=1), "y", ok=ok, also=fpe),
            contract(f"evaluate(y={label}, {head})", lambda y=y, m=model: m.evaluate(X, y), "y", ok=ok),
            contract(f"fit(validation y={label}, {head})",
                     lambda y=y, m=model: m.fit(X, _targets(head), validation_data=(X, y), epochs=1),
                     ("y", "validation"), ok=ok, also=fpe)]
        if not _refused(*results):
            model = None


def test_backward_with_bad_dY(backend, dtype):
    model = _model(backend, dtype)
    for label, dY, expectation in junk_arrays(backend, N, 2):
        if label == "too many features":
            expectation = "bad"

        def ok(dX, label=label, expectation=expectation):
            assert expectation != "bad", f"backward accepted dY={label}"
            assert tuple(dX.shape) == (N, F)
            if expectation == "ok":
                assert _finite(_host(model, dX))
                assert all(_finite(_host(model, p.grad)) for p in model.parameters())

        model.forward(_good_X(), training=True)
        contract(f"backward(dY={label})", lambda dY=dY: model.backward(dY), "dY", ok=ok)
    # call-order mistakes: a RuntimeError that says what to do (documented in Sequential.backward)
    _tally("backward without forward")
    fresh = _model(backend, dtype)
    with pytest.raises(RuntimeError, match="forward"):
        fresh.backward(np.ones((N, 2)))


def test_backward_after_an_inference_forward_is_not_silently_wrong(backend):
    """forward(training=True), then predict (dropout off), then backward: the gradient must be the
    one of the training forward, with its dropout mask, or an error."""
    _tally("backward after predict")
    model = _model(backend, "float64")
    X = _good_X()
    dY = np.ones((N, 2))
    state = model.dropout_rng.get_state()
    model.forward(X, training=True)
    reference = _host(model, model.backward(dY))
    model.dropout_rng.set_state(state)
    model.forward(X, training=True)
    model.predict(X)
    try:
        dX = _host(model, model.backward(dY))
    except (RuntimeError, ValueError):
        return
    np.testing.assert_allclose(dX, reference, rtol=1e-12, atol=1e-12)


def test_load_state_dict_with_bad_input(backend, dtype):
    model = _model(backend, dtype)
    good = {k: _host(model, v) for k, v in model.state_dict().items()}
    cases = [("None", None), ("list", list(good.items())), ("str", "abc"), ("int", 5), ("keys only", list(good)),
             ("missing", {k: v for k, v in good.items() if k != "0.bias"}),
             ("extra", {**good, "9.weight": good["0.bias"]}),
             ("non-str keys", {i: v for i, v in enumerate(good.values())})]
    for key in ("0.weight", "0.bias"):
        v = good[key]
        bad_nan = v.copy()
        bad_nan.flat[0] = np.nan
        cases += [(f"{key} wrong shape", {**good, key: np.ones(v.shape + (1,))}),
                  (f"{key} transposed", {**good, key: v.T if v.ndim == 2 else v[None]}),
                  (f"{key} str", {**good, key: "abc"}), (f"{key} None", {**good, key: None}),
                  (f"{key} complex", {**good, key: v.astype(complex)}), (f"{key} NaN", {**good, key: bad_nan}),
                  (f"{key} object", {**good, key: v.astype(object)})]
        cases += [(f"{key} {label}", {**good, key: value}) for label, value in _other_backend_arrays(backend, v)]
    before = {k: _host(model, v).copy() for k, v in model.state_dict().items()}
    for label, state in cases:
        contract(f"load_state_dict({label})", lambda s=state: model.load_state_dict(s), ("state_dict", "state"),
                 ok=lambda _, label=label: pytest.fail(f"load_state_dict accepted {label}"))
        for k, v in model.state_dict().items():  # a refused state_dict changes nothing
            np.testing.assert_array_equal(_host(model, v), before[k], err_msg=f"{label} half-loaded {k}")
    # these work
    for label, state in (("int weights", {k: np.round(v).astype(int) for k, v in good.items()}),
                         ("lists", {k: v.tolist() for k, v in good.items()}),
                         ("backend arrays", model.state_dict())):
        contract(f"load_state_dict({label})", lambda s=state: model.load_state_dict(s), "state_dict")


# -- the model's scalar and structural arguments ----------------------------------------------

FIT_ARGS = ["epochs", "batch_size", "lr", "loss", "optimizer", "validation_data", "validation_split", "metrics",
            "callbacks", "shuffle", "verbose", "check_finite"]


def _fit_arg_junk(backend, name):
    X = _good_X()
    extra = {
        "loss": ["nope", nnx.Sequential, losses.MSE, losses.MSE(), "cross_entropy"],
        "optimizer": ["nope", optim.SGD, optim.Adam(nnx.Sequential(nnx.Dense(F, 2)).parameters())],
        "validation_data": [(X,), (X, _targets("regression"), 1), "ab", (X[:, :2], _targets("regression")),
                            (X, _targets("regression")[:3]), [X, _targets("regression")]],
        "validation_split": [0.5, 1.0, 0.99, -0.1, 0.2],
        "metrics": ["nope", ["accuracy", 5], [("m", 5)], ["mse"], "mae", [("m", lambda xp, y, z, fl: xp.mean(z))]],
        "callbacks": [[5], "abc", [nnx.callbacks.Callback()]],
        "batch_size": [None, 10**9, 2],  # 2 as np.int64(2) in JUNK_SCALARS: the same compiled epoch on JAX
        "epochs": [0, 2],  # (10**30 epochs would run, as asked: not a bad input, just a long one)
        "lr": [1e-300, 0.5],
    }.get(name, [])
    return [*JUNK_SCALARS, *extra]


@pytest.mark.parametrize("name", FIT_ARGS)
def test_fit_arguments(backend, dtype, name):
    X, y = _good_X(), _targets("regression")
    model = None
    for value in _fit_arg_junk(backend, name):
        if name == "epochs" and isinstance(value, int) and value > 100:
            continue
        if model is None:
            model = _model(backend, dtype)

        def ok(history, value=value):
            assert isinstance(history, nnx.History)
            losses_ = history.history.get("loss", [])
            assert all(np.isfinite(losses_)), f"{name}={value!r} gave loss {losses_}"

        names = {"metrics": "metric", "validation_data": "validation", "validation_split": "validation"}
        with np.errstate(all="ignore"):
            result = contract(f"fit({name}={value!r:.40})", lambda v=value, m=model: m.fit(X, y, **{name: v}),
                              names.get(name, name), ok=ok, also=(FloatingPointError,))
        if not _refused(result):
            model = None


@pytest.mark.parametrize("method", ["predict", "evaluate"])
def test_batch_size_of_predict_and_evaluate(backend, dtype, method):
    X, y = _good_X(), _targets("regression")
    model = _model(backend, dtype)
    reference = _host(model, model.predict(X)) if method == "predict" else model.evaluate(X, y)
    for value in [*JUNK_SCALARS, 1, 4, N, 10**9]:
        call = (lambda v=value: model.predict(X, batch_size=v)) if method == "predict" else \
            (lambda v=value: model.evaluate(X, y, batch_size=v))

        def ok(result, value=value):
            assert value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
                                     and value > 0), f"accepted batch_size={value!r}"
            if method == "predict":
                np.testing.assert_allclose(_host(model, result), reference, rtol=1e-5)
            else:
                assert result["loss"] == pytest.approx(reference["loss"], rel=1e-5)

        contract(f"{method}(batch_size={value!r:.30})", call, "batch_size", ok=ok)


def test_evaluate_loss_and_metrics_arguments(backend, dtype):
    X, y = _good_X(), _targets("regression")
    model = _model(backend, dtype)
    for value in [*JUNK_SCALARS, "nope", losses.MSE(), "mae"]:
        contract(f"evaluate(loss={value!r:.30})", lambda v=value: model.evaluate(X, y, loss=v), "loss")
    for value in [*JUNK_SCALARS, "nope", ["r2"], [("x", 3)]]:
        contract(f"evaluate(metrics={value!r:.30})", lambda v=value: model.evaluate(X, y, metrics=v), "metric")


def test_to_save_and_check_gradients_arguments(backend, dtype, tmp_path):
    model = _model(backend, dtype)
    X, y = _good_X(), _targets("regression")
    for value in [*JUNK_SCALARS, "nope", "numpy:9", "array_api_strict:nope"]:
        contract(f"to({value!r:.30})", lambda v=value: model.to(v), ("backend", "device"),
                 also=(BackendUnavailableError,))
    for value in [None, 5, "float16", "int32", object()]:
        contract(f"to(dtype={value!r:.30})", lambda v=value: model.to(backend, dtype=v), "dtype")
    for value in [None, 5, 1.5, object(), b"\0bad"]:
        contract(f"save({value!r:.30})", lambda v=value: model.save(v), ("path", "PathLike", "embedded null"))
    contract("save(a directory)", lambda: model.save(tmp_path), "path", also=(IsADirectoryError, OSError))
    for name, value in (("eps", 0.0), ("eps", -1e-6), ("eps", "a"), ("eps", math.nan), ("loss", "nope"),
                        ("loss", 5), ("X", np.ones((2, F + 1))), ("y", np.ones((3, 2))), ("inputs", "yes")):
        kwargs = {"X": X, "y": y, "loss": "mse", name: value}  # the module's N rows: shapes JAX compiled already
        contract(f"check_gradients({name}={value!r:.30})", lambda k=kwargs: nnx.check_gradients(model, **k), name)


# -- constructors and free functions ---------------------------------------------------------

def _json_ok(obj):
    if hasattr(obj, "get_config"):
        json.dumps(obj.get_config())


CONSTRUCTORS = {
    "Dense.in_features": (lambda v: nnx.Dense(v, 2), "in_features"),
    "Dense.out_features": (lambda v: nnx.Dense(2, v), "out_features"),
    "Dense.init": (lambda v: nnx.Dense(2, 2, init=v), "init"),
    "Dense.regularizer": (lambda v: nnx.Dense(2, 2, regularizer=v), "regularizer"),
    "Dropout.rate": (lambda v: nnx.Dropout(v), "rate"),
    "LeakyReLU.alpha": (lambda v: nnx.LeakyReLU(v), "alpha"),
    "Sequential.layers": (lambda v: nnx.Sequential(v), "layer"),
    "Sequential.backend": (lambda v: nnx.Sequential(nnx.Dense(2, 2), backend=v), ("backend", "device")),
    "Sequential.dtype": (lambda v: nnx.Sequential(nnx.Dense(2, 2), dtype=v), "dtype"),
    "Sequential.seed": (lambda v: nnx.Sequential(nnx.Dense(2, 2), seed=v), "seed"),
    "Sequential.regularizer": (lambda v: nnx.Sequential(nnx.Dense(2, 2), regularizer=v), "regularizer"),
    "BinaryCrossEntropy.from_logits": (lambda v: losses.BinaryCrossEntropy(from_logits=v), "from_logits"),
    "CrossEntropy.from_logits": (lambda v: losses.CrossEntropy(from_logits=v), "from_logits"),
    "get_loss": (lambda v: losses.get_loss(v), "loss"),
    "L1.l": (lambda v: regularizers.L1(v), "l"),
    "L2.l": (lambda v: regularizers.L2(v), "l"),
    "ElasticNet.l1": (lambda v: regularizers.ElasticNet(v, 0.1), "l1"),
    "ElasticNet.l2": (lambda v: regularizers.ElasticNet(0.1, v), "l2"),
    "get_regularizer": (lambda v: regularizers.get_regularizer(v), "regularizer"),
    "get_backend": (lambda v: nnx.get_backend(v), ("backend", "device")),
}


def _accepts(ctor: str, value) -> bool | None:
    """Values a constructor must accept (True) or must refuse (False); None: either is fine."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    is_real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ctor.startswith("Dense.") and ctor.endswith("features"):
        return bool(is_int and value > 0)
    if ctor == "Dropout.rate":
        return bool(is_real and 0 <= value < 1)
    if ctor == "LeakyReLU.alpha":
        return bool(is_real and math.isfinite(value) and value >= 0)
    if ctor.endswith("from_logits"):
        return True if isinstance(value, bool) else None
    if ctor in ("L1.l", "L2.l", "ElasticNet.l1", "ElasticNet.l2"):
        return bool(is_real and math.isfinite(value) and value >= 0)
    if ctor == "Sequential.seed":
        return True if value is None or (is_int and 0 <= value < 2**63) else None
    return None


@pytest.mark.parametrize("ctor", sorted(CONSTRUCTORS))
def test_constructors(ctor):
    make, name = CONSTRUCTORS[ctor]
    extra = {"Dense.in_features": [10**12], "Sequential.backend": ["nope", "numpy:9", "jax:nope", "jax:cpu:99",
                                                                    "torch:nonsense", "torch:cuda:7", ""],
             "Sequential.seed": [2**64, 2**40, np.uint64(7)], "get_backend": ["nope", "jax:gpu", "torch:xla", ""]}
    for value in [*JUNK_SCALARS, *extra.get(ctor, [])]:
        want = _accepts(ctor, value)

        def ok(obj, value=value, want=want):
            assert want is not False, f"{ctor} accepted {value!r}"
            _json_ok(obj)

        result = contract(f"{ctor}({value!r:.30})", lambda v=value: make(v), name, ok=ok,
                          also=(BackendUnavailableError,))
        if want is True and isinstance(result, Exception):
            PROBLEMS.append(f"{ctor} refused {value!r}: {result!r:.200}")


def test_sequential_with_numpy_ints_trains_and_saves(tmp_path):
    """Sizes, seeds and batch sizes that come out of NumPy computations are ordinary ints."""
    _tally("numpy ints end to end")
    width = np.int64(4)
    model = nnx.Sequential(nnx.Dense(np.int64(F), width), nnx.Dropout(np.float32(0.25)), nnx.LeakyReLU(np.float64(0.1)),
                           nnx.Dense(width, np.int32(2)), seed=np.int64(3))
    model.fit(_good_X(), _targets("regression"), epochs=np.int64(2), batch_size=np.int64(4))
    model.save(tmp_path / "m.npz")
    assert nnx.load(tmp_path / "m.npz").epochs_trained == 2


def test_seed_reaches_every_backend_rng(backend):
    for seed in (0, 2**32 - 1, 2**32, 2**62):
        contract(f"Sequential(seed={seed}) on {backend.spec}",
                 lambda s=seed: nnx.Sequential(nnx.Dense(2, 2), nnx.Dropout(0.5), backend=backend, seed=s)
                 .forward(np.ones((3, 2)), training=True), "seed")


LOSS_CALLS = {
    "mse": losses.MSE(), "mae": losses.MAE(), "bce": losses.BinaryCrossEntropy(),
    "bce_logits": losses.BinaryCrossEntropy(from_logits=True), "ce": losses.CrossEntropy(),
    "ce_probs": losses.CrossEntropy(from_logits=False),
}


@pytest.mark.parametrize("name", sorted(LOSS_CALLS))
def test_loss_calls(backend, dtype, name):
    loss = LOSS_CALLS[name]
    gen = np.random.default_rng(0)
    pred = gen.uniform(0.05, 0.95, size=(N, 3))
    pred = pred / pred.sum(axis=1, keepdims=True) if name.startswith("ce") else pred
    true = gen.integers(0, 3, size=N) if name.startswith("ce") else np.round(gen.uniform(size=(N, 3)))
    y_pred = backend.asarray(pred, dtype=dtype)
    for role, cases in (("y_pred", junk_arrays(backend, N, 3)), ("y_true", junk_arrays(backend, N, 3))):
        for label, value, expectation in cases:
            if role == "y_true" and name.startswith("ce") and label in ("1-D",):
                continue  # class indices are 1-D: valid
            for method in ("__call__", "gradient", "value_and_grad"):
                args = (true, value) if role == "y_pred" else (value, y_pred)

                def ok(result, label=label, expectation=expectation, role=role, method=method):
                    if role == "y_pred" and label not in ("float32", "fortran order", "strided view", "read-only",
                                                          "same library, other device"):
                        # y_pred must be a floating array of this backend; NumPy only on numpy
                        assert label in ("float16",) or backend.name == "numpy" or expectation != "ok", label
                    arrays = result if isinstance(result, tuple) else (result,)
                    if expectation in ("ok", "finite"):
                        for a in arrays:
                            assert _finite(nnx.get_backend(a).to_host(a)), f"{name}.{method}({role}={label}) not finite"

                contract(f"{name}.{method}({role}={label})", lambda a=args, m=method: getattr(loss, m)(*a),
                         (role, "y_", "array"), ok=ok)


@pytest.mark.parametrize("cls", [regularizers.L1, regularizers.L2, regularizers.ElasticNet])
def test_regularizer_calls(backend, dtype, cls):
    reg = cls()
    for label, W, expectation in junk_arrays(backend, 3, 2, "W"):
        if not hasattr(W, "shape") or label in ("list of lists", "numpy scalar rows", "ragged list"):
            expectation = "bad" if expectation == "ok" else expectation
        for method in ("penalty", "gradient"):
            def ok(result, label=label, expectation=expectation):
                if expectation in ("ok", "finite") and hasattr(result, "shape"):
                    assert _finite(nnx.get_backend(result).to_host(result)), label

            contract(f"{cls.__name__}.{method}(W={label})", lambda W=W, m=method: getattr(reg, m)(W), ("W", "array"),
                     ok=ok)


OPTIMIZER_ARGS = {
    optim.SGD: {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0,
                "maximize": False},
    optim.Momentum: {"lr": 0.1, "momentum": 0.9},
    optim.Adam: {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    optim.AdamW: {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False},
    optim.RMSprop: {"lr": 0.1, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
    optim.Adagrad: {"lr": 0.1, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10},
}


@pytest.mark.parametrize("cls", list(OPTIMIZER_ARGS), ids=lambda c: c.__name__)
def test_optimizer_constructors_and_state(backend, dtype, cls):
    model = None
    for arg in ["params", *OPTIMIZER_ARGS[cls]]:
        for value in [*JUNK_SCALARS, [5], "dup", (0.9,), (0.9, 0.9, 0.9), (0.9, "a")]:
            if model is None:  # fresh after an accepted value: its step must not leak into the next
                model = _model(backend, dtype)
            if value == "dup":
                value = [model.parameters()[0]] * 2
            kwargs = {**OPTIMIZER_ARGS[cls], arg: value} if arg != "params" else dict(OPTIMIZER_ARGS[cls])
            params = value if arg == "params" else model.parameters()

            def ok(opt, arg=arg, value=value, model=model):
                # a constructed optimizer takes a finite step
                model.forward(_good_X(), training=True)
                model.backward(np.ones((N, 2)))
                opt.step()
                assert all(_finite(_host(model, p.value)) for p in model.parameters()), f"{arg}={value!r}"

            result = contract(f"{cls.__name__}({arg}={value!r:.30})", lambda p=params, k=kwargs: cls(p, **k),
                              (arg.rstrip("s"), "betas"), ok=ok)
            if not _refused(result):
                model = None
    model = _model(backend, dtype)
    opt = cls(model.parameters(), **OPTIMIZER_ARGS[cls])
    model.forward(_good_X(), training=True)
    model.backward(np.ones((N, 2)))
    opt.step()
    good = opt.state_dict()
    n_params = len(model.parameters())
    broken = [None, 5, "abc", [], {}, {**good, "type": "Nope"}, {**good, "hyperparams": 5},
              {**good, "hyperparams": {**good["hyperparams"], "lr": "fast"}}, {**good, "hyperparams": {}},
              {**good, "step": -1}, {**good, "step": "3"}, {**good, "state": 5}, {**good, "state": [1]},
              {**good, "state": {"0": 5}}, {**good, "state": {"x": {}}}, {**good, "state": {str(n_params): {}}},
              {**good, "param_steps": 5}, {**good, "param_steps": [1]}, {**good, "param_steps": ["a"] * n_params}]
    if good["state"]:
        first = next(iter(good["state"]))
        key = next(iter(good["state"][first]))
        broken += [{**good, "state": {**good["state"], first: {**good["state"][first], key: "abc"}}},
                   {**good, "state": {**good["state"], first: {**good["state"][first], key: np.ones(7)}}}]
    for i, state in enumerate(broken):
        contract(f"{cls.__name__}.load_state_dict(broken #{i})", lambda s=state: opt.load_state_dict(s),
                 ("state_dict", "hyperparams", "lr", "param"),
                 ok=lambda _, i=i: pytest.fail(f"accepted broken state #{i}"))


def test_optimizer_step_with_bad_gradients(backend, dtype):
    model = _model(backend, dtype)
    opt = optim.Adam(model.parameters(), lr=0.1)
    p = model.parameters()[0]
    cases = [("wrong shape", np.ones(p.shape[:1])), ("transposed", np.ones(p.shape[::-1])),
             ("str", "abc"), ("list", np.ones(p.shape).tolist())]
    cases += _other_backend_arrays(backend, np.ones(p.shape))
    for label, grad in cases:
        before = _host(model, p.value).copy()
        p.grad = grad
        contract(f"Adam.step(grad={label})", opt.step, ("grad", p.name),
                 ok=lambda _, label=label: pytest.fail(f"step used a gradient that is {label}"))
        np.testing.assert_array_equal(_host(model, p.value), before)


# -- hypothesis: random junk into the main entry points --------------------------------------

_junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.binary(max_size=5), st.lists(st.floats(allow_nan=True), max_size=4),
    st.lists(st.lists(st.floats(-1e6, 1e6), min_size=F, max_size=F), max_size=5),
    st.tuples(st.integers(0, 7), st.integers(0, 5), st.sampled_from(["f8", "f4", "i8", "u1", "b1", "c8", "U1", "O"]))
    .map(lambda t: np.zeros(t[:2], dtype=t[2])),
)


def test_hypothesis_junk_into_fit_predict_evaluate(backend, dtype):
    n = max(1, int({"jax": 15, "numpy": 120}.get(backend.name, 40) * SCALE))
    model = _model(backend, dtype)
    X, y = _good_X(), _targets("regression")

    @settings(max_examples=n, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(where=st.sampled_from(["X", "y", "batch_size", "epochs", "lr", "validation_split", "predict X",
                                  "evaluate X", "evaluate y", "state_dict"]), value=_junk)
    def check(where, value):
        # a valid but huge epoch count runs as asked; that is no bad input
        assume(not (where == "epochs" and isinstance(value, int) and value > 100))
        _tally("hypothesis junk")
        if where == "state_dict":
            call = lambda: model.load_state_dict({**model.state_dict(), "0.weight": value})  # noqa: E731
            names = "state_dict"
        elif where == "predict X":
            call, names = (lambda: model.predict(value)), "X"
        elif where.startswith("evaluate"):
            kwargs = {"X": X, "y": y, where.split()[1]: value}
            call, names = (lambda: model.evaluate(**kwargs)), where.split()[1]
        else:
            kwargs = {"X": X, "y": y, "epochs": 1, where: value}
            call, names = (lambda: model.fit(**kwargs)), where.split("_")[0]

        def ok(result):
            if isinstance(result, nnx.History):
                assert all(np.isfinite(result.history.get("loss", [])))  # epochs=0 records nothing
            elif isinstance(result, dict):
                assert all(math.isfinite(v) for v in result.values())

        with np.errstate(all="ignore"):  # FloatingPointError: fit's documented answer to a diverging loss
            contract(f"hypothesis {where}", call, names, ok=ok, also=(FloatingPointError,))

    check()
