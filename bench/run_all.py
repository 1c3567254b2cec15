"""Run every benchmark script in bench/ (b1_*.py … b9_*.py, then schema_validation.py), one
after another in fresh interpreters, printing their markdown; extra arguments are ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    """The bench scripts present, benchmarks in id order first."""
    numbered = sorted(HERE.glob("b[0-9]*.py"))
    others = [p for p in sorted(HERE.glob("*.py")) if p not in numbered]
    return numbered + [
        p for p in others if p.name not in {"run_all.py"} and not p.name.startswith("_")
    ]


def main() -> int:
    """Run them all; the exit status is the number of scripts that failed."""
    failed = []
    for script in scripts():
        print(f"<!-- {script.name} -->", flush=True)
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE)
        if rc != 0:
            failed.append(script.name)
            print(f"\n**{script.name} failed with exit status {rc}**\n", flush=True)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    raise SystemExit(main())
