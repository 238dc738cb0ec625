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
what the objects hold. Gradients are gathered each step into a new flat array, held only
until the update: a buffer kept between steps would hold every gradient twice (measured:
the large network's peak 1.43x what training needs, against 1.17x without), and a
``p.grad`` someone kept is never written. A layer kernel may instead write them straight
into views of a new flat buffer offered for the step (`offer_grads`), which then needs
no gathering.

Where the backend writes into given arrays (`Backend.out_functions`), the rule is
replayed into the buffers (`nnx.training.replay`) instead of being called on them; where
it compiles (JAX), the rule runs as one program traced from it (`nnx.training.compiled_rule`).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import repeat
from operator import is_, itemgetter
from typing import Any

from ..elementwise_check import watched
from ..optim import Optimizer, check_rule_result
from . import replay
from .compiled_rule import CompiledRule

__all__ = ["FlatUpdate", "offer_grads", "taken_offer", "write_in_place"]


def own_step(optimizer: Any) -> bool:
    """Whether `optimizer.step` is `Optimizer.step`, which the flat update stands in for; a step replaced on the
    object (a hook) or overridden by its class may do more, so it runs as written, parameter by parameter."""
    return "step" not in vars(optimizer) and type(optimizer).step is Optimizer.step


def write_in_place(target: Any, source: Any) -> bool:
    """Copy `source` into `target` in place; False where the library's arrays are immutable."""
    try:
        target[...] = source
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False
    return True


def _unshared(xp: Any, values: Any, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with each array its own: a rule may return one array for two keys (a state started as another, or as
    the new values), which the plain loop rebinds harmlessly, but whose buffer the flat update would write twice."""
    unshared: dict[str, Any] = {}
    for key, arr in state.items():
        if arr is values or any(arr is other for other in unshared.values()):
            arr = xp.asarray(arr, copy=True)
        unshared[key] = arr
    return unshared


def flat_layout(arrays: list[Any]) -> tuple[list[tuple[int, ...]], list[tuple[int, int]], int]:
    """The shapes of `arrays` (parameters or gradients), the (start, stop) of each in their concatenation, and its
    size: how `Backend.concat_flat` joins them and `Backend.split_flat` cuts them back."""
    shapes = [tuple(int(d) for d in a.shape) for a in arrays]
    bounds, start = [], 0
    for shape in shapes:
        size = 1
        for d in shape:
            size *= d
        bounds.append((start, start + size))
        start += size
    return shapes, bounds, start


def offer_grads(params: list[Any], size: int, views_of: Callable[[Any], list[Any]],
                backend: Any) -> tuple[Any, list[Any]] | None:
    """A new flat buffer of `size` elements for this step's gradients, and `views_of` it, one per parameter;
    None where the parameters differ in dtype.

    A layer kernel may write a gradient into its view (`nnx.kernels.dense`); when every ``p.grad`` is
    its view after the backward, the buffer is the gathered gradients as it is (`taken_offer`). It is new
    each step, so a gradient kept from an earlier step stays as it was.
    """
    dtype = params[0].value.dtype
    if any(p.value.dtype != dtype for p in params):
        return None
    buffer = backend.xp.empty((size,), dtype=dtype, device=backend.device)
    return buffer, views_of(buffer)


def taken_offer(offered: tuple[Any, list[Any]] | None, grads: list[Any]) -> Any:
    """The offered buffer where every gradient in `grads` was written into its view of it, else None."""
    if offered is None or not all(map(is_, grads, offered[1])):
        return None
    return offered[0]


def _shape(x: Any) -> tuple[int, ...] | None:
    """The shape of an array (None for a Python number), as a tuple of ints."""
    shape = getattr(x, "shape", None)
    return None if shape is None else tuple(int(d) for d in shape)


class FlatUpdate:
    """One call of `optimizer.update` over the concatenation of its parameters.

    Args:
        optimizer: an optimizer whose class declares ``elementwise = True``.
        backend: the parameters' backend (its namespace, and how it joins arrays into one).
        own_gradients: the gradients come from nnx's own layers (`TrainStep.own_passes`), each shaped as its
            parameter by construction: `Optimizer.check_grads` runs only where the gathered buffer's length or
            dtype is not the parameters' (to name the one), not on every gathering.

    `applies` says whether this step can run flat (every parameter has a gradient, all were
    updated equally often, and the rule's state is shaped like the parameters, as `init_state`
    promises); `run` then does the step, as `Optimizer.step` would.
    `piece`, set from the backend (`Backend.update_piece`) when the buffers are gathered,
    is how many elements the rule sees per call; None means all of them in one call.
    """

    def __init__(self, optimizer: Any, backend: Any, own_gradients: bool = False) -> None:
        self.optimizer = optimizer
        self.own_gradients = own_gradients
        self.backend, self.xp = backend, backend.xp
        self._concat = backend.concat_flat
        self.piece: int | None = None  # elements of the flat buffers the rule sees at once (None: all)
        self.shapes, self.bounds, self.size = flat_layout([p.value for p in optimizer.params])
        self.values: Any = None  # the flat value buffer, once gathered
        self.value_views: list[Any] = []
        self.state: dict[str, Any] | None = None  # the flat state buffers, once the rule made state
        self.state_views: list[dict[str, Any]] = []
        self._state_keys: tuple[str, ...] = ()
        self._by_key: list[tuple[Any, list[Any]]] = []  # (a getter of one key, its views): what `_in_place` checks
        self._entry_lens: list[int] = []  # how many keys each state entry holds
        self._indices = list(range(len(self.shapes)))
        self.grads: Any = None  # this step's gathered gradients
        self._grad_sources: list[Any] = []
        self._grads_offered = False  # whether `grads` is this step's offered buffer (`offer_grads`), taken whole
        self._offered: tuple[Any, list[Any]] | None = None  # this step's offered buffer and its views
        self._offered_new = False  # whether `_offered` is `offer_grads`'s (made empty), not `adopt_grads`'s
        self.mutable = True
        # False once the rule's state proved not shaped like the parameters (a 0-d count), or the parameters
        # differ in dtype: no slice of one flat buffer can hold them, so `Optimizer.step` runs every step
        self.suited = True
        # whether the rule's results were checked in full (`check_rule_result`) since the buffers were laid out:
        # their shapes are fixed until then; a dtype may still change with a hyper-parameter set between steps
        self._rule_checked = False
        self._ran = False  # whether the last `run` updated flat, leaving the objects bound to this layout's views
        self.replay = replay.for_update(optimizer, backend, self.size)
        # (a library without a compiler, now or later, runs the rule op by op: not asked every step)
        compiler = backend.can_compile or backend.compiler_off() is not None
        self._compiled_rule = CompiledRule(optimizer, backend) if compiler else None

    @property
    def execution(self) -> str:
        """``"flat"``, or ``"plain"`` once the rule's state or the parameters' dtypes proved unsuited to flat
        buffers (every step then runs `Optimizer.step`, parameter by parameter)."""
        return "flat" if self.suited else "plain"

    # -- layout ---------------------------------------------------------------------------------
    def _views(self, flat: Any) -> list[Any]:
        return self.backend.split_flat(flat, self.bounds, self.shapes)

    def _gather_values(self) -> None:
        params = self.optimizer.params
        self.values = self._concat([p.value for p in params])
        self.piece = self.backend.update_piece(self.values.dtype)
        self.value_views = self._views(self.values)
        for p, view in zip(params, self.value_views, strict=True):
            p.value = view

    def _gather_state(self, create: bool) -> bool:
        """Flat state buffers from ``optimizer.state`` (or, with `create`, the rule's initial state); False if it
        has holes. Without state and without `create` nothing is made yet (True)."""
        opt, xp = self.optimizer, self.xp
        n = len(opt.params)
        have = [i for i in range(n) if i in opt.state]
        if not have:
            if not create:
                return True
            # made parameter by parameter, as the plain loop makes them: over the flat buffer `init_state` would see
            # the buffer's shape (momentum kept for matrices only, an accumulator started by a parameter's ndim)
            states = [opt.init_state(xp, view) for view in self.value_views]
        elif len(have) == n:
            states = [opt.state[i] for i in range(n)]
        else:
            return False  # some parameters have state and others not: the per-parameter loop handles that
        if len({tuple(state) for state in states}) == 1:
            keys = tuple(states[0])
            if not all(_shape(states[i][k]) == self.shapes[i] for i in range(n) for k in keys):
                self.suited = False
                return False
            self.state = {k: self._concat([states[i][k] for i in range(n)]) for k in keys}
        elif not have:
            self.suited = False  # the rule keeps other state for some parameters: no flat buffer holds that
            return False
        else:
            return False  # the parameters' states hold other keys: the per-parameter loop handles that
        self._install_state()
        return True

    def _install_state(self) -> None:
        assert self.state is not None
        self._rule_checked = False
        per_key = {k: self._views(flat) for k, flat in self.state.items()}
        self.state_views = [{k: views[i] for k, views in per_key.items()} for i in range(len(self.shapes))]
        self._state_keys = tuple(per_key)
        self._by_key = [(itemgetter(k), views) for k, views in per_key.items()]
        self._entry_lens = [len(per_key)] * len(self.shapes)
        opt = self.optimizer
        opt.state = {i: dict(views) for i, views in enumerate(self.state_views)}

    def _values_bound(self) -> bool:
        """Whether every ``p.value`` is still its view of the flat value buffer."""
        return all(map(is_, [p.value for p in self.optimizer.params], self.value_views))

    def _in_place(self) -> bool:
        """Whether the objects still hold this layout's views (nothing was rebound since the last step).

        It runs every step, so it compares by identity in C-level passes over the parameters, one per list:
        every ``p.value`` is its view, and every ``optimizer.state[i]`` holds exactly this layout's keys, each
        bound to its view.
        """
        if not self._values_bound():
            return False
        if self.state is None:
            return True
        state, indices = self.optimizer.state, self._indices
        try:
            entries = list(state.values()) if list(state) == indices else [state[i] for i in indices]
            if list(map(len, entries)) != self._entry_lens:  # a key added or removed
                return False
            for get, views in self._by_key:
                if not all(map(is_, map(get, entries), views)):
                    return False
        except KeyError:
            return False
        return True

    def lay_out(self, create_state: bool = True) -> bool:
        """Gather the values and the optimizer's state into the flat buffers where the objects no longer hold
        them (or never did); False, with nothing gathered, when the state has holes.

        The training step calls it once before its first backward, so that the values are copied while no
        gradients are held: the copy then adds nothing to the peak memory of training. It passes
        ``create_state=False``: a rule's initial state is made at the first flat update, so a parameter
        never updated has none, as in the plain loop (and torch).
        """
        if self.values is None or not self._in_place():
            dtype = self.optimizer.params[0].value.dtype
            if any(p.value.dtype != dtype for p in self.optimizer.params):
                # one buffer would promote them all to one dtype: each keeps its own, parameter by parameter
                self.suited, self.values = False, None
                return False
            self._gather_values()
            self.state = None
        if self.state is None and not self._gather_state(create_state):
            self.values = None
            return False
        return True

    # -- the step -------------------------------------------------------------------------------
    def applies(self) -> bool:
        """Whether this step can run flat: every parameter has a gradient and the same update count."""
        return self._grads_if_applies() is not None

    def _grads_if_applies(self) -> list[Any] | None:
        """Every ``p.grad`` where this step can run flat (`applies`), else None."""
        opt = self.optimizer
        steps = opt.param_steps
        if not self.suited or steps and steps.count(steps[0]) != len(steps):
            return None
        grads = [p.grad for p in opt.params]
        return None if any(map(is_, grads, repeat(None))) else grads

    def offer_grads(self) -> dict[Any, Any] | None:
        """Where this step's gradients may be written (the module's `offer_grads`); None under `replay.MIN_ELEMENTS`
        parameters (making the views costs more than the copy they spare) or where the buffers proved immutable."""
        if self.replay is None or not self.mutable:
            return None
        self._offered = offer_grads(self.optimizer.params, self.size, self._views, self.backend)
        self._offered_new = True
        return None if self._offered is None else dict(zip(self.optimizer.params, self._offered[1], strict=True))

    def adopt_grads(self, flat: Any, pieces: list[Any]) -> None:
        """Take 1-D `flat`, cut into `pieces` (`GradientTransform.take_joined`: the all-reduce's result), as this
        step's gathered gradients where ``p.grad`` of every parameter, in the optimizer's order, is its piece
        when they are gathered; they are joined as usual otherwise. A piece is a view of `flat` where the arrays
        can be written (`Backend.split_flat`, as the flat update's own views), so a write into ``p.grad`` in place
        is in `flat` too."""
        # (a piece cast back from the dtype the join promoted it to is not in `flat` as it is)
        if len(pieces) == len(self.shapes) and tuple(flat.shape) == (self.size,) and \
                all(piece.dtype == flat.dtype for piece in pieces):
            self._offered, self._offered_new = (flat, list(pieces)), False

    def gather_grads(self) -> Any:
        """This step's gradients as one new flat array, kept for `run` while ``p.grad`` stays the same."""
        return self.gather([p.grad for p in self.optimizer.params])

    def gather_if_applies(self) -> Any:
        """`gather_grads` where `applies`, else None: one pass over the gradients for both, as the finite check
        asks them every step."""
        grads = self._grads_if_applies()
        return None if grads is None else self.gather(grads)

    def gather(self, grads: list[Any]) -> Any:
        """`grads`, every parameter's gradient in the optimizer's order (none None), as `gather_grads` gathers
        them."""
        if not self.own_gradients:
            self.optimizer.check_grads()  # a wrong shape of the same size would otherwise slip through the concat
        offered, self._offered = self._offered, None
        taken = taken_offer(offered, grads)
        flat, values = self._concat(grads) if taken is None else taken, self.values
        self.grads = flat
        if self.own_gradients and (values is None or flat.dtype != values.dtype or flat.shape[0] != self.size):
            self.optimizer.check_grads()  # a gradient of another dtype (promoted by the concat) or size: which
        self._grads_offered = taken is not None and self._offered_new
        self._grad_sources = grads
        return self.grads

    def forget_grads(self) -> None:
        """Drop the gradients gathered so far this step; `run` gathers what ``p.grad`` holds then."""
        self.grads, self._grad_sources, self._grads_offered = None, [], False

    def run(self, keep: Any = None, back_to_back: bool = False) -> bool:
        """Apply the rule once to the flat buffers and count the step as `Optimizer.step` does; False, with
        nothing done, where `applies` is False or the optimizer's state has holes (some parameters have state,
        others not). It checks what `applies` says itself, in the pass over the gradients it makes anyway.

        `keep`, a 0-d device flag (the deferred finite check), selects on the device between
        the rule's results and the buffers as they were; None applies the step. `back_to_back`: none of the
        user's code ran between the last step and this one (`TrainStep.back_to_back`), so where that one ran
        here, the optimizer's state is still bound to this layout's views, unchecked. The parameters' values
        are checked still: a layer's own code may rebind one in this step's passes.
        """
        opt = self.optimizer
        steps = opt.param_steps
        ran, self._ran = self._ran, False
        if not self.suited or steps and steps.count(steps[0]) != len(steps):
            return False
        grads = [p.grad for p in opt.params]
        # the gradients the finite check gathered are none of them None: only others are looked at again
        gathered = self.grads is not None and all(map(is_, grads, self._grad_sources))
        if not gathered and any(map(is_, grads, repeat(None))):
            return False
        if not (back_to_back and ran and self._values_bound()) and not self.lay_out():
            return False  # the per-parameter loop runs this step; the layout is tried again next time
        if not gathered:
            self.gather(grads)
        self._apply(keep)
        return True

    def holds(self, state: bool = False) -> bool:
        """Whether the last `run` updated here, and every parameter's value is still its view (with `state`, and
        the optimizer's state its views, as after a user's code ran in the passes): a step back to back with it
        (none of the user's code ran since) may then `gather` its gradients and `apply_gathered`, as `run` would,
        without looking at the bindings again."""
        steps = self.optimizer.param_steps
        return self._ran and (self._in_place() if state else self._values_bound()) and \
            steps.count(steps[0]) == len(steps)

    def apply_gathered(self) -> None:
        """`run` of a step `holds` said follows the last back to back, whose gradients `gather` gathered."""
        self._ran = False
        self._apply(None)

    def _apply(self, keep: Any) -> None:
        opt = self.optimizer
        steps = opt.param_steps
        t = steps[0] + 1
        assert self.state is not None
        opt.step_count += 1  # counted before the rule runs, as `Optimizer.step` counts it
        if self.replay is not None and self.mutable and \
                self.replay.apply(self.values, self.grads, self.state, t, opt.lr, keep=keep,
                                  new_grads=self._grads_offered):
            pass  # the rule was replayed into the buffers
        elif not (self.piece and self.size > self.piece and self._run_in_pieces(t, keep)):
            new_values, new_state = self._rule(self.values, self.grads, self.state, t, keep)
            self._store(new_values, new_state)
        self.grads, self._grad_sources, self._grads_offered = None, [], False  # `forget_grads`
        steps[:] = [t] * len(steps)
        self._ran = True

    def _rule(self, values: Any, grads: Any, state: dict[str, Any], t: int, keep: Any) -> tuple[Any, dict]:
        """The optimizer's rule on these (slices of the) buffers; with `keep`, the old arrays where it is False."""
        xp = self.xp
        compiled = None if self._compiled_rule is None else self._compiled_rule.run(values, grads, state, t)
        # the first call per layout holds the rule to its `elementwise`: across elements, flat buffers mix parameters
        new_values, new_state = compiled if compiled is not None else \
            self.optimizer.update(xp if self._rule_checked else watched(self.optimizer, xp, values), values, grads,
                                  state, t, self.optimizer.lr)
        # In full once per layout (a step of a small network is a few dozen microseconds), then the new values'
        # dtype every call: a hyper-parameter set between steps (a NumPy float64 momentum) promotes them (and the
        # state the rule computes them from), which the writes into the buffers would otherwise cast back silently
        if not self._rule_checked or new_values.dtype != values.dtype:
            check_rule_result(self.optimizer, "the parameters' flat buffer", values, new_values, state, new_state)
            self._rule_checked = True
        if keep is not None:
            new_values = xp.where(keep, new_values, values)
            # a key the rule adds (momentum switched on) has no old array: a refused step leaves zeros, as
            # `TrainStep.update` does parameter by parameter
            new_state = {k: xp.where(keep, arr, state[k] if k in state else xp.zeros_like(arr))
                         for k, arr in new_state.items()}
        return new_values, new_state

    def _run_in_pieces(self, t: int, keep: Any) -> bool:
        """The rule over consecutive slices of `piece` elements, each written back before the next; False
        (nothing written) when the buffers cannot be written in place or the rule changes the state's keys.

        Elementwise, the slices give the numbers of one call bit for bit; their temporaries stay
        small enough for the allocator to reuse and for the cache to hold (see `Backend.update_piece`).
        """
        assert self.state is not None and self.piece is not None
        if not self.mutable:
            return False
        piece = self.piece
        for start in range(0, self.size, piece):
            stop = min(start + piece, self.size)
            state = {k: flat[start:stop] for k, flat in self.state.items()}
            new_values, new_state = self._rule(self.values[start:stop], self.grads[start:stop], state, t, keep)
            if start == 0 and set(new_state) != set(state):
                return False
            written = write_in_place(self.values[start:stop], new_values)
            if start == 0 and not written:
                self.mutable = False
                return False
            if not (written and all([write_in_place(state[k], arr) for k, arr in new_state.items()])):
                raise RuntimeError(f"{type(self.optimizer).__name__}'s flat buffers refused a write in the middle "
                                   "of a step; the parameters hold a partial update")
        return True

    def _store(self, new_values: Any, new_state: dict[str, Any]) -> None:
        """Write the rule's results into the flat buffers (rebinding the views where arrays are immutable)."""
        state = self.state
        assert state is not None
        if self.mutable and new_state.keys() == state.keys():
            try:  # `write_in_place`, inline: a step of a small network is a few dozen microseconds
                if new_values is not self.values:
                    self.values[...] = new_values
                for k, arr in new_state.items():
                    if arr is not state[k]:
                        state[k][...] = arr
                return
            except (TypeError, ValueError, AttributeError, NotImplementedError):
                self.mutable = False  # the library's arrays are immutable
        self.values, self.state = new_values, _unshared(self.xp, new_values, new_state)
        self.value_views = self._views(self.values)
        for p, view in zip(self.optimizer.params, self.value_views, strict=True):
            p.value = view
        self._install_state()
