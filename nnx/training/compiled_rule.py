"""The flat update's optimizer rule as one compiled program, on a backend that compiles (JAX).

Where a fit runs step by step with the flat update (`nnx.training.flat`: data parallelism, scikit-learn's
loop, a model whose step cannot be one program), each eager operation of the rule over a few hundred thousand
elements is a dispatch and a pass of its own. Here the rule is traced from the optimizer's own `update` and
runs as one program, shared with the flat updates of equal optimizers (`nnx.training.shared_programs`).
"""

from __future__ import annotations

from typing import Any

from ..elementwise_check import watched
from .outside_settings import OutsideWatch
from .rule_trace import RuleTrace, hyper_constants
from .shared_programs import SharedProgram, forget, rule_code

__all__ = ["CompiledRule"]


class CompiledRule:
    """The optimizer's rule over the flat buffers as one compiled program (a two-rank step of the medium network
    spent 0.66 ms of 3.6 in the four eager operations of SGD with momentum).

    The program is traced from the optimizer's own `update`, with the update count and the rate as its inputs,
    as the compiled step traces it (`nnx.training.compiled`), and it holds the rest as constants: the
    hyper-parameters and the settings the rule reads (`hyper_constants`), the plain values its class reads from
    its class or module, and the rule's code. A change to any of them takes another program. Programs are shared
    with the flat updates of equal optimizers on the same device (`nnx.training.shared_programs`), so a later fit
    compiles nothing.

    The rule is traced on a copy of the optimizer (its settings copied deeply, its parameters and state shared),
    so a trace leaves the user's object as it was. The rule runs op by op from then on where the rule is replaced
    on the object, where its trace raised or changed the copy (a count or a log it keeps: a program would not do
    that at every step, as the rule does; no equal optimizer takes that program either), and where its constants
    changed `MAX_PROGRAMS` times (a schedule setting one every step would compile a program every step).
    """

    MAX_PROGRAMS = 4

    def __init__(self, optimizer: Any, backend: Any) -> None:
        self.optimizer, self.backend = optimizer, backend
        self.broken = False
        self._outside = OutsideWatch()
        self._constants: tuple | None = None
        self._definition: tuple | None = None
        self._program: SharedProgram | None = None
        self._programs = 0  # programs taken so far, one per change of the constants
        self._impure = False  # whether the last trace changed the optimizer's copy

    def run(self, values: Any, grads: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]] | None:
        """The rule's (new values, new state) from its program, or None where it runs op by op."""
        be, opt = self.backend, self.optimizer
        if self.broken or not (be.can_compile and be.fastpath_enabled):
            return None
        if "update" in vars(opt) or "init_state" in vars(opt):
            # the rule replaced on the object (a hook that acts as it runs): it runs as written, every step, as
            # the compiled step leaves it too (`nnx.training.traceable.untraceable_reason`)
            return None
        constants = (hyper_constants(opt), self._outside.current((opt,)), rule_code(opt))
        if constants != self._constants or self._program is None:
            self._programs += 1
            if self._programs > self.MAX_PROGRAMS:
                self.broken = True
                return None
            self._constants = constants
            definition = self._definition = ("flat rule", be.spec, type(opt), *constants)
            self._program = SharedProgram(be, self._pure, lambda: definition, self)
        # Only a trace runs Python, on a copy of the optimizer: what it shares with the object (the parameters,
        # state and counts) is checked and put back there (`_pure`), so nothing of the object is snapshot here
        try:
            # the count and the rate as Python numbers (weakly typed, as the eager rule gets them): a device copy of
            # a number made with ``device=`` took 0.13 ms, longer than the program over 235,146 elements
            out = self._program(values, grads, state, t * 1.0, opt.lr)
        except Exception:
            if not self._impure:  # the program's own failure, not a trace that found the rule impure
                raise
            out = None
        if self._impure:
            out = None
        if out is None:
            self.broken = True
            assert self._definition is not None
            forget(self._definition)
        return out

    def _pure(self, values: Any, grads: Any, state: dict[str, Any], t: Any, lr: Any) -> tuple[Any, dict[str, Any]]:
        # on a copy whose settings are its own, so that what the trace does to them stays there and is seen (it
        # raises then); the update count as a float, as the compiled step gives it: the rule's arithmetic on it and
        # on Python floats (Adam's beta2 ** t) runs in double precision, as on the host
        try:
            with RuleTrace(self.optimizer) as shadow, shadow.rate_for_tracing(lr):
                return shadow.update(watched(self.optimizer, self.backend.xp, values), values, grads, state, t, lr)
        except Exception:
            # it cannot be traced, or changed the copy: it runs as written, where a real error says what it is
            self._impure = True
            raise

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        return {}, {}  # a rule draws nothing and counts nothing

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        """Nothing to take: see `trace_facts`."""

