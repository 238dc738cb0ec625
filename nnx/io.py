"""Checkpoints: one `.npz` of plain arrays plus a JSON config; never pickled, always written atomically."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backend import backend_name_of, backend_status, get_backend

FORMAT = "nnx-checkpoint"
FORMAT_VERSION = 1
CONFIG_KEY = "__config__"
PARAM_PREFIX = "param/"
STATE_PREFIX = "state/"


class CheckpointError(ValueError):
    """A file that is not a valid nnx checkpoint, or does not match its own config."""


def _to_json_tree(tree: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """Replace every array in a nested dict/list by a reference to an npz entry."""
    if isinstance(tree, dict):
        return {str(k): _to_json_tree(v, arrays, f"{prefix}{k}/") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_to_json_tree(v, arrays, f"{prefix}{i}/") for i, v in enumerate(tree)]
    if backend_name_of(tree) is not None and not isinstance(tree, np.generic):
        key = prefix.rstrip("/")
        arrays[key] = get_backend(tree).to_host(tree)
        return {"__array__": key}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _from_json_tree(tree: Any, arrays: Any, path: str) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            key = tree["__array__"]
            if key not in arrays:
                raise CheckpointError(f"{path}: config refers to array {key!r}, which the file does not hold")
            return arrays[key]
        return {k: _from_json_tree(v, arrays, path) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_from_json_tree(v, arrays, path) for v in tree]
    return tree


def save_model(model: Any, path: str | os.PathLike, include_optimizer: bool = True) -> None:
    """Write `model` to `path` (one .npz): weights, config and, if asked, optimizer and RNG state.

    The file is written beside its destination under a temporary name and renamed
    into place, so an interrupted save never replaces a good checkpoint with a broken one.
    """
    path = Path(path)
    arrays = {PARAM_PREFIX + name: model.backend.to_host(v) for name, v in model.state_dict().items()}
    training: dict[str, Any] = {
        "epochs_trained": model.epochs_trained,
        "loss": None if model.loss is None else model.loss.get_config(),
        "shuffle_rng": model.shuffle_rng.bit_generator.state,
        "dropout_rng": model.dropout_rng.get_state(),
    }
    if include_optimizer and model.optimizer is not None:
        training["optimizer"] = _to_json_tree(model.optimizer.state_dict(), arrays, STATE_PREFIX + "optimizer/")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnx_version": __version__,
        "model": model.get_config(),
        "trained_on": model.backend.spec,
        "training": training,
    }
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        _remove_quietly(tmp_name)
        raise


def _remove_quietly(name: str) -> None:
    """Remove a temporary file if it is still there."""
    try:
        os.remove(name)
    except FileNotFoundError:
        pass


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and arrays of a checkpoint, validated as data only (nothing is unpickled or run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise CheckpointError(f"{path}: holds a pickled object array; nnx never unpickles, refusing") from exc
        raise CheckpointError(f"{path}: not a readable nnx checkpoint ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable nnx checkpoint, truncated or not an .npz ({exc})") from exc
    if CONFIG_KEY not in arrays:
        raise CheckpointError(f"{path}: not an nnx checkpoint (no {CONFIG_KEY} entry)")
    try:
        config = json.loads(arrays.pop(CONFIG_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: its config is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nnx checkpoint (format {config.get('format')!r})"
                              if isinstance(config, dict) else f"{path}: config is not a JSON object")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer nnx (format {config['format_version']}); upgrade nnx")
    return config, arrays


def _choose_backend(path: Path, saved: str, backend: Any) -> Any:
    if backend is not None:
        return backend
    ok, why = backend_status(saved)
    if ok:
        return saved
    warnings.warn(f"{path}: saved on {saved!r}, which cannot run here ({why}); loading on numpy",
                  stacklevel=3)
    return "numpy"


def load_model(path: str | os.PathLike, backend: Any = None, dtype: Any = None) -> Any:
    """Rebuild a saved model on `backend` (default: where it was trained, else numpy)."""
    from .losses import get_loss
    from .model import Sequential, rebuild_optimizer

    path = Path(path)
    config, arrays = read_checkpoint(path)
    try:
        model_config = config["model"]
        target = _choose_backend(path, model_config.get("backend", "numpy"), backend)
        model = Sequential.from_config(model_config, backend=target, dtype=dtype)
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: config is incomplete or malformed ({exc!r})") from exc
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    expected = {PARAM_PREFIX + p.name: p.shape for p in model.parameters()}
    present = {k for k in arrays if k.startswith(PARAM_PREFIX)}
    if present != set(expected):
        raise CheckpointError(f"{path}: weights do not match its config: missing "
                              f"{sorted(set(expected) - present)}, unexpected {sorted(present - set(expected))}")
    for key, shape in expected.items():
        arr = arrays[key]
        if arr.shape != shape:
            raise CheckpointError(f"{path}: array {key!r} has shape {arr.shape} but its config needs {shape}")
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{path}: array {key!r} has dtype {arr.dtype}, expected a float dtype")
    model.load_state_dict({k[len(PARAM_PREFIX):]: arrays[k] for k in expected})
    training = config.get("training", {})
    try:
        model.epochs_trained = int(training.get("epochs_trained", 0))
        if training.get("loss") is not None:
            model.loss = get_loss(training["loss"])
        if "shuffle_rng" in training:
            model.shuffle_rng.bit_generator.state = training["shuffle_rng"]
        if "dropout_rng" in training and get_backend(target).name == config.get("trained_on", "").split(":")[0]:
            model.dropout_rng.set_state(training["dropout_rng"])
        if "optimizer" in training:
            state = _from_json_tree(training["optimizer"], arrays, str(path))
            model.optimizer = rebuild_optimizer(state, model.parameters())
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: training state is malformed ({exc})") from exc
    return model
