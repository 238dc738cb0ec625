"""Save and load as a PyTorch or Keras user calls them: ``~`` paths, bytes paths, file objects, another library's
files, and a save that fails midway over a good checkpoint."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

import nnx
from nnx import callbacks
from nnx.io import CheckpointError


def _model():
    return nnx.Sequential(nnx.Dense(2, 3), nnx.Dense(3, 1), seed=0, backend="numpy")


def _weights(model):
    return {k: np.array(v) for k, v in model.state_dict().items()}


def test_a_tilde_path_is_the_home_folder_for_save_load_and_the_callbacks(tmp_path, monkeypatch):
    """``~`` was taken literally: `save("~/m.npz")` made a folder named ``~`` in the working directory (save creates
    missing folders) and put the file there, not in the home folder the user then looks in."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    model = _model()
    model.save("~/m.npz")
    assert (home / "m.npz").is_file() and not (work / "~").exists()
    loaded = nnx.load("~/m.npz")
    for k, v in _weights(loaded).items():
        np.testing.assert_array_equal(v, _weights(model)[k])
    assert callbacks.ModelCheckpoint("~/ck-{epoch}.npz").filepath == os.path.join(str(home), "ck-{epoch}.npz")
    assert callbacks.CSVLogger("~/log.csv").path == home / "log.csv"


def test_bytes_paths_save_and_load_as_open_takes_them(tmp_path):
    model = _model()
    path = os.fsencode(tmp_path / "m.npz")
    model.save(path)
    np.testing.assert_array_equal(_weights(nnx.load(path))["0.weight"], _weights(model)["0.weight"])


@pytest.mark.parametrize("verb", ["save", "load"])
def test_a_file_object_is_refused_naming_what_to_give(verb):
    """torch.save takes a BytesIO; nnx writes by name (a temporary file renamed into place): the error said only
    "expected str, bytes or os.PathLike object", from deep inside pathlib."""
    buffer = io.BytesIO()
    with pytest.raises(TypeError, match=rf"{verb} takes a file name .*got BytesIO.*not through an open file object"):
        _model().save(buffer) if verb == "save" else nnx.load(buffer)


def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _torch_zip(path):
    _zip(path, {"archive/data.pkl": pickle.dumps({"w": 1}), "archive/version": b"3\n"})


def _keras(path):
    _zip(path, {"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": b"\x89HDF\r\n\x1a\n"})


FOREIGN = {
    "m.pt": (_torch_zip, r"a PyTorch file \(torch.save\).*model.load_state_dict"),
    "legacy.pt": (lambda p: p.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2)), r"a pickle"),
    "m.keras": (_keras, r"a Keras model"),
    "m.h5": (lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64)), r"an HDF5 file"),
    "w.npy": (lambda p: np.save(p, np.ones(3)), r"a single NumPy array \(np.save\)"),
    "m.safetensors": (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"{}"), r"a safetensors file"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_another_library_s_file_is_named_for_what_it_is(tmp_path, name):
    """A torch .pt read as "entry 'archive/data.pkl' is not a .npy array", a Keras .h5 as "not a zip file"."""
    make, what = FOREIGN[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointError, match=rf"this is {what}") as info:
        nnx.load(path)
    assert "not a readable nnx checkpoint" in str(info.value) and "never unpickles" in str(info.value)


def test_a_truncated_checkpoint_is_still_called_truncated(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    path.write_bytes(path.read_bytes()[:200])  # a zip's first bytes: sniffed as no other format
    with pytest.raises(CheckpointError, match="truncated or not an .npz"):
        nnx.load(path)


@pytest.mark.parametrize("raised", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_save_failing_at_the_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, raised):
    path = tmp_path / "best.npz"
    _model().save(path)
    before = path.read_bytes()

    def replace(src, dst):
        raise raised

    monkeypatch.setattr(os, "replace", replace)
    other = nnx.Sequential(nnx.Dense(2, 3), nnx.Dense(3, 1), seed=1, backend="numpy")
    with pytest.raises(type(raised)):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]
