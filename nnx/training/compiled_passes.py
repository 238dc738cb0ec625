"""A step's forward, loss and backward as one compiled program, where the whole step cannot be one.

A data-parallel step all-reduces the gradients on the host between each backward and its update,
so it cannot run as `nnx.training.compiled`'s one program a step. Run op by op instead, JAX
dispatches each operation of the passes on its own: two ranks took 0.09-0.14x the samples/s of one
process on the medium network (`benchmarks/bench_distributed.py --backend jax`). Here the forward,
the loss (with the penalty) and the backward of a batch are traced from the model's own code, as
the compiled step traces them (`CompiledStep.gradients`), and run as one program; the all-reduce,
the gradient transforms, the finite check and the update stay the step's own.

A program holds the layers', the loss's and the regularizer's settings as constants, and the
dropout stream's window of rows (`DeviceRNG.rows`: each rank's slice of the whole batch's masks);
a change to any of them takes another program (where they change too often for that to pay, the
plain passes run until they hold still: `nnx.training.churn`). The dropout counter and seed are its inputs. As
the compiled step's, the programs are kept per model for its later fits and shared with equally
defined models (`nnx.training.shared_programs`).
"""

from __future__ import annotations

from typing import Any

from .compiled import CompiledStep, signature
from .per_model import PerModel
from .shared_programs import SharedProgram

__all__ = ["CompiledPasses", "compiled_passes"]


class CompiledPasses:
    """Forward, loss incl. penalty and backward of a batch as one program of the model's backend.

    Calling it returns (loss, head outputs, gradients, new buffer values) and advances the dropout
    counter as the plain passes would; the parameters, their gradients and the buffers are not bound.
    `traces` counts the traces so far; the caller runs the plain passes where the first one fails
    (`Backend.trace_errors`: the model's code needs concrete values) and sets `broken`.
    """

    def __init__(self, model: Any, loss: Any, optimizer: Any, sig: tuple) -> None:
        self.signature = sig
        self.broken = False
        # the compiled step's tracing of the passes, used for them alone (no transforms, no update, no check)
        self._tracer = CompiledStep(model, loss, optimizer, [], check_finite=False, sig=sig)
        self._constants: tuple | None = None
        self._program: SharedProgram | None = None
        self._host: tuple[int, int] | None = None  # the dropout (counter, seed) that `_device` holds
        self._device: tuple[Any, Any] = (None, None)

    @property
    def traces(self) -> int:
        return self._tracer.traces

    @property
    def resting(self) -> bool:
        """Whether the plain passes run while the settings change too often for programs to pay."""
        return self._tracer.resting

    def rest(self) -> None:
        """Run the plain passes after `SettingsChurn`, until the settings hold still (`wake`)."""
        self._tracer.rest()

    def wake(self) -> bool:
        """As an epoch starts: whether the programs run (not resting, or the settings held still)."""
        return self._tracer.wake()

    def rebind(self, loss: Any, optimizer: Any) -> None:
        """Use these (equally configured) objects of a later fit."""
        self._tracer.rebind(loss, optimizer, [])

    def __call__(self, X: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, tuple, tuple]:
        tracer = self._tracer
        rng, xp, device = tracer.rng, tracer.xp, tracer.backend.device
        # what the program holds as constants, but the optimizer's hyper-parameters: it does not run the rule
        constants = (tracer.constants()[1:], rng.rows)
        program = self._program
        if program is None or constants != self._constants:
            tracer.program_for(constants, definition=self._definition)  # (`SettingsChurn`: the plain passes run)
            self._constants = constants
            tracer.forget_draws()  # a changed setting may change how many masks a step draws (a rate set to 0)
            program = self._program = SharedProgram(tracer.backend, self._passes, self._definition, tracer)
        # the counter and seed on the device: the program's own new counter where the host's still follows it
        if (rng.counter, rng.seed) != self._host:
            self._device = (xp.asarray(rng.counter, dtype=xp.int64, device=device),
                            xp.asarray(rng.seed, dtype=xp.int64, device=device))
        value, Z, grads, bufs, counter = program(tuple(p.value for p in tracer.params),
                                                 tuple(b.value for b in tracer.buffers), *self._device, X, y,
                                                 sample_weight)
        rng.counter += tracer.draws_per_step
        tracer.ran(1)
        self._host, self._device = (rng.counter, rng.seed), (counter, self._device[1])
        return value, Z, grads, bufs

    def _definition(self) -> tuple | None:
        """What the programs compute besides their inputs (None: this model's alone)."""
        step = self._tracer.definition()
        return None if step is None else ("passes", step, self._tracer.rng.rows)

    def _passes(self, values: tuple, bufs: tuple, counter: Any, seed: Any, X: Any, y: Any, w: Any) -> tuple:
        value, Z, grads, new_bufs, new_counter, _ = self._tracer.gradients(values, bufs, counter, seed, X, y, w)
        return value, Z, grads, new_bufs, new_counter


# one per model, kept while the model lives, so a later fit reuses its programs
_PASSES = PerModel()


def compiled_passes(model: Any, loss: Any, optimizer: Any) -> CompiledPasses:
    """The compiled passes of `model` for these objects: those of an earlier fit where they still apply."""
    sig = signature(model, loss, optimizer, [], False)
    passes = _PASSES.get(model)
    if passes is None or passes.signature != sig or passes.broken:
        passes = _PASSES[model] = CompiledPasses(model, loss, optimizer, sig)
    else:
        passes.rebind(loss, optimizer)
    return passes
