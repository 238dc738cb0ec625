"""``python -m nnx info``: version, every backend with version/devices/status, and the BLAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nnx
from nnx.__main__ import collect_info, format_info, main
from nnx.backends import BACKEND_NAMES, backend_status

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "nnx", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_info_command_in_a_subprocess():
    out = _run("info")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"nnx {nnx.__version__}")
    for name in BACKEND_NAMES:
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"no line for {name}"
        ok, _ = backend_status(name)
        assert ("runs here" in line and "does not" not in line) if ok else "does not run here: " in line
    assert "devices: cpu" in text
    blas = text.split("\nBLAS:\n", 1)[1]
    assert blas.strip() and "none found" not in blas


def test_info_json_and_help(capsys):
    info = collect_info()
    json.dumps(info)  # serialisable
    assert info["nnx"] == nnx.__version__
    by_name = {b["name"]: b for b in info["backends"]}
    assert list(by_name) == list(BACKEND_NAMES)
    numpy = by_name["numpy"]
    assert numpy["runs"] and numpy["version"] and numpy["devices"] == ["cpu"]
    for b in info["backends"]:
        assert b["runs"] == backend_status(b["name"])[0]
        assert b["runs"] or b["why"]  # a backend that doesn't run says why
    assert any(lib["api"] == "blas" for lib in info["blas"])
    assert format_info(info).splitlines()[0].startswith("nnx ")

    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nnx"] == nnx.__version__
    assert main([]) == 0
    assert "info" in capsys.readouterr().out


def test_info_explains_a_backend_that_cannot_run(monkeypatch):
    from nnx import __main__ as cli

    monkeypatch.setattr("nnx.backends.backend_status", lambda name: (False, "BackendUnavailableError: backend "
                                                                    f"'{name}' cannot run here: no GPU (test)"))
    text = cli.format_info(cli.collect_info())
    assert "does not run here: no GPU (test)" in text


def test_bare_command_takes_the_json_flag_its_hint_names(capsys):
    # `python -m nnx` ends with "add --json for one JSON object"; `python -m nnx --json` was a usage error
    assert main([]) == 0
    assert "add --json" in capsys.readouterr().out
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["nnx"] == nnx.__version__
