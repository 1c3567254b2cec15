"""The layering rules: the core imports neither torch nor SQLite; the store does not import torch.

Each check runs in a fresh interpreter, since this test process may already hold torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    roots = json.loads(sys.argv[1])
    imported = []
    for root in roots:
        mod = importlib.import_module(root)
        imported.append(root)
        if hasattr(mod, "__path__"):
            for info in pkgutil.walk_packages(mod.__path__, root + "."):
                importlib.import_module(info.name)
                imported.append(info.name)
    print(json.dumps({"imported": imported, "modules": sorted(sys.modules)}))
    """
)


def probe(*roots: str) -> tuple[list[str], set[str]]:
    """Import `roots` (packages recursively) in a fresh interpreter; what got imported."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(roots)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    return result["imported"], set(result["modules"])


def top_level(modules: set[str]) -> set[str]:
    """The distinct top-level package names among `modules`."""
    return {m.split(".")[0] for m in modules}


def test_core_and_errors_import_neither_torch_nor_sqlite() -> None:
    imported, modules = probe("esper_es.core", "esper_es.errors")
    # Make sure the walk saw the core's modules, so an empty walk cannot pass.
    for name in ("decider", "lifecycle", "events", "upcasting", "canonical", "envelope"):
        assert f"esper_es.core.{name}" in imported
    leaked = top_level(modules) & {"torch", "sqlite3", "_sqlite3", "sqlite_utils"}
    assert not leaked, f"the pure core pulled in {sorted(leaked)}"
    assert not any(m.startswith("esper_es.store") for m in modules)


def test_store_and_command_bus_do_not_import_torch() -> None:
    imported, modules = probe("esper_es.store", "esper_es.command_bus")
    assert "esper_es.store.verify" in imported and "esper_es.command_bus" in imported
    assert "sqlite3" in modules  # the probe really loaded the store
    # numpy may come in through sqlite_utils' optional type mapping; torch must not.
    assert "torch" not in top_level(modules)
