"""The lifecycle diagram is drawn from the machine the code runs and shows the SPEC's table."""

from __future__ import annotations

import re

import pytest

from esper_es.core.lifecycle import INTERNAL_TRIGGERS, Stage
from esper_es.diagram import lifecycle_diagram, lifecycle_edges
from esper_es.testing import SPEC_TABLE


@pytest.fixture(params=["mermaid", "dot"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _edges(text: str, fmt: str) -> set[tuple[str, str, str]]:
    if fmt == "mermaid":
        pattern = r"^\s*(\w+) --> (\w+) : (\w+)"
        return {(m[1], m[3], m[2]) for m in re.finditer(pattern, text, re.M)}
    pattern = r'^\s*(\w+) -> (\w+) \[label="(\w+)'
    return {(m[1], m[3], m[2]) for m in re.finditer(pattern, text, re.M)}


def test_every_state_appears(fmt: str) -> None:
    text = lifecycle_diagram(fmt)
    for stage in Stage:
        assert re.search(rf"\b{stage.value}\b", text), stage


def test_edges_are_exactly_the_spec_table(fmt: str) -> None:
    edges = _edges(lifecycle_diagram(fmt), fmt)
    expected = {(src, trigger, dst) for (src, trigger), dst in SPEC_TABLE.items()}
    assert edges == expected


def test_internal_triggers_are_a_note_not_edges(fmt: str) -> None:
    text = lifecycle_diagram(fmt)
    triggers = {trigger for _, trigger, _ in _edges(text, fmt)}
    for trigger in INTERNAL_TRIGGERS:
        assert trigger not in triggers
        assert trigger in text  # still mentioned, in the note


def test_gates_and_their_thresholds_label_edges(fmt: str) -> None:
    text = lifecycle_diagram(fmt)
    assert re.search(r"start_grafting \[[^\]]*min_training_steps[^\]]*min_improvement", text)
    assert re.search(r"release \[[^\]]*embargo_steps", text)
    assert re.search(r"fossilize \[[^\]]*contribution_threshold[^\]]*max_instability", text)
    assert re.search(r"start_training(?! \[)", text)  # ungated: no bracket


def test_initial_and_terminal_states_are_marked() -> None:
    mermaid = lifecycle_diagram("mermaid")
    assert "[*] --> DORMANT" in mermaid
    assert "FOSSILIZED --> [*]" in mermaid
    assert mermaid.startswith("stateDiagram-v2\n")
    dot = lifecycle_diagram("dot")
    assert dot.startswith("digraph lifecycle {")
    assert dot.rstrip().endswith("}")
    assert "__start__ -> DORMANT;" in dot
    assert re.search(r"FOSSILIZED \[[^\]]*peripheries=2", dot)
    assert dot.count("peripheries=2") == 1


def test_edges_come_from_the_live_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_es.core import lifecycle

    edges, internal = lifecycle_edges()
    assert {(s, t, d) for s, t, d, _ in edges} == {(s, t, d) for (s, t), d in SPEC_TABLE.items()}
    assert set(internal) == set(INTERNAL_TRIGGERS)
    # A transition added to the machine shows up in the picture with no other change.
    monkeypatch.setattr(lifecycle.MACHINE, "events", dict(lifecycle.MACHINE.events))
    lifecycle.MACHINE.add_transition("resurrect", "CULLED", "DORMANT")
    try:
        assert "CULLED --> DORMANT : resurrect" in lifecycle_diagram("mermaid")
    finally:
        del lifecycle.MACHINE.events["resurrect"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown diagram format 'svg'; known: dot, mermaid"):
        lifecycle_diagram("svg")
