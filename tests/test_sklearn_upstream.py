"""scikit-learn's own MLP tests, run against nnx.sklearn: the installed `test_mlp.py` with only the estimators rebound.

The file ships inside scikit-learn's wheel; it is loaded at collection time, never copied. While it
executes, `sklearn.neural_network.MLPClassifier`/`MLPRegressor` are nnx's, so its
``from sklearn.neural_network import ...`` and its parametrize lists bind nnx's estimators; every
test body runs unchanged. Only the tests that call scikit-learn's private functions are expected to
fail, each with its reason (docs/sklearn.md names them).
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

import sklearn  # noqa: E402
import sklearn.neural_network  # noqa: E402

import nnx.sklearn  # noqa: E402

_PATH = os.path.join(os.path.dirname(sklearn.__file__), "neural_network", "tests", "test_mlp.py")

# test name -> why it cannot pass: it calls a private function of scikit-learn's estimator
PRIVATE_FUNCTION_TESTS = {
    "test_gradient": "calls scikit-learn's private MLPClassifier._loss_grad_lbfgs, which nnx does not have "
                     "(nnx's gradients are checked by nnx.check_gradients and tests/test_sklearn_fidelity.py)",
}


def _load_upstream():
    """scikit-learn's test_mlp.py as a module, executed with nnx's estimators in sklearn.neural_network."""
    if not os.path.exists(_PATH):
        pytest.skip(f"this scikit-learn ({sklearn.__version__}) ships no neural_network/tests/test_mlp.py",
                    allow_module_level=True)
    spec = importlib.util.spec_from_file_location("sklearn_upstream_test_mlp", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    originals = {name: getattr(sklearn.neural_network, name) for name in ("MLPClassifier", "MLPRegressor")}
    try:
        for name in originals:
            setattr(sklearn.neural_network, name, getattr(nnx.sklearn, name))
        spec.loader.exec_module(module)
    finally:
        for name, original in originals.items():
            setattr(sklearn.neural_network, name, original)
    assert module.MLPClassifier is nnx.sklearn.MLPClassifier and module.MLPRegressor is nnx.sklearn.MLPRegressor
    return module


_UPSTREAM = _load_upstream()


@pytest.fixture
def global_random_seed():
    """scikit-learn's conftest fixture with its default seed (its SKLEARN_TESTS_GLOBAL_RANDOM_SEED unset)."""
    return 42


def _collected(name, test):
    reason = PRIVATE_FUNCTION_TESTS.get(name)
    return test if reason is None else pytest.mark.xfail(reason=reason, strict=True)(test)


for _name, _test in vars(_UPSTREAM).items():
    if _name.startswith("test_") and callable(_test):
        globals()[_name] = _collected(_name, _test)


def test_every_expected_failure_names_an_upstream_test():
    """A renamed upstream test must not leave a stale expected failure behind."""
    assert set(PRIVATE_FUNCTION_TESTS) <= {name for name in vars(_UPSTREAM) if name.startswith("test_")}
