"""Protocols: what the rest of nnx needs from a backend, a model and a step's execution, as static types.

The lowest floor: this module imports nothing from nnx, so any module may name these
types without an import circle. `nnx.backends.Backend` satisfies `Backend`, `nnx.Sequential`
satisfies `Model`, and `CompiledStep` / `FlatUpdate` satisfy the two executions. Arrays stay
`Any`: the array API standard gives them no static type, and neither do losses'
and optimizers' values here (they live on higher floors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

Array = Any  # an array of some array-API namespace: the standard gives it no static type


class Backend(Protocol):
    """A backend as the core uses it: its namespace and device, moving arrays, random numbers, a compiler."""

    @property
    def xp(self) -> Any: ...  # the array namespace (a module)

    @property
    def device(self) -> Any: ...

    @property
    def spec(self) -> str: ...

    @property
    def arrays_on_host(self) -> bool: ...

    @property
    def fastpath_enabled(self) -> bool: ...

    @property
    def can_compile(self) -> bool: ...

    def compiler_off(self) -> str | None: ...  # why a library with a compiler does not compile now, else None

    @property
    def trace_errors(self) -> tuple[type[BaseException], ...]: ...

    def asarray(self, x: Any, dtype: Any = None, argname: str = "X", copy: bool = False) -> Array: ...

    def to_host(self, x: Array) -> Any: ...  # a NumPy array (NumPy is not imported by the core)

    def to_float(self, x: Array) -> float: ...

    def rng(self, seed: int) -> Any: ...

    def synchronize(self, x: Array = None) -> None: ...

    def split_rows(self, x: Array, sizes: list[int]) -> list[Array]: ...

    def take_rows(self, x: Array, rows: Array) -> Array: ...  # rows at indices nnx made, each in range

    def eager_scope(self) -> Any: ...  # a context for layers run op by op: they compute as compiled programs do

    def sums_finite(self, arrays: Sequence[Array]) -> bool: ...  # each float array's sum finite, in one call

    def finite_probe(self, x: Array) -> Array: ...  # finite when every element of 1-D x is (the sum, or cheaper)

    def jit(self, fn: Callable[..., Any]) -> Callable[..., Any]: ...

    # fn(xp, *arrays, **settings) as one call (one program on JAX)
    def fused(self, fn: Callable[..., Any], static: tuple[str, ...] = ()) -> Callable[..., Any]: ...

    def tape(self) -> Any: ...  # a new recording of operations on its arrays (nnx.backends.recording), or None

    def float_dtype(self, dtype: Any) -> Any: ...

    def owns(self, x: Any) -> bool: ...

    def as_data(self, x: Any) -> Any: ...

    def is_traced(self, x: Any) -> bool: ...


class Model(Protocol):
    """A model as training, inference, checkpoints and callbacks use it (`nnx.Sequential` is one)."""

    loss: Any  # the `Loss` of the last fit, or None
    optimizer: Any  # the `Optimizer` of the last fit, or None
    history: Any  # the `History` of the last fit, or None
    epochs_trained: int
    callback_state: dict[str, Any]  # JSON state callbacks keep with the model for a later or resumed fit
    feature_names_in_: tuple[str, ...] | None  # the column names of the data frame it was first fit on
    stop_training: bool
    distributed: Any  # the communicator of a data-parallel fit, or None

    @property
    def backend(self) -> Backend: ...

    @property
    def xp(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def seed(self) -> int: ...

    @property
    def layers(self) -> Sequence[Any]: ...

    @property
    def input_shape(self) -> tuple[int, ...] | None: ...

    @property
    def output_sample_shape(self) -> tuple[int, ...] | None: ...

    @property
    def out_features(self) -> int | None: ...

    @property
    def regularizer(self) -> Any: ...

    @property
    def shuffle_rng(self) -> Any: ...  # a host NumPy generator

    @property
    def dropout_rng(self) -> Any: ...  # the backend's `DeviceRNG`

    def parameters(self, recurse: bool = True) -> list[Any]: ...

    def buffers(self, recurse: bool = True) -> list[Any]: ...

    def named_layers(self, recurse: bool = True) -> list[tuple[str, Any]]: ...

    def state_dict(self, copy: bool = True) -> dict[str, Array]: ...

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any: ...

    def get_config(self) -> dict: ...

    def save(self, path: Any, include_optimizer: bool = True) -> None: ...

    def forward_to_head(self, X: Array, n_layers: int, training: bool,
                        runners: Sequence[Any] | None = None) -> Array: ...

    def backward_from_head(self, dY: Array, n_layers: int, need_dX: bool,
                           runners: Sequence[Any] | None = None) -> Array: ...

    def penalty(self) -> Array: ...
    def penalizes(self) -> bool: ...

    def output_layer(self) -> Any: ...

    def output_head(self, loss: Any) -> tuple[int, Any, bool]: ...

    def prepare_inputs(self, X: Any, argname: str = "X") -> Array: ...

    def prepare_targets(self, y: Any, loss: Any, n_rows: int, argname: str = "y", x_argname: str = "X") -> Array: ...

    def prepare_sample_weight(self, sample_weight: Any, class_weight: Mapping | None, y: Array, loss: Any,
                              n_rows: int, argname: str = "sample_weight") -> Array: ...

    def require_finite(self, arr: Array, argname: str, given: Any = None) -> None: ...

    def resolve_loss(self, loss: Any) -> Any: ...

    def resolve_optimizer(self, optimizer: Any, lr: float | None) -> Any: ...

    def metric_values(self, metric_fns: dict, y: Array, Z: Array, from_logits: bool,
                      loss: Any = None) -> dict[str, float]: ...

    def data_parallel(self, distributed: Any) -> Any: ...


class CompiledExecution(Protocol):
    """A step run as one compiled program (JAX): every stage in one call, the finite check deferred."""

    traces: int  # how often the program was traced
    broken: bool  # set when the model's code cannot be traced: the plain stages run instead

    @property
    def resting(self) -> bool:
        """Whether its settings change too often for programs to pay: the plain stages run meanwhile."""
        ...

    def rest(self) -> None: ...

    def wake(self) -> bool: ...

    def __call__(self, X: Array, y: Array, sample_weight: Array = None,
                 read_check: bool = False) -> tuple[Array, Array, bool]: ...

    def end_epoch(self) -> int | None: ...

    def refused_so_far(self) -> bool: ...

    def reset(self) -> None: ...


class FlatExecution(Protocol):
    """An elementwise rule applied once over all parameters gathered into flat buffers."""

    @property
    def execution(self) -> str:
        """How History names it: "flat", "sharded" across ranks, or "plain" where the rule proved unsuited."""
        ...

    def applies(self) -> bool: ...

    def gather_grads(self) -> Array: ...

    def offer_grads(self) -> dict[Any, Array] | None: ...

    def run(self, keep: Array = None) -> bool: ...

