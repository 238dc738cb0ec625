"""The flat update's optimizer rule as one compiled program, on a backend that compiles (JAX).

Where a fit runs step by step with the flat update (`nnx.training.flat`: data parallelism, scikit-learn's
loop, a model whose step cannot be one program), each eager operation of the rule over a few hundred thousand
elements is a dispatch and a pass of its own. Here the rule is traced from the optimizer's own `update` and
runs as one program, shared with the flat updates of equal optimizers (`nnx.training.shared_programs`).
"""

from __future__ import annotations

from operator import is_
from typing import Any

from .compiled import hyper_constants
from .outside_settings import OutsideWatch
from .shared_programs import SharedProgram, rule_code

__all__ = ["CompiledRule"]


class CompiledRule:
    """The optimizer's rule over the flat buffers as one compiled program (a two-rank step of the medium network
    spent 0.66 ms of 3.6 in the four eager operations of SGD with momentum).

    The program is traced from the optimizer's own `update`, with the update count and the rate as its inputs,
    as the compiled step traces it (`nnx.training.compiled`), and it holds the rest as constants: the
    hyper-parameters and the settings the rule reads (`hyper_constants`), the plain values its class reads from
    its class or module, and the rule's code. A change to any of them takes another program. Programs are shared
    with the flat updates of equal optimizers on the same device (`nnx.training.shared_programs`), so a later fit
    compiles nothing. The rule runs op by op from then on where it cannot be traced, where tracing it changed the
    optimizer (what it changed is put back), and where its constants changed `MAX_PROGRAMS` times (a schedule
    setting one every step would compile a program every step).
    """

    MAX_PROGRAMS = 4

    def __init__(self, optimizer: Any, backend: Any) -> None:
        self.optimizer, self.backend = optimizer, backend
        self.broken = False
        self._outside = OutsideWatch()
        self._constants: tuple | None = None
        self._program: SharedProgram | None = None
        self._programs = 0  # programs taken so far, one per change of the constants
        self._traces = 0

    def run(self, values: Any, grads: Any, state: dict[str, Any], t: int) -> tuple[Any, dict[str, Any]] | None:
        """The rule's (new values, new state) from its program, or None where it runs op by op."""
        be, opt = self.backend, self.optimizer
        if self.broken or not (be.can_compile and be.fastpath_enabled):
            return None
        if "update" in vars(opt) or "init_state" in vars(opt):
            # the rule replaced on the object (a hook that acts as it runs): it runs as written, every step, as
            # the compiled step leaves it too (`nnx.training.compiled.untraceable_reason`)
            return None
        constants = (hyper_constants(opt), self._outside.current((opt,)), rule_code(opt))
        if constants != self._constants or self._program is None:
            self._programs += 1
            if self._programs > self.MAX_PROGRAMS:
                self.broken = True
                return None
            self._constants = constants
            definition = ("flat rule", be.spec, type(opt), *constants)
            self._program = SharedProgram(be, self._pure, lambda: definition, self)
        before = _Snapshot(opt)
        traces = self._traces
        try:
            # the count and the rate as Python numbers (weakly typed, as the eager rule gets them): a device copy of
            # a number made with ``device=`` took 0.13 ms, longer than the program over 235,146 elements
            out = self._program(values, grads, state, t * 1.0, opt.lr)
        except be.trace_errors:
            out = None
        except BaseException:
            before.put_back()  # a trace that raised may have left traced values on the optimizer
            raise
        if self._traces != traces and (before.put_back() or hyper_constants(opt) != constants[0]):
            out = None  # tracing it changed the optimizer (a count it keeps, a value it notes)
        if out is None:
            # a program would not do at every step what the rule does: it runs as written from now on
            self.broken = True
        return out

    def _pure(self, values: Any, grads: Any, state: dict[str, Any], t: Any, lr: Any) -> tuple[Any, dict[str, Any]]:
        self._traces += 1
        opt = self.optimizer
        # the update count as a float, as the compiled step gives it: the rule's arithmetic on it and on Python
        # floats (Adam's beta2 ** t) runs in double precision, as on the host
        with opt.rate_for_tracing(lr):
            return opt.update(self.backend.xp, values, grads, state, t, lr)

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        return {}, {}  # a rule draws nothing and counts nothing

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        """Nothing to take: see `trace_facts`."""


class _Snapshot:
    """An object's attributes, and the items of those that are lists or dicts, as they were: to tell and undo what
    a trace of its code changed."""

    def __init__(self, obj: Any) -> None:
        self.attributes = vars(obj)
        self.before = dict(self.attributes)
        self.items = {k: (list(v) if isinstance(v, list) else dict(v)) for k, v in self.before.items()
                      if isinstance(v, (list, dict))}

    def put_back(self) -> bool:
        """Restore what changed; whether anything had."""
        now, before = self.attributes, self.before
        changed = now.keys() != before.keys() or any(now.get(k) is not v for k, v in before.items())
        if changed:
            now.clear()
            now.update(before)
        for key, items in self.items.items():
            container = before[key]
            same = len(container) == len(items) and (
                all(map(is_, container, items)) if isinstance(items, list)
                else all(container.get(k, _MISSING) is v for k, v in items.items()))
            if not same:
                changed = True
                if isinstance(items, list):
                    container[:] = items
                else:
                    container.clear()
                    container.update(items)
        return changed


_MISSING = object()
