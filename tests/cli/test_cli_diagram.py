"""`esper-es diagram`: the lifecycle as mermaid or dot, drawn from the machine the code runs."""

from __future__ import annotations

import pytest

from esper_es.core.lifecycle import LIFECYCLE_TRIGGERS, Stage
from esper_es.errors import EXIT_OK, EXIT_USAGE


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_diagram_names_every_state_and_trigger(cli, fmt: str) -> None:
    r = cli("diagram", "--format", fmt)
    assert r.code == EXIT_OK
    assert len(Stage) == 12
    for stage in Stage:
        assert stage.value in r.out, stage
    for trigger in LIFECYCLE_TRIGGERS:
        assert trigger in r.out, trigger
    assert r.out.endswith("\n")


def test_default_format_is_mermaid(cli) -> None:
    r = cli("diagram")
    assert r.code == EXIT_OK
    assert r.out == cli("diagram", "--format", "mermaid").out
    assert "stateDiagram" in r.out


def test_dot_is_a_digraph(cli) -> None:
    out = cli("diagram", "--format", "dot").out
    assert "digraph" in out
    assert "->" in out


def test_diagram_json_is_one_object(cli) -> None:
    r = cli("diagram", "--format", "dot", "--json")
    assert r.code == EXIT_OK
    obj = r.json()
    assert obj["format"] == "dot"
    assert obj["diagram"] == cli("diagram", "--format", "dot").out.rstrip("\n")


def test_invalid_format_is_a_usage_error(cli) -> None:
    r = cli("diagram", "--format", "png")
    assert r.code == EXIT_USAGE
    assert "png" in r.err
    assert r.out == ""
    obj = cli("diagram", "--format", "png", "--json").json()
    assert obj["error"] == "UsageError"
