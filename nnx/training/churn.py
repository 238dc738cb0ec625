"""Whether compiling a model's programs still pays while what they hold as constants keeps changing.

A compiled program (`nnx.training.compiled`) holds the layers', the loss's and the optimizer's settings as
constants, and is compiled again when a callback changes one. Where they change faster than a program pays for
its compile -- a callback annealing a setting every batch, or every epoch of a few batches -- the steps run the
plain stages instead, until the settings have held still long enough; the programs are taken up again where the
caller looks (`Churn.wake`: as an epoch or a fit starts, as an inference pass starts). Counted per model, across the
compiled steps that a setting changed between fits makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.base import TraceRefused
from .per_model import PerModel

__all__ = ["MAX_UNPAID", "RESTING", "STEPS_TO_PAY", "Churn", "SettingsChurn", "churn_of", "count_still"]

# Programs made again for changed constants before the steps run the plain stages, unless the programs ran this
# many steps each on average; they are compiled again once the constants held still for that many steps. A small
# MLP's step program compiled in 0.25-0.5 s and its epoch program in 0.3-0.6 s, where a step ran 0.2 ms compiled
# and 2.4 ms op by op: a program pays back after about 100 steps. A setting a callback changed every batch compiled
# a program every step (242x the plain loop), one changed every epoch of 16 batches one every epoch (16x).
MAX_UNPAID, STEPS_TO_PAY = 4, 100
# why a fit runs step by step while its programs rest (`History.execution_reason`)
RESTING = ("the settings its programs hold changed too often for compiling to pay: the steps run op by op until "
           f"they hold still for {STEPS_TO_PAY} updates")


class SettingsChurn(TraceRefused):
    """Raised before a program is made again for changed constants where they change faster than programs pay:
    the caller runs the plain stages and lets the step rest (`Churn.rest`)."""


class Churn:
    """A model's count of programs made again and of the steps they ran, and whether its steps rest."""

    __slots__ = ("last", "looked", "remade", "resting", "steps_run", "still")

    def __init__(self) -> None:
        self.remade = self.steps_run = 0
        self.last: tuple | None = None  # the constants of the model's last program (across its compiled steps)
        # while resting: the constants last seen (None while the programs run), the updates since they last changed
        # and the update count at the last look (`wake`)
        self.resting: tuple | None = None
        self.still = self.looked = 0

    def program_for(self, constants: tuple, refusable: bool, refused_so_far: Callable[[], bool],
                    known: Callable[[], bool]) -> None:
        """Count a program made for `constants` where they differ from the last program's and it is not `known`
        (compiled before, and kept: a setting toggled between two values compiles nothing after the first two);
        `SettingsChurn` where they changed more than `MAX_UNPAID` times and the programs ran fewer than
        `STEPS_TO_PAY` steps each on average, unless a step of this epoch was refused (the plain loop stopped
        there: the epoch's end raises it) or the program cannot be given up now (not `refusable`)."""
        last, self.last = self.last, constants
        if last is None or last == constants or known():
            return
        self.remade += 1
        if refusable and self.remade > MAX_UNPAID and self.steps_run < STEPS_TO_PAY * self.remade \
                and not refused_so_far():
            self.last = last  # (no program made)
            raise SettingsChurn(
                f"what the compiled programs hold as constants (a layer's, the loss's or the optimizer's settings) "
                f"changed {self.remade} times in {self.steps_run} steps, too often for compiling to pay: the steps "
                f"run op by op until the settings hold still for {STEPS_TO_PAY} steps")

    def rest(self, constants: tuple, updates: int) -> None:
        """Run the plain stages until the constants hold still (`wake`); `updates`: the optimizer's count now."""
        self.resting, self.still, self.looked = constants, 0, updates

    def count(self, updates: int) -> None:
        """As an epoch ends while resting: its updates (the optimizer's count now, against the last look) count
        toward waking. A later fit's optimizer counts from its own start, so each fit's last epoch is counted
        here, with the optimizer that made it (`wake` drops the count where the constants changed meanwhile)."""
        self.still += max(0, updates - self.looked)
        self.looked = updates

    def wake(self, constants: tuple, updates: int) -> bool:
        """Looked at as an epoch (or a fit) starts while resting, with the optimizer's update count now: whether the
        constants held still for the last `STEPS_TO_PAY` updates, so that a program for them pays again. The
        programs run from then on: the first is free, and a change after it must have paid at once."""
        if constants != self.resting:
            self.resting, self.still, self.looked = constants, 0, updates
        else:
            self.count(updates)  # (an optimizer of a later fit counts from 0: nothing more ran since the last end)
        if self.still < STEPS_TO_PAY:
            return False
        self.resting = None
        self.remade, self.steps_run = MAX_UNPAID - 1, STEPS_TO_PAY * MAX_UNPAID
        return True


_CHURN = PerModel()


def churn_of(model: Any) -> Churn:
    """The `Churn` kept for `model`."""
    churn = _CHURN.get(model)
    if churn is None:
        churn = _CHURN[model] = Churn()
    return churn


def count_still(model: Any, optimizer: Any) -> None:
    """As an epoch of `model` ends: where its programs rest, the updates `optimizer` made count toward waking."""
    churn = _CHURN.get(model)
    if churn is not None and churn.resting is not None:
        churn.count(optimizer.step_count)
