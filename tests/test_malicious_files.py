"""Malicious and broken checkpoint files: `nnx.load` refuses them clearly and runs nothing from them.

Every failure must be `nnx.io.CheckpointError` (a ValueError) or FileNotFoundError, never
an AttributeError from deep inside NumPy, a MemoryError from a header that lies about its
size, or the side effect of an unpickled object.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tally import write_counts

import nnx
from nnx.io import CONFIG_KEY, CheckpointError

HYPOTHESIS_SCALE = float(os.environ.get("NNX_HYPOTHESIS_SCALE", "1"))
FUZZ = settings(max_examples=max(1, int(60 * HYPOTHESIS_SCALE)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _good_model(dropout: bool = True) -> nnx.Sequential:
    layers = [nnx.Dense(3, 4), nnx.Tanh()] + ([nnx.Dropout(0.25)] if dropout else []) + [nnx.Dense(4, 1)]
    model = nnx.Sequential(*layers, seed=3, dtype="float64")
    x = np.random.default_rng(0).normal(size=(8, 3))
    model.fit(x, x[:, :1], loss="mse", epochs=1, batch_size=4)
    return model


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "model.npz"
    _good_model().save(path)
    return path


def _entries(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _config(entries: dict[str, np.ndarray]) -> dict:
    return json.loads(entries[CONFIG_KEY].tobytes().decode())


def _write(path: Path, entries: dict[str, np.ndarray], config: dict | None = None) -> Path:
    entries = dict(entries)
    if config is not None:
        entries[CONFIG_KEY] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    np.savez(path, **entries)
    return path


def _refused(path: Path, match: str | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        nnx.load(path)
    assert str(path.name) in str(info.value), "the error names the file"
    return info.value


class _Marker:
    """Unpickling this creates a file: proof that something was executed."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


# -- the cases the issue names ----------------------------------------------------------

def test_good_file_loads(good_file):
    model = nnx.load(good_file)
    assert model.epochs_trained == 1


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        nnx.load(tmp_path / "nope.npz")


def test_pickled_object_array_is_refused_and_not_executed(tmp_path, good_file):
    marker = tmp_path / "executed"
    entries = _entries(good_file)
    evil = np.empty(1, dtype=object)
    evil[0] = _Marker(marker)
    for key in ("param/0.weight", "state/optimizer/state/0/exp_avg", "extra"):
        path = tmp_path / f"evil_{key.replace('/', '_')}.npz"
        np.savez(path, **{**entries, key: evil})  # np.savez pickles object arrays
        _refused(path, "pickle")
        assert not marker.exists(), "loading ran code from the file"


def test_pickled_config_entry_is_refused(tmp_path, good_file):
    marker = tmp_path / "executed"
    evil = np.empty(1, dtype=object)
    evil[0] = _Marker(marker)
    path = tmp_path / "evil_config.npz"
    np.savez(path, **{**_entries(good_file), CONFIG_KEY: evil})
    _refused(path, "pickle")
    assert not marker.exists()


def test_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "raw.npz"
    path.write_bytes(pickle.dumps(_Marker(marker)))
    _refused(path)
    assert not marker.exists()


def test_npy_renamed_to_npz_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    _refused(path)


def test_wrong_shaped_weight(tmp_path, good_file):
    entries = _entries(good_file)
    entries["param/0.weight"] = np.zeros((4, 3))
    _refused(_write(tmp_path / "shape.npz", entries), "shape")


def test_weight_with_integer_dtype(tmp_path, good_file):
    entries = _entries(good_file)
    entries["param/0.weight"] = np.zeros((3, 4), dtype=np.int64)
    _refused(_write(tmp_path / "dtype.npz", entries), "dtype")



@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_optimizer_state_is_refused(backend, tmp_path, good_file, bad):
    # The next step would write it into the weights, as a NaN weight would be: refused, naming where it is.
    entries = _entries(good_file)
    entries["state/optimizer/state/2/exp_avg_sq"] = np.full_like(entries["state/optimizer/state/2/exp_avg_sq"], bad)
    path = _write(tmp_path / "state.npz", entries)
    with pytest.raises(CheckpointError, match=r"state\.npz: optimizer state 'exp_avg_sq' of parameter '3\.weight' "
                                              r"contains NaN or inf"):
        nnx.load(path, backend=backend)


def test_missing_and_extra_weights(tmp_path, good_file):
    entries = _entries(good_file)
    del entries["param/3.bias"]
    _refused(_write(tmp_path / "missing.npz", entries), "bias")
    entries = _entries(good_file)
    entries["param/9.weight"] = np.zeros(2)
    _refused(_write(tmp_path / "extra.npz", entries), "unexpected")


def test_unknown_layer_type(tmp_path, good_file):
    entries = _entries(good_file)
    config = _config(entries)
    config["model"]["layers"][1] = {"type": "os.system", "command": "touch pwned"}
    _refused(_write(tmp_path / "layer.npz", entries, config), "unknown layer")
    assert not Path("pwned").exists()


def test_config_naming_huge_layers_does_not_allocate(tmp_path, good_file):
    # A few bytes of JSON must not make load allocate terabytes before looking at the weights.
    entries = _entries(good_file)
    config = _config(entries)
    config["model"]["layers"][0].update(in_features=10**6, out_features=10**6)
    config["model"]["layers"][-1]["in_features"] = 10**6
    _refused(_write(tmp_path / "huge.npz", entries, config), "shape")


def test_config_naming_huge_layers_inside_a_container_does_not_allocate(tmp_path, good_file):
    # a nested model read from a file is built only by the model around it, from the file's arrays
    entries = _entries(good_file)
    config = _config(entries)
    dense = {"type": "Dense", "init": "he", "regularizer": None}
    huge = [{**dense, "in_features": 4, "out_features": 10**12}, {**dense, "in_features": 10**12, "out_features": 4}]
    config["model"]["layers"][1] = {"type": "Sequential", "layers": huge, "regularizer": None, "input_shape": None}
    _refused(_write(tmp_path / "huge_nested.npz", entries, config), r"the saved arrays have no '1.0.weight'")


def test_config_nesting_too_deeply_is_refused(tmp_path, good_file):
    entries = _entries(good_file)
    config = _config(entries)
    config["model"]["layers"][1] = "DEEP"
    depth = 300  # JSON reads it; rebuilding it layer by layer would exceed Python's recursion limit
    deep = '{"type": "Residual", "layers": [' * depth + '{"type": "Tanh"}' + "]}" * depth
    text = json.dumps(config).replace('"DEEP"', deep)
    entries[CONFIG_KEY] = np.frombuffer(text.encode(), dtype=np.uint8)
    _refused(_write(tmp_path / "deep.npz", entries), "too deeply")


def test_npy_header_claiming_more_data_than_present(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    buf.write(b"\0" * 16)
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(CONFIG_KEY + ".npy", buf.getvalue())
    _refused(path, "claims")


def test_zip_entry_that_is_not_npy(tmp_path, good_file):
    path = tmp_path / "notnpy.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(CONFIG_KEY + ".npy", b"hello")
        zf.writestr("readme.txt", b"hi")
    _refused(path)


def test_zip_needing_a_newer_zip_version(tmp_path, good_file):
    # A flipped byte in a central-directory record's "version needed to extract" makes zipfile raise
    # NotImplementedError: both the reader and the foreign-format probe must report it as an unreadable checkpoint.
    data = bytearray(good_file.read_bytes())
    record = data.index(b"PK\x01\x02")
    data[record + 6:record + 8] = (64).to_bytes(2, "little")  # version 6.4, above what zipfile reads
    path = tmp_path / "newzip.npz"
    path.write_bytes(bytes(data))
    _refused(path, "zip file version")


def test_truncated_zip_at_every_cut(tmp_path, good_file):
    data = good_file.read_bytes()
    cuts = sorted(set(np.linspace(0, len(data) - 1, 40, dtype=int).tolist()))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.npz"
        path.write_bytes(data[:cut])
        _refused(path)
    _count("truncations", len(cuts))


@pytest.mark.parametrize("mutation", [
    "not_json", "json_list", "wrong_format", "newer_version", "version_string", "model_missing",
    "layers_not_list", "layer_not_dict", "dense_args_strings", "negative_seed", "dtype_int",
    "bad_regularizer", "training_list", "bad_epochs", "bad_loss", "bad_shuffle_rng", "bad_dropout_rng",
    "optimizer_unknown", "optimizer_list", "optimizer_missing_array", "optimizer_wrong_shape",
    "optimizer_bad_hyper", "optimizer_state_not_dict", "config_2d",
])
def test_malformed_config(tmp_path, good_file, mutation):
    entries = _entries(good_file)
    config = _config(entries)
    layers = config["model"]["layers"]
    opt = config["training"]["optimizer"]
    raw = None
    if mutation == "not_json":
        raw = b"{not json"
    elif mutation == "json_list":
        raw = b"[1, 2]"
    elif mutation == "wrong_format":
        config["format"] = "something-else"
    elif mutation == "newer_version":
        config["format_version"] = 99
    elif mutation == "version_string":
        config["format_version"] = "1"
    elif mutation == "model_missing":
        del config["model"]
    elif mutation == "layers_not_list":
        config["model"]["layers"] = {"0": layers[0]}
    elif mutation == "layer_not_dict":
        layers[1] = "Tanh"
    elif mutation == "dense_args_strings":
        layers[0]["init"] = {"evil": 1}
    elif mutation == "negative_seed":
        config["model"]["seed"] = -5
    elif mutation == "dtype_int":
        config["model"]["dtype"] = "int32"
    elif mutation == "bad_regularizer":
        config["model"]["regularizer"] = {"name": "l2", "l": "lots"}
    elif mutation == "training_list":
        config["training"] = [1, 2]
    elif mutation == "bad_epochs":
        config["training"]["epochs_trained"] = -3
    elif mutation == "bad_loss":
        config["training"]["loss"] = {"name": "__import__"}
    elif mutation == "bad_shuffle_rng":
        config["training"]["shuffle_rng"] = {"bit_generator": "PCG64", "state": "x"}
    elif mutation == "bad_dropout_rng":
        config["training"]["dropout_rng"] = {"seed": 1, "counter": 0, "pcg64": [1, 2]}
    elif mutation == "optimizer_unknown":
        opt["type"] = "subprocess.Popen"
    elif mutation == "optimizer_list":
        config["training"]["optimizer"] = [opt]
    elif mutation == "optimizer_missing_array":
        del entries["state/optimizer/state/0/exp_avg"]
    elif mutation == "optimizer_wrong_shape":
        entries["state/optimizer/state/0/exp_avg"] = np.zeros((7,))
    elif mutation == "optimizer_bad_hyper":
        opt["hyperparams"]["lr"] = "fast"
    elif mutation == "optimizer_state_not_dict":
        opt["state"] = 5
    elif mutation == "config_2d":
        raw = np.zeros((2, 2), dtype=np.uint8)
    if raw is not None:
        entries[CONFIG_KEY] = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, dtype=np.uint8)
        path = _write(tmp_path / f"{mutation}.npz", entries)
    else:
        path = _write(tmp_path / f"{mutation}.npz", entries, config)
    _refused(path)


def test_torch_generator_state_garbage(tmp_path):
    pytest.importorskip("torch")
    model = nnx.Sequential(nnx.Dense(2, 2), nnx.Dropout(0.5), nnx.Dense(2, 1), backend="torch", seed=0)
    model.fit(np.ones((4, 2)), np.ones(4), epochs=1)
    model.save(tmp_path / "t.npz")
    entries = _entries(tmp_path / "t.npz")
    config = _config(entries)
    config["training"]["dropout_rng"]["torch"] = [1, 2, 3]
    _refused(_write(tmp_path / "t_bad.npz", entries, config))


def test_backend_argument_errors_are_the_callers(good_file):
    # A bad `backend=` is the caller's mistake, not the file's: the usual ValueError, not CheckpointError.
    with pytest.raises(ValueError, match="unknown backend") as info:
        nnx.load(good_file, backend="no-such-backend")
    assert not isinstance(info.value, CheckpointError)


# -- fuzzing ------------------------------------------------------------------------------

COUNTS: dict[str, int] = {}


def _count(name: str, n: int = 1) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts({"file": "test_malicious_files", "counts": COUNTS})


def _assert_clean_refusal_or_model(path: Path) -> None:
    try:
        with warnings.catch_warnings():
            # a config naming a backend that does not run here loads on numpy, with a warning
            warnings.filterwarnings("ignore", message=".*cannot run here")
            model = nnx.load(path)
    except CheckpointError as exc:
        assert str(exc)
        return
    # Some mutations leave the file valid (a flipped byte inside a float): then it is a model.
    assert isinstance(model, nnx.Sequential)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_random_bytes(tmp_path_factory, data):
    _count("random_bytes")
    path = tmp_path_factory.mktemp("fuzz") / "random.npz"
    path.write_bytes(data)
    _assert_clean_refusal_or_model(path)


@FUZZ
@given(data=st.data())
def test_fuzz_zip_with_random_members(tmp_path_factory, data):
    _count("random_zip_members")
    path = tmp_path_factory.mktemp("fuzz") / "members.npz"
    members = data.draw(st.lists(st.tuples(st.sampled_from([CONFIG_KEY + ".npy", "param/0.weight.npy", "x.npy",
                                                             "a", "../../evil.npy"]),
                                           st.binary(max_size=300)), max_size=4, unique_by=lambda m: m[0]))
    prefix = data.draw(st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00"]))
    method = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, body in members:
            zf.writestr(name, prefix + body)
    _assert_clean_refusal_or_model(path)


@FUZZ
@given(data=st.data())
def test_fuzz_byte_flips_of_a_good_file(tmp_path_factory, good_file, data):
    _count("byte_flips")
    raw = bytearray(good_file.read_bytes())
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=8))
    for pos, value in flips:
        raw[pos] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = tmp_path_factory.mktemp("fuzz") / "flipped.npz"
    path.write_bytes(bytes(raw[:cut]))
    _assert_clean_refusal_or_model(path)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(data=st.data())
def test_fuzz_config_values(tmp_path_factory, good_file, data):
    """Replace one value anywhere in a good config with random JSON."""
    _count("config_values")
    entries = _entries(good_file)
    config = _config(entries)
    # Walk to a random node and replace it.
    node, steps = config, data.draw(st.integers(1, 5))
    for _ in range(steps):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        node[key] = data.draw(_json)
        break
    path = tmp_path_factory.mktemp("fuzz") / "config.npz"
    try:
        _write(path, entries, config)
    except ValueError:  # NaN is not JSON-serialisable in strict mode; json.dumps writes NaN by default
        return
    _assert_clean_refusal_or_model(path)
