"""docs/events.md is generated from schemas/ by docs/gen_events.py and is up to date."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from esper_es.core.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_events", ROOT / "docs" / "gen_events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_catalogue_is_up_to_date() -> None:
    """Regenerating gives exactly the committed file (run `python docs/gen_events.py`)."""
    gen = _generator()
    assert (ROOT / "docs" / "events.md").read_text(encoding="utf-8") == gen.render()
    assert gen.render() == gen.render()


def test_catalogue_lists_every_event_type_and_field() -> None:
    """Each registered event type has a section naming its current version's fields."""
    text = _generator().render()
    for name, cls in EVENT_TYPES.items():
        section = re.search(rf"^### {name}\n(.*?)(?=^### |\Z)", text, re.M | re.S)
        assert section is not None, name
        assert f"schema v{cls.VERSION}" in section.group(1), name
        for field in cls.__attrs_attrs__:  # type: ignore[attr-defined]
            assert f"| `{field.name}` |" in section.group(1), (name, field.name)
