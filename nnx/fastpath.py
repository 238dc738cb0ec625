"""Optional fast paths for backends whose arrays have views and ``out=`` (NumPy, CuPy).

The portable core never imports this module: a `Backend` owns a `FastPath` (or
None, for JAX and array_api_strict) and the core reaches it only through
``backend.fastpath``. Everything here has a portable twin that computes the
same numbers, and is taken only when a check says it applies:

- `FlatParams` keeps a model's parameters as consecutive views of one flat
  buffer (and their gradients in a second one), so an optimizer can update all
  of them with one array operation per term instead of one per parameter.
- `FusedUpdate` is that single update. Before every step it checks by identity
  that each parameter, gradient and state array is still the view it laid out;
  if anything was rebound (a loaded state dict, a gradient computed by the
  portable path) the optimizer falls back to its per-parameter loop. Results
  never depend on the aliasing being there, only the speed does.
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

    def flat_params(self, params: list[Any]) -> FlatParams:
        """`params` laid out as consecutive views of one flat buffer (see `FlatParams.adopt`)."""
        return FlatParams.adopt(self.kernels, params)

    def train_step(self, model: Any, loss: Any) -> TrainStep | None:
        """A buffered training step for `model` and `loss`, or None when the portable one must run."""
        return TrainStep.build(self, model, loss)

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
    gap = k.ptr(first) - k.ptr(owner)
    if gap < 0 or gap % item:
        return None
    start = pos = gap // item
    base_ptr = k.ptr(owner)
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
        values = k.m.empty((total,), dtype=first.dtype)
        flat = cls(k, params, values)
        for p, view in zip(params, flat.value_views, strict=True):
            view[...] = p.value
            p.value = view
        return flat

    def intact(self) -> bool:
        """Whether every parameter still holds its view (nothing rebound it since)."""
        return all(p.value is v for p, v in zip(self.params, self.value_views, strict=True))


# -- one optimizer update over all parameters ------------------------------------------------------

class _FlatParam:
    """Stands in for a `Parameter` when the optimizer updates the flat buffer."""

    __slots__ = ("name", "value", "grad", "regularized")

    def __init__(self, value: Any, grad: Any) -> None:
        self.name = "<flat>"
        self.value = value
        self.grad = grad
        self.regularized = False


class FusedUpdate:
    """An optimizer's update applied once to the flat run of its parameters.

    Every optimizer in `nnx.optim` is elementwise, so its per-parameter rule applied
    to the concatenation equals the rule applied to each parameter. The per-parameter
    state (``optimizer.state[i]``) becomes views of flat state buffers, so
    ``state_dict`` and ``load_state_dict`` see exactly what they saw before.
    """

    def __init__(self, k: Kernels, optimizer: Any, values: Any, grads: Any) -> None:
        self.k = k
        self.params = optimizer.params
        self.value_views = [p.value for p in self.params]
        self.grad_views = [p.grad for p in self.params]
        self.flat = _FlatParam(values, grads)
        self.values = values
        self.grads = grads
        self.flat_state: dict[str, Any] | None = None
        self.state_views: list[dict[str, Any]] | None = None

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
        flat_state = {key: self.k.m.empty(self.values.shape, dtype=self.values.dtype) for key in keys}
        self._install(optimizer, flat_state, copy=True)
        return True

    def _install(self, optimizer: Any, flat_state: dict[str, Any], copy: bool) -> None:
        m = self.k.m
        views: list[dict[str, Any]] = []
        pos = 0
        for i, p in enumerate(self.params):
            size, shape = p.value.size, tuple(p.value.shape)
            entry = {}
            for key, flat in flat_state.items():
                view = m.reshape(flat[pos:pos + size], shape)
                if copy:
                    view[...] = optimizer.state[i][key]
                entry[key] = view
            views.append(entry)
            pos += size
        for i, entry in enumerate(views):
            optimizer.state[i] = dict(entry)
        self.flat_state = flat_state
        self.state_views = views

    def ready(self, optimizer: Any) -> bool:
        """Whether every parameter, gradient and state array is still the view laid out."""
        for p, v, g in zip(self.params, self.value_views, self.grad_views, strict=True):
            if p.value is not v or p.grad is not g:
                return False
        if self.state_views is None:
            return not optimizer.state
        state = optimizer.state
        for i, views in enumerate(self.state_views):
            entry = state.get(i)
            if entry is None or len(entry) != len(views):
                return False
            for key, view in views.items():
                if entry.get(key) is not view:
                    return False
        return True

    def run(self, optimizer: Any) -> None:
        """Apply the optimizer's rule once to the flat buffers and count the step for every parameter."""
        steps = optimizer._param_steps
        t = steps[0] + 1
        saved = optimizer.state
        # a copy of the dict, so that a rule rebinding an entry can be told from one updating in place
        optimizer.state = {} if self.flat_state is None else {0: dict(self.flat_state)}
        flat = self.flat
        flat.value, flat.grad = self.values, self.grads
        try:
            optimizer._update(0, flat, self.grads, t)
            new_state = optimizer.state.get(0)
        finally:
            optimizer.state = saved
        for i in range(len(steps)):
            steps[i] = t
        if flat.value is not self.values:
            self.values[...] = flat.value  # a rule that rebinds instead of updating in place
        if new_state is None:
            return
        if self.flat_state is None:
            self._install(optimizer, new_state, copy=False)
            return
        for key, arr in new_state.items():
            if arr is not self.flat_state[key]:
                self.flat_state[key][...] = arr


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

    def __init__(self, fastpath: FastPath, model: Any, ops: list[tuple[int, Any]], n_run: int,
                 head: Any, head_kind: int) -> None:
        self.k = fastpath.kernels
        self.model = model
        self.ops = ops
        self.n_run = n_run
        self.head = head
        self.head_kind = head_kind
        self.flat = fastpath.flat_params(model.parameters())
        grads = iter(self.flat.grad_views)
        # per Dense op: (layer, weight Parameter, bias Parameter, weight grad view, bias grad view)
        self.dense = {}
        for i, (kind, layer) in enumerate(ops):
            if kind == _DENSE:
                self.dense[i] = (layer, layer.weight, layer.bias, next(grads), next(grads))
        self.last_dense = max(self.dense) if self.dense else -1
        self._buffers: dict[int, dict] = {}

    @classmethod
    def build(cls, fastpath: FastPath, model: Any, loss: Any) -> TrainStep | None:
        """The step for `model` and `loss`, or None when some part needs the portable path."""
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
        return cls(fastpath, model, ops, n_run, head, kind)

    def _buffers_for(self, X: Any) -> dict:
        n = X.shape[0]
        bufs = self._buffers.get(n)
        if bufs is not None:
            return bufs
        if len(self._buffers) >= 4:
            self._buffers.clear()  # a caller cycling through batch sizes: don't hoard memory
        m, dtype = self.k.m, X.dtype
        out, dx, mask = {}, {}, {}
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
        bufs = self._buffers_for(X)
        out, dx, mask = bufs["out"], bufs["dx"], bufs["mask"]
        dense = self.dense
        ops = self.ops
        inputs = [None] * len(ops)
        Z = X
        for i, (kind, layer) in enumerate(ops):
            if kind == _DENSE:
                inputs[i] = Z
                _, wp, bp, _, _ = dense[i]
                buf = out.get(i)
                Z = m.matmul(Z, wp.value, out=buf) if buf is not None else m.matmul(Z, wp.value)
                m.add(Z, bp.value, out=Z)
            elif kind == _RELU:
                m.maximum(Z, 0, out=Z)
                inputs[i] = Z
            else:
                Z = layer.forward(Z, True)
        value, dY = self._head(Z, y, bufs)
        for i in range(len(ops) - 1, -1, -1):
            kind, layer = ops[i]
            if kind == _DENSE:
                _, wp, bp, gw, gb = dense[i]
                Xi = inputs[i]
                m.matmul(Xi.T, dY, out=gw)
                m.sum(dY, axis=0, out=gb)
                wp.grad, bp.grad = gw, gb
                if i > 0:
                    dY = m.matmul(dY, wp.value.T, out=dx[i])
            elif kind == _RELU:
                mk = mask[i]
                m.greater(inputs[i], 0, out=mk)
                m.multiply(dY, mk, out=dY)
            else:
                dY = layer.backward(dY, need_dX=i > 0)
        return value, Z, None

    def _head(self, Z: Any, y: Any, bufs: dict) -> tuple[Any, Any]:
        m, kind = self.k.m, self.head_kind
        if kind == _HEAD_CE_LOGITS and y.ndim == 1 and Z.ndim == 2:
            n = Z.shape[0]
            P = bufs["head"]
            if P is None or P.shape != Z.shape:
                P = bufs["head"] = m.empty(Z.shape, dtype=Z.dtype)
            rows = bufs["rows"]
            m.subtract(Z, m.max(Z, axis=1, keepdims=True), out=P)
            picked = m.sum(P[rows, y])
            m.exp(P, out=P)
            total = m.sum(P, axis=1, keepdims=True)
            scale = 1 / n
            value = (m.sum(m.log(total)) - picked) * scale
            m.divide(P, total, out=P)
            P[rows, y] -= 1
            m.multiply(P, scale, out=P)
            return value, P
        if kind == _HEAD_BCE_LOGITS and y.shape == Z.shape:
            # the portable softplus and sigmoid share exp(-|z|); computed once here, same rounding
            e = m.exp(-m.abs(Z))
            value = m.mean(m.maximum(Z, 0) + m.log1p(e) - y * Z)
            one_e = 1 + e
            sig = m.where(Z >= 0, 1 / one_e, e / one_e)
            g = sig - y
            m.multiply(g, 1 / Z.size, out=g)
            return value, g
        if kind == _HEAD_MSE and y.shape == Z.shape:
            diff = Z - y
            value = m.mean(diff * diff)
            m.multiply(diff, 2 / Z.size, out=diff)
            return value, diff
        return self.head.value_and_grad(y, Z, check=False)
