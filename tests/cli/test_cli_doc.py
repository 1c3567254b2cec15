"""docs/cli.md's command reference is generated from the CLI's own --help and up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from esper_es.cli.app import cli

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_reference_is_up_to_date() -> None:
    """Regenerating gives exactly the committed file (run `python docs/gen_cli.py`)."""
    gen = _generator()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert gen.render(committed) == committed


def test_reference_has_every_command() -> None:
    block = _generator().render_block()
    for name in cli.commands:
        assert f"### `esper-es {name} --help`" in block, name
