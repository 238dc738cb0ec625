"""The optional fast path of the NumPy and CuPy adapters (one API, so one module serves both).

The portable core never imports this module: the numpy and cupy adapters build a
`FastPath` on first use, and the core reaches it only as ``backend.fastpath``.
Everything here has a portable twin that computes the same numbers, and is taken
only for what it was told it can handle (see "Declarations" below):

- `FlatParams` keeps a model's parameters as consecutive views of one flat buffer,
  and gradients in one flat buffer with per-parameter views, so that an optimizer
  can update all parameters with one array operation per term. A ``p.grad`` someone
  kept is never written again (as on every backend): the buffer is reused only while
  reference counts show that nothing outside holds it, else each step gets a fresh one.
- `FusedUpdate` is that single update, applied chunk by chunk so that the
  temporaries an update rule makes stay small (and in cache). Before every step
  it checks by identity that each parameter, gradient and state array is the view
  it expects; if anything was rebound (a loaded state dict, a gradient computed by
  the portable path) the optimizer falls back to its per-parameter loop.
- `TrainStep` is the forward/loss/backward pass of a `Sequential` with buffers
  kept from step to step: matmuls write with ``out=``, ReLU works in place,
  gradients land directly in the step's flat gradient buffer and the first layer's
  input gradient is never computed. Layers without a kernel here run their own
  ``forward``/``backward``; a model where such a layer has parameters, or with
  regularizers, takes the portable step altogether.

Declarations: what the fast paths handle is listed here by exact class (a subclass may
change the math, so it is not covered until listed itself): the optimizers whose update
is elementwise with the hyper-parameters that update reads, the layers with a kernel
and the loss heads with a kernel, each with the constructor arguments the kernel
computes (an object whose ``get_config()`` differs from that of one built from those
arguments alone has an option the kernel ignores). The classes are looked up by their
public names on first use, so importing this module imports no layer, loss or
optimizer module.

Differences from the portable path, by design: ReLU's backward multiplies by the
mask instead of selecting (``where``), which agrees for every finite gradient
and is ten times faster on NumPy; the cross-entropy value sums the picked
log-probabilities instead of a one-hot product (same value up to rounding).
"""

from __future__ import annotations

import functools
import importlib
import sys
import weakref
from operator import is_
from typing import Any, cast

from .optimizer_rules import BUILTIN_OPTIMIZER_HYPERPARAMS

__all__ = ["FastPath", "FlatParams", "FusedUpdate", "TrainStep"]

# -- declarations ----------------------------------------------------------------------------------

_DENSE, _RELU, _OTHER = 0, 1, 2
_HEAD_GENERIC, _HEAD_BCE_LOGITS, _HEAD_CE_LOGITS, _HEAD_MSE = 0, 1, 2, 3

# layer class name in nnx.layers -> (kernel, the constructor arguments of a layer the kernel computes)
_LAYER_KERNELS = {
    "Dense": (_DENSE, lambda layer: {"in_features": layer.in_features, "out_features": layer.out_features,
                                     "init": layer.init}),
    "ReLU": (_RELU, lambda layer: {}),
}
# loss class name in nnx.losses -> (kernel, the constructor arguments of the loss the kernel computes)
_HEAD_KERNELS = {
    "BinaryCrossEntropy": (_HEAD_BCE_LOGITS, {"from_logits": True}),
    "CrossEntropy": (_HEAD_CE_LOGITS, {"from_logits": True}),
    "MSE": (_HEAD_MSE, {}),
}


@functools.cache
def _declared() -> tuple[dict, dict, dict]:
    """The declarations keyed by class object, resolved once through nnx's public modules."""
    optim, layers, losses = (importlib.import_module(f"nnx.{name}") for name in ("optim", "layers", "losses"))
    return ({getattr(optim, n): frozenset(hp) for n, hp in BUILTIN_OPTIMIZER_HYPERPARAMS.items()},
            {getattr(layers, n): decl for n, decl in _LAYER_KERNELS.items()},
            {getattr(losses, n): decl for n, decl in _HEAD_KERNELS.items()})


def elementwise(optimizer: Any) -> bool:
    """Whether `optimizer`'s update is declared elementwise: its exact class and every hyper-parameter it has."""
    names = _declared()[0].get(type(optimizer))
    return names is not None and set(optimizer.hyperparams) <= names


def layer_kernel(layer: Any) -> int:
    """The kernel declared for `layer` (`_DENSE`, `_RELU`), or `_OTHER`: it runs its own forward/backward."""
    decl = _declared()[1].get(type(layer))
    if decl is None:
        return _OTHER
    kernel, args = decl
    return kernel if layer.get_config() == _reference_config(type(layer), **args(layer)) else _OTHER


def head_kernel(head: Any) -> int:
    """The loss kernel declared for `head`, or `_HEAD_GENERIC`: its own ``value_and_grad``."""
    decl = _declared()[2].get(type(head))
    if decl is None:
        return _HEAD_GENERIC
    kernel, args = decl
    return kernel if head.get_config() == _reference_config(type(head), **args) else _HEAD_GENERIC


@functools.lru_cache(maxsize=256)
def _reference_config(cls: type, **args: Any) -> dict:
    """``cls(**args).get_config()``: the configuration of an object with only the arguments a kernel handles.

    Cached, since every `fit` call plans its step again. Callers only compare the result.
    """
    return cls(**args).get_config()


# -- the library's operations ---------------------------------------------------------------------

class Kernels:
    """The NumPy-style operations the fast paths need, for `numpy` or `cupy` (one API).

    Args:
        module: the library module (``numpy`` or ``cupy``), not its array-API wrapper.
    """

    def __init__(self, module: Any) -> None:
        self.m = module
        # sum(array, axis, dtype, out): NumPy's ufunc reduction skips np.sum's Python wrapper (same result)
        self.sum = module.add.reduce if module.__name__ == "numpy" else module.sum
        # dot(a, b, out) of 2-D arrays: the same BLAS call as matmul, with about 0.8 us less overhead in NumPy
        self.dot = module.dot
        # max(array, axis, dtype, out, keepdims), in sum's positional order (np.max's wrapper costs ~2 us)
        self.max = module.maximum.reduce if module.__name__ == "numpy" else module.max
        # NumPy views hold a Python reference to the array that owns their memory, so reference counts
        # see every view of a buffer anyone made (torch's and CuPy's are not relied on here)
        self.counts_views = module.__name__ == "numpy"

    @staticmethod
    def base(x: Any) -> Any:
        """The array `x` is a view of, or None when it owns its memory."""
        return x.base

    @staticmethod
    def numel(x: Any) -> int:
        """The number of elements of `x`."""
        return x.size

    def root(self, x: Any) -> Any:
        """The array that owns `x`'s memory (`x` itself when it owns it)."""
        base = self.base
        while base(x) is not None:
            x = base(x)
        return x


class FastPath:
    """The fast paths of a NumPy-API library; reached as ``backend.fastpath``.

    Args:
        module: the library module (``numpy`` or ``cupy``).
    """

    step_class: type[TrainStep]  # TrainStep, set below; another library's fast path may subclass it

    def __init__(self, module: Any) -> None:
        self.kernels = Kernels(module)
        # one step per model, kept while the model lives, so buffers survive from one fit call to the next
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def flat_params(self, params: list[Any]) -> FlatParams:
        """`params` laid out as consecutive views of one flat buffer (see `FlatParams.adopt`)."""
        return FlatParams.adopt(self.kernels, params)

    def train_step(self, model: Any, loss: Any) -> TrainStep | None:
        """A buffered training step for `model` and `loss`, or None when the portable one must run.

        The step of an earlier call is reused when the model's layers, parameters and the
        loss are the same; parameters rebound since then are copied back into the flat buffer.
        """
        plan = TrainStep.plan(model, loss)  # pyright: ignore[reportCallIssue] - the static method, not an instance's plan
        if plan is None:
            return None
        step = self._steps.get(model)
        if step is not None and step.signature == plan[-1]:
            step.flat.restore()
            return step
        step = self.step_class(self, model, *plan)
        self._steps[model] = step
        return step

    def fuse(self, optimizer: Any) -> FusedUpdate | None:
        """A single update over the optimizer's parameters, or None when it cannot give the same result."""
        return FusedUpdate.build(self.kernels, optimizer)


# -- flat parameters -------------------------------------------------------------------------------

# the live FlatParams by the id of their value buffer, so that an optimizer finds the layout its parameters
# are in (each FlatParams holds its buffer, so the id cannot be reused while the entry exists)
_FLATS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class FlatParams:
    """Parameter values as consecutive views of one flat array, and a flat gradient array (see `new_grads`).

    Attributes:
        values: the flat value buffer; ``value_views`` its per-parameter views in their shapes.
        grads: the current step's flat gradient buffer (None before the first); ``grad_views`` its views.
        offsets: where each parameter starts in the flat buffers, and the total size last.
    """

    def __init__(self, k: Kernels, params: list[Any], values: Any) -> None:
        self.k = k
        self.params = list(params)
        self.values = values
        self.offsets = [0]
        self.value_views = []
        self._layout = []
        for p in params:
            start, shape = self.offsets[-1], tuple(p.value.shape)
            stop = start + k.numel(p.value)
            self.offsets.append(stop)
            # (the slice, the shape to give it or None for 1-D): what new_grads cuts from each fresh buffer
            self._layout.append((slice(start, stop), shape if len(shape) != 1 else None))
            self.value_views.append(values[start:stop].reshape(shape))
        self._empty, self._size, self._dtype = k.m.empty, values.shape[0], values.dtype
        self._reuse = k.counts_views
        self.grads: Any = None
        self.grad_views: list[Any] = []
        self._own_holders = (0, 0)  # `_holders` when only nnx refers to the buffer (see `new_grads`)
        _FLATS[id(values)] = self

    @classmethod
    def adopt(cls, k: Kernels, params: list[Any]) -> FlatParams:
        """Lay `params` out flat: reuse their buffer when they already are, else copy them into a new one.

        Copying rebinds each ``p.value`` to a view holding the same numbers.
        """
        current = _FLATS.get(id(k.root(params[0].value)))
        if current is not None and len(current.params) == len(params) \
                and all(map(is_, current.params, params)) \
                and all(map(is_, [p.value for p in params], current.value_views)):
            flat = cls(k, params, current.values)
            flat.value_views = list(current.value_views)  # the same view objects, so identity checks still hold
            return flat
        first = params[0].value
        flat = cls(k, params, k.m.empty((sum(k.numel(p.value) for p in params),), dtype=first.dtype))
        flat.restore()
        return flat

    def restore(self) -> None:
        """Copy any parameter rebound since (e.g. by ``load_state_dict``) into its view and rebind it back."""
        for p, view in zip(self.params, self.value_views, strict=True):
            if p.value is not view:
                view[...] = p.value
                p.value = view

    def new_grads(self) -> list[Any]:
        """This step's flat gradient buffer; returns its per-parameter views (uninitialised).

        On NumPy, last step's buffer is written again only when nothing but the parameters'
        ``p.grad`` holds it or its views (reference counts say so); a gradient anyone kept, or
        a view or DLPack export of it, makes this step allocate a fresh buffer, so a kept array
        never changes. Elsewhere every step allocates one.
        """
        if self.grads is not None and self._reuse:
            base, views = self._holders()
            if base <= self._own_holders[0] and views <= self._own_holders[1]:
                return self.grad_views
        self.grads = self._empty(self._size, self._dtype)  # positional: NumPy parses them faster
        self.grad_views = [self.grads[cut] if shape is None else self.grads[cut].reshape(shape)
                           for cut, shape in self._layout]
        base, views = self._holders()
        self._own_holders = (base, views + 1)  # + each view's p.grad, which the caller binds
        return self.grad_views

    def _holders(self) -> tuple[int, int]:
        """References to the gradient buffer, and the most to any one of its views."""
        return sys.getrefcount(self.grads), max(map(sys.getrefcount, self.grad_views), default=0)


# -- one optimizer update over all parameters ------------------------------------------------------

_SUM_WIDTH = 4096  # gradients summed per row by the finite check's dot (16 KiB of float32: stays in L1)
_CHUNK = 1 << 18  # elements per piece of the fused update: 1 MiB of float32, so temporaries stay in cache


class _FlatParam:
    """Stands in for a `Parameter` when the optimizer updates (a piece of) the flat buffer."""

    __slots__ = ("name", "value", "grad", "regularized")

    def __init__(self) -> None:
        self.name = "<flat>"
        self.value = None
        self.grad = None
        self.regularized = False


class FusedUpdate:
    """An optimizer's update applied to the flat run of its parameters, in a few large pieces.

    Built only for optimizers declared elementwise (`elementwise`), whose per-parameter
    rule applied to pieces of the concatenation equals the rule applied to each
    parameter. The per-parameter state (``optimizer.state[i]``) becomes views of flat
    state buffers, so ``state_dict`` and ``load_state_dict`` see what they saw before.
    The gradients are read from the flat buffer of the current step (`FlatParams.grads`).
    """

    def __init__(self, k: Kernels, optimizer: Any, flat: FlatParams, first: int) -> None:
        self.k = k
        self.params = list(optimizer.params)
        self.flat = flat
        last = first + len(self.params)
        self.span = slice(first, last)  # where its parameters are among the flat ones
        self.whole = first == 0 and last == len(flat.params)
        self.value_views = flat.value_views[first:last]
        self.start, self.stop = flat.offsets[first], flat.offsets[last]
        self.size = self.stop - self.start
        self.bounds = [(a, min(a + _CHUNK, self.size)) for a in range(0, self.size, _CHUNK)]
        values = flat.values[self.start:self.stop]
        self.value_chunks = [values[a:b] for a, b in self.bounds]
        self.param = _FlatParam()
        self.flat_state: dict[str, Any] | None = None
        self.chunk_states: list[dict[str, Any]] = []
        self.state_index: list[tuple[int, str]] = []
        self.state_views: list[Any] = []
        self.state_dict_obj: Any = None

    @classmethod
    def build(cls, k: Kernels, optimizer: Any) -> FusedUpdate | None:
        """The fused update for `optimizer`, or None where its per-parameter loop must run."""
        params = optimizer.params
        if not params:
            return None
        grad = params[0].grad
        if grad is None or k.base(grad) is None:
            return None  # fresh gradients from the portable path: the common "no" answers first
        if "_update" in vars(optimizer) or not elementwise(optimizer):
            return None  # a per-parameter hook on this instance, or an update not declared elementwise
        steps = optimizer._param_steps
        if any(s != steps[0] for s in steps):
            return None  # parameters at different update counts need their own bias corrections
        flat = _FLATS.get(id(k.root(params[0].value)))
        if flat is None or flat.grads is None:
            return None  # not laid out by a training step, or no step has made gradients yet
        first = next((j for j, p in enumerate(flat.params) if p is params[0]), None)
        if first is None or first + len(params) > len(flat.params):
            return None
        if not (all(map(is_, flat.params[first:first + len(params)], params))
                and all(map(is_, [p.value for p in params], flat.value_views[first:]))
                and all(map(is_, [p.grad for p in params], flat.grad_views[first:]))):
            return None
        fused = cls(k, optimizer, flat, first)
        if not fused._adopt_state(optimizer):
            return None
        return fused

    def _adopt_state(self, optimizer: Any) -> bool:
        """Move existing per-parameter state into flat buffers (views replace the arrays)."""
        state = optimizer.state
        n = len(self.params)
        have = [i for i in range(n) if i in state]
        if not have:
            return True
        if len(have) != n:
            return False
        keys = tuple(state[0])
        if any(tuple(state[i]) != keys for i in range(n)):
            return False
        like = state[0][keys[0]] if keys else self.value_chunks[0]
        self._lay_out({key: self.k.m.empty((self.size,), dtype=like.dtype) for key in keys})
        self._install(optimizer, copy=True)
        return True

    def _lay_out(self, flat_state: dict[str, Any]) -> None:
        self.flat_state = flat_state
        self.chunk_states = [{key: flat[a:b] for key, flat in flat_state.items()} for a, b in self.bounds]

    def _install(self, optimizer: Any, copy: bool) -> None:
        """Per-parameter views of the flat state into ``optimizer.state`` (copying the old values in)."""
        state = optimizer.state
        self.state_index, self.state_views = [], []
        pos = 0
        for i, p in enumerate(self.params):
            size, shape = self.k.numel(p.value), tuple(p.value.shape)
            entry = {}
            for key, flat in cast(dict, self.flat_state).items():  # laid out before it is installed
                view = flat[pos:pos + size].reshape(shape)
                if copy:
                    view[...] = state[i][key]
                entry[key] = view
                self.state_index.append((i, key))
                self.state_views.append(view)
            state[i] = entry
            pos += size
        self.state_dict_obj = state

    def ready(self, optimizer: Any) -> bool:
        """Whether every parameter, gradient and state array is still the view this update expects."""
        if "_update" in vars(optimizer):
            return False  # a per-parameter hook was installed since: it must see every parameter
        params = self.params
        if not all(map(is_, [p.value for p in params], self.value_views)):
            return False
        grad_views = self.flat.grad_views if self.whole else self.flat.grad_views[self.span]
        if not all(map(is_, [p.grad for p in params], grad_views)):
            return False
        state = optimizer.state
        if self.flat_state is None:
            return not state
        if state is not self.state_dict_obj:
            return False  # replaced wholesale, e.g. by load_state_dict
        try:
            current = [state[i][key] for i, key in self.state_index]
        except (KeyError, TypeError):
            return False
        return all(map(is_, current, self.state_views))

    def run(self, optimizer: Any) -> None:
        """Apply the optimizer's rule to the flat buffers, piece by piece, and count the step for every parameter."""
        steps = optimizer._param_steps
        t = steps[0] + 1
        param = self.param
        fresh = self.flat_state is None  # the first update: the rule creates its state
        grads_all = self.flat.grads if self.whole else self.flat.grads[self.start:self.stop]
        saved = optimizer.state
        try:
            for c, (a, b) in enumerate(self.bounds):
                values, grads = self.value_chunks[c], grads_all[a:b]
                # a copy of the dict, so that a rule rebinding an entry can be told from one updating in place
                optimizer.state = {} if fresh else {0: dict(self.chunk_states[c])}
                param.value, param.grad = values, grads
                optimizer._update(0, param, grads, t)
                if param.value is not values:
                    values[...] = param.value  # a rule that rebinds instead of updating in place
                new = optimizer.state.get(0)
                if new is None:
                    continue
                if self.flat_state is None:
                    self._lay_out({key: self.k.m.empty((self.size,), dtype=arr.dtype) for key, arr in new.items()})
                views = self.chunk_states[c]
                for key, arr in new.items():
                    if arr is not views[key]:
                        views[key][...] = arr
        except BaseException:
            if fresh:
                self.flat_state, self.chunk_states = None, []
            raise
        finally:
            optimizer.state = saved
            param.value = param.grad = None  # hold no step's arrays between steps
        steps[:] = [t] * len(steps)
        if fresh and self.flat_state is not None:
            self._install(optimizer, copy=False)


# -- the training step ------------------------------------------------------------------------------

class TrainStep:
    """Forward, loss and backward of a `Sequential` in training mode, with buffers reused across steps.

    Calling it as ``step(X, y)`` returns ``(loss value, outputs, None)`` as
    ``Sequential.loss_and_grads`` does, and leaves each parameter's gradient in ``p.grad``
    as a view of this step's flat gradient buffer (`FlatParams.new_grads`). The outputs are a fresh array
    every step (fit may keep them for metrics); intermediate buffers are not.
    """

    def __init__(self, fastpath: FastPath, model: Any, ops: list[tuple[int, Any]], head: Any, head_kind: int,
                 signature: tuple) -> None:
        self.k = fastpath.kernels
        self.ops = ops
        self.head = head
        self.head_kind = head_kind
        self.signature = signature
        self.flat = fastpath.flat_params(model.parameters())
        # per op: (kind, index, layer, weight Parameter, bias Parameter, weight grad index, bias grad index)
        self.plan: list[tuple] = []
        j = 0
        for i, (kind, layer) in enumerate(ops):
            if kind == _DENSE:
                self.plan.append((kind, i, layer, layer.weight, layer.bias, j, j + 1))
                j += 2
            else:
                self.plan.append((kind, i, layer, None, None, None, None))
        self.backward_plan = self.plan[::-1]
        dense = [i for i, (kind, _) in enumerate(ops) if kind == _DENSE]
        self.last_dense = dense[-1] if dense else -1
        self._buffers: dict[int, dict] = {}
        self._ones: Any = None

    @staticmethod
    def plan(model: Any, loss: Any) -> tuple | None:  # pyright: ignore[reportRedeclaration] - instances shadow it
        """(ops, head, head kind, signature) for `model` and `loss`, or None when the portable step must run."""
        if getattr(model, "regularizer", None) is not None:
            return None
        n_run, head, _ = model.output_head(loss)
        ops: list[tuple[int, Any]] = []
        params = []
        for layer in model.layers[:n_run]:
            kind = layer_kernel(layer)
            if kind == _DENSE:
                params += [layer.weight, layer.bias]
            elif kind == _RELU and not (ops and ops[-1][0] == _DENSE):
                kind = _OTHER  # the kernel works in place on the Dense output buffer, which the step owns
            ops.append((kind, layer))
        for layer in model.layers[n_run:]:
            params += layer.parameters()
        everything = model.parameters()
        if not params or len(params) != len(everything) or not all(map(is_, params, everything)):
            return None  # a layer without a kernel has parameters: its gradients would not land flat
        kind = head_kernel(head)
        signature = (tuple(map(id, model.layers)), tuple(kind for kind, _ in ops), tuple(map(id, params)), n_run,
                     type(head), repr(head.get_config()), kind)
        return ops, head, kind, signature

    def _buffers_for(self, X: Any) -> dict:
        n = X.shape[0]
        bufs = self._buffers.get(n)
        if bufs is not None:
            return bufs
        if len(self._buffers) >= 4:
            self._buffers.clear()  # a caller cycling through batch sizes: don't hoard memory
        m, dtype = self.k.m, X.dtype
        out: list[Any] = [None] * len(self.ops)
        dx: list[Any] = [None] * len(self.ops)
        mask: list[Any] = [None] * len(self.ops)
        for i, (kind, layer) in enumerate(self.ops):
            if kind == _DENSE:
                if i != self.last_dense:
                    out[i] = m.empty((n, layer.out_features), dtype=dtype)
                if i > 0:
                    dx[i] = m.empty((n, layer.in_features), dtype=dtype)
            elif kind == _RELU:
                mask[i] = m.empty((n, self.ops[i - 1][1].out_features), dtype=bool)
        # zero of the batch's dtype: a Python 0 costs NumPy a scalar conversion per call (same result)
        bufs = {"out": out, "dx": dx, "mask": mask, "rows": m.arange(n), "head": None,
                "zero": m.zeros((), dtype=dtype) if m.__name__ != "numpy" else dtype.type(0)}
        self._buffers[n] = bufs
        return bufs

    def __call__(self, X: Any, y: Any) -> tuple[Any, Any, None]:
        m = self.k.m
        dot, add, k_sum, maximum = self.k.dot, m.add, self.k.sum, m.maximum
        bufs = self._buffers_for(X)
        out, dx, mask, zero = bufs["out"], bufs["dx"], bufs["mask"], bufs["zero"]
        inputs = [None] * len(self.ops)
        Z = X
        for kind, i, layer, wp, bp, _, _ in self.plan:
            if kind == _DENSE:
                inputs[i] = Z
                buf = out[i]
                Z = dot(Z, wp.value) if buf is None else dot(Z, wp.value, buf)
                add(Z, bp.value, out=Z)
            elif kind == _RELU:
                maximum(Z, zero, out=Z)
                inputs[i] = Z
            else:
                Z = layer.forward(Z, True)
        value, dY = self._head(Z, y, bufs)
        grads = self.flat.new_grads()  # a p.grad someone kept is never overwritten
        for kind, i, layer, wp, bp, jw, jb in self.backward_plan:
            if kind == _DENSE:
                gw, gb = grads[jw], grads[jb]
                dot(inputs[i].T, dY, gw)
                k_sum(dY, 0, None, gb)
                wp.grad = gw
                bp.grad = gb
                if i:
                    dY = dot(dY, wp.value.T, dx[i])
            elif kind == _RELU:
                mk = m.greater(inputs[i], zero, out=mask[i])
                m.multiply(dY, mk, out=dY)
            else:
                dY = layer.backward(dY, need_dX=i > 0)
        return value, Z, None

    def gradient_total(self, value: Any, params: list[Any]) -> Any:
        """`value` plus the sum of every gradient, or None when ``p.grad`` are not this step's views.

        The finite check of `nnx.training.TrainStep` reads this one number per step, so it is
        kept lean: checking the first and last binding confirms the layout for this step, and
        the sum runs through BLAS (a dot with ones: a third of a ufunc reduction's cost at small
        shapes). A big buffer is summed as rows of `_SUM_WIDTH` against a short vector of ones,
        so that only the gradients travel through the cache, not a second buffer as big.
        """
        views = self.flat.grad_views
        if len(views) != len(params) or params[0].grad is not views[0] or params[-1].grad is not views[-1]:
            return None
        grads, ones = self.flat.grads, self._ones
        if ones is None:
            ones = self._ones = self.k.m.ones(min(grads.shape[0], _SUM_WIDTH), dtype=grads.dtype)
        size = grads.shape[0]
        if size <= _SUM_WIDTH:
            return value + grads.dot(ones)
        cut = size - size % _SUM_WIDTH
        return value + grads[:cut].reshape(cut // _SUM_WIDTH, _SUM_WIDTH).dot(ones).sum() + self.k.sum(grads[cut:], 0)

    def _head(self, Z: Any, y: Any, bufs: dict) -> tuple[Any, Any]:
        k, kind = self.k, self.head_kind
        m = k.m
        if kind == _HEAD_CE_LOGITS and y.ndim == 1 and Z.ndim == 2:
            n = Z.shape[0]
            P = bufs["head"]
            if P is None or P.shape != Z.shape:
                P = bufs["head"] = m.empty(Z.shape, dtype=Z.dtype)
            rows = bufs["rows"]
            m.subtract(Z, k.max(Z, 1, None, None, True), out=P)
            picked = k.sum(P[rows, y], None)
            m.exp(P, out=P)
            total = k.sum(P, 1, None, None, True)
            scale = 1 / n
            value = (k.sum(m.log(total), None) - picked) * scale
            # the portable gradient (softmax * 1 - onehot) * scale, operation for operation
            m.divide(P, total, out=P)
            P[rows, y] -= 1
            m.multiply(P, scale, out=P)
            return value, P
        if kind == _HEAD_BCE_LOGITS and y.shape == Z.shape:
            # the portable softplus and sigmoid share exp(-|z|); computed once here, with the same rounding
            # (the same operations as before, on fewer temporaries and without Python-number conversions)
            scale = 1 / Z.size
            zero = bufs["zero"]
            e = m.abs(Z)
            m.negative(e, out=e)
            m.exp(e, out=e)
            t = m.maximum(Z, zero)
            m.add(t, m.log1p(e), out=t)
            m.subtract(t, m.multiply(y, Z), out=t)
            value = k.sum(t, None) * scale
            g = m.where(m.greater_equal(Z, zero), zero + 1, e)
            m.add(e, 1, out=e)
            m.divide(g, e, out=g)
            m.subtract(g, y, out=g)
            m.multiply(g, scale, out=g)
            return value, g
        if kind == _HEAD_MSE and y.shape == Z.shape:
            diff = Z - y
            value = k.sum(diff * diff, None) * (1 / Z.size)
            m.multiply(diff, 2 / Z.size, out=diff)
            return value, diff
        return self.head.value_and_grad(y, Z, check=False)


FastPath.step_class = TrainStep
