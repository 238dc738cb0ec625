"""NNX_TEST_BACKEND (what `bash backends/run_tests.sh NAME` sets) selects the backend cases the suite runs.

A value that selects no case made every backend-parametrized test skip as "got empty parameter set" and the run
pass: a typo, a capitalised name, or "generic:array_api_strict", the spec of the generic case itself."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE_CONFTEST = Path(__file__).resolve().parent / "conftest.py"


@pytest.fixture
def suite_conftest(request):
    """The suite's conftest module, as pytest loaded it (no second import)."""
    for plugin in request.config.pluginmanager.get_plugins():
        if Path(getattr(plugin, "__file__", "") or "").resolve() == SUITE_CONFTEST:
            return plugin
    pytest.fail("tests/conftest.py is not loaded")


@pytest.mark.parametrize("value, specs", [
    ("numpy", ["numpy"]),
    ("array_api_strict", ["array_api_strict", "array_api_strict:device1"]),
    ("generic", ["generic:array_api_strict"]),
    ("generic:array_api_strict", ["generic:array_api_strict"]),
    ("Torch", ["torch"]),  # backend names are case-insensitive everywhere else
    ("torch:cuda", ["torch:cuda"]),
])
def test_each_backend_value_selects_its_cases(suite_conftest, monkeypatch, value, specs):
    monkeypatch.setenv("NNX_TEST_BACKEND", value)
    assert [spec for spec, _ in suite_conftest._selected_cases()] == specs


@pytest.mark.parametrize("value", ["nmupy", "cuda", "cupy12", "tensorflow:gpu"])
def test_a_backend_value_that_selects_nothing_is_refused(suite_conftest, monkeypatch, value):
    monkeypatch.setenv("NNX_TEST_BACKEND", value)
    with pytest.raises(pytest.UsageError, match=r"NNX_TEST_BACKEND=.* selects no backend case; valid: .*numpy"):
        suite_conftest._selected_cases()
