"""Running `esper-es` in a fresh process with a chosen outer environment (numerics tests).

The numerics pins are read when torch starts, so a test of what they do needs a process of its
own; the suite's own process is pinned (tests/conftest.py), so these start from an environment
with the pins removed and add what each test asks for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esper_es.numerics import PORTABLE_ENV

#: A run of a second or so: one short epoch on a slice of digits, seeds germinating.
TINY = (Path(__file__).resolve().parents[1] / "fixtures" / "tiny_run.toml").read_text()

#: Every variable a CPU code path reads, beyond those portable pins.
EXTRA_VARS = ("MKL_DEBUG_CPU_TYPE", "DNNL_DEFAULT_FPMATH_MODE", "ONEDNN_DEFAULT_FPMATH_MODE")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without numerics pins, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV and k not in EXTRA_VARS}
    env.update(extra or {})
    return env


def esper(
    *args: object, env: Mapping[str, str], cwd: Path, timeout: float = 240
) -> tuple[int, dict[str, Any] | None, str]:
    """`esper-es ARGS --json` in a fresh process: (exit code, its JSON object, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", *map(str, args), "--json"],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    obj = json.loads(lines[-1]) if lines else None
    return proc.returncode, obj, proc.stderr


def train_fingerprint(tmp: Path, name: str, env: Mapping[str, str], *extra: object) -> str:
    """Train the tiny config in a fresh process under `env`; its final fingerprint."""
    config = tmp / "tiny.toml"
    if not config.exists():
        config.write_text(TINY)
    code, obj, err = esper(
        "train", "--config", config, "--db", tmp / f"{name}.db", *extra, env=env, cwd=tmp
    )
    assert code == 0 and obj is not None, err
    return str(obj["fingerprint"])
