"""Optional fast paths for backends whose arrays have views and ``out=`` (NumPy, CuPy).

The portable core never imports this module: a `Backend` owns a `FastPath` (or
None, for JAX and array_api_strict) and the core reaches it only through
``backend.fastpath``. Everything here has a portable twin that computes the
same numbers, and is taken only when a check says it applies:

- `FlatParams` keeps a model's parameters as consecutive views of one flat
  buffer (and their gradients in a second one), so an optimizer can update all
  of them with one array operation per term instead of one per parameter.
- `FusedUpdate` is that single update, applied chunk by chunk so that the
  temporaries an update rule makes stay small (and in cache). Before every step
  it checks by identity that each parameter, gradient and state array is still
  the view it laid out; if anything was rebound (a loaded state dict, a gradient
  computed by the portable path) the optimizer falls back to its per-parameter
  loop. Results never depend on the aliasing being there, only the speed does.
- `TrainStep` is the forward/loss/backward pass of a `Sequential` with buffers
  kept from step to step: matmuls write with ``out=``, ReLU works in place,
  gradients land directly in the flat gradient buffer and the first layer's
  input gradient is never computed. Layers it has no kernel for run their own
  portable ``forward``/``backward``; models with regularizers use the portable
  step altogether.

Differences from the portable path, by design: ReLU's backward multiplies by the
mask instead of selecting (``where``), which agrees for every finite gradient
and is ten times faster on NumPy; the cross-entropy value sums the picked
log-probabilities instead of a one-hot product (same value up to rounding).
"""

from __future__ import annotations

import weakref
from operator import is_
from typing import Any

__all__ = ["FastPath", "FlatParams", "FusedUpdate", "TrainStep"]


class Kernels:
    """The NumPy-style operations the fast paths need, for `numpy` or `cupy` (one API).

    Args:
        module: the library module (``numpy`` or ``cupy``), not its array-API wrapper.
    """

    def __init__(self, module: Any) -> None:
        self.m = module
        self._numpy = module.__name__ == "numpy"
        # sum(array, axis, dtype, out): NumPy's ufunc reduction skips np.sum's Python wrapper (same result)
        self.sum = module.add.reduce if self._numpy else module.sum

    def ptr(self, x: Any) -> int:
        """Address of the first element."""
        return x.__array_interface__["data"][0] if self._numpy else x.data.ptr

    @staticmethod
    def root(x: Any) -> Any:
        """The array that owns `x`'s memory (`x` itself when it owns it)."""
        while x.base is not None:
            x = x.base
        return x

    @staticmethod
    def contiguous(x: Any) -> bool:
        """Whether `x` is C-contiguous."""
        return bool(x.flags.c_contiguous)


class FastPath:
    """The fast paths a backend offers; reached as ``backend.fastpath``.

    Args:
        kernels: the `Kernels` of the backend's library.
    """

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels
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
        plan = TrainStep.plan(model, loss)
        if plan is None:
            return None
        step = self._steps.get(model)
        if step is not None and step.signature == plan[-1]:
            step.flat.restore()
            return step
        step = TrainStep(self, model, *plan)
        self._steps[model] = step
        return step

    def fuse(self, optimizer: Any) -> FusedUpdate | None:
        """A single update over the optimizer's parameters, or None when they are not laid out flat."""
        return FusedUpdate.build(self.kernels, optimizer)


# -- flat parameters -------------------------------------------------------------------------------

def _flat_run(k: Kernels, arrays: list[Any]) -> tuple[Any, int, int] | None:
    """(owner, start, stop) when `arrays` are consecutive C-contiguous views of one 1-D owner."""
    first = arrays[0]
    if first is None or first.base is None:
        return None
    owner = k.root(first)
    if owner.ndim != 1 or not k.contiguous(owner) or owner.dtype != first.dtype:
        return None
    item = owner.itemsize
    base_ptr = k.ptr(owner)
    gap = k.ptr(first) - base_ptr
    if gap < 0 or gap % item:
        return None
    start = pos = gap // item
    for a in arrays:
        if (a is None or a.base is None or a.dtype != owner.dtype or not k.contiguous(a)
                or k.root(a) is not owner or k.ptr(a) != base_ptr + pos * item):
            return None
        pos += a.size
    if pos > owner.size:
        return None
    return owner, start, pos


class FlatParams:
    """Parameter values (and a gradient buffer) as consecutive views of two flat arrays.

    Attributes:
        values, grads: the flat buffers.
        value_views, grad_views: per parameter, the views of each in the parameter's shape.
    """

    def __init__(self, k: Kernels, params: list[Any], values: Any) -> None:
        m = k.m
        self.params = list(params)
        self.values = values
        self.grads = m.zeros(values.shape, dtype=values.dtype)
        self.value_views, self.grad_views = [], []
        pos = 0
        for p in params:
            shape, size = tuple(p.value.shape), p.value.size
            self.value_views.append(m.reshape(values[pos:pos + size], shape))
            self.grad_views.append(m.reshape(self.grads[pos:pos + size], shape))
            pos += size

    @classmethod
    def adopt(cls, k: Kernels, params: list[Any]) -> FlatParams:
        """Lay `params` out flat: reuse their buffer when they already are, else copy them into a new one.

        Copying rebinds each ``p.value`` to a view holding the same numbers.
        """
        run = _flat_run(k, [p.value for p in params])
        if run is not None and run[1] == 0 and run[2] == run[0].size:
            flat = cls(k, params, run[0])
            # keep the existing view objects, so identity checks elsewhere still hold
            flat.value_views = [p.value for p in params]
            return flat
        first = params[0].value
        total = sum(p.value.size for p in params)
        flat = cls(k, params, k.m.empty((total,), dtype=first.dtype))
        flat.restore()
        return flat

    def restore(self) -> None:
        """Copy any parameter rebound since (e.g. by ``load_state_dict``) into its view and rebind it back."""
        for p, view in zip(self.params, self.value_views, strict=True):
            if p.value is not view:
                view[...] = p.value
                p.value = view


# -- one optimizer update over all parameters ------------------------------------------------------

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

    Every optimizer in `nnx.optim` is elementwise, so its per-parameter rule applied
    to pieces of the concatenation equals the rule applied to each parameter. The
    per-parameter state (``optimizer.state[i]``) becomes views of flat state buffers,
    so ``state_dict`` and ``load_state_dict`` see exactly what they saw before.
    """

    def __init__(self, k: Kernels, optimizer: Any, values: Any, grads: Any) -> None:
        self.k = k
        self.params = list(optimizer.params)
        self.value_views = [p.value for p in self.params]
        self.grad_views = [p.grad for p in self.params]
        self.size = values.shape[0]
        self.bounds = [(a, min(a + _CHUNK, self.size)) for a in range(0, self.size, _CHUNK)]
        self.chunks = [(values[a:b], grads[a:b]) for a, b in self.bounds]
        self.flat = _FlatParam()
        self.flat_state: dict[str, Any] | None = None
        self.chunk_states: list[dict[str, Any]] = []
        self.state_index: list[tuple[int, str]] = []
        self.state_views: list[Any] = []
        self.state_dict_obj: Any = None

    @classmethod
    def build(cls, k: Kernels, optimizer: Any) -> FusedUpdate | None:
        params = optimizer.params
        grads = [p.grad for p in params]
        if grads[0] is None or grads[0].base is None:
            return None  # fresh gradients from the portable path: the common "no" answers first
        if "_update" in vars(optimizer):
            return None  # a per-parameter hook was installed on this instance: keep calling it per parameter
        steps = optimizer._param_steps
        if any(s != steps[0] for s in steps):
            return None  # parameters at different update counts need their own bias corrections
        vrun = _flat_run(k, [p.value for p in params])
        grun = _flat_run(k, grads)
        if vrun is None or grun is None or vrun[2] - vrun[1] != grun[2] - grun[1]:
            return None
        fused = cls(k, optimizer, vrun[0][vrun[1]:vrun[2]], grun[0][grun[1]:grun[2]])
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
        like = state[0][keys[0]] if keys else self.chunks[0][0]
        self._lay_out({key: self.k.m.empty((self.size,), dtype=like.dtype) for key in keys})
        self._install(optimizer, copy=True)
        return True

    def _lay_out(self, flat_state: dict[str, Any]) -> None:
        self.flat_state = flat_state
        self.chunk_states = [{key: flat[a:b] for key, flat in flat_state.items()} for a, b in self.bounds]

    def _install(self, optimizer: Any, copy: bool) -> None:
        """Per-parameter views of the flat state into ``optimizer.state`` (copying the old values in)."""
        m = self.k.m
        state = optimizer.state
        self.state_index, self.state_views = [], []
        pos = 0
        for i, p in enumerate(self.params):
            size, shape = p.value.size, tuple(p.value.shape)
            entry = {}
            for key, flat in self.flat_state.items():
                view = m.reshape(flat[pos:pos + size], shape)
                if copy:
                    view[...] = state[i][key]
                entry[key] = view
                self.state_index.append((i, key))
                self.state_views.append(view)
            state[i] = entry
            pos += size
        self.state_dict_obj = state

    def ready(self, optimizer: Any) -> bool:
        """Whether every parameter, gradient and state array is still the view laid out."""
        if "_update" in vars(optimizer):
            return False  # a per-parameter hook was installed since: it must see every parameter
        params = self.params
        if not all(map(is_, [p.value for p in params], self.value_views)):
            return False
        if not all(map(is_, [p.grad for p in params], self.grad_views)):
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
        flat = self.flat
        fresh = self.flat_state is None  # the first update: the rule creates its state
        saved = optimizer.state
        try:
            for c, (values, grads) in enumerate(self.chunks):
                # a copy of the dict, so that a rule rebinding an entry can be told from one updating in place
                optimizer.state = {} if fresh else {0: dict(self.chunk_states[c])}
                flat.value, flat.grad = values, grads
                optimizer._update(0, flat, grads, t)
                if flat.value is not values:
                    values[...] = flat.value  # a rule that rebinds instead of updating in place
                new = optimizer.state.get(0)
                if new is None:
                    continue
                if self.flat_state is None:
                    m = self.k.m
                    self._lay_out({key: m.empty((self.size,), dtype=arr.dtype) for key, arr in new.items()})
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
        steps[:] = [t] * len(steps)
        if fresh and self.flat_state is not None:
            self._install(optimizer, copy=False)


# -- the training step ------------------------------------------------------------------------------

_DENSE, _RELU, _OTHER = 0, 1, 2
_HEAD_GENERIC, _HEAD_BCE_LOGITS, _HEAD_CE_LOGITS, _HEAD_MSE = 0, 1, 2, 3


class TrainStep:
    """Forward, loss and backward of a `Sequential` in training mode, with buffers reused across steps.

    Calling it as ``step(X, y)`` returns what ``Sequential._loss_and_grads`` returns:
    ``(loss value, outputs, None)``, and leaves each Dense parameter's gradient in
    ``p.grad`` as a view of the flat gradient buffer. The outputs are a fresh array
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
        grads = iter(self.flat.grad_views)
        # per op: (kind, index, layer, weight Parameter, bias Parameter, weight grad view, bias grad view)
        self.plan: list[tuple] = []
        for i, (kind, layer) in enumerate(ops):
            if kind == _DENSE:
                self.plan.append((kind, i, layer, layer.weight, layer.bias, next(grads), next(grads)))
            else:
                self.plan.append((kind, i, layer, None, None, None, None))
        self.backward_plan = self.plan[::-1]
        dense = [i for i, (kind, _) in enumerate(ops) if kind == _DENSE]
        self.last_dense = dense[-1] if dense else -1
        self._buffers: dict[int, dict] = {}

    @staticmethod
    def plan(model: Any, loss: Any) -> tuple | None:
        """(ops, head, head kind, signature) for `model` and `loss`, or None when the portable step must run."""
        from .layers import Dense, ReLU
        from .losses import MSE, BinaryCrossEntropy, CrossEntropy

        if getattr(model, "regularizer", None) is not None:
            return None
        n_run, head, _ = model._fused_output(loss)
        ops: list[tuple[int, Any]] = []
        params = []
        for layer in model.layers[:n_run]:
            if type(layer) is Dense:
                if layer.regularizer is not None:
                    return None
                ops.append((_DENSE, layer))
                params += [layer.weight, layer.bias]
            elif type(layer) is ReLU and ops and ops[-1][0] == _DENSE:
                ops.append((_RELU, layer))  # in place on the Dense output buffer, which the step owns
            else:
                ops.append((_OTHER, layer))
        for layer in model.layers[n_run:]:
            params += layer.parameters()
        if params != model.parameters() or not params:
            return None  # some other layer has parameters: its gradients would not land flat
        kind = _HEAD_GENERIC
        if type(head) is BinaryCrossEntropy and head.from_logits:
            kind = _HEAD_BCE_LOGITS
        elif type(head) is CrossEntropy and head.from_logits:
            kind = _HEAD_CE_LOGITS
        elif type(head) is MSE:
            kind = _HEAD_MSE
        config = head.get_config() if hasattr(head, "get_config") else {}
        signature = (tuple(map(id, model.layers)), tuple(map(id, params)), n_run, type(head), repr(config), kind)
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
        bufs = {"out": out, "dx": dx, "mask": mask, "rows": m.arange(n), "head": None}
        self._buffers[n] = bufs
        return bufs

    def __call__(self, X: Any, y: Any) -> tuple[Any, Any, None]:
        m = self.k.m
        matmul, add, k_sum = m.matmul, m.add, self.k.sum
        bufs = self._buffers_for(X)
        out, dx, mask = bufs["out"], bufs["dx"], bufs["mask"]
        inputs = [None] * len(self.ops)
        Z = X
        for kind, i, layer, wp, bp, _, _ in self.plan:
            if kind == _DENSE:
                inputs[i] = Z
                buf = out[i]
                Z = matmul(Z, wp.value) if buf is None else matmul(Z, wp.value, out=buf)
                add(Z, bp.value, out=Z)
            elif kind == _RELU:
                m.maximum(Z, 0, out=Z)
                inputs[i] = Z
            else:
                Z = layer.forward(Z, True)
        value, dY = self._head(Z, y, bufs)
        for kind, i, layer, wp, bp, gw, gb in self.backward_plan:
            if kind == _DENSE:
                matmul(inputs[i].T, dY, out=gw)
                k_sum(dY, 0, None, gb)
                wp.grad = gw
                bp.grad = gb
                if i:
                    dY = matmul(dY, wp.value.T, out=dx[i])
            elif kind == _RELU:
                mk = m.greater(inputs[i], 0, out=mask[i])
                m.multiply(dY, mk, out=dY)
            else:
                dY = layer.backward(dY, need_dX=i > 0)
        return value, Z, None

    def _head(self, Z: Any, y: Any, bufs: dict) -> tuple[Any, Any]:
        k, kind = self.k, self.head_kind
        m = k.m
        if kind == _HEAD_CE_LOGITS and y.ndim == 1 and Z.ndim == 2:
            n = Z.shape[0]
            P = bufs["head"]
            if P is None or P.shape != Z.shape:
                P = bufs["head"] = m.empty(Z.shape, dtype=Z.dtype)
            rows = bufs["rows"]
            m.subtract(Z, m.max(Z, axis=1, keepdims=True), out=P)
            picked = k.sum(P[rows, y], None)
            m.exp(P, out=P)
            total = m.sum(P, axis=1, keepdims=True)
            scale = 1 / n
            value = (k.sum(m.log(total), None) - picked) * scale
            # the portable gradient (softmax * 1 - onehot) * scale, operation for operation
            m.divide(P, total, out=P)
            P[rows, y] -= 1
            m.multiply(P, scale, out=P)
            return value, P
        if kind == _HEAD_BCE_LOGITS and y.shape == Z.shape:
            # the portable softplus and sigmoid share exp(-|z|); computed once here, with the same rounding
            scale = 1 / Z.size
            e = m.exp(-m.abs(Z))
            value = k.sum(m.maximum(Z, 0) + m.log1p(e) - y * Z, None) * scale
            g = m.where(Z >= 0, 1, e)
            m.divide(g, 1 + e, out=g)
            m.subtract(g, y, out=g)
            m.multiply(g, scale, out=g)
            return value, g
        if kind == _HEAD_MSE and y.shape == Z.shape:
            diff = Z - y
            value = k.sum(diff * diff, None) * (1 / Z.size)
            m.multiply(diff, 2 / Z.size, out=diff)
            return value, diff
        return self.head.value_and_grad(y, Z, check=False)
