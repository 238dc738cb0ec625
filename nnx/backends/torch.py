"""The PyTorch adapter: CPU, CUDA and MPS devices, with dropout drawn from a `torch.Generator`.

Like every adapter module it imports its library only inside functions, so that
``import nnx`` stays free of torch; inside this package ``import torch`` is the
library (imports are absolute), never this module.
"""

from __future__ import annotations

import importlib
import math
import types
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, import_library, namespace_with
from .nvidia import driver_cuda_version, gpu_cause, parse_cuda, torch_cuda_install
from .rng import DeviceRNG

# As for NumPy (see its adapter), but each torch operation costs more to dispatch, so the slices are
# larger: measured best for Adam over 235k parameters, 8x faster than one call over all of them.
UPDATE_PIECE_BYTES = 256 * 1024
# distinct Python numbers kept as 0-d tensors for `maximum` and `minimum` (see `namespace`); past it, all are dropped
MAX_KEPT_SCALARS = 64


# the function each Python operator on a tensor calls, and the namespace functions that are torch's own
OPERATOR_FUNCTIONS = {"+": "add", "-": "sub", "*": "mul", "/": "div", ">": "gt", ">=": "ge", "<": "lt",
                      "<=": "le", "==": "eq", "!=": "ne", "neg": "neg", "abs": "abs"}
OUT_FUNCTIONS = ("abs", "sqrt", "exp", "expm1", "log", "log1p", "square", "negative", "sin", "cos", "tanh",
                 "floor", "ceil", "trunc", "logical_and", "logical_or", "logical_not", "where")


def namespace(torch: Any) -> types.ModuleType:
    """array_api_compat's torch namespace, with its `maximum`, `minimum`, `where` and `matmul` wrappers skipped where
    the operands already agree.

    The wrappers promote types in Python: with a Python number, `maximum` makes it a tensor through
    compat's general `result_type` (8-14 us a call on a 32 x 16 array, against 3 us here), and `matmul`
    converts two tensors of one dtype to that dtype (9 us against 3.4 us for a small product); torch's own `where`
    makes a Python number a new 0-d tensor every call (an operation, and on a GPU a launch). Here a Python
    int or float beside a floating tensor becomes a 0-d tensor of that tensor's dtype and device, as
    compat makes it, and two tensors of one dtype go straight to torch, so every result is compat's
    (values, dtype, device); every other call, and every other name, is compat's own object.
    """
    compat = importlib.import_module("array_api_compat.torch")
    tensor = torch.Tensor
    scalars: dict[tuple, Any] = {}  # (type, value, sign, dtype, device) -> a 0-d tensor of them, never written

    def scalar(value: int | float, like: Any) -> Any:
        """`value` as a 0-d tensor of `like`'s dtype and device. Each new one is a tensor creation (1.3 us on the
        CPU) and, on a GPU, a kernel launch, so the few a step uses (a loss's ``maximum(z, 0)``) are kept.

        Not kept, nor taken from the kept ones: NaN (no key finds itself), and anything made while torch traces
        or captures: a fake or traced tensor (`torch.export`, `make_fx`, `torch.compile`) or a CUDA graph's
        recorded fill would be handed to later, ordinary calls."""
        if value != value or type(like) is not tensor or torch.compiler.is_compiling() or \
                (like.is_cuda and torch.cuda.is_current_stream_capturing()):
            return torch.scalar_tensor(value, dtype=like.dtype, device=like.device)
        sign = math.copysign(1.0, value) if type(value) is float else 0  # 0.0 and -0.0 apart
        key = (type(value), value, sign, like.dtype, like.device)
        kept = scalars.get(key)
        if kept is None:
            with torch.inference_mode(False):  # usable where autograd records too (an inference tensor is not)
                kept = torch.scalar_tensor(value, dtype=like.dtype, device=like.device)
            if type(kept) is not tensor:  # a mode that makes fake tensors, around a real `like`
                return kept
            if len(scalars) >= MAX_KEPT_SCALARS:
                scalars.clear()
            scalars[key] = kept
        return kept

    def with_number(fast: Any, general: Any) -> Any:
        def two_arg(x1: Any, x2: Any, /, **kwargs: Any) -> Any:
            if not kwargs:
                if type(x2) in (int, float) and isinstance(x1, tensor) and x1.dtype.is_floating_point:
                    return fast(x1, scalar(x2, x1))
                if type(x1) in (int, float) and isinstance(x2, tensor) and x2.dtype.is_floating_point:
                    return fast(scalar(x1, x2), x2)
            return general(x1, x2, **kwargs)

        two_arg.__name__, two_arg.__doc__ = general.__name__, general.__doc__
        return two_arg

    def matmul(x1: Any, x2: Any, /, **kwargs: Any) -> Any:
        if isinstance(x1, tensor) and isinstance(x2, tensor) and x1.dtype == x2.dtype:
            return torch.matmul(x1, x2, **kwargs)
        return compat.matmul(x1, x2, **kwargs)

    matmul.__doc__ = compat.matmul.__doc__

    def where(condition: Any, x1: Any, x2: Any, /) -> Any:
        if isinstance(condition, tensor):
            if type(x2) in (int, float) and isinstance(x1, tensor) and x1.dtype.is_floating_point:
                return torch.where(condition, x1, scalar(x2, x1))
            if type(x1) in (int, float) and isinstance(x2, tensor) and x2.dtype.is_floating_point:
                return torch.where(condition, scalar(x1, x2), x2)
        return compat.where(condition, x1, x2)

    where.__doc__ = compat.where.__doc__
    return namespace_with(compat, maximum=with_number(torch.maximum, compat.maximum),
                          minimum=with_number(torch.minimum, compat.minimum), matmul=matmul, where=where)


def cuda_unavailable(spec: str, version: str, built_cuda: str | None, driver: tuple[int, int] | None,
                     hip: str | None = None) -> str:
    """Why `spec` cannot run: a CPU-only torch wheel, no driver or GPU, or a driver older than the wheel's CUDA.

    `hip` is ``torch.version.hip``: a ROCm build (``torch.cuda`` runs AMD GPUs there) has no CUDA version either,
    but is no CPU-only build, and a CUDA wheel is not its fix."""
    if hip:
        return (f"backend {spec!r} cannot run here: torch {version} is a ROCm build (HIP {hip}) and sees no AMD GPU "
                "(check rocm-smi)")
    if built_cuda is None:
        # `pip install torch --index-url ...` alone does nothing here: pip keeps the installed torch
        return (f"backend {spec!r} cannot run here: the installed torch {version} is a CPU-only build; "
                f"install the CUDA build with: {torch_cuda_install(driver)}, after pip uninstall -y torch "
                f"(while a torch is installed, pip keeps it and installs nothing)")
    cause = gpu_cause(parse_cuda(built_cuda), driver)
    return f"backend {spec!r} cannot run here: torch {version} is built for CUDA {built_cuda}, but {cause}"


class TorchBackend(Backend):
    """PyTorch through array_api_compat on one device (``"torch"``, ``"torch:cuda:1"``, ``"torch:mps"``)."""

    name = "torch"
    distributions = ("torch",)
    gpu_spec = "torch:cuda"

    @classmethod
    def load(cls, label: str | None) -> TorchBackend:
        torch = import_library("torch", cls.name, 'pip install "nnx-mlp[torch]"')
        xp = namespace(torch)
        try:
            device = torch.device(label or "cpu")
        except RuntimeError as exc:  # torch's message lists the device types it knows, not the spellings nnx takes
            raise ValueError(f"backend 'torch:{label}' names no torch device ({exc}); write 'torch:cpu', "
                             "'torch:cuda', 'torch:cuda:N' (N a GPU number) or 'torch:mps'") from None
        if device.type == "cpu" and device.index not in (None, 0):  # torch puts tensors on "cpu" whatever the index
            raise BackendUnavailableError(f"backend 'torch:{label}' cannot run here: 1 cpu device (write 'torch:cpu')")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(cuda_unavailable(f"torch:{label}", torch.__version__, torch.version.cuda,
                                                           driver_cuda_version(), getattr(torch.version, "hip", None)))
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"backend 'torch:{label}' cannot run here: "
                                          f"{torch.cuda.device_count()} CUDA device(s) found")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise BackendUnavailableError("backend 'torch:mps' cannot run here: torch sees no MPS device")
        if device.type not in ("cpu", "cuda", "mps"):
            raise BackendUnavailableError(f"backend 'torch:{label}': nnx runs torch on cpu, cuda or mps devices")
        return cls(xp, device, label)

    def float_dtype(self, dtype: Any) -> Any:
        """As `Backend.float_dtype`; float32 only while `torch.autocast` is off for this device type.

        Autocast makes torch compute a float32 matrix product in its lower precision (bfloat16, float16), so a
        float32 model would compute and return numbers of another precision than its own, and its gradients would
        come out in that dtype. float64, which autocast leaves alone, runs under it.
        """
        import torch

        resolved = super().float_dtype(dtype)
        kind = self.device.type
        if resolved == torch.float32 and torch.is_autocast_enabled(kind) and \
                torch.get_autocast_dtype(kind) != torch.float32:
            raise ValueError(f"torch.autocast is on for {kind!r} ({torch.get_autocast_dtype(kind)}): torch would "
                             "compute this float32 model's matrix products in that lower precision, but an nnx "
                             "model computes in its own dtype; call nnx outside torch.autocast (or inside "
                             f"torch.autocast({kind!r}, enabled=False))")
        return resolved

    @classmethod
    def devices(cls) -> list[str]:
        torch = importlib.import_module("torch")
        found = ["cpu"]
        if torch.cuda.is_available():
            found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append("mps")
        return found

    def asarray(self, x: Any, dtype: Any = None, argname: str = "X", copy: bool = False) -> Any:
        """As `Backend.asarray`; a tensor is read as data, without its autograd history.

        nnx computes its own gradients. A tensor that requires grad (a user's autograd input, an
        ``nn.Parameter``) would otherwise make torch record every operation on it: weights updated from
        it would turn into non-leaf tensors carrying the graph of every step, and outputs would hold it.
        A tensor on the 'meta' device has shape and dtype but no values to read; a sparse one is refused.
        A copy (`copy=True`, what a parameter holds) is row-major whatever the strides of `x`.
        """
        import torch

        if isinstance(x, torch.Tensor):
            if x.device.type == "meta":
                raise ValueError(f"{argname} is a torch tensor on the 'meta' device, which holds no values")
            if x.is_nested:  # before the layout: a jagged one is no sparse tensor, and has no to_dense
                raise TypeError(f"{argname} is a nested torch tensor (rows of different lengths); nnx takes one "
                                "array of samples: pad it (torch.nested.to_padded_tensor) or pass its rows stacked")
            if type(x) is not torch.Tensor and isinstance(x, _masked_tensor_type(torch)):
                x = _unmasked(x, argname)
            if x.layout != torch.strided:  # some operations take it, others fail inside torch
                raise TypeError(f"{argname} is a sparse torch tensor ({x.layout}); nnx computes on dense arrays: "
                                f"pass {argname}.to_dense()")
            if x.requires_grad:
                x = x.detach()
            if copy and not x.is_contiguous():
                # a copy is kept (a parameter): torch's clone and casts keep a view's strides, and a weight held
                # column-major (``linear.weight.T``) gave products other bits than the same numbers saved and loaded
                x, copy = x.contiguous(), False  # already a new tensor: not copied twice
        return super().asarray(x, dtype=dtype, argname=argname, copy=copy)

    def as_data(self, x: Any) -> Any:
        # a tensor that requires grad (``p.value = linear.weight.T``) would make torch record every step's update
        return x.detach() if getattr(x, "requires_grad", False) else x

    def from_host(self, host: np.ndarray) -> Any:
        import torch

        # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
        # torch cannot share a read-only buffer (np.load, broadcast views): copy those
        if not (host.flags.c_contiguous and host.flags.writeable):
            host = np.array(host, order="C", copy=True)
        return torch.as_tensor(host, device=self.device)

    def _to_host(self, x: Any) -> np.ndarray:
        import torch

        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # bfloat16 and float8 have no NumPy dtype (.numpy() refuses them); float32 holds them exactly
        return x.numpy()

    def _move(self, x: Any) -> Any:
        return x.to(self.device)

    def concat_flat(self, arrays: list[Any]) -> Any:
        import torch

        # torch.flatten: a view where reshape(-1) would be one, at less dispatch (the compat namespace's reshape wraps
        # it in Python); 4.2 against 5.9 us for a small network's six gradients
        return torch.cat([torch.flatten(a) for a in arrays])

    def split_rows(self, x: Any, sizes: list[int]) -> list[Any]:
        import torch

        # one call for the epoch's batches, the same views as slicing each (7.7 against 15.6 us for 15 batches)
        return list(torch.split(x, sizes, dim=0))

    def finite_probe(self, x: Any) -> Any:
        import torch

        # x's dot product with itself: one BLAS call at less dispatch than torch.sum (0.7 against 1.1 us for a small
        # network's 641 gradients); a square overflows where a sum would not (|x| over 1.8e19 in float32), which the
        # caller's element-by-element confirmation then tells from NaN and inf
        if x.ndim == 1 and x.dtype in (torch.float32, torch.float64):
            return torch.dot(x, x)
        return super().finite_probe(x)

    @property
    def arrays_on_host(self) -> bool:
        return self.device.type == "cpu"

    def update_piece(self, dtype: Any) -> int | None:
        if self.device.type != "cpu":
            return None  # one kernel launch per operation over everything
        return UPDATE_PIECE_BYTES // dtype.itemsize

    def out_functions(self) -> dict[str, Any]:
        import torch

        # the replay uses a namespace function only where it *is* this torch function
        return {**{name: getattr(torch, name) for name in OUT_FUNCTIONS},
                **{op: getattr(torch, name) for op, name in OPERATOR_FUNCTIONS.items()}}

    def rng(self, seed: int) -> TorchRNG:
        return TorchRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)


def _masked_tensor_type(torch: Any) -> type:
    """``torch.masked.MaskedTensor`` (a prototype; a type nothing is an instance of where torch lacks it)."""
    masked = getattr(torch, "masked", None)
    return getattr(masked, "MaskedTensor", type(None))


def _unmasked(x: Any, argname: str) -> Any:
    """A MaskedTensor's values where none is masked; else ValueError, as for a NumPy masked array.

    Its values under the mask are not data (often whatever the tensor held), and torch's operations on it fail
    deep inside the masked library (a reduction's missing argument) or read it without the mask.
    """
    hidden = int((~x.get_mask()).sum())
    if hidden:
        entries = "entry" if hidden == 1 else "entries"
        raise ValueError(f"{argname} is a masked torch tensor with {hidden} masked {entries}, "
                         f"whose values are not data; fill them ({argname}.to_tensor(value)) or leave those rows out")
    return x.get_data()


# the size of a torch generator's state by device type, for files that did not record the type
STATE_BYTES = {5056: "cpu", 16: "cuda"}


def _device_type(state: dict) -> str | None:
    """The device type whose generator made `state` (recorded, or told by its size); None when unknown."""
    recorded = state.get("torch_device")
    if isinstance(recorded, str):
        return recorded
    return STATE_BYTES.get(len(state["torch"])) if isinstance(state["torch"], list) else None


class TorchRNG(DeviceRNG):
    """A `torch.Generator` on the backend's device (state key ``"torch"``: its bytes as a list)."""

    def __init__(self, backend: TorchBackend, seed: int) -> None:
        import torch

        super().__init__(backend, seed)
        self._gen = torch.Generator(device=backend.device)
        self._gen.manual_seed(self.seed)

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        import torch

        return torch.rand(shape, generator=self._gen, dtype=getattr(torch, label), device=self.backend.device)

    _foreign = frozenset({"pcg64"})

    def get_state(self) -> dict:
        return {**super().get_state(), "torch": self._gen.get_state().tolist(), "torch_device": self._gen.device.type}

    def accepts(self, state: Any) -> bool:
        # A generator's state is its device type's own: one from another device type (a checkpoint trained on a
        # GPU, loaded on a CPU) is not restored, and the file loads with this stream as seeded, as one from
        # another backend does. A state of no known size is taken, so that `set_state` refuses it.
        return super().accepts(state) and "torch" in state and _device_type(state) in (None, self._gen.device.type)

    def set_state(self, state: dict) -> None:
        import torch

        super().set_state(state)
        if "torch" in state:
            # a generator takes its state as a CPU tensor, whatever device it draws on and whatever default
            # device the user set (``torch.set_default_device("cuda")`` would put a tensor made without one there)
            self._gen.set_state(torch.tensor(state["torch"], dtype=torch.uint8, device="cpu"))
