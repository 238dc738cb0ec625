"""The training step's passes, recorded once from the model's own code and replayed as straight-line code.

On a backend whose arrays tell what is done to them (NumPy: `Backend.tape`), the forward,
the loss head, the penalty and the backward of a step run once on noted arrays
(`nnx.backends.recording`): the step is the real one, and the operations it ran are written
out as one Python function that later steps call instead. The function runs the same
calls in the same order (so the same bits, NaN and inf included), with none of the Python
around them (layer objects, the loss's dispatch, shape checks that held) and with every
temporary written into a buffer allocated once. A small network's step spends more time in
that Python than in its arithmetic.

It is derived from the code, not declared, so a user's layer or loss gets it as a built-in
does. A recording is replayed only while what it read besides the arrays stays as it was:
the batch's shapes, dtypes and strides, the parameters' and buffers' (by identity, else
their shapes, dtypes and strides), the layers' settings (`SettingsWatch`), the arrays they
hold (`HeldArrays`), and the attributes of the loss and of the model's regularizer; any
change records the passes again. Passes that read an array's value in Python, draw random
numbers, change a layer's Python state or fail while recorded are not replayed: that step
was still the real one (or, on an error, runs again plainly), and later steps run plainly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from operator import is_
from typing import Any

from ..backends.recording import real
from ..layers.base import Layer
from ..layers.parameter import Buffer, Parameter
from .per_model import PerModel
from .shared_programs import LOSS_CODE, REGULARIZER_CODE, SettingsWatch, Unshareable, describe, regularizers_of
from .trace_state import (
    AttributeWatch,
    HeldArrays,
    arrays_within,
    changed_state,
    held_object_attributes,
    is_array,
    layer_attributes,
    objects_state,
    python_state,
    restore_objects,
    restore_state,
    shallow_copy,
    slotted_reason,
)

__all__ = ["RecordedPasses", "code_key", "recorded_passes"]

# The most memory one recording's buffers may hold between steps. Replaying pays where a step's arrays are small
# and the Python around each operation costs as much as the operation (a 30-16-8-1 network at batch 32: 1.5
# KiB each); from about 100 KiB an array the operations dwarf it (784-256-128-1 at batch 128 gained nothing).
MAX_SCRATCH_BYTES = 1 << 20
MAX_RECORDINGS = 4  # batch layouts kept (a fit has two: its batches and a smaller last one)
# Recordings made beyond the first few before the passes run plainly, unless each was replayed this many times on
# average; they are recorded again once what the watches read held still for that many steps. A recording of a
# 30-16-8-1 network at batch 32 took 2.2-2.7 ms where a replay saved 65-78 us against the plain passes: it pays
# after about 34 replays. A setting a callback changed every epoch of 16 batches recorded every epoch (1.4x the
# plain loop), one changed every batch would record every step.
MAX_UNPAID, REPLAYS_TO_PAY = 8, 32


def _layout(x: Any) -> tuple | None:
    """What a recording holds of an input besides its values (None for no input)."""
    return None if x is None else (x.shape, x.dtype, x.strides)


# what every `Layer` keeps for its model, and the arguments it was constructed with (its config): no pass reads them
_LAYER_OWN = frozenset(vars(Layer())) | {"_init_args"}
_GONE = object()


def _same_contents(value: Any, copy: Any) -> bool:
    if len(value) != len(copy):
        return False
    if type(copy) is list:
        return all(map(is_, value, copy))
    return all(value.get(k, _GONE) is v for k, v in copy.items())


def _containers(model: Any) -> list[tuple[Any, str, Any, Any]]:
    """Every list and dict a layer keeps (besides `Layer`'s own), with a shallow copy of it."""
    return [(layer, key, value, shallow_copy(value)) for _, layer in model.named_layers()
            for key, value in vars(layer).items() if key not in _LAYER_OWN and isinstance(value, (list, dict))]


def _changed_containers(before: list[tuple[Any, str, Any, Any]]) -> str | None:
    """The first list or dict of `_containers` that the passes changed other than by rebinding arrays in it (a
    cache), in words: Python state a replay would not change."""
    for layer, key, value, copy in before:
        if vars(layer).get(key, _GONE) is not value:
            continue  # rebound: a cache made anew by each call
        if isinstance(value, dict):
            same_keys = value.keys() == copy.keys()
            pairs = [(value[k], copy[k]) for k in copy] if same_keys else []
        else:
            same_keys = len(value) == len(copy)
            pairs = list(zip(value, copy, strict=False))
        if not same_keys or any(now is not then and not (is_array(now) and is_array(then)) for now, then in pairs):
            return f"the passes change the {type(value).__name__} {key!r} of a {type(layer).__name__}"
    return None


def _items_of(value: Any) -> Any:
    """What `_opaque` compares of an attribute: a list or dict itself, the attributes of another object that keeps
    them in a ``__dict__`` (a per-layer regularizer of the user's holding an array, a config object), else None."""
    if isinstance(value, (list, dict)):
        return value
    attributes = getattr(value, "__dict__", None)
    return attributes if type(attributes) is dict else None


def _opaque(model: Any) -> list[tuple[weakref.ref, str, Any, Any, dict[Any, Any]]]:
    """The layer attributes the passes may read that `layer_settings` does not describe (a dict holding an array, a
    NumPy ufunc, an object holding an array), each with what it holds (`_items_of`): a replay holds while each is
    the same object, holding the same items (a setting changed on such an object, ``layer.regularizer.l = 0.1``,
    records again), and while each NumPy array among an object's items, or in a list or dict among them, holds the
    same bytes (``layer.regularizer.columns[...] = ...``: what the passes computed from it is a constant of the
    recording). The arrays in a plain list or dict are inputs
    of the recording instead (`_container_items`). Arrays, sub-layers and parameters are watched otherwise."""
    found = []
    for _, layer in model.named_layers():
        for key, value in vars(layer).items():
            if key in _LAYER_OWN or value is None or is_array(value) or isinstance(value, (Layer, Parameter, Buffer)):
                continue
            try:
                describe(value, {})
                continue  # a setting (a dict of plain values too): `SettingsWatch` compares it
            except (Unshareable, RecursionError):
                pass
            items = _items_of(value)
            # the arrays among an object's attributes by their bytes, and what a list or dict there holds beside one
            # (`arrays_within`; a large array is compared too: rare, and only where the watches run, not back to back)
            held = {} if items is None or type(items) is not dict or type(value) is dict else {
                k: arrays_within(v) for k, v in items.items()}
            found.append((weakref.ref(layer), key, value, shallow_copy(items), held))
    return found


def _opaque_moved(opaque: list[tuple[weakref.ref, str, Any, Any, dict[Any, Any]]]) -> bool:
    for ref, key, value, copy, held in opaque:
        layer = ref()
        if layer is None or vars(layer).get(key, _GONE) is not value \
                or copy is not None and not _same_contents(_items_of(value), copy):
            return True
        if held:
            items = _items_of(value)
            if any(arrays_within(items[k]) != b for k, b in held.items()):
                return True
    return False


def _container_items(model: Any) -> list[tuple[Any, str, Any, Any, Any]]:
    """(layer, attribute, container, key, array) for each array in a plain list or dict a user's layer keeps, or
    among the attributes of an object of theirs it keeps (the container is then that object's ``__dict__``), one
    level down: inputs of a recording, as the arrays a layer holds itself are (when `RecordedPasses` records).
    nnx's own layers keep none there (a nested model's tables are no pass's)."""
    return [(layer, name, container, key, value) for _, layer in model.named_layers()
            if not type(layer).__module__.startswith("nnx.")
            for name, held in vars(layer).items() if name not in _LAYER_OWN
            if (container := held if type(held) in (list, dict) else held_object_attributes(held)) is not None
            for key, value in (container.items() if type(container) is dict else enumerate(container))
            if is_array(value)]


def _in_slot(layer: Any, name: str, key: Any) -> Any:
    """What a layer's list or dict attribute `name` holds at `key` now, or `_GONE`."""
    return _at(vars(layer).get(name), key)


def _at(container: Any, key: Any) -> Any:
    """What a list or dict (or an object of the user's, as its attributes) holds at `key` now, or `_GONE`."""
    if type(container) is dict:
        return container.get(key, _GONE)
    if type(container) is list and type(key) is int and key < len(container):
        return container[key]
    attributes = held_object_attributes(container)
    return _GONE if attributes is None or type(key) is not str else attributes.get(key, _GONE)


class _Recording:
    """One recorded structure: its function and what it was recorded from."""

    __slots__ = ("function", "settings", "held", "opaque", "kept", "items", "values", "value_layouts",
                 "buffer_layouts")

    def __init__(self, function: Callable, settings: tuple, held: HeldArrays, opaque: list,
                 kept: list[tuple[Any, str]], items: list[tuple[Any, str, Any]], values: list[Any],
                 buffers: list[Any]) -> None:
        self.function, self.settings, self.held, self.opaque = function, settings, held, opaque
        # (the layer, weakly, and the attribute) of each array a layer holds (not a parameter or buffer), an input
        # of the function: it reads them as they stand at each call, as the plain passes do (a callback may write
        # into one in place, and what the passes compute from it alone is computed again)
        self.kept = kept
        # (the layer, weakly, the attribute and the key) of each array in a list or dict a layer keeps: inputs after
        # those of `kept`, for the same reason
        self.items = items
        # the parameters' arrays last seen (checked by identity first), weakly: an older flat buffer of the
        # parameters (a fit lays out its own) is not kept alive by a recording
        self.values = [weakref.ref(v) for v in values]
        self.value_layouts = [_layout(v) for v in values]
        self.buffer_layouts = [_layout(b) for b in buffers]

    def holds(self, settings: tuple, values: list[Any], buffers: list[Any]) -> bool:
        """Whether this is the code the passes would run now, on parameters `values` and `buffers`."""
        then = self.settings
        if not (settings[0] is then[0] and settings[1] is then[1] and settings[2] is then[2]) \
                and settings != then or self.held.moved() or self.opaque and _opaque_moved(self.opaque):
            return False
        return self.arrays_hold(values, buffers)

    def arrays_hold(self, values: list[Any], buffers: list[Any]) -> bool:
        """Whether parameters `values` and `buffers` are the arrays this was recorded for (by identity, else by
        their shapes, dtypes and strides)."""
        if not all(map(is_, values, [ref() for ref in self.values])):
            if [_layout(v) for v in values] != self.value_layouts:
                return False
            self.values = [weakref.ref(v) for v in values]
        return not buffers or [_layout(b.value) for b in buffers] == self.buffer_layouts


def code_key(runners: list[Any], head: Any, model: Any = None) -> tuple:
    """Which code the passes run: each layer's runner (a kernel's class, else its forward and backward functions),
    the loss head's class and methods, and the class and methods of each regularizer of `model`. A recording holds
    for this code only (a class patched between fits runs other operations)."""
    def function(f: Any) -> Any:
        # weakly: a function replaced on a layer object may close over the model the cache must not keep alive
        f = getattr(f, "__func__", f)
        return None if f is None else weakref.ref(f)
    layers = tuple((type(r), function(getattr(r, "forward", None)), function(getattr(r, "backward", None)))
                   for r in runners)
    regularizers = () if model is None else tuple(
        (type(reg), *(function(getattr(type(reg), name, None)) for name in REGULARIZER_CODE))
        for reg in regularizers_of(model))
    return layers, type(head), tuple(function(getattr(type(head), name, None)) for name in LOSS_CODE), regularizers


# the recorded passes of each model, kept while it lives: a fit per epoch (or a later fit) replays at once
_PASSES = PerModel()


def recorded_passes(model: Any, runners: list[Any], head: Any) -> RecordedPasses:
    """The recorded passes kept for `model`, for a training step that runs `runners` and `head`; its recordings
    are kept where that is the same code (`code_key`)."""
    found = _PASSES.get(model)
    key = code_key(runners, head, model)
    if found is None or found.code != key:
        found = _PASSES[model] = RecordedPasses(model, runners, head)
    else:
        found.head = head
        if found.raised:  # the model's own error (a batch it refuses) says nothing of the next fit's
            found.refusal, found.raised = None, False
    return found


class RecordedPasses:
    """Forward, loss head, penalty and backward of a training step, replayed where recorded (module docstring).

    Args:
        model: the model the step trains.
        runners: what runs each layer in the step (`nnx.kernels.layer_runners`).
        head: the loss whose attributes the passes read.

    It is kept per model (`recorded_passes`) and holds nothing that holds the model: the model weakly, the
    step's own objects (its passes, its kernels) only while a step runs.
    """

    def __init__(self, model: Any, runners: list[Any], head: Any) -> None:
        self._model = weakref.ref(model)
        self.head = head
        self.code = code_key(runners, head, model)
        self.params, self.buffers = model.parameters(), model.buffers()
        self.refusal: str | None = slotted_reason(model, head)  # why the passes run plainly from now on, in words
        # whether that is an error the passes raised while recorded: the next training step tries again (each try
        # counts against `MAX_UNPAID`)
        self.raised = False
        self._recordings: dict[tuple, _Recording] = {}
        self._last: tuple[tuple, _Recording] | None = None  # (batch key, recording) of the last call, if it replayed
        # what the watches read when that chain of replays began (a replay back to back with the last reads none)
        self._settings_seen: tuple = ()
        self._made = self._replayed = 0  # recordings made and replayed (`MAX_UNPAID`)
        # refused for that: what the watches read when last looked (None otherwise), the steps since it changed and
        # their batch layouts
        self._resting: tuple | None = None
        self._still, self._still_layouts = 0, set()
        self._settings = SettingsWatch()
        self._head_watch, self._penalty_watch = AttributeWatch(), AttributeWatch()

    @property
    def model(self) -> Any:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of these recorded passes no longer exists")
        return model

    @property
    def replayed(self) -> bool:
        """Whether the last call replayed a recording (it ran none of the layers', loss's or regularizer's code)."""
        return self._last is not None

    def run(self, X: Any, y: Any, sample_weight: Any, destinations: Callable[[], list[Any] | None] | None,
            passes: Callable[[Any, Any, Any], tuple[Any, Any]], runners: list[Any],
            record: bool = True, back_to_back: bool = False) -> tuple | None:
        """The passes on this batch: (loss, head outputs, gradients, new buffer values), or None where they are
        to run plainly instead (nothing was changed then, ``p.grad`` included: a plain step that raises in its
        forward leaves the last step's gradients). The gradients are not bound to ``p.grad`` and the
        parameters' values are untouched. A replay clears ``p.grad`` first, as the plain backward does, and
        then asks `destinations` for the arrays to write the gradients into, or None (after the clearing, so
        that the buffer offered may reuse their memory); a gradient is written into its entry where the line
        making it can (a new array otherwise).

        `passes` runs them plainly on ``(X, y, sample_weight)`` as the step does (filling ``p.grad``, rebinding
        buffers; returns the loss incl. penalty and the head outputs): it is what is recorded. `runners` run the
        layers in it (their kernels may keep arrays between the forward and the backward). Without `record`, a
        batch that nothing recorded holds for runs plainly (None) instead of being recorded.

        `back_to_back`: none of the user's code ran since the last call (`TrainStep.back_to_back`). Where that
        call replayed a recording, nothing the watches look at can have changed: for a batch laid out as that
        one's, only the arrays are checked again (the optimizer's own step may have rebound them); for another
        layout, its recording is checked against what the watches read when the replays began."""
        key = (_layout(X), _layout(y), _layout(sample_weight), destinations is not None)
        if self.refusal is not None and (self._resting is None or not self._woke(key)):
            return None
        values = [p.value for p in self.params]
        last, self._last = self._last, None
        if back_to_back and last is not None and last[0] == key and last[1].arrays_hold(values, self.buffers):
            recording = last[1]
        else:
            if back_to_back and last is not None:
                settings = self._settings_seen
            else:
                settings = self._settings_seen = self._watched()
            recording = self._recordings.get(key)
            if recording is None or not recording.holds(settings, values, self.buffers):
                if not record:
                    return None
                return self._record(key, settings, (X, y, sample_weight), destinations is not None, passes, runners)
        return self._replay(key, recording, X, y, sample_weight, values, destinations)

    def _watched(self) -> tuple:
        """What the watches read now: the layers' settings, the loss's and the regularizer's attributes."""
        regularizer = self.model.regularizer
        return (self._settings.current(self.model), self._head_watch.current(self.head),
                None if regularizer is None else self._penalty_watch.current(regularizer))

    def _woke(self, key: tuple) -> bool:
        """While refused for recording too often: whether what the watches read held still for `REPLAYS_TO_PAY`
        steps of at most `MAX_RECORDINGS` batch layouts (`key`: this batch's), so that recording pays again (batch
        sizes that keep changing would evict their recordings as a changing setting makes them stale). The first
        recording then is free, and one after it must have paid."""
        now = self._watched()
        if now == self._resting:
            self._still += 1
            self._still_layouts.add(key)
        if now != self._resting or len(self._still_layouts) > MAX_RECORDINGS:
            self._still, self._still_layouts = 0, {key}
        self._resting = now
        if self._still < REPLAYS_TO_PAY:
            return False
        self.refusal = self._resting = None
        self._made, self._replayed = MAX_UNPAID - 1, REPLAYS_TO_PAY * MAX_UNPAID
        return True

    def _replay(self, key: tuple, recording: _Recording, X: Any, y: Any, sample_weight: Any, values: list[Any],
                destinations: Callable[[], list[Any] | None] | None) -> tuple:
        if destinations is not None:
            for p in self.params:
                p.grad = None
            offered = destinations()
            if offered is None:  # the update stopped offering a buffer (rare): new arrays, as the plain backward's
                offered = [self.model.xp.empty_like(v) for v in values]
        else:
            offered = ()
        self._last = key, recording
        self._replayed += 1
        inputs = (X, y) if sample_weight is None else (X, y, sample_weight)
        buffers = [b.value for b in self.buffers] if self.buffers else []
        # (each layer is alive and still holds the array it did: `holds` checked that with `HeldArrays`)
        kept = [vars(ref()).get(key) for ref, key in recording.kept] if recording.kept else []
        if recording.items:  # (an item the passes rebound, the recorded function does not read: None if gone)
            kept += [None if (v := _in_slot(ref(), name, k)) is _GONE else v for ref, name, k in recording.items]
        results = recording.function(*inputs, *values, *buffers, *kept, *offered)
        n = len(values)
        return results[0], results[1], results[2:2 + n], results[2 + n:]

    # -- recording --------------------------------------------------------------------------------------
    def _record(self, key: tuple, settings: tuple, batch: tuple, given: bool, passes: Callable,
                runners: list[Any]) -> tuple | None:
        """Run the passes on noted arrays and keep their function; the results, or None after an error."""
        X, y, sample_weight = batch
        model, params, buffers = self.model, self.params, self.buffers
        self._made += 1
        if self._made > MAX_UNPAID and self._replayed < REPLAYS_TO_PAY * self._made:
            self.refusal = (f"recorded {self._made} times for {self._replayed} replays: what they read keeps "
                            f"changing (recorded again once it holds still for {REPLAYS_TO_PAY} steps)")
            self._resting, self._still, self._still_layouts = settings, 0, {key}
            return None
        tape = model.backend.tape()
        rng = model.dropout_rng
        draws, rng_state = rng.draws, rng.get_state()
        state_before = python_state(model)
        attributes_before = layer_attributes(model)
        containers_before = _containers(model)
        values, grads_before = [p.value for p in params], [p.grad for p in params]
        buffers_before = [b.value for b in buffers]
        noted_X, noted_y = tape.note(X), tape.note(y)
        noted_w = None if sample_weight is None else tape.note(sample_weight)
        # the arrays layers hold besides parameters and buffers (a table, a mask): inputs, not constants, so that
        # what the passes compute from them alone is recorded too
        kept = [(layer, name, value) for _, layer in model.named_layers() for name, value in vars(layer).items()
                if is_array(value)]
        noted_kept: list[Any] = []
        # the arrays in the lists and dicts layers keep: inputs too, so that a replay reads what a callback wrote into
        # one, and so that one the passes read before rebinding it (a running mean in ``self.stats["mu"]``) is told
        # from a cache (written in the forward, read in the backward)
        items = _container_items(model)
        noted_items: list[Any] = []
        # the loss's own attributes: what its code sets in a step (a running value, a count) a replay would not set
        head = self.head
        head_before, head_state = dict(vars(head)), objects_state([("the loss", head)])
        noted_values = [tape.note(v) for v in values]
        try:
            for p, v in zip(params, noted_values, strict=True):
                p.value, p.grad = v, None
            for b, v in zip(buffers, buffers_before, strict=True):
                b.value = tape.note(v)
            for layer, name, v in kept:
                noted_kept.append(tape.note(v))
                vars(layer)[name] = noted_kept[-1]
            for _, _, container, k, v in items:
                noted_items.append(tape.note(v))
                container[k] = noted_items[-1]
            value, Z = passes(noted_X, noted_y, noted_w)
            grads = [p.grad for p in params]
            new_buffers = [b.value for b in buffers]
            # a value the passes rebound (a layer that constrains its weight in its forward), as the step leaves it
            rebound = [(p, p.value) for p, v in zip(params, noted_values, strict=True) if p.value is not v]
            # an array a layer kept that the passes read and then rebound is state carried from step to step (the
            # last batch's input, a running mean that is no buffer): a replay would read the recorded one forever
            read = {i for op in tape.ops for i in op.reads}
            carried = [f"a {type(layer).__name__} reads and rebinds its array {name!r}"
                       for (layer, name, _), noted in zip(kept, noted_kept, strict=True)
                       if vars(layer).get(name) is not noted and noted.index in read]
            carried += [f"a {type(layer).__name__} reads and rebinds the array at {k!r} in its {name!r}"
                        for (layer, name, _, k, _), noted in zip(items, noted_items, strict=True)
                        if noted.index in read and _in_slot(layer, name, k) is not noted]
            carried += [f"the loss ({type(head).__name__}) sets its attribute {name!r}"
                        for name, v in vars(head).items() if head_before.get(name, _GONE) is not v]
        except BaseException as exc:
            # the layers' Python ran half a step on noted arrays: the plain step starts from where they were, and
            # an interrupt (Ctrl-C) leaves the model's own arrays, never noted ones, in its buffers
            restore_state(model, state_before)
            restore_objects([("the loss", head)], head_state)
            rng.set_state(rng_state)
            rng.draws = draws
            for b, v in zip(buffers, buffers_before, strict=True):
                b.value = v
            if not isinstance(exc, Exception):
                raise
            self.refusal, self.raised = "the passes raised while recorded", True
            return None
        finally:
            for p, v, g in zip(params, values, grads_before, strict=True):
                p.value, p.grad = v, g
            for (layer, name, v), noted in zip(kept, noted_kept, strict=False):
                if vars(layer).get(name) is noted:  # not rebound by the passes (a cache): the layer's own again
                    vars(layer)[name] = v
            for (_, _, container, k, v), noted in zip(items, noted_items, strict=False):
                if _at(container, k) is noted:  # (in the container the layer held, whether or not it still does)
                    container[k] = v
            _unwrap_kept([layer for _, layer in model.named_layers()] + list(runners) + [head])
        for p, v in rebound:  # the plain step's, which the update starts from; a replay would not rebind it
            p.value = real(v)
        if rebound:
            tape.refuse(f"the passes rebind the value of {', '.join(repr(p.name) for p, _ in rebound)}")
        held = HeldArrays()
        held.note(attributes_before)
        changed = changed_state(state_before, python_state(model)) or changed_state(
            head_state, objects_state([("the loss", head)]))
        if changed is None:
            changed = carried[0] if carried else _changed_containers(containers_before)
        if changed is not None:
            tape.refuse(f"the passes change Python state: {changed}")
        if rng.draws != draws:
            tape.refuse("the passes draw random numbers")
        outputs = [value, Z, *grads, *new_buffers]
        if tape.refusal is None:
            try:
                destinations = tuple(range(2, 2 + len(params))) if given else ()
                function = tape.compile(outputs, destinations, MAX_SCRATCH_BYTES)
            except ValueError as exc:
                tape.refuse(str(exc))
            else:
                if len(self._recordings) >= MAX_RECORDINGS:
                    self._recordings.clear()
                self._recordings[key] = _Recording(function, settings, held, _opaque(model),
                                                   [(weakref.ref(layer), name) for layer, name, _ in kept],
                                                   [(weakref.ref(layer), name, k) for layer, name, _, k, _ in items],
                                                   values, buffers_before)
        self.refusal = tape.refusal
        value, Z, *rest = [real(x) for x in outputs]
        n = len(params)
        for b, v in zip(buffers, rest[n:], strict=True):
            b.value = v
        return value, Z, rest[:n], rest[n:]


def _unwrap_kept(holders: list[Any]) -> None:
    """Put the real arrays where layers and their kernels keep noted ones (what a backward reads): the plain step
    leaves the last batch's arrays there."""
    for holder in holders:
        attributes = getattr(holder, "__dict__", None)
        if attributes is None:
            continue
        for k, v in list(attributes.items()):
            inner = held_object_attributes(v)
            if inner is not None:  # an object of the user's the layer keeps: its attributes, in place
                inner.update({name: real(x) for name, x in inner.items() if real(x) is not x})
                continue
            unwrapped = real(v)
            if unwrapped is v:
                continue
            if type(v) is list:  # the list or dict the layer keeps, as the plain passes leave it (not a copy)
                v[:] = unwrapped
            elif type(v) is dict:
                v.update(unwrapped)
            else:
                attributes[k] = unwrapped
