"""Portable checkpoints: one .npz that moves between backends, keeps the optimizer, and is written atomically."""

from __future__ import annotations

import json
import os
import struct
import zipfile

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status
from nnx.io import CONFIG_KEY, CheckpointError

CHAIN = [name for name in ("numpy", "torch", "jax", "array_api_strict") if backend_status(name)[0]]


def _data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(24, 3))
    return X, X @ rng.normal(size=(3, 2))


def _model(backend="numpy", dtype="float64"):
    return nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 2), backend=backend, dtype=dtype, seed=2)


def _weights(model):
    return {k: model.backend.to_host(v).copy() for k, v in model.state_dict().items()}


def _config(path):
    with zipfile.ZipFile(path) as zf:
        raw = zf.read(CONFIG_KEY + ".npy")
    return json.loads(raw[raw.index(b"\n") + 1:].decode())  # past the .npy header


def test_round_trip_numpy_torch_jax_strict(tmp_path):
    if len(CHAIN) < 2:
        pytest.skip("needs at least two backends")
    X, y = _data()
    model = _model(CHAIN[0])
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=3, batch_size=8)
    reference, expected = _weights(model), model.backend.to_host(model.predict(X))
    opt_state = model.optimizer.state_dict()
    source_backend = model.backend
    for i in range(len(CHAIN)):
        path = tmp_path / f"hop{i}.npz"
        model.save(path)
        config = _config(path)
        assert config["trained_on"] == model.backend.spec and config["nnx_version"] == nnx.__version__
        assert config["model"]["dtype"] == "float64" and len(config["model"]["layers"]) == 3
        nxt = CHAIN[(i + 1) % len(CHAIN)]
        model = nnx.load(path, backend=nxt)
        assert model.backend.name == nxt and model.epochs_trained == 3
        for k, v in _weights(model).items():
            np.testing.assert_array_equal(v, reference[k])  # plain float64 copies: bit for bit
        np.testing.assert_allclose(model.backend.to_host(model.predict(X)), expected, rtol=1e-12, atol=1e-12)
        state = model.optimizer.state_dict()
        assert state["type"] == opt_state["type"] and state["step"] == opt_state["step"]
        for idx, slots in opt_state["state"].items():
            for slot, value in slots.items():
                np.testing.assert_array_equal(model.backend.to_host(state["state"][idx][slot]),
                                              source_backend.to_host(value))


def test_optimizer_state_carries_training_on_to_another_backend(backend, tmp_path):
    """Train on NumPy, save, continue on `backend`: the same weights as never stopping on NumPy."""
    X, y = _data()
    straight = _model()
    straight.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=4, batch_size=8)
    first = _model()
    first.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=8)
    first.save(tmp_path / "half.npz")
    resumed = nnx.load(tmp_path / "half.npz", backend=backend)
    resumed.fit(X, y, epochs=2, batch_size=8)  # loss and optimizer come from the file
    for k, v in _weights(resumed).items():
        np.testing.assert_allclose(v, _weights(straight)[k], rtol=0, atol=1e-10, err_msg=k)

    # without the optimizer state Adam starts over, and the trajectory differs
    first.save(tmp_path / "weights_only.npz", include_optimizer=False)
    fresh = nnx.load(tmp_path / "weights_only.npz", backend=backend)
    assert fresh.optimizer is None and "optimizer" not in _config(tmp_path / "weights_only.npz")["training"]
    fresh.fit(X, y, optimizer="adam", lr=0.01, epochs=2, batch_size=8)
    assert not np.allclose(_weights(fresh)["0.weight"], _weights(straight)["0.weight"], atol=1e-10)


def test_load_with_another_dtype(tmp_path):
    model = _model(dtype="float64")
    model.save(tmp_path / "m.npz")
    small = nnx.load(tmp_path / "m.npz", dtype="float32")
    assert small.dtype == "float32"
    for k, v in _weights(small).items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, _weights(model)[k], rtol=1e-6)


def test_model_to_chain_leaves_each_original_untouched():
    X, y = _data()
    model = _model(CHAIN[0])
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=1, batch_size=8)
    reference = _weights(model)
    for name in CHAIN[1:]:
        moved = model.to(name)
        assert moved is not model and moved.backend.name == name and moved.optimizer is not None
        moved.fit(X, y, epochs=1, batch_size=8)  # changes only the copy
        for k, v in _weights(model).items():
            np.testing.assert_array_equal(v, reference[k])
        model, reference = moved, _weights(moved)



def _rewrite(path, out, config=None, array=None):
    """A copy of the checkpoint at `path` written to `out` by np.savez, with its config and arrays changed."""
    with np.load(path, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    if config is not None:
        entries[CONFIG_KEY] = np.frombuffer(json.dumps(config(_config(path))).encode(), dtype=np.uint8)
    if array is not None:
        entries = {k: v if k == CONFIG_KEY else array(v) for k, v in entries.items()}
    np.savez(out, **entries)
    return out


def test_a_file_saved_where_its_backend_cannot_run_here_loads_on_the_same_library_with_a_warning(tmp_path):
    # saved on a GPU, loaded without one: the same library's host device (torch for torch:cuda), else numpy
    candidates = {"cupy": "numpy", "torch:cuda": "torch", "jax:gpu": "jax"}
    unavailable = [s for s in candidates if not nnx.backends.backend_status(s)[0]]
    if not unavailable:
        pytest.skip("every accelerator backend runs here")
    X, y = _data()
    model = _model("numpy")
    model.fit(X, y, loss="mse", epochs=1, batch_size=8)
    model.save(tmp_path / "host.npz")
    for spec in unavailable:
        def on_device(config, spec=spec):
            config["model"]["backend"] = config["trained_on"] = spec
            return config
        path = _rewrite(tmp_path / "host.npz", tmp_path / "device.npz", config=on_device)
        host = candidates[spec] if nnx.backends.backend_status(candidates[spec])[0] else "numpy"
        with pytest.warns(UserWarning, match=rf"saved on '{spec}', which cannot run here .*; loading on '{host}"):
            loaded = nnx.load(path)
        assert loaded.backend.name == host
        np.testing.assert_allclose(loaded.backend.to_host(loaded.predict(X)), model.predict(X), rtol=1e-12, atol=1e-15)


# which parameters an optimizer updates, in which order
OPTIMIZED = {
    "head_only": lambda model: model.layers[2].parameters(),  # fine-tuning the last layer
    "head_first": lambda model: [*model.parameters()[2:], *model.parameters()[:2]],
}


@pytest.mark.parametrize("choice", sorted(OPTIMIZED))
def test_an_optimizer_over_some_parameters_in_any_order_resumes_exactly(backend, tmp_path, choice):
    """The file names the parameter of every state entry: load and to() rebuild the optimizer over those."""
    X, y = _data()
    straight = _model(backend)
    straight.fit(X, y, loss="mse", optimizer=nnx.optim.Adam(OPTIMIZED[choice](straight), lr=0.01), epochs=4,
                 batch_size=8)
    first = _model(backend)
    first.fit(X, y, loss="mse", optimizer=nnx.optim.Adam(OPTIMIZED[choice](first), lr=0.01), epochs=2, batch_size=8)
    first.save(tmp_path / "half.npz")
    names = [p.name for p in first.optimizer.params]
    for resumed in (nnx.load(tmp_path / "half.npz"), first.to(backend)):
        own = {p.name: p for p in resumed.parameters()}
        assert [p.name for p in resumed.optimizer.params] == names
        assert all(p is own[p.name] for p in resumed.optimizer.params)
        resumed.fit(X, y, epochs=2, batch_size=8)
        for k, v in _weights(resumed).items():
            np.testing.assert_allclose(v, _weights(straight)[k], rtol=0, atol=1e-10, err_msg=k)


def test_a_file_whose_optimizer_state_names_no_parameters_loads_by_position(backend, tmp_path):
    """Files written before the state named its parameters map it onto the model's parameters in order."""
    X, y = _data()
    straight = _model(backend)
    straight.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=4, batch_size=8)
    first = _model(backend)
    first.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=8)
    first.save(tmp_path / "half.npz")

    def unnamed(config):
        del config["training"]["optimizer"]["param_names"]
        return config

    resumed = nnx.load(_rewrite(tmp_path / "half.npz", tmp_path / "old.npz", config=unnamed))
    assert [p.name for p in resumed.optimizer.params] == [p.name for p in resumed.parameters()]
    resumed.fit(X, y, epochs=2, batch_size=8)
    for k, v in _weights(resumed).items():
        np.testing.assert_allclose(v, _weights(straight)[k], rtol=0, atol=1e-10, err_msg=k)


def test_big_endian_arrays_load_on_every_backend(backend, tmp_path):
    """np.savez on a big-endian host (s390x) keeps that byte order; loading gives the values in native order."""
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=1, batch_size=8)
    model.save(tmp_path / "native.npz")
    path = _rewrite(tmp_path / "native.npz", tmp_path / "big.npz", array=lambda v: v.astype(v.dtype.newbyteorder(">")))
    loaded = nnx.load(path, backend=backend)
    for k, v in _weights(loaded).items():
        assert v.dtype.isnative
        np.testing.assert_array_equal(v, _weights(model)[k])
    saved, restored = model.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"]
    for i, slots in saved.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(loaded.backend.to_host(restored[i][slot]), value)
    loaded.fit(X, y, epochs=1, batch_size=8)

# -- errors name the file and the problem --------------------------------------------------------

@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="mse", epochs=1)
    model.save(path)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz.*no such checkpoint"):
        nnx.load(path)
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        nnx.load(tmp_path)


def test_saving_to_a_folder_names_the_folder_not_a_temporary_file(tmp_path, monkeypatch):
    model = _model()
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a checkpoint file; save to a file in it"):
        model.save(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError, match=r"'\.' is a folder"):
        model.save("")
    assert os.listdir(tmp_path) == []


def test_a_missing_file_points_at_the_name_with_or_without_npz(tmp_path):
    model = _model()
    model.save(tmp_path / "model")  # written as given, like torch.save (np.savez would add .npz)
    with pytest.raises(FileNotFoundError, match=r"model\.npz: no such checkpoint file; there is .*model'"):
        nnx.load(tmp_path / "model.npz")
    model.save(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match=r"other: no such checkpoint file; there is .*other\.npz'"):
        nnx.load(tmp_path / "other")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_file(good, keep):
    data = good.read_bytes()
    good.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"good\.npz: .*(truncated|not an \.npz)"):
        nnx.load(good)


@pytest.mark.parametrize("kind", ["text", "foreign_npz", "npy", "pickle_free_json"])
def test_foreign_files(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    if kind == "text":
        path.write_text("hello, this is not a checkpoint\n")
        match = r"text\.npz: not a readable nnx checkpoint"
    elif kind == "foreign_npz":
        np.savez(path, a=np.arange(3.0), b=np.eye(2))
        match = r"foreign_npz\.npz: not an nnx checkpoint \(no __config__"
    elif kind == "npy":
        with open(path, "wb") as f:
            np.save(f, np.arange(4.0))
        match = r"npy\.npz: not a readable nnx checkpoint"
    else:
        cfg = np.frombuffer(json.dumps({"format": "something-else"}).encode(), dtype=np.uint8)
        np.savez(path, **{CONFIG_KEY: cfg})
        match = r"pickle_free_json\.npz: not an nnx checkpoint \(format 'something-else'\)"
    with pytest.raises(CheckpointError, match=match):
        nnx.load(path)


def test_arrays_that_do_not_match_the_config_are_named(good, tmp_path):
    with np.load(good, allow_pickle=False) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["param/2.weight"] = np.zeros((5, 3))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **entries)
    with pytest.raises(CheckpointError, match=r"bad\.npz: .*array '2\.weight' has shape \(5, 3\).*\(5, 2\)"):
        nnx.load(bad)


# -- atomic writes ----------------------------------------------------------------------------------

def test_a_crash_while_saving_keeps_the_old_checkpoint(good, monkeypatch):
    before = good.read_bytes()
    real_savez = np.savez

    def crash_halfway(handle, **arrays):
        real_savez(handle, **arrays)
        handle.truncate(handle.tell() // 2)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crash_halfway)
    with pytest.raises(OSError, match="simulated"):
        _model().save(good)
    monkeypatch.undo()
    assert good.read_bytes() == before  # the good file was never touched
    assert sorted(p.name for p in good.parent.iterdir()) == ["good.npz"]  # and no temporary file is left
    nnx.load(good)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_permissions_follow_umask_or_the_replaced_file(tmp_path):
    path = tmp_path / "m.npz"
    old = os.umask(0o022)
    try:
        _model().save(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0600 of a temporary file
    path.chmod(0o640)
    _model().save(path)
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux tells the umask in /proc")
def test_saving_reads_the_umask_without_setting_it(tmp_path, monkeypatch):
    """Setting the process-wide umask to 0, even for a moment, makes every file another thread creates then
    world-writable: where the system tells the umask, saving only reads it."""
    old = os.umask(0o027)
    try:
        def refuse(mask):
            raise AssertionError("os.umask was called")

        monkeypatch.setattr(os, "umask", refuse)
        _model().save(tmp_path / "m.npz")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert (tmp_path / "m.npz").stat().st_mode & 0o777 == 0o640

def test_a_long_file_name_saves_and_leaves_no_temporary_file(tmp_path):
    """A 250-byte name is valid (the limit is 255), so the temporary name beside it must be short."""
    path = tmp_path / ("m" * 246 + ".npz")
    _model().save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    nnx.load(path)


@pytest.mark.parametrize("recorded", [True, False], ids=["device-recorded", "older-file"])
def test_a_torch_generator_state_from_another_device_type_is_not_restored(tmp_path, recorded):
    """A checkpoint written with torch on a GPU holds CUDA's 16-byte generator state; torch on the CPU (5,056 bytes)
    loads the file with its dropout stream as seeded, instead of refusing the whole file. The device type is
    recorded with the state; a file from before that is told by the state's size."""
    pytest.importorskip("torch")
    X = np.random.default_rng(0).standard_normal((32, 3))
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Dropout(0.2), nnx.Dense(4, 1), seed=0, backend="torch")
    model.fit(X, X[:, :1], epochs=1)
    model.save(tmp_path / "cpu.npz")
    with np.load(tmp_path / "cpu.npz") as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads(arrays["__config__"].tobytes())
    config["training"]["dropout_rng"]["torch"] = list(struct.pack("<Qq", 12345, 64))  # CUDA's layout: seed, offset
    if recorded:
        config["training"]["dropout_rng"]["torch_device"] = "cuda"
    else:
        del config["training"]["dropout_rng"]["torch_device"]
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(tmp_path / "gpu.npz", **arrays)
    loaded = nnx.load(tmp_path / "gpu.npz", backend="torch")
    np.testing.assert_array_equal(loaded.backend.to_host(loaded.parameters()[0].value),
                                  model.backend.to_host(model.parameters()[0].value))


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_saving_through_a_symbolic_link_updates_the_file_it_points_at(tmp_path):
    """`latest.npz -> runs/model.npz`: a save writes the file the link names, as open() would, and the link
    stays a link (found in review: the rename replaced the link with a file, the target kept the old model)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    target, link = runs / "model.npz", tmp_path / "latest.npz"
    _model().save(target)
    os.symlink(target, link)
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="mse", epochs=2)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert nnx.load(target).epochs_trained == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.npz", "runs"]
    assert [p.name for p in runs.iterdir()] == ["model.npz"]
    dangling = tmp_path / "next.npz"  # a link to a file not written yet: the file is created where it points
    os.symlink(runs / "next.npz", dangling)
    model.save(dangling)
    assert dangling.is_symlink() and nnx.load(runs / "next.npz").epochs_trained == 2


class KeptOptimizer(nnx.optim.SGD, name="test_checkpoints.KeptOptimizer"):
    """An optimizer of the user's own, registered under its class name when defined."""


@pytest.mark.parametrize("what", ["loss", "optimizer"])
def test_a_file_naming_an_unregistered_loss_or_optimizer_says_so_not_that_it_is_malformed(tmp_path, what):
    """The file is sound; the class is not known in this process (found in review: it read 'training state is
    malformed')."""
    X, y = _data()
    model = _model()
    model.fit(X, y, loss=nnx.losses.MAE() if what == "loss" else "mse", epochs=1,
              optimizer=KeptOptimizer(model.parameters(), lr=0.01))
    model.save(tmp_path / "m.npz")
    registry, name = ((nnx.losses.LOSSES, "MAE") if what == "loss"
                      else (nnx.optim.OPTIMIZERS, "test_checkpoints.KeptOptimizer"))
    entry = registry.remove(name)
    try:
        with pytest.raises(CheckpointError) as info:
            nnx.load(tmp_path / "m.npz")
    finally:
        registry.add(name, entry)
    assert f"unknown {what} {name!r}" in str(info.value) and "import" in str(info.value)
    assert "malformed" not in str(info.value)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_write_protected_checkpoint_is_not_replaced(tmp_path, monkeypatch):
    """`chmod a-w best.npz` keeps a file, as open(path, "wb") and torch.save refuse to write it (found in review:
    the rename replaced it regardless, a protected best model lost without a word)."""
    path = tmp_path / "best.npz"
    _model().save(path)
    before = path.read_bytes()
    path.chmod(0o444)
    real_access = os.access
    # root may write anything; the test runs as the user whom the mode protects against
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(path) and mode & os.W_OK
                        else real_access(p, mode, **kw))
    X, y = _data()
    model = _model()
    model.fit(X, y, loss="mse", epochs=1)
    with pytest.raises(PermissionError, match=r"best\.npz.*write-protected"):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]


def test_a_folder_that_cannot_be_written_is_named_not_a_temporary_file(tmp_path, monkeypatch):
    """A read-only folder: the error names it and why a save writes there, not a '.nnx-....tmp' the user never
    asked for (found in review)."""
    import nnx.io

    def refuse(prefix="", suffix="", dir=None):
        raise PermissionError(13, "Permission denied", os.path.join(dir, prefix + "abc123" + suffix))

    monkeypatch.setattr(nnx.io.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        _model().save(tmp_path / "model.npz")
    message = str(info.value)
    assert str(tmp_path) in message and "model.npz" in message and ".nnx-" not in message


@pytest.mark.parametrize(("state", "where"), [({"MyCallback": {3: 0.5}}, r"\['MyCallback'\]: key 3"),
                                              ({"MyCallback": {"best": np.float32(0.5)}},
                                               r"\['MyCallback'\]\['best'\].*float32")])
def test_callback_state_that_would_not_load_as_saved_is_refused_by_name(tmp_path, state, where):
    """JSON makes an int key a string, so a callback's state keyed by epoch loaded with other keys and was not
    found; a NumPy float32 failed with json's message naming no place (found in review)."""
    model = _model()
    model.callback_state.update(state)
    with pytest.raises(TypeError, match=r"model\.callback_state" + where):
        model.save(tmp_path / "m.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", ["BatchNorm.momentum", "LeakyReLU.alpha", "loss.reduction"])
def test_a_setting_its_constructor_refuses_is_not_saved_into_a_file_that_never_loads(tmp_path, change):
    # found in review: a setting changed after construction to a value the constructor refuses (a BatchNorm
    # momentum of 1.5) was written as it stood, and nnx.load then refused the file: the checkpoint was lost
    norm, leaky = nnx.BatchNorm(4), nnx.LeakyReLU(0.1)
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Sequential(norm, leaky), nnx.Dense(4, 1), backend="numpy", seed=0)
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=(16, 1)), loss="mse", epochs=1, batch_size=8)
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()
    if change == "BatchNorm.momentum":
        norm.momentum = 1.5
    elif change == "LeakyReLU.alpha":
        leaky.alpha = -0.1
    else:
        model.loss.reduction = "mean_of_everything"
    with pytest.raises(ValueError, match="not saved: the file would not load"):
        model.save(path)
    assert path.read_bytes() == before  # the last good checkpoint stays
    nnx.load(path)


def test_an_optimizer_that_could_not_be_rebuilt_is_not_saved(tmp_path):
    """A user's optimizer whose __init__ needs an argument it does not keep as a hyper-parameter was saved without
    a word, and only nnx.load (or to()) failed: the file was written but never loaded (found in review)."""

    class Halving(nnx.optim.SGD, name="HalvingForTheSaveTest"):
        """SGD at `factor` times the rate, which it does not keep: it cannot be rebuilt from its config."""

        def __init__(self, params, factor, lr=0.1):
            super().__init__(params, lr=lr * factor)

    model = nnx.Sequential(nnx.Dense(2, 1), seed=0, dtype="float64")
    model.fit(np.ones((4, 2)), np.ones(4), loss="mse", epochs=1, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    good = path.read_bytes()
    model.optimizer = Halving(model.parameters(), factor=0.5)
    with pytest.raises(TypeError, match=r"not saved: the file would not load.*needs \['factor'\]"):
        model.save(path)
    assert path.read_bytes() == good  # the last good file stays
    model.save(path, include_optimizer=False)  # the weights alone are saved
    assert nnx.load(path).optimizer is None


def test_a_fortran_ordered_weight_comes_back_as_it_was(tmp_path):
    """Found by mutation testing: NumPy writes a Fortran-ordered array (a torch Linear's weight transposed,
    ``np.asfortranarray(W)``) with fortran_order=True; read as C order, its values came back scrambled, without
    an error, and no test held a weight set by hand in that order."""
    model = _model()
    weight = model.layers[0].weight
    weight.value = np.asfortranarray(np.arange(np.prod(weight.shape), dtype=np.float64).reshape(weight.shape) / 7)
    X = _data()[0]
    model.save(tmp_path / "m")
    loaded = nnx.load(tmp_path / "m")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))

