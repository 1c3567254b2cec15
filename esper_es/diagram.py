"""`esper-es diagram`: the seed lifecycle as a state diagram (SPEC §2, §8).

Drawn by walking the live `esper_es.core.lifecycle.MACHINE`, the very object that decides
every command, so the picture cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from esper_es.core.lifecycle import MACHINE, TERMINAL_STAGES

__all__ = ["FORMATS", "lifecycle_diagram", "lifecycle_edges"]

#: What each gate checks, with the run-config thresholds it reads.
_GATE_LABELS = {
    "gate_blueprint_fits": "blueprint fits the layer",
    "gate_training_done": "≥ min_training_steps, improvement > min_improvement",
    "gate_alpha_reached": "alpha ≥ blend target",
    "gate_stabilized": "≥ min_stabilization_steps",
    "gate_contributes": "contribution ≥ contribution_threshold",
    "gate_fossilizable": "contribution ≥ contribution_threshold, instability ≤ max_instability",
    "gate_embargo_elapsed": "≥ embargo_steps elapsed",
}


def _gate_label(condition: Any) -> str:
    func = getattr(condition, "func", condition)
    name = getattr(func, "__name__", str(func))
    return _GATE_LABELS.get(name, name.removeprefix("gate_").replace("_", " "))


def lifecycle_edges() -> tuple[list[tuple[str, str, str, str | None]], dict[str, list[str]]]:
    """`(source, trigger, dest, gate label)` per transition; internal trigger -> its sources."""
    edges: list[tuple[str, str, str, str | None]] = []
    internal: dict[str, list[str]] = {}
    order = list(MACHINE.states)
    for trigger, event in MACHINE.events.items():
        for source in sorted(event.transitions, key=order.index):
            for tr in event.transitions[source]:
                if tr.dest is None:
                    internal.setdefault(trigger, []).append(source)
                    continue
                gates = [_gate_label(cond) for cond in tr.conditions]
                edges.append((source, trigger, str(tr.dest), ", ".join(gates) or None))
    return edges, internal


def _edge_text(trigger: str, gate: str | None) -> str:
    return f"{trigger} [{gate}]" if gate else trigger


def _internal_text(internal: dict[str, list[str]]) -> str:
    parts = [f"{t} in {', '.join(srcs)}" for t, srcs in internal.items()]
    return "internal triggers (stage kept, value in [0, 1]): " + " / ".join(parts)


def _mermaid() -> str:
    edges, internal = lifecycle_edges()
    lines = ["stateDiagram-v2", f"    [*] --> {MACHINE.initial}"]
    lines += [f"    {state}" for state in MACHINE.states]
    lines += [f"    {src} --> {dst} : {_edge_text(t, g)}" for src, t, dst, g in edges]
    for state in MACHINE.states:
        if state in TERMINAL_STAGES:
            lines += [f"    {state} --> [*]", f"    note right of {state} : terminal"]
    if internal:
        # A note, not edges: these triggers keep the stage, so as self-loops they would
        # read as transitions, which L1 says they are not.
        anchor = next(iter(internal.values()))[0]
        lines.append(f"    note left of {anchor} : {_internal_text(internal)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot() -> str:
    edges, internal = lifecycle_edges()
    lines = [
        "digraph lifecycle {",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    __start__ [shape=point, label=""];',
        f"    __start__ -> {MACHINE.initial};",
    ]
    for state in MACHINE.states:
        extra = ', peripheries=2, xlabel="terminal"' if state in TERMINAL_STAGES else ""
        lines.append(f"    {state} [label={_quote(state)}{extra}];")
    lines += [f"    {src} -> {dst} [label={_quote(_edge_text(t, g))}];" for src, t, dst, g in edges]
    if internal:
        lines.append(f"    __internal__ [shape=note, label={_quote(_internal_text(internal))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


#: Output formats `lifecycle_diagram` knows.
FORMATS: dict[str, Callable[[], str]] = {"mermaid": _mermaid, "dot": _dot}


def lifecycle_diagram(fmt: str = "mermaid") -> str:
    """The lifecycle as Mermaid (`stateDiagram-v2`) or Graphviz (`dot`) source."""
    render = FORMATS.get(fmt)
    if render is None:
        raise ValueError(f"unknown diagram format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    return render()
