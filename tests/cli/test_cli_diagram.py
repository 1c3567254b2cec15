"""`esper-es diagram`: the lifecycle as mermaid or dot, drawn from the machine the code runs."""

from __future__ import annotations

import pytest

from esper_es.core.lifecycle import LIFECYCLE_TRIGGERS, Stage
from esper_es.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE


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
    r = cli("diagram", "--format", "gif")
    assert r.code == EXIT_USAGE
    assert "gif" in r.err
    assert r.out == ""
    obj = cli("diagram", "--format", "gif", "--json").json()
    assert obj["error"] == "UsageError"


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_image_formats_write_a_file_drawn_from_the_machine(cli, tmp_path, fmt: str) -> None:
    out = tmp_path / f"lifecycle.{fmt}"
    r = cli("diagram", "--format", fmt, "--out", str(out), "--json")
    assert r.code == EXIT_OK, r.err
    obj = r.json()
    assert obj["out"] == str(out)
    data = out.read_bytes()
    assert obj["bytes"] == len(data)
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        text = data.decode()
        assert "<svg" in text
        # Text stays text in the SVG, so every state and trigger can be found in it.
        for stage in Stage:
            assert stage.value in text, stage
        for trigger in LIFECYCLE_TRIGGERS:
            assert trigger in text, trigger


def test_svg_is_reproducible(cli, tmp_path) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    assert cli("diagram", "--format", "svg", "--out", str(a)).code == EXIT_OK
    assert cli("diagram", "--format", "svg", "--out", str(b)).code == EXIT_OK
    assert a.read_bytes() == b.read_bytes()


def test_image_without_out_is_a_usage_error(cli) -> None:
    r = cli("diagram", "--format", "png")
    assert r.code == EXIT_USAGE
    assert "--out" in r.err
    assert r.out == ""


def test_out_with_a_text_format_is_a_usage_error(cli, tmp_path) -> None:
    r = cli("diagram", "--format", "dot", "--out", str(tmp_path / "x.dot"))
    assert r.code == EXIT_USAGE
    assert not (tmp_path / "x.dot").exists()


def test_unwritable_out_is_one_line_exit_1(cli, tmp_path) -> None:
    r = cli("diagram", "--format", "png", "--out", str(tmp_path / "no" / "such" / "x.png"))
    assert r.code == EXIT_ERROR
    assert r.err.count("\n") <= 1
    assert "x.png" in r.err


def test_layout_puts_the_happy_path_on_top() -> None:
    from esper_es.diagram_image import lifecycle_layout

    pos = lifecycle_layout()
    assert set(pos) == {s.value for s in Stage}
    top = [s for _, s in sorted((x, s) for s, (x, y) in pos.items() if y == 0.0)]
    assert (top[0], top[-1]) == ("DORMANT", "FOSSILIZED")
    # No two boxes share a place.
    assert len(set(pos.values())) == len(pos)
