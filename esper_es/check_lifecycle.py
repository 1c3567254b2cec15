"""`check-lifecycle`: property-test the lifecycle and the gates of a config (SPEC §2, §8).

Runs `LifecycleStateMachine` (or a user's subclass) programmatically and turns hypothesis'
outcome into a `CheckResult`: passed, or the minimal failing step sequence and the name of
the invariant it breaks.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import attrs
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.reporting import with_reporter
from hypothesis.stateful import run_state_machine_as_test

from esper_es.core.config import LifecycleConfig
from esper_es.testing import LifecycleStateMachine

__all__ = ["CheckResult", "check_lifecycle"]

# Hypothesis' own trailers that say nothing about the failing sequence.
_NOISE = ("Explanation:", "These lines were always", "You can reproduce", "Failing test case")


@attrs.frozen
class CheckResult:
    """What `check_lifecycle` found."""

    passed: bool
    examples: int
    counterexample: str | None = None
    invariant: str | None = None
    error: str | None = None
    stages_reached: tuple[str, ...] = ()

    def format(self) -> str:
        """A human-readable report, as `esper-es check-lifecycle` prints it."""
        reached = ", ".join(self.stages_reached) or "(none)"
        if self.passed:
            return f"lifecycle check passed: {self.examples} examples; stages reached: {reached}"
        lines = [f"lifecycle check FAILED after up to {self.examples} examples"]
        if self.invariant:
            lines.append(f"invariant: {self.invariant}")
        if self.error:
            lines.append(f"error: {self.error}")
        if self.counterexample:
            lines += ["minimal counterexample:", self.counterexample]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (for `--json`)."""
        return attrs.asdict(
            self, value_serializer=lambda _, __, v: list(v) if isinstance(v, tuple) else v
        )


def check_lifecycle(
    config: LifecycleConfig,
    examples: int,
    seed: int | None = None,
    *,
    machine: type[LifecycleStateMachine] = LifecycleStateMachine,
    steps: int = 30,
) -> CheckResult:
    """Property-test `config` (with `machine`'s rules and invariants) over `examples` runs."""
    if examples < 1:
        raise ValueError(f"examples must be at least 1, not {examples}")
    counter: Counter[str] = Counter()
    # A fresh subclass carries the config under test without touching the caller's class; it
    # keeps the caller's name so the printed counterexample reads `state = TheirMachine()`.
    under_test: Any = type(
        machine.__name__,
        (machine,),
        {"config": config, "stage_counter": counter, "__module__": machine.__module__},
    )
    if seed is not None:
        under_test = hypothesis_seed(seed)(under_test)
    run_settings = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=False,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        # The explain phase annotates which values could vary; it costs as much as shrinking.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )
    reported: list[object] = []
    try:
        with with_reporter(reported.append):
            run_state_machine_as_test(under_test, settings=run_settings)
    except Exception as exc:
        return CheckResult(
            passed=False,
            examples=examples,
            counterexample=_counterexample(exc, reported, machine),
            invariant=_failing_invariant(exc, machine),
            error=f"{type(exc).__name__}: {exc}",
            stages_reached=tuple(sorted(counter)),
        )
    return CheckResult(passed=True, examples=examples, stages_reached=tuple(sorted(counter)))


def _counterexample(
    exc: BaseException, reported: list[object], machine: type[LifecycleStateMachine]
) -> str:
    """The shrunk program hypothesis printed, without the invariant checks it echoes."""
    # Older hypothesis versions report the steps, newer ones attach them as notes.
    lines = [str(x) for x in getattr(exc, "__notes__", ()) or reported]
    echoes = {f"state.{name}()" for name in _invariant_names(machine)}
    kept: list[str] = []
    for text in lines:
        stripped = text.strip()
        if not stripped or stripped.startswith("/") or stripped.startswith(_NOISE):
            continue
        if stripped in echoes:
            continue
        kept.append(text)
    failing = _failing_invariant(exc, machine)
    if failing is not None and kept and kept[-1].strip() == "state.teardown()":
        # Hypothesis echoes the failing check last; put it back where it failed.
        kept.insert(len(kept) - 1, f"state.{failing}()  # fails")
    return "\n".join(kept)


def _invariant_names(machine: type[LifecycleStateMachine]) -> set[str]:
    names = set()
    for klass in machine.__mro__:
        for name, value in vars(klass).items():
            if getattr(value, "hypothesis_stateful_invariant", None) is not None:
                names.add(name)
    return names


def _failing_invariant(exc: BaseException, machine: type[LifecycleStateMachine]) -> str | None:
    """The invariant whose check raised `exc`, by walking its traceback (None: a rule raised)."""
    names = _invariant_names(machine)
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if frame.f_code.co_name in names:
            return frame.f_code.co_name
    return None
