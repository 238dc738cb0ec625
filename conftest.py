"""Repository-level pytest setup: run the suite on every core when pytest-xdist is installed.

`-n auto` is not in pyproject's addopts because plain pytest rejects the option without
pytest-xdist; the suite must collect and run with only numpy, array_api_strict and
pytest installed. An explicit ``-n N`` (``-n 0``: in this process) always wins.
"""

from __future__ import annotations

import importlib.util
import os

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # a worker loads this file too and sees no -n of its own: asking it for workers would start
    # workers inside workers, without end, until the machine runs out of memory
    if hasattr(config, "workerinput") or "PYTEST_XDIST_WORKER" in os.environ:
        return
    if importlib.util.find_spec("xdist") is not None and getattr(config.option, "numprocesses", 0) is None:
        config.option.numprocesses = "auto"
