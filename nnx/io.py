"""Checkpoints: one `.npz` of plain arrays plus a JSON config; never pickled, always written atomically."""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .backends import backend_name_of, backend_status, get_backend, host_fallback
from .layers import layer_from_config
from .losses import get_loss
from .optim import Optimizer, init_arguments, rebuild_optimizer
from .protocols import Model
from .registry import UnknownNameError

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


def save_model(model: Model, path: str | os.PathLike, include_optimizer: bool = True) -> None:
    """Write `model` to `path` (one .npz): weights, config and, if asked, optimizer and RNG state.

    The file is written beside its destination under a temporary name and renamed
    into place, so an interrupted save never replaces a good checkpoint with a broken one.
    After a data-parallel `fit` only rank 0 writes (every rank holds the same model); other
    ranks that read the file should wait for it with ``comm.barrier()``.
    """
    comm = getattr(model, "distributed", None)
    if comm is not None and comm.rank != 0:
        return
    path = file_destination(path, "a checkpoint file", "save", "model.npz")
    model_config = model.get_config()
    loss_config = None if model.loss is None else model.loss.get_config()
    _require_rebuildable(model_config, loss_config)
    # the arrays themselves, not snapshots: they are written before anything can update them, and a copy of
    # every weight and state array would double what the model and its optimizer hold (torch.save copies none)
    arrays = {PARAM_PREFIX + name: model.backend.to_host(v) for name, v in model.state_dict(copy=False).items()}
    _require_json(model.callback_state, "model.callback_state")
    training: dict[str, Any] = {
        "epochs_trained": model.epochs_trained,
        "loss": loss_config,
        "shuffle_rng": model.shuffle_rng.bit_generator.state,
        "dropout_rng": model.dropout_rng.get_state(),
        "callbacks": model.callback_state,
        "feature_names": None if model.feature_names_in_ is None else list(model.feature_names_in_),
    }
    if include_optimizer and model.optimizer is not None:
        state = model.optimizer.state_dict(copy=False)
        try:  # an __init__ argument it does not keep as a hyper-parameter: the file would not load
            init_arguments(type(model.optimizer), state.get("hyperparams", {}))
        except TypeError as exc:
            raise TypeError(f"not saved: the file would not load, since {exc}") from exc
        training["optimizer"] = _to_json_tree(state, arrays, STATE_PREFIX + "optimizer/")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnx_version": __version__,
        "model": model_config,
        "trained_on": model.backend.spec,
        "training": training,
    }
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)
    write_atomically(path, lambda handle: np.savez(handle, **arrays))


def _require_rebuildable(model_config: dict, loss_config: dict | None) -> None:
    """ValueError unless the layers and the loss rebuild from their configs, as `load_model` rebuilds them: a
    setting changed after construction to a value its constructor refuses (a BatchNorm momentum of 1.5) would
    otherwise be written into a file that never loads. Only the objects are made, not their arrays: a config
    without a backend is a layer's, whose model is not built (a built one would initialise a second copy of
    every weight, as much memory again as the model for as long as the check runs)."""
    try:
        layer_from_config({key: value for key, value in model_config.items() if key != "backend"})
        if loss_config is not None:
            get_loss(loss_config)
    except ValueError as exc:
        raise ValueError(f"not saved: the file would not load, since {exc}; set it back to a value the "
                         "constructor takes") from exc


def _require_json(tree: Any, where: str) -> None:
    """TypeError naming the first part of `tree` that JSON would not give back as it is: a key that is not a
    string (JSON makes ``3`` ``"3"``, so a lookup by 3 misses after loading) or a value of another type."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is of type {type(key).__name__}; checkpoints keep this state "
                                f"as JSON, whose keys are strings, so it would load as {str(key)!r}: use str keys")
            _require_json(value, f"{where}[{key!r}]")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _require_json(value, f"{where}[{i}]")
    elif tree is not None and not isinstance(tree, (str, int, float)):
        raise TypeError(f"{where} is {tree!r} of type {type(tree).__name__}; a checkpoint keeps this state as JSON: "
                        "use str, int, float, bool, None, lists and dicts (float(x) for a NumPy number)")


def file_name(path: Any, verb: str) -> str:
    """`path` as a str: ``~`` expanded (as the shell, Keras and pandas do: else a save makes a folder named ``~`` in
    the working directory and the file is not where the user looks), a bytes path decoded as `open` would.
    TypeError for anything else, an open file or `io.BytesIO` included: nnx writes a file by name, beside which it
    puts the temporary file it renames into place, and reads one by name."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{verb} takes a file name (str or pathlib.Path), got {type(path).__name__}; nnx saves and "
                        "loads by name, not through an open file object (a save writes a temporary file beside "
                        "its destination and renames it into place): give the path of the file")
    return os.path.expanduser(os.fsdecode(path))


def file_destination(path: str | os.PathLike, kind: str, verb: str, example: str) -> Path:
    """`path` as a `Path`, or IsADirectoryError when it names a folder: one that exists, or one spelled with a
    trailing separator (``"exports/"``) or a last component ``.`` or ``..``, which `Path` drops (or resolves), so the
    write would make a file of the folder's name where ``open(path, "wb")`` refuses."""
    given = file_name(path, verb)
    folder = Path(given)
    trailing = isinstance(given, str) and (given.endswith((os.sep, os.altsep or os.sep))
                                           or os.path.basename(given) in (".", ".."))
    if trailing or folder.is_dir():  # else the rename fails naming only the temporary file
        shown = given if trailing else str(folder)
        raise IsADirectoryError(f"{shown!r} is a folder, not {kind}; {verb} to a file in it, "
                                f"e.g. {str(folder / example)!r}")
    return folder


def write_atomically(path: Path, write: Any) -> None:
    """Call ``write(binary handle)`` on a temporary file beside `path`, then rename it into place.

    An interrupted or failed write never replaces a good file with a broken one. A `path` that is a
    symbolic link writes the file it points at, as ``open(path, "wb")`` would; renaming onto the link
    itself would put a file in its place and leave its target as it was.
    """
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not os.access(path, os.W_OK):
        # the rename would replace it regardless, where open() and torch.save refuse
        raise PermissionError(errno.EACCES, f"{str(path)!r} is write-protected, so it is not replaced; make it "
                              "writable (chmod u+w) or write to another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # a file where a folder of the path should be: mkdir says only "File exists", which reads as if the
        # destination itself were in the way
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is None:
            raise
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write {str(path)!r}: {str(blocker)!r} is a file, not a "
                                 "folder") from None
    try:
        # a short name of its own: `path.name` plus a suffix could pass the 255-byte limit that `path.name` meets
        fd, tmp_name = tempfile.mkstemp(prefix=".nnx-", suffix=".tmp", dir=path.parent)
    except PermissionError as exc:  # else the error names only the temporary file
        raise PermissionError(exc.errno, f"cannot write {str(path)!r}: its folder {str(path.parent)!r} is not "
                              "writable (a save writes a temporary file there and renames it into place, so "
                              "that a failed write never leaves a broken file)") from None
    try:
        # the descriptor is owned by the handle first, so that any failure below (chmod refused on a file
        # system without modes included) closes it: else each failed save would leak one, deleted but open
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file private (0600); give it the mode a plain open() would,
            # or keep the mode of the file it replaces
            os.chmod(tmp_name, _file_mode(path))
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    _fsync_dir(path.parent)


def _file_mode(path: Path) -> int:
    """The permission bits for a new file at `path`: the existing file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read from /proc where Linux tells it: setting it to read it, even back at once,
    makes the files other threads create meanwhile world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)  # elsewhere: set and put back, the most restrictive meanwhile (never world-writable)
    os.umask(umask)
    return umask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable: on POSIX a rename reaches the disk only when its directory is synced."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself has happened
    finally:
        os.close(fd)


def _remove_quietly(name: str) -> None:
    """Remove a temporary file if it is still there."""
    try:
        os.remove(name)
    except FileNotFoundError:
        pass


def read_checkpoint(path: str | os.PathLike, config_only: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and arrays of a checkpoint, validated as data only (nothing is unpickled or run); with
    `config_only`, no array is read (the dict is empty): what the file records, at the cost of its config."""
    path = Path(file_name(path, "load"))
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        # save writes the path it is given, adding no suffix (np.savez adds ".npz"): point at the other spelling
        other = path.with_suffix("") if path.suffix == ".npz" else path.with_name(path.name + ".npz")
        hint = f"; there is {str(other)!r} (save writes exactly the path it is given)" if other.is_file() else ""
        raise FileNotFoundError(f"{path}: no such checkpoint file{hint}")
    try:
        arrays = _read_npz(path, {CONFIG_KEY} if config_only else None)
    except CheckpointError as exc:
        found = _foreign_format(path)
        if found is None:
            raise
        what, advice = found
        raise CheckpointError(f"{path}: not a readable nnx checkpoint: this is {what}; nnx.load reads only the .npz "
                              f"files Model.save writes (and never unpickles){advice}") from exc
    if CONFIG_KEY not in arrays:
        raise CheckpointError(f"{path}: not an nnx checkpoint (no {CONFIG_KEY} entry)")
    raw = arrays.pop(CONFIG_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: its config entry is not a byte string (dtype {raw.dtype}, shape {raw.shape})")
    try:
        config = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its config is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an nnx checkpoint (format {config.get('format')!r})"
                              if isinstance(config, dict) else f"{path}: config is not a JSON object")
    if "format_version" not in config:
        raise CheckpointError(f"{path}: its config has no format_version (every nnx checkpoint has one)")
    version = config["format_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: format_version must be an int, got {version!r}")
    if version < 1:  # 1 is the first format nnx wrote: any other number is no file of nnx's
        raise CheckpointError(f"{path}: format_version {version} is not one nnx writes (1 to {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer nnx (format {config['format_version']}); upgrade nnx")
    return config, arrays


def _foreign_format(path: Path) -> tuple[str, str] | None:
    """What a file that is no .npz checkpoint is, and what to do with it, told by its first bytes or its zip
    entries' names (None when unknown): a PyTorch or Keras file, HDF5, a pickle, one .npy array or safetensors.
    Only names and magic numbers are read, nothing is unpickled or decompressed."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(9)
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
            if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
                return ("a PyTorch file (torch.save)", "; to use its weights, load it with torch.load and pass "
                        "them, as NumPy arrays, to model.load_state_dict")
            if "config.json" in names and any(name.endswith(".weights.h5") for name in names):
                return "a Keras model (model.save to .keras)", ""
            return None
    except _READ_ERRORS:  # a damaged zip (a newer zip version, say): reported as what it is, unreadable
        return None
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "an HDF5 file (a Keras .h5 model or weights, or other HDF5 data)", ""
    if head[:6] == b"\x93NUMPY":
        return "a single NumPy array (np.save)", ""
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle (pickle.dump, or torch.save's legacy format)", ""
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] < 1 << 30:
        return "a safetensors file", ""
    return None


# Everything the zip and .npy readers can raise on a damaged or hostile file.
_READ_ERRORS = (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
                ValueError, KeyError, OverflowError, SyntaxError, struct.error, UnicodeDecodeError)


def _read_npz(path: Path, only: set[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (those named in `only`, where given), read as plain data.

    Unlike `np.load`, every entry must be a .npy of a non-object dtype, and its header
    must not claim more bytes than the entry holds, so a hostile file can neither
    smuggle in a pickle nor make us allocate memory it does not back with data.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.endswith(".npy"):
                    raise CheckpointError(f"{path}: entry {name!r} is not a .npy array")
                key = name[:-4]
                if only is not None and key not in only:
                    continue
                if key in arrays:
                    raise CheckpointError(f"{path}: entry {name!r} appears twice")
                with zf.open(info) as fp:
                    version = np.lib.format.read_magic(fp)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
                    else:
                        raise CheckpointError(f"{path}: entry {name!r} has unsupported .npy version {version}")
                    if dtype.hasobject:
                        raise CheckpointError(f"{path}: entry {name!r} holds a pickled object array; "
                                              "nnx never unpickles, refusing")
                    nbytes = math.prod(shape) * dtype.itemsize
                    if nbytes > info.file_size:
                        raise CheckpointError(f"{path}: entry {name!r} claims shape {shape} ({nbytes} bytes) but "
                                              f"holds only {info.file_size} bytes")
                    data = fp.read(nbytes)
                if len(data) != nbytes:
                    raise CheckpointError(f"{path}: entry {name!r} is truncated ({len(data)} of {nbytes} bytes)")
                arr = np.reshape(np.frombuffer(data, dtype=dtype), shape, order="F" if fortran else "C")
                # native byte order (a file from a big-endian host): the values are kept, and every backend takes it
                arrays[key] = np.array(arr, dtype=dtype.newbyteorder("="), copy=True)
    except CheckpointError:
        raise
    except _READ_ERRORS as exc:
        raise CheckpointError(f"{path}: not a readable nnx checkpoint, truncated or not an .npz "
                              f"({type(exc).__name__}: {exc})") from exc
    return arrays


def _choose_backend(path: Path, saved: str, backend: Any) -> Any:
    if backend is not None:
        return backend
    if not isinstance(saved, str):
        raise CheckpointError(f"{path}: config names its backend as {saved!r}, not a backend name")
    ok, why = backend_status(saved)
    if ok:
        return saved
    fallback = host_fallback(saved)
    warnings.warn(f"{path}: saved on {saved!r}, which cannot run here ({why}); loading on {fallback!r}",
                  stacklevel=3)
    return fallback


def load_model(path: str | os.PathLike, build: Any, backend: Any = None, dtype: Any = None) -> Any:
    """Rebuild a saved model on `backend` (default: where it was trained, else numpy).

    `build(config, backend=, dtype=, arrays=)` makes the model (``Sequential.from_config``); each
    layer checks the file's arrays against the shapes it asks for before anything is allocated,
    so a few bytes of JSON naming a huge layer cannot make `load` allocate terabytes.
    """
    path = Path(file_name(path, "load"))
    if backend is not None:
        backend = get_backend(backend)  # the caller's mistake, reported as such before the file is read
    if dtype is not None:
        get_backend("numpy").float_dtype(dtype)
    config, arrays = read_checkpoint(path)
    model_config = config.get("model")
    if not isinstance(model_config, dict) or not isinstance(model_config.get("layers"), list):
        raise CheckpointError(f"{path}: config has no model description (a 'model' object with a 'layers' list)")
    state = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    for key, arr in state.items():
        if arr.dtype.kind != "f":
            raise CheckpointError(f"{path}: array {PARAM_PREFIX + key!r} has dtype {arr.dtype}, expected a float dtype")
    try:
        target = _choose_backend(path, model_config.get("backend", "numpy"), backend)
        model = build(model_config, backend=target, dtype=dtype, arrays=state)
    except CheckpointError:
        raise
    except UnknownNameError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, IndexError, OverflowError) as exc:
        raise CheckpointError(f"{path}: config is incomplete or malformed ({exc!r})") from exc
    except RecursionError:
        raise CheckpointError(f"{path}: config nests layers inside layers too deeply to rebuild") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    unexpected = sorted(set(state) - set(model.state_dict()))
    if unexpected:
        raise CheckpointError(f"{path}: weights do not match its config: unexpected arrays {unexpected}")
    try:
        # the file's arrays, on the host: summed there without a copy (on JAX each sum on the device compiled a
        # program per shape), then looked at one by one only where a sum is not finite
        if not get_backend("numpy").sums_finite(list(state.values())):
            for name, arr in state.items():
                model.require_finite(model.backend.asarray(arr), f"array {PARAM_PREFIX + name!r}")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    # the model holds its own copies: the file's weights go now, not after the optimizer's state is rebuilt
    for name in state:
        del arrays[PARAM_PREFIX + name]
    del state
    training = config.get("training", {})
    if not isinstance(training, dict):
        raise CheckpointError(f"{path}: training state must be a JSON object, got {type(training).__name__}")
    try:
        epochs = training.get("epochs_trained", 0)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs_trained must be an int >= 0, got {epochs!r}")
        model.epochs_trained = epochs
        if training.get("loss") is not None:
            model.loss = get_loss(training["loss"])
        if "shuffle_rng" in training:
            model.shuffle_rng.bit_generator.state = training["shuffle_rng"]
        if "dropout_rng" in training and model.dropout_rng.accepts(training["dropout_rng"]):
            model.dropout_rng.set_state(training["dropout_rng"])
        if "callbacks" in training:
            if not isinstance(training["callbacks"], dict):
                raise TypeError(f"callback state must be an object, got {type(training['callbacks']).__name__}")
            model.callback_state = training["callbacks"]
        names = training.get("feature_names")
        if names is not None:
            if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
                raise TypeError(f"feature names must be a list of strings, got {names!r}")
            model.feature_names_in_ = tuple(names)
        if "optimizer" in training:
            state = _from_json_tree(training["optimizer"], arrays, str(path))
            if not isinstance(state, dict):
                raise TypeError(f"optimizer state must be an object, got {type(state).__name__}")
            optimizer = rebuild_optimizer(state, model.parameters())
            _require_finite_state(path, model, optimizer)
            model.optimizer = optimizer
    except CheckpointError:
        raise
    except UnknownNameError as exc:  # a sound file naming a loss or optimizer class not imported here
        raise CheckpointError(f"{path}: {exc}") from exc
    # RuntimeError: torch rejects a malformed generator state with it.
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{path}: training state is malformed ({type(exc).__name__}: {exc})") from exc
    return model


def _require_finite_state(path: Path, model: Model, optimizer: Optimizer) -> None:
    """Refuse NaN or inf in the optimizer's state, as in the weights: the next step would write it into them."""
    if model.backend.sums_finite([value for entry in optimizer.state.values() for value in entry.values()]):
        return  # looked at in one call (one program on JAX)
    for i, entry in sorted(optimizer.state.items()):
        for key, value in entry.items():
            try:
                model.require_finite(value, f"optimizer state {key!r} of parameter {optimizer.params[i].name!r}")
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc}") from exc
