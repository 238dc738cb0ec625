"""An elementwise optimizer rule replayed into preallocated buffers, derived from the rule's own code.

The plain flat update calls ``optimizer.update`` on the flat buffers: each of the rule's
array operations allocates its result, and the new values and state are then copied
back into the buffers. `RuleReplay` runs the same rule once a step on stand-in arrays
that record what it does, then replays the recorded operations with the backend's
``out=`` functions (`Backend.out_functions`): into a few scratch buffers allocated once,
and straight into the flat value and state buffers where nothing reads their old
contents afterwards. No temporaries are allocated and nothing is copied back.

Each replayed operation is the very function the rule's operator or ``xp`` call runs
(an ``xp`` function is replayed only where the backend's function *is* the namespace's
own), so the numbers are the plain call's bit for bit, NaN and inf included; an
operation without an ``out=`` function runs as written. A rule that does anything else
while recorded (reads an array's value in Python, calls a function outside the
elementwise set, mixes in an array of its own) is not replayed: `apply` returns False
before anything is written, and from then on, and the caller runs the rule plainly.
With a deferred finite check's verdict (``keep``), every result stays in scratch until
``where(keep, new, old)`` is written into the buffers, as the plain path selects.
"""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["MIN_ELEMENTS", "RuleReplay", "Unreplayable", "for_update"]

# Python operators the stand-in arrays record, by the key `Backend.out_functions` gives them
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow,
             ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
             "!=": operator.ne, "neg": operator.neg, "pos": operator.pos, "abs": operator.abs}
# operators whose operands may swap without changing a bit (IEEE addition and multiplication commute)
COMMUTATIVE = frozenset({"+", "*"})
# the namespace's elementwise functions a rule may call while recorded (positional arguments only)
FUNCTIONS = frozenset({
    "abs", "sqrt", "exp", "expm1", "log", "log1p", "sign", "square", "negative", "positive", "sin", "cos", "tanh",
    "floor", "ceil", "round", "trunc", "maximum", "minimum", "add", "subtract", "multiply", "divide", "pow",
    "greater", "greater_equal", "less", "less_equal", "equal", "not_equal", "where", "clip", "copysign",
    "logical_and", "logical_or", "logical_not", "isfinite", "isnan", "isinf",
})
CONSTANT_TYPES = (int, float, bool)
MAX_PLANS = 16  # distinct recorded structures kept (a rule that branches on the step has a few)
# Elements replayed per call in host memory. Without temporaries, one call over a medium network's 235k
# parameters is about fastest (slices of 64k took 20-50% longer); over millions, slices this size beat one
# call on NumPy (9 against 17 ms for 4M parameters) and bound each scratch buffer (1 MiB in float32). On a
# device every slice is one kernel launch per operation, so the rule runs over everything at once there
# (sliced, torch on an H200 launched 150 small kernels a step for 6.3M parameters under SGD with momentum).
PIECE_ELEMENTS = 1 << 18
# Below this many parameters recording the rule costs more than the plain call's temporaries (Adam: 73 against
# 13 us on NumPy at 641 parameters; about even at 64k; 527 against 792 us at 235k).
MIN_ELEMENTS = 1 << 17


def for_update(optimizer: Any, backend: Any, size: int) -> RuleReplay | None:
    """The replay for an update of `size` parameters at a time on `backend`: None where the backend has no
    out= functions or the update is under `MIN_ELEMENTS` (the flat and the sharded update both ask here)."""
    out_functions = backend.out_functions() if size >= MIN_ELEMENTS else None
    if not out_functions:
        return None
    return RuleReplay(optimizer, backend.xp, out_functions, PIECE_ELEMENTS if backend.arrays_on_host else None)


class Unreplayable(Exception):
    """The rule did something a recording cannot replay; it runs plainly instead."""


class _Recording:
    """The operations of one call of the rule: references are indices into inputs then nodes."""

    __slots__ = ("ops", "consts", "n_inputs")

    def __init__(self, n_inputs: int) -> None:
        self.ops: list[tuple[str, tuple[int, ...]]] = []
        self.consts: list[Any] = []
        self.n_inputs = n_inputs

    def ref(self, x: Any) -> int:
        """An operand's reference: a node's index (>= 0) or a constant's (-1 - its index)."""
        if type(x) is Symbol:
            if x.recording is not self:
                raise Unreplayable("a value from another call of the rule")
            return x.index
        if type(x) in CONSTANT_TYPES:
            self.consts.append(x)
            return -len(self.consts)
        raise Unreplayable(f"an operand of type {type(x).__name__}")

    def record(self, name: str, *args: Any) -> Symbol:
        self.ops.append((name, tuple([self.ref(a) for a in args])))
        return Symbol(self, self.n_inputs + len(self.ops) - 1)


class Symbol:
    """A stand-in array: every operation on it is recorded, anything else makes the rule unreplayable."""

    __slots__ = ("recording", "index", "array")

    def __init__(self, recording: _Recording, index: int, array: Any = None) -> None:
        self.recording, self.index, self.array = recording, index, array

    def _known(self, attr: str) -> Any:
        if self.array is None:
            raise Unreplayable(f"the {attr} of an intermediate result")
        return getattr(self.array, attr)

    dtype = property(lambda self: self._known("dtype"))
    shape = property(lambda self: self._known("shape"))
    ndim = property(lambda self: self._known("ndim"))
    device = property(lambda self: self._known("device"))

    def __getattr__(self, name: str) -> Any:
        raise Unreplayable(f"attribute {name!r}")

    def __bool__(self) -> bool:
        raise Unreplayable("an array's truth value read in Python")

    def __float__(self) -> float:
        raise Unreplayable("an array's value read in Python")

    __int__ = __index__ = __float__  # type: ignore[assignment]
    __hash__ = object.__hash__

    def __add__(self, o: Any) -> Symbol: return self.recording.record("+", self, o)
    def __radd__(self, o: Any) -> Symbol: return self.recording.record("+", o, self)
    def __sub__(self, o: Any) -> Symbol: return self.recording.record("-", self, o)
    def __rsub__(self, o: Any) -> Symbol: return self.recording.record("-", o, self)
    def __mul__(self, o: Any) -> Symbol: return self.recording.record("*", self, o)
    def __rmul__(self, o: Any) -> Symbol: return self.recording.record("*", o, self)
    def __truediv__(self, o: Any) -> Symbol: return self.recording.record("/", self, o)
    def __rtruediv__(self, o: Any) -> Symbol: return self.recording.record("/", o, self)
    def __pow__(self, o: Any) -> Symbol: return self.recording.record("**", self, o)
    def __rpow__(self, o: Any) -> Symbol: return self.recording.record("**", o, self)
    def __gt__(self, o: Any) -> Symbol: return self.recording.record(">", self, o)
    def __ge__(self, o: Any) -> Symbol: return self.recording.record(">=", self, o)
    def __lt__(self, o: Any) -> Symbol: return self.recording.record("<", self, o)
    def __le__(self, o: Any) -> Symbol: return self.recording.record("<=", self, o)
    def __eq__(self, o: Any) -> Symbol: return self.recording.record("==", self, o)  # type: ignore[override]
    def __ne__(self, o: Any) -> Symbol: return self.recording.record("!=", self, o)  # type: ignore[override]
    def __neg__(self) -> Symbol: return self.recording.record("neg", self)
    def __pos__(self) -> Symbol: return self.recording.record("pos", self)
    def __abs__(self) -> Symbol: return self.recording.record("abs", self)


class _RecordingNamespace:
    """The rule's ``xp`` while it is recorded: elementwise functions record, other names pass or refuse."""

    def __init__(self, xp: Any, recording: _Recording) -> None:
        self._xp, self._recording = xp, recording

    def __getattr__(self, name: str) -> Any:
        if name in FUNCTIONS:
            recording = self._recording

            def recorded(*args: Any, **kwargs: Any) -> Symbol:
                if kwargs:
                    raise Unreplayable(f"keyword arguments to xp.{name}")
                return recording.record("xp." + name, *args)
            return recorded
        value = getattr(self._xp, name)
        if callable(value) and not isinstance(value, type):
            raise Unreplayable(f"xp.{name} is not an elementwise function")
        return value  # a dtype, a constant such as xp.inf


class _Plan:
    """How one recorded structure runs: per operation its function, operands and destination buffer."""

    __slots__ = ("steps", "scratch", "copies")

    def __init__(self, steps: list[tuple], scratch: list[Any], copies: list[tuple[int, int]]) -> None:
        self.steps = steps  # (out= function or None: run as written, op name, operand refs, where it writes) per op
        self.scratch = scratch  # dtype per scratch slot
        self.copies = copies  # (source ref, destination input) written once every operation ran


class RuleReplay:
    """An elementwise optimizer's rule, recorded every step and replayed with out= functions.

    Args:
        optimizer: an optimizer whose class declares ``elementwise = True``.
        xp: the namespace the rule is given.
        out_functions: the backend's out= functions (`Backend.out_functions`).
        piece: the most elements replayed per call (None: all at once).
    """

    def __init__(self, optimizer: Any, xp: Any, out_functions: dict[str, Any],
                 piece: int | None = PIECE_ELEMENTS) -> None:
        self.optimizer, self.xp, self.piece = optimizer, xp, piece
        self._out = {name: fn for name, fn in out_functions.items() if name in OPERATORS}
        # an xp function only where the backend's out= function is the namespace's own object
        self._out.update({"xp." + name: fn for name, fn in out_functions.items()
                          if name in FUNCTIONS and getattr(xp, name, None) is fn})
        # the select of the deferred finite check: the namespace's where as the backend writes it
        self._select = out_functions.get("where")
        self.failed = False  # set once the rule could not be replayed: `apply` refuses from then on
        self._plans: dict[tuple, _Plan] = {}
        self._scratch: dict[tuple, list[Any]] = {}  # (piece length, dtype per slot) -> buffers
        self._checked: list[Any] = []  # the destinations last found writable and open to out= functions

    @property
    def selects(self) -> bool:
        """Whether `apply` takes a deferred verdict (`keep`): the backend writes ``where`` into a given array."""
        return self._select is not None

    def apply(self, values: Any, grads: Any, state: dict[str, Any], step: int, lr: Any,
              keep: Any = None, new_grads: bool = False) -> bool:
        """Write the rule's new values and state into `values` and `state`'s arrays in place, over slices of
        at most `piece` elements; False, with nothing written, where the rule cannot be replayed.

        `keep`, a 0-d boolean array (the deferred finite check), selects on the device between the rule's
        results and the arrays as they were, as ``xp.where(keep, new, old)`` would; None writes the results.
        `new_grads` says `grads` is an array the caller made with ``xp.empty`` this step (the flat update's
        offered buffer), which out= functions read: it is not tried as other gradients are.
        """
        if self.failed or (keep is not None and not self.selects):
            return False  # (a backend without an out= where still replays the steps it checks at once)
        keys = tuple(state)
        inputs = [values, grads, *[state[k] for k in keys]]
        try:
            self._check_buffers(inputs, new_grads)
            recording, outputs = self._record(inputs, keys, step, lr)
            key = (tuple(recording.ops), outputs, tuple(map(type, recording.consts)), keys,
                   tuple([x.dtype for x in inputs]), keep is None)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(recording, outputs, inputs, selecting=keep is not None)
                if len(self._plans) >= MAX_PLANS:
                    self._plans.clear()
                self._plans[key] = plan
        except Exception:  # noqa: BLE001 - whatever the recording met, the plain call runs (and raises, if it must)
            self.failed = True
            return False
        size = values.shape[0]
        piece = size if self.piece is None else min(self.piece, size)
        scratch = self._buffers(plan, piece, values)
        try:
            for start in range(0, size, piece):
                stop = min(start + piece, size)
                part = [x[start:stop] for x in inputs]
                slots = scratch if stop - start == piece else [b[:stop - start] for b in scratch]
                self._run(plan, part, slots, recording.consts, keep)
        except Exception as exc:
            raise RuntimeError(f"{type(self.optimizer).__name__}'s replayed rule failed in the middle of a step; "
                               f"the parameters hold a partial update: {exc}") from exc
        return True

    def _check_buffers(self, inputs: list[Any], new_grads: bool) -> None:
        """Unreplayable unless every array is 1-D of one length, the destinations take writes and every array
        is read and written by out= functions (torch refuses those on arrays that record gradients). Each new
        destination is tried once, the gradients every step, before anything is written: a destination with its
        own contents, elements times 1."""
        shape = tuple(inputs[0].shape)
        if len(shape) != 1 or any(tuple(x.shape) != shape for x in inputs):
            raise Unreplayable("buffers that are not 1-D of one length")
        times = self._out["*"]
        dests, grads = [inputs[0], *inputs[2:]], inputs[1]
        if not (len(dests) == len(self._checked) and all(map(operator.is_, dests, self._checked))):
            for x in dests:
                x[...] = x  # a read-only (NumPy) or self-overlapping (torch's expand) array refuses this
                times(x[:1], 1, out=x[:1])  # x * 1 is x, NaN and signed zeros included
            self._checked = dests
        # only read, and new each step: tried every step (one element) unless made by the caller with xp.empty,
        # and not held, so that the step's gradients are freed with the step
        if not new_grads:
            times(grads[:1], 1, out=self.xp.empty_like(grads[:1]))

    # -- recording ------------------------------------------------------------------------------
    def _record(self, inputs: list[Any], keys: tuple[str, ...], step: int, lr: Any) -> tuple[_Recording, tuple]:
        recording = _Recording(len(inputs))
        value, grad, *state = [Symbol(recording, i, x) for i, x in enumerate(inputs)]
        new_value, new_state = self.optimizer.update(_RecordingNamespace(self.xp, recording), value, grad,
                                                     dict(zip(keys, state, strict=True)), step, lr)
        if not isinstance(new_state, dict) or set(new_state) != set(keys):
            raise Unreplayable("the rule changes the state's keys")
        outputs = (new_value, *[new_state[k] for k in keys])
        refs = []
        for x in outputs:
            if type(x) is not Symbol or x.recording is not recording:
                raise Unreplayable("a result that is not an array the rule computed")
            refs.append(x.index)
        return recording, tuple(refs)

    # -- planning ---------------------------------------------------------------------------------
    def _compute(self, name: str, args: list[Any]) -> Any:
        """One operation as the rule ran it: its Python operator or the namespace's function."""
        if name.startswith("xp."):
            return getattr(self.xp, name[3:])(*args)
        return OPERATORS[name](*args)

    def _plan(self, recording: _Recording, outputs: tuple[int, ...], inputs: list[Any], selecting: bool) -> _Plan:
        """Dtypes from the operations run on one element each, then buffers by the operands' last reads.

        `selecting` (a deferred check's step): no result goes straight into its destination, since the
        old contents are selected between at the end; each result stays in a scratch buffer until then.
        """
        n_in, ops, consts = recording.n_inputs, recording.ops, recording.consts
        probe = [x[:1] for x in inputs]
        for name, refs in ops:
            out = self._compute(name, [probe[r] if r >= 0 else consts[-1 - r] for r in refs])
            if tuple(getattr(out, "shape", ())) != (1,):
                raise Unreplayable(f"{name} does not keep the elements' shape")
            probe.append(out)
        # destinations: output i goes to input 0 (values) or 2 + k (state); grads (input 1) is never one
        dests = [0, *range(2, n_in)]
        if any(r < n_in and r != d for r, d in zip(outputs, dests, strict=True)):
            raise Unreplayable("a result that is another input unchanged")
        if any(probe[r].dtype != inputs[d].dtype for r, d in zip(outputs, dests, strict=True)):
            raise Unreplayable("a result of another dtype than its buffer")
        end = len(ops)
        last_read = [-1] * (n_in + end)
        for j, (_, refs) in enumerate(ops):
            for r in refs:
                if r >= 0:
                    last_read[r] = j
        for r in outputs:
            last_read[r] = end
        steps: list[tuple] = []
        claimed: dict[int, int] = {}  # node ref -> destination input it is written into
        home: dict[int, tuple[str, int]] = {}  # node ref -> ("slot", i) or ("input", i)
        slots: list[Any] = []
        free: list[int] = []
        result_for = {d: r for r, d in zip(outputs, dests, strict=True)}  # destination -> the node it receives
        held: dict[int, int] = {}  # destination input -> the node its buffer holds now (absent: its old contents)
        is_output = set(outputs)

        def takes(d: int, ref: int, j: int) -> bool:
            """Whether destination `d`'s buffer may receive node `ref` (computed by operation j): nothing in it
            is read after j, and `d`'s own result, if it comes later, can still be written there."""
            if selecting or probe[ref].dtype != inputs[d].dtype or last_read[d] > j:
                return False
            if d in held and last_read[held[d]] > j:
                return False
            own = result_for[d]
            return own == ref or (ref not in is_output and own > ref and last_read[ref] <= own - n_in)

        for j, (name, refs) in enumerate(ops):
            ref = n_in + j
            fn = self._out.get(name)
            if name in COMMUTATIVE and refs[0] < 0 and refs[1] >= 0:
                refs = (refs[1], refs[0])
            arrays_first = refs[0] >= 0 and (name.startswith("xp.") and all(r >= 0 for r in refs)
                                             or not name.startswith("xp."))
            for r in set(refs):  # buffers read for the last time here may hold this result (elementwise)
                if r >= n_in and last_read[r] == j and home.get(r, ("", -1))[0] == "slot":
                    free.append(home[r][1])
            if fn is None or not arrays_first:
                steps.append((None, name, refs, None))
                continue
            dtype = probe[ref].dtype
            # a destination whose old contents are dead: its own result, or an intermediate on the way to it
            # (an update such as buf = mu * buf + g then runs in place, sparing the cache a scratch buffer)
            d = next((d for d in dests if takes(d, ref, j)), None)
            if d is not None:
                target: tuple[str, int] = ("input", d)
                held[d] = ref
                if result_for[d] == ref:
                    claimed[ref] = d
            else:
                slot = next((s for s in free if slots[s] == dtype), None)
                if slot is None:
                    slots.append(dtype)
                    slot = len(slots) - 1
                else:
                    free.remove(slot)
                target = ("slot", slot)
            home[ref] = target
            steps.append((fn, name, refs, target))
        copies = [(r, d) for r, d in zip(outputs, dests, strict=True) if r != d and claimed.get(r) != d]
        return _Plan(steps, slots, copies)

    def _buffers(self, plan: _Plan, piece: int, like: Any) -> list[Any]:
        key = (piece, like.device, *plan.scratch)
        buffers = self._scratch.get(key)
        if buffers is None:
            xp = self.xp
            buffers = [xp.empty((piece,), dtype=dtype, device=like.device) for dtype in plan.scratch]
            self._scratch = {key: buffers}  # one layout at a time: the rule's structure rarely changes
        return buffers

    # -- replay -----------------------------------------------------------------------------------
    def _run(self, plan: _Plan, inputs: list[Any], slots: list[Any], consts: list[Any], keep: Any) -> None:
        vals = inputs + [None] * len(plan.steps)
        n_in = len(inputs)
        for j, (fn, name, refs, target) in enumerate(plan.steps):
            args = [vals[r] if r >= 0 else consts[-1 - r] for r in refs]
            if fn is None:
                vals[n_in + j] = self._compute(name, args)
                continue
            out = slots[target[1]] if target[0] == "slot" else inputs[target[1]]
            fn(*args, out=out)
            vals[n_in + j] = out
        if keep is None:
            for r, d in plan.copies:
                inputs[d][...] = vals[r]
            return
        select = self._select
        assert select is not None  # `apply` refuses a verdict otherwise
        for r, d in plan.copies:  # every result not already its destination (a state entry kept as it was)
            select(keep, vals[r], inputs[d], out=inputs[d])
