"""The training step, in named stages that `fit`, the scikit-learn estimators and distributed training share.

    forward_loss  ->  backward  ->  check  ->  transform (accumulate, all-reduce, clip, hooks)  ->  update

`forward_loss` and `backward` run the model up to its loss head (a final
Sigmoid/Softmax is folded into the loss) and fill ``p.grad``. Each transform may
rebind ``p.grad`` or hold the update back (accumulation). `check` refuses a step whose loss or
gradients are not finite *before* anything is updated, so a diverging run
keeps the weights, optimizer state and buffers of its last finite step.

Where arrays live in host memory the check reads one number per step. On an
accelerator it never makes the host wait: the verdict stays on the device,
`update` applies a step only where every step so far was finite (a selection
on the device), and `end_epoch` reads the verdict once, with the epoch's losses.

How the stages run is derived from the backend's capabilities and the objects'
declarations, never from their classes, and every way gives the plain loop's numbers:
- on a backend with a compiler (JAX), the whole step is one compiled program traced
  from the model's own code (`nnx.training.compiled`); `run_compiled` does every stage in one
  call, with the check deferred in the same way;
- elsewhere, an optimizer whose rule is ``elementwise`` updates all parameters in one
  call over flat buffers (`nnx.training.flat`), and the finite check sums the one
  flat gradient buffer that update gathers;
- otherwise `Optimizer.step` updates parameter by parameter.
Outside a compiled step, a layer with a kernel declared for its exact class on this
backend (`nnx.kernels`) is run by that kernel, which gives the layer's own numbers, and so is
a loss head with one (binary cross-entropy from logits on torch: the loss's numbers bit for bit).
"""

from __future__ import annotations

import math
from itertools import repeat
from operator import is_
from typing import Any

from ..kernels import gradient_writers, head_runner, layer_runners
from ..layers.parameter import Buffer, Parameter
from ..protocols import CompiledExecution, FlatExecution, Model
from ..shape_reads import shape_dependence
from .churn import SettingsChurn
from .compiled import compile_step, kept_buffers
from .compiled_passes import compiled_passes
from .flat import FlatUpdate, own_step
from .inputs import require_own_outputs
from .recorded import recorded_passes
from .traceable import traceable
from .transforms import CallbackLook, GradientTransform


class NonFiniteStep(FloatingPointError):
    """The loss or a gradient of one step is NaN or infinite; nothing was updated."""


class TrainStep:
    """One optimisation step of `model` for `loss` and `optimizer`.

    Args:
        model: a `Sequential`.
        loss: the `Loss` being minimised.
        optimizer: the `Optimizer` over ``model.parameters()``.
        transforms: `GradientTransform` stages applied in order after backward.
        check_finite: refuse non-finite steps (see `check`).
        defer_check: keep the verdict on the device (see the module docstring); by default
            where the backend's arrays are not in host memory.
        flat_update: the update over flat buffers to use instead of deriving one (the sharded update
            across ranks, `nnx.distributed.ShardedUpdate`); it has `FlatUpdate`'s `applies`, `offer_grads`,
            `gather_grads`, `run`.
        compile_passes: where the whole step cannot be one compiled program (a data-parallel step, whose
            all-reduce runs between the backward and the update) but the backend compiles, run each batch's
            forward, loss and backward as one (`nnx.training.compiled_passes`) from the second batch on.
    """

    def __init__(self, model: Model, loss: Any, optimizer: Any, transforms: list[GradientTransform] | None = None,
                 check_finite: bool = True, defer_check: bool | None = None,
                 flat_update: FlatExecution | None = None, compile_passes: bool = False) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.transforms = list(transforms or [])
        self.check_finite = check_finite
        self.params: list[Parameter] = model.parameters()
        # whether the optimizer updates every parameter, in the model's order (none frozen)
        self.trains_all = len(optimizer.params) == len(self.params) and all(map(is_, optimizer.params, self.params))
        self.buffers: list[Buffer] = model.buffers()
        # (buffer, its value before this step's forward): a refused step's batch statistics do not count
        self._buffers_before: list[tuple[Buffer, Any]] = []
        be = model.backend
        self.compiled: CompiledExecution | None = compile_step(model, loss, optimizer, self.transforms, check_finite)
        # the compiled step while its settings change too often to pay (`wake`): the plain stages run, no flat update
        self.resting: CompiledExecution | None = None
        if self.compiled is not None and not self.compiled.wake():
            self.resting, self.compiled = self.compiled, None
        self.passes = compiled_passes(model, loss, optimizer) if compile_passes and self.compiled is None \
            and be.fastpath_enabled and be.can_compile and traceable(model, loss, optimizer, []) else None
        # (a rule reading its arrays' shape would see the flat buffer's: `shape_dependence`)
        derive_flat = self.compiled is None and self.resting is None and be.fastpath_enabled \
            and getattr(optimizer, "elementwise", False) and own_step(optimizer) and shape_dependence(optimizer) is None
        # whether the passes run nnx's code only (every layer, the loss, the regularizers): a user's may do anything
        # inside a step, such as rebind an entry of the optimizer's state, so where it runs (not replayed) the flat
        # update still looks at the state's binding back to back; nnx's own make gradients shaped as their parameters
        self.own_passes = _own_passes(model, loss)
        # the update gathers the gradients those passes made unchecked only where no code of the user's rebinds one
        # after them (a transform or a callback's on_backward of theirs may make one of the same size, transposed)
        own_gradients = self.own_passes and all(map(_own_transform, self.transforms))
        self.flat: FlatExecution | None = flat_update if flat_update is not None else (
            FlatUpdate(optimizer, be, own_gradients=own_gradients) if derive_flat else None)
        if isinstance(self.flat, FlatUpdate):
            self.flat.lay_out(create_state=False)  # now, while no gradients are held
        self.n_run, self.head, self.from_logits = model.output_head(loss)
        # what computes the head after the first batch: a kernel declared for the loss's class here, or the loss
        self.head_kernel = head_runner(self.head, be) if be.fastpath_enabled else self.head
        # the layers up to the head, each run by a kernel declared for it on this backend (`nnx.kernels`) or itself
        self.runners = layer_runners(model.layers[:self.n_run], be) if be.fastpath_enabled else None
        # the kernels among them that write their gradients where the flat update offers (no gathering then)
        self.grad_writers = gradient_writers(self.runners) if self.flat is not None and self.runners else []
        self._dZ: Any = None
        self._replayed_grads: list[Any] | None = None  # the gradients the replayed passes made, for `backward`
        # whether the update offers buffers for the gradients (`_destinations`); None: not asked yet
        self._offering: bool | None = None
        self.checked_inputs = False  # whether a batch went through the loss's input checks
        # Set by the caller: this step follows the last one back to back, with none of the user's code run between
        # them (no callback, transform or data source of theirs), so nothing it could change (a layer's setting,
        # the optimizer's state) was. What only such code could change is then not looked at again: the recorded
        # passes' watches (a replay runs none of the layers' code) and the optimizer's state being bound to the
        # flat update's views.
        self.back_to_back = False
        # whether any regularizer applies: walking the layer tree for it every step costs more than a small
        # network's arithmetic (a fit's model and regularizers stay as they are for its duration)
        self.penalized = model.penalizes()
        # the passes recorded from the model's own code and replayed, where the backend's arrays can be noted
        self.recorded = recorded_passes(model, self.runners or [], self.head_kernel) \
            if self.compiled is None and be.fastpath_enabled and be.tape() is not None else None
        on_host = model.backend.arrays_on_host
        self.deferred = check_finite and (not on_host if defer_check is None else bool(defer_check))
        self._steps = 0  # steps checked this epoch
        self._ok: Any = None  # deferred: device flag, every step so far this epoch was finite
        self._flags: list[tuple[int, Any]] = []  # deferred: (step index, its own device flag), read on a refusal
        self._verdict: Any = None  # deferred: this step's flag, consumed by update
        self._updates: list[tuple[int, int, list[int], set]] = []  # deferred: host counters before each update
    @property
    def execution(self) -> str:
        """How the step runs: ``"compiled"`` (one program), ``"flat"`` (one update over flat buffers),
        ``"sharded"`` (the same across ranks, each on its slice) or ``"plain"``."""
        return "compiled" if self.compiled is not None else self.flat.execution if self.flat is not None else "plain"

    # -- stages ------------------------------------------------------------------------------
    def run_compiled(self, X: Any, y: Any, sample_weight: Any = None,
                     read_check: bool = False) -> tuple[Any, Any, bool]:
        """Every stage in one call of the compiled step (only where `compiled` is not None).

        Returns (loss incl. penalty, head outputs, finite). The check is deferred as on an
        accelerator (`end_epoch` reads it); `read_check` reads this step's verdict now, for a
        callback that handles non-finite steps itself. A refused step updates nothing. Where the first trace
        fails, or where its settings changed too often for compiling to pay (`SettingsChurn`), this batch's forward
        and backward run plainly and `compiled` becomes None: the caller then transforms and updates as after the
        plain stages.
        """
        compiled = self.compiled
        if compiled is None:
            raise RuntimeError("TrainStep.run_compiled needs a compiled step (execution 'compiled'); run the stages "
                               "instead")
        self._steps += 1
        traces = compiled.traces
        try:
            return compiled(X, y, sample_weight, read_check and self.check_finite)
        except SettingsChurn:  # (raised before anything changed, with no step of this epoch refused)
            compiled.rest()
            self.resting = compiled
        except self.model.backend.trace_errors:
            if compiled.traces > 1:
                raise  # it traced before: this is the model's own error, not a limit of tracing
        except Exception:
            # The model's code raised while traced for this batch's shape (a loss refusing a last batch that small),
            # which left nothing changed. The plain stages run it instead: they raise the same error and leave what
            # the plain loop leaves (a BatchNorm's statistics moved by the forward). Not after a step this epoch
            # refused: the plain loop stopped at that one, and the error goes to the loop, which raises that refusal
            if compiled.traces == traces or compiled.refused_so_far():
                raise
        if self.resting is not compiled:
            compiled.broken = True  # the model's code needs concrete values, or raised
        self.compiled = None  # the plain stages run (until the settings hold still, where they changed too often)
        self._steps -= 1
        value, Z = self.forward_loss(X, y, sample_weight)
        self.backward()
        return value, Z, self.check(value, read=read_check)

    def wake(self) -> None:
        """As an epoch starts: the compiled step or passes run again where their settings held still meanwhile."""
        if self.resting is not None and self.resting.wake():
            self.compiled, self.resting = self.resting, None
        if self.passes is not None:
            self.passes.wake()

    def run_back_to_back(self, X: Any, y: Any, sample_weight: Any = None, read_check: bool = False,
              guard: Any = None) -> tuple[Any, Any, bool, bool] | None:
        """The stages of a batch back to back with the last (`back_to_back`) in one call, where the last one's
        update ran flat: the passes (the last one's recording again, else the layers and loss as the stages run
        them), the check and the update. Only what the library's own code or the passes may have changed is looked
        at again: the batch's layout and the parameters' arrays, and after a user's layer or loss ran, the
        optimizer's state. Returns (loss incl. penalty, head outputs, finite, applied); None, with nothing done,
        where that does not hold, and the stages run instead. Where the probe is not finite, a gradient is missing
        or the passes rebound a parameter, it returns `check`'s verdict unapplied, and the caller goes on as after
        the stages' `check`. `guard`, an `InterruptGuard`, holds a Ctrl-C back during the update only, as the
        caller holds it around `update`: one in the passes stops the fit before the step is applied."""
        flat, recorded = self.flat, self.recorded
        if self.deferred or self.transforms or not isinstance(flat, FlatUpdate):
            return None
        if recorded is not None and recorded.refusal is None:
            if not (recorded.replayed and flat.holds()):
                return None
            # back to back after a replay: the watches are not read again, and nothing is recorded here
            replayed = recorded.run(X, y, sample_weight, self._destinations if self._offering else None, self._passes,
                                    self.runners or [], False, True)  # (record nothing, back to back)
            if replayed is None:
                return None
            value, Z, grads, new_buffers = replayed
            if self.check_finite and self.buffers:  # as `forward_loss` keeps them, for a refusal
                self._buffers_before = [(b, b.value) for b in self.buffers]
            for b, new in zip(self.buffers, new_buffers, strict=True):
                b.value = new
            for p, grad in zip(self.params, grads, strict=True):
                p.grad = grad
        else:
            value, Z = self.forward_loss(X, y, sample_weight)
            self.backward()
            # (a user's layer or loss may rebind an entry of the optimizer's state: looked at as the stages do)
            if not flat.holds(state=not self.own_passes):
                return value, Z, self.check(value, read=read_check), False
            grads = [p.grad for p in self.params]
        # the optimizer's parameters (a frozen layer's are not among them)
        trained = grads if self.trains_all else [p.grad for p in self.optimizer.params]
        if any(map(is_, trained, repeat(None))):  # a parameter left without a gradient: `update` updates the rest
            return value, Z, self.check(value, read=read_check), False
        gathered = flat.gather(trained)
        if self.check_finite and not (math.isfinite(value) and
                                      math.isfinite(self.model.backend.finite_probe(gathered))):
            return value, Z, self.check(value, read=read_check), False
        self._buffers_before = []
        if guard is not None:
            guard.in_step = True
        flat.apply_gathered()
        if guard is not None:
            guard.end_step()
        return value, Z, True, True

    def forward_loss(self, X: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """Training-mode forward to the loss head; returns (loss incl. penalty, head outputs)."""
        if self.check_finite and self.buffers:  # the forward rebinds them (never writes in place): no copy
            self._buffers_before = [(b, b.value) for b in self.buffers]
        if self.recorded is not None:
            # a fit's first batch replays only what an earlier fit of this model recorded (no recording is made
            # before the inputs were checked), and then goes through the input checks on its own head outputs
            replayed = self._replay(X, y, sample_weight, record=self.checked_inputs)
            if replayed is not None:
                if not self.checked_inputs:
                    self._check_first_batch(y, replayed[1], sample_weight)
                return replayed
        if self.passes is not None and self.checked_inputs and not self.passes.resting:
            passed = self._compiled_passes(X, y, sample_weight)
            if passed is not None:
                return passed
        if not self.checked_inputs and self.runners is not None:  # the first batch
            self.runners.note_training_forward()
        Z = self.model.forward_to_head(X, self.n_run, training=True, runners=self.runners)
        if self.checked_inputs:
            value, self._dZ = self.head_kernel.value_and_grad_prepared(self.model.xp, y, Z, sample_weight)
        else:  # the first batch goes through every input check; the data source prepares the rest alike
            require_own_outputs(self.model, Z, "fit")  # outputs of another library the loss would blame on its order
            self.checked_inputs = True
            if self.head_kernel is self.head:
                value, self._dZ = self.head.value_and_grad(y, Z, check=False, sample_weight=sample_weight)
            else:  # checked as the loss checks; its numbers from the kernel, as every later batch's
                self.head.check_inputs(y, Z, sample_weight, check=False)
                value, self._dZ = self.head_kernel.value_and_grad_prepared(self.model.xp, y, Z, sample_weight)
        return self._with_penalty(value), Z

    def _check_first_batch(self, y: Any, Z: Any, sample_weight: Any) -> None:
        """What the plain passes check of a fit's first batch, on replayed head outputs `Z`: the loss's input
        checks (its numbers are the replay's, which are the checked loss's), and the layers noted as run."""
        self.checked_inputs = True
        if self.runners is not None:
            self.runners.note_training_forward()
        self.head.check_inputs(y, Z, sample_weight, check=False)

    def _with_penalty(self, value: Any) -> Any:
        penalty = self.model.penalty() if self.penalized else None
        return value if penalty is None else value + penalty

    def _passes(self, X: Any, y: Any, sample_weight: Any) -> tuple[Any, Any]:
        """Forward, loss head, penalty and backward of a later batch as the stages run them: what
        `RecordedPasses` records."""
        Z = self.model.forward_to_head(X, self.n_run, training=True, runners=self.runners)
        value, dZ = self.head_kernel.value_and_grad_prepared(self.model.xp, y, Z, sample_weight)
        value = self._with_penalty(value)
        self.model.backward_from_head(dZ, self.n_run, need_dX=False, runners=self.runners)
        return value, Z

    def _replay(self, X: Any, y: Any, sample_weight: Any, record: bool) -> tuple[Any, Any] | None:
        """The recorded passes on this batch (`nnx.training.recorded`); None where they run plainly instead
        (without `record`, also where nothing recorded holds for it).

        A replay clears last step's gradients first, as `backward` does, so that the offered buffer the
        gradients are written into may reuse their memory (`_destinations`); `backward` binds the new ones.
        Where the passes run plainly instead, the gradients stay until the plain backward clears them: a
        forward that raises leaves them, as the plain step does."""
        assert self.recorded is not None
        offering = self._offering
        if offering is None:  # the first batch: whether the update offers buffers at all (it keeps to that)
            offering = self._offering = self.flat is not None and self.flat.offer_grads() is not None
        destinations = self._destinations if offering else None
        replayed = self.recorded.run(X, y, sample_weight, destinations, self._passes, self.runners or [], record,
                                     self.back_to_back)
        if replayed is None:
            return None
        value, Z, self._replayed_grads, new_buffers = replayed
        for b, new in zip(self.buffers, new_buffers, strict=True):
            b.value = new
        return value, Z

    def _compiled_passes(self, X: Any, y: Any, sample_weight: Any) -> tuple[Any, Any] | None:
        """The passes on this batch as one compiled program (`passes`): (loss incl. penalty, head outputs), with
        the gradients kept for `backward` and the buffers rebound; None where the model's code cannot be traced
        (the plain passes then run, this batch and the rest of the fit) or its settings change too often."""
        passes = self.passes
        assert passes is not None
        try:
            value, Z, grads, bufs = passes(X, y, sample_weight)
        except SettingsChurn:
            passes.rest()  # the plain passes run until the settings hold still (`wake`)
            return None
        except self.model.backend.trace_errors:
            if passes.traces > 1:
                raise  # it traced before: this is the model's own error, not a limit of tracing
            passes.broken = True
            self.passes = None
            return None
        self._replayed_grads = list(grads)
        for b, new in zip(self.buffers, bufs, strict=True):
            b.value = new
        return value, Z

    def _destinations(self) -> list[Any] | None:
        """Where the flat update offers each parameter's gradient be written, or None (asked after ``p.grad``
        was cleared, so that the buffer may reuse their memory)."""
        assert self.flat is not None
        offer = self.flat.offer_grads()
        if offer is None:  # it offers none from now on (too few parameters, or buffers found immutable)
            self._offering = False
            return None
        # (a parameter the optimizer does not update, a frozen layer's, gets a new array, as the plain backward's)
        return [offer[p] if p in offer else self.model.xp.empty_like(p.value) for p in self.params]

    def backward(self) -> None:
        """Fill ``p.grad`` with the gradient of the loss `forward_loss` returned."""
        if self._replayed_grads is not None:
            for p, grad in zip(self.params, self._replayed_grads, strict=True):
                p.grad = grad
            self._replayed_grads = None
            return
        if self._dZ is not None:
            dZ, self._dZ = self._dZ, None
            # last step's gradients go first, as torch's zero_grad does: a parameter the backward leaves alone
            # has none (the optimizer skips it) instead of a stale one, and the memory they held is free again
            for p in self.params:
                p.grad = None
            if self.grad_writers:
                assert self.flat is not None
                offer = self.flat.offer_grads()  # after the clearing: last step's buffer may be reused
                for kernel in self.grad_writers:
                    kernel.destinations = offer
            self.model.backward_from_head(dZ, self.n_run, need_dX=False, runners=self.runners)

    def transform(self, rows: int) -> bool:
        """Run the gradient transforms; False when one holds the update back (accumulating)."""
        if not self.transforms:  # (every step of a plain fit: no generator made for nothing)
            return True
        due = all(t.apply(self.params, rows) for t in self.transforms)  # up to the first that holds it back
        # taken whether or not the update is due, so that no transform keeps a joined array past its step
        joined = [j for t in self.transforms if (j := t.take_joined()) is not None]
        if not due:
            return False
        if isinstance(self.flat, FlatUpdate):
            # the finite check gathered the gradients before the transforms, and one (a user's, or a callback's
            # on_gradients) may have written into p.grad in place: the update gathers what p.grad holds now, or
            # takes the flat array a transform cut them from (the all-reduce's) while they are still its pieces
            self.flat.forget_grads()
            if joined:
                self.flat.adopt_grads(*joined[-1])
        return True

    def check(self, value: Any, read: bool = False) -> bool:
        """Whether the loss and every gradient are finite (True while the verdict is deferred).

        The sum of the gradients is finite when none of their elements is NaN or infinite,
        unless finite gradients overflow it, so a non-finite sum is confirmed element by
        element before a step is refused. With the flat update, the one flat gradient
        buffer it gathers is probed at once (`Backend.finite_probe`: the sum by default, the
        buffer's dot product with itself on NumPy and torch, its largest magnitude on
        array_api_strict); otherwise each gradient is probed. The loss and the probes are read
        apart, so that two finite numbers never overflow into a confirmation. `read` reads a
        deferred verdict now, for a callback that handles non-finite steps itself
        (`TerminateOnNaN` stops quietly).
        """
        if not self.check_finite:
            return True
        before, self._buffers_before = self._buffers_before, []
        if self.deferred:
            index, self._steps = self._steps, self._steps + 1
            self._defer(value, index)
            if before:  # the buffers this step's forward moved count only while every step so far was finite
                olds = tuple(old for _, old in before)
                kept = kept_buffers(self.model.xp, self._ok, tuple(b.value for b, _ in before), olds)
                for (b, _), value_kept in zip(before, kept, strict=True):
                    b.value = value_kept
            return not read or bool(self.model.backend.to_host(self._verdict))
        # host numbers (arrays_on_host): reading them waits for nothing
        if math.isfinite(value) and (all(map(math.isfinite, self._probes())) or self._all_finite(value)):
            return True
        for b, old in before:  # refused: its forward's batch statistics are not kept either
            b.value = old
        return False

    @property
    def verdict(self) -> Any:
        """The deferred check's device flag: True while every step so far this epoch was finite (None before)."""
        return self._verdict

    def gradients_finite(self) -> bool:
        """Whether every gradient is finite, read now (data-parallel training asks after the all-reduce)."""
        be = self.model.backend
        probes = self._probes()
        # from a device, one transfer whatever the number of probes (one per gradient without the flat update)
        stack = len(probes) > 1 and not be.arrays_on_host and len({p.dtype for p in probes}) == 1
        read = be.to_host(self.model.xp.stack(probes)) if stack else [be.to_host(p) for p in probes]
        if all(math.isfinite(float(probe)) for probe in read):
            return True
        return all(bool(be.to_host(flag)) for flag in self._finite_flags(None))

    def _probes(self) -> list[Any]:
        """Numbers each finite exactly when every gradient is, barring overflow: the backend's `finite_probe` over
        the flat update's gathered buffer, else one per gradient, read one by one (their sum could overflow where
        none of them does, and NumPy reports that as a floating-point error)."""
        be = self.model.backend
        flat = self.flat
        if isinstance(flat, FlatUpdate):
            grads = flat.gather_if_applies()  # `applies` and `gather_grads` in one pass
        else:
            grads = flat.gather_grads() if flat is not None and flat.applies() else None
        if grads is not None:
            return [be.finite_probe(grads)]
        xp = self.model.xp
        return [be.finite_probe(xp.reshape(p.grad, (-1,))) for p in self.params if p.grad is not None]

    def _finite_flags(self, value: Any) -> list[Any]:
        """One device flag per array: `value` (unless None) and every gradient."""
        xp = self.model.xp
        arrays = [p.grad for p in self.params if p.grad is not None]
        return [xp.all(xp.isfinite(a)) for a in ([] if value is None else [value]) + arrays]

    def _step_flag(self, value: Any) -> Any:
        """One device flag: `value` and every gradient are finite, element by element.

        With the flat update the gradients are one buffer, which the update reads next: it is checked at
        once, instead of parameter by parameter, each a kernel launch on a device. ``x * 0`` is a zero for a
        finite x and NaN for NaN or an infinity, and a sum of zeros cannot overflow, so the sum below is 0
        exactly when every element is finite: five operations, where `isfinite` alone is four on torch.
        In host memory (a deferred check asked for) `isfinite` is used, as NumPy warns of the NaN it makes.
        """
        xp = self.model.xp
        flat = self.flat
        if flat is not None and flat.applies():
            grads = flat.gather_grads()
            if self.model.backend.arrays_on_host:
                return xp.isfinite(value) & xp.all(xp.isfinite(grads))
            return xp.sum(grads * 0) + value * 0 == 0
        ok: Any = None
        for flag in self._finite_flags(value):
            ok = flag if ok is None else ok & flag
        return ok

    def _all_finite(self, value: Any) -> bool:
        """The exact check, element by element (after a non-finite sum, to tell overflow from NaN/inf)."""
        be = self.model.backend
        return all(bool(be.to_host(flag)) for flag in self._finite_flags(value))

    def _defer(self, value: Any, index: int) -> None:
        """Fold this step's verdict into the epoch's, on the device; keep the step's own flag for `end_epoch`.

        One operation a step beyond the flag itself: nothing is built from a host number (on torch:cuda
        that is a copy the device waits for), and the first bad step is looked up only after a refusal.
        """
        ok = self._step_flag(value)
        self._flags.append((index, ok))
        self._ok = ok if self._ok is None else self._ok & ok
        self._verdict = self._ok

    def end_epoch(self) -> int | None:
        """The index of the epoch's first non-finite step, or None; one read, for deferred checks only
        (a second after a refusal, to find the step)."""
        self._steps = 0
        if self.compiled is not None:
            return self.compiled.end_epoch()
        if not self.deferred or self._ok is None:
            return None
        be = self.model.backend
        finite = bool(be.to_host(self._ok))
        flags, updates = self._flags, self._updates
        self._ok = self._verdict = None
        self._flags, self._updates = [], []
        if finite:
            return None
        xp = self.model.xp
        good = be.to_host(xp.stack([flag for _, flag in flags]))
        first = next(index for k, (index, _) in enumerate(flags) if not bool(good[k]))
        # the device kept the arrays of the last finite step; put the host's counters back to match
        refused = [u for u in updates if u[0] >= first]
        if refused:
            _, count, param_steps, had_state = refused[0]
            opt = self.optimizer
            opt.step_count, opt.param_steps[:] = count, param_steps
            for i in set(opt.state) - had_state:
                del opt.state[i]
        return first

    def update(self) -> None:
        """Apply the optimizer to ``p.grad`` (deferred: only where every step so far was finite)."""
        keep = self._verdict
        opt = self.optimizer
        flat = self.flat
        if keep is not None:
            self._updates.append((self._steps - 1, opt.step_count, list(opt.param_steps), set(opt.state)))
        # `FlatUpdate.run` checks what `applies` says itself, in the pass over the gradients it makes anyway
        if isinstance(flat, FlatUpdate):
            ran = flat.run(keep, self.back_to_back and (self.own_passes or self._replayed_last()))
        else:
            ran = flat is not None and flat.applies() and flat.run(keep)
        if ran:
            return  # with `keep`, it selected on the device between the rule's results and the buffers
        if keep is None:
            opt.step()
            return
        # A rule is pure, so the arrays before the step stay as they were: holding them costs no copy.
        xp = self.model.xp
        before = [(p, p.value) for p in self.params]
        saved = {i: dict(entry) for i, entry in opt.state.items()}
        opt.step()
        for p, old in before:
            p.value = xp.where(keep, p.value, old)
        for i, entry in opt.state.items():
            for key, arr in entry.items():
                old = saved.get(i, {}).get(key)
                entry[key] = xp.where(keep, arr, xp.zeros_like(arr) if old is None else old)

    def _replayed_last(self) -> bool:
        """Whether this step's passes were replayed (none of the layers', loss's or regularizers' code ran)."""
        return self.recorded is not None and self.recorded.replayed

    def flush(self) -> bool:
        """End of epoch: held-back gradients go through the later transforms; True when an update is due."""
        for i, t in enumerate(self.transforms):
            if t.flush(self.params):
                return all(later.apply(self.params, 0) for later in self.transforms[i + 1:])
        return False

    def reset(self) -> None:
        """Drop anything the transforms hold back (after an interrupted or failed step)."""
        for t in self.transforms:
            t.reset()
        self._steps = 0
        self._ok = self._verdict = None
        self._flags, self._updates = [], []
        if self.compiled is not None:
            self.compiled.reset()


# what of an object's own the passes may call, replaced on the object (an activation's `function` and `derivative`
# are the functions its forward and backward call)
_PASS_METHODS = frozenset({"forward", "backward", "value_and_grad", "value_and_grad_prepared", "prepare", "rows",
                           "penalty", "gradient", "function", "derivative"})


def _of_nnx(obj: Any) -> bool:
    """Whether `obj` is of one of nnx's own classes (a user's subclass is not)."""
    return type(obj).__module__.startswith("nnx.")


def _own_passes(model: Model, loss: Any) -> bool:
    """Whether the passes of a step run nnx's code only: the model, each layer, the loss and every regularizer
    are of nnx's classes, none with a method replaced on the object."""
    objects = [model, loss, *(layer for _, layer in model.named_layers())]
    objects += [reg for obj in objects if (reg := getattr(obj, "regularizer", None)) is not None]
    return all(_of_nnx(obj) and _PASS_METHODS.isdisjoint(getattr(obj, "__dict__", ())) for obj in objects)


def _own_transform(transform: GradientTransform) -> bool:
    """Whether a gradient transform runs nnx's code only, which leaves each gradient shaped as its parameter: of
    nnx's classes, and the callbacks whose on_backward `CallbackLook` calls too (`CallbackHook` checks what a
    callback's on_gradients returns itself)."""
    return _of_nnx(transform) and (not isinstance(transform, CallbackLook) or all(map(_of_nnx, transform.callbacks)))
