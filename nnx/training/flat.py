"""The flat-buffer update: an elementwise optimizer rule called once over all parameters.

An optimizer whose rule declares ``elementwise = True`` gives the same numbers on any
slice of its parameters, so it may run once on their concatenation instead of once
per parameter: a dozen array operations a step instead of a dozen per parameter,
which is most of a small network's step on an eager backend.

The layout is explicit and uses public attributes only. When a `FlatUpdate` is
built, each ``p.value`` is rebound to a view of one flat buffer holding the same
numbers, and each array of ``optimizer.state[i]`` to a view of one flat buffer per
state key; every step the rule's results are written back into those buffers, so
the views stay valid and ``state_dict`` sees them. Before each step the views are
checked by identity; anything rebound since (``load_state_dict``, a user's
assignment) is gathered into the buffers again, so the update always starts from
what the objects hold. Gradients are gathered into a fresh buffer each step; a
``p.grad`` someone kept is never written.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FlatUpdate"]


def _write(target: Any, source: Any) -> bool:
    """Copy `source` into `target` in place; False where the library's arrays are immutable."""
    try:
        target[...] = source
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False
    return True


class FlatUpdate:
    """One call of `optimizer.update` over the concatenation of its parameters.

    Args:
        optimizer: an optimizer whose class declares ``elementwise = True``.
        xp: the parameters' array namespace.

    `applies` says whether this step can run flat (every parameter has a gradient and
    all were updated equally often); `run` then does the step, as `Optimizer.step` would.
    """

    execution = "flat"

    def __init__(self, optimizer: Any, xp: Any) -> None:
        self.optimizer = optimizer
        self.xp = xp
        params = optimizer.params
        self.shapes = [tuple(p.value.shape) for p in params]
        self.bounds: list[tuple[int, int]] = []
        start = 0
        for p in params:
            size = 1
            for d in p.value.shape:
                size *= int(d)
            self.bounds.append((start, start + size))
            start += size
        self.size = start
        self.values: Any = None  # the flat value buffer, once gathered
        self.value_views: list[Any] = []
        self.state: dict[str, Any] | None = None  # the flat state buffers, once the rule made state
        self.state_views: list[dict[str, Any]] = []
        self.grads: Any = None  # this step's gathered gradients
        self._grad_sources: list[Any] = []
        self.mutable = True

    # -- layout ---------------------------------------------------------------------------------
    def _views(self, flat: Any) -> list[Any]:
        xp = self.xp
        return [xp.reshape(flat[a:b], shape) for (a, b), shape in zip(self.bounds, self.shapes, strict=True)]

    def _concat(self, arrays: list[Any]) -> Any:
        xp = self.xp
        return xp.concat([xp.reshape(a, (-1,)) for a in arrays])

    def _gather_values(self) -> None:
        params = self.optimizer.params
        self.values = self._concat([p.value for p in params])
        self.value_views = self._views(self.values)
        for p, view in zip(params, self.value_views, strict=True):
            p.value = view

    def _gather_state(self) -> bool:
        """Flat state buffers from ``optimizer.state`` (or the rule's initial state); False if it has holes."""
        opt, xp = self.optimizer, self.xp
        n = len(opt.params)
        have = [i for i in range(n) if i in opt.state]
        if not have:
            self.state = opt.init_state(xp, self.values)
        elif len(have) == n and len({tuple(opt.state[i]) for i in range(n)}) == 1:
            keys = tuple(opt.state[0])
            self.state = {k: self._concat([opt.state[i][k] for i in range(n)]) for k in keys}
        else:
            return False  # some parameters have state and others not: the per-parameter loop handles that
        self._install_state()
        return True

    def _install_state(self) -> None:
        assert self.state is not None
        per_key = {k: self._views(flat) for k, flat in self.state.items()}
        self.state_views = [{k: views[i] for k, views in per_key.items()} for i in range(len(self.shapes))]
        opt = self.optimizer
        opt.state = {i: dict(views) for i, views in enumerate(self.state_views)}

    def _in_place(self) -> bool:
        """Whether the objects still hold this layout's views (nothing was rebound since the last step)."""
        opt = self.optimizer
        if any(p.value is not v for p, v in zip(opt.params, self.value_views, strict=True)):
            return False
        if self.state is None:
            return True
        state = opt.state
        for i, views in enumerate(self.state_views):
            entry = state.get(i)
            if entry is None or len(entry) != len(views) or any(entry.get(k) is not v for k, v in views.items()):
                return False
        return True

    # -- the step -------------------------------------------------------------------------------
    def applies(self) -> bool:
        """Whether this step can run flat: every parameter has a gradient and the same update count."""
        opt = self.optimizer
        steps = opt.param_steps
        return all(p.grad is not None for p in opt.params) and all(s == steps[0] for s in steps)

    def gather_grads(self) -> Any:
        """This step's gradients as one fresh flat array (kept for `run` while ``p.grad`` stays the same)."""
        self.optimizer.check_grads()  # a wrong shape of the same size would otherwise slip through the concat
        grads = [p.grad for p in self.optimizer.params]
        self.grads = self._concat(grads)
        self._grad_sources = grads
        return self.grads

    def run(self, keep: Any = None) -> bool:
        """Apply the rule once to the flat buffers and count the step as `Optimizer.step` does; False when
        the optimizer's state has holes (some parameters have state, others not) and nothing was done.

        `keep`, a 0-d device flag (the deferred finite check), selects on the device between
        the rule's results and the buffers as they were; None applies the step.
        """
        opt, xp = self.optimizer, self.xp
        if self.values is None or not self._in_place():
            self._gather_values()
            self.state = None
        if self.state is None and not self._gather_state():
            self.values = None  # the per-parameter loop runs this step; gather again next time
            return False
        grads = [p.grad for p in opt.params]
        if self.grads is None or any(g is not s for g, s in zip(grads, self._grad_sources, strict=True)):
            self.gather_grads()
        t = opt.param_steps[0] + 1
        assert self.state is not None
        opt.step_count += 1  # counted before the rule runs, as `Optimizer.step` counts it
        new_values, new_state = opt.update(xp, self.values, self.grads, self.state, t, opt.lr)
        if keep is not None:
            new_values = xp.where(keep, new_values, self.values)
            new_state = {k: xp.where(keep, arr, self.state[k]) for k, arr in new_state.items()}
        self.grads, self._grad_sources = None, []
        self._store(new_values, new_state)
        opt.param_steps[:] = [t] * len(opt.param_steps)
        return True

    def _store(self, new_values: Any, new_state: dict[str, Any]) -> None:
        """Write the rule's results into the flat buffers (rebinding the views where arrays are immutable)."""
        assert self.state is not None
        if self.mutable and set(new_state) == set(self.state):
            ok = new_values is self.values or _write(self.values, new_values)
            if ok:
                for k, arr in new_state.items():
                    if arr is not self.state[k] and not _write(self.state[k], arr):
                        ok = False
                        break
            if ok:
                return
            self.mutable = False
        self.values, self.state = new_values, dict(new_state)
        self.value_views = self._views(self.values)
        for p, view in zip(self.optimizer.params, self.value_views, strict=True):
            p.value = view
        self._install_state()
