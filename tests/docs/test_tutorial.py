"""docs/tutorial.md, run end to end and literally, on a fresh copy of the checkout.

Every ```bash block runs, in order, in one bash session with `set -eo pipefail` (so the
`make venv && . .venv/bin/activate` of step 1 holds for the rest), and every ```python block
is written to the file its text names just before ("Put this in `grow.py`"). Blocks fenced
```sh are alternatives to a step (another way to install) and are shown, not run. A command
that fails, a file the text names that is not there, or a seq that is no longer a step
boundary fails the test: the tutorial says exactly what a new user types.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
_PUT_IN = re.compile(r"Put this in `([^`]+)`")


def tutorial_script(text: str) -> str:
    """The tutorial as one bash script: its bash blocks, and its python files written."""
    lines = ["set -eo pipefail", "set -x"]
    for match in _FENCE.finditer(text):
        lang, body = match.group(1), match.group(2)
        if lang == "bash":
            lines.append(body.rstrip("\n"))
        elif lang == "python":
            named = _PUT_IN.findall(text[: match.start()])
            assert named, "a python block must follow 'Put this in `<file>`'"
            lines += [f"cat > {named[-1]} <<'ESPER_ES_TUTORIAL_EOF'", body.rstrip("\n")]
            lines.append("ESPER_ES_TUTORIAL_EOF")
    return "\n".join(lines) + "\n"


def _copy_checkout(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _fresh_environment() -> dict[str, str]:
    """This process's environment without its virtual environment (as a new shell has)."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p]
    env["PATH"] = os.pathsep.join(path or ["/usr/local/bin", "/usr/bin", "/bin"])
    return env


def test_script_keeps_the_blocks_in_order() -> None:
    script = tutorial_script(TUTORIAL.read_text(encoding="utf-8"))
    assert script.index("make venv") < script.index("esper-es train")
    assert script.index("cat > grow.py") < script.index("python grow.py")
    assert "download.pytorch.org" not in script  # the by-hand install is an alternative


@pytest.mark.slow
def test_tutorial_runs_literally_on_a_fresh_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "esper-es"
    checkout.mkdir()
    _copy_checkout(checkout)
    (tmp_path / "tutorial.sh").write_text(tutorial_script(TUTORIAL.read_text(encoding="utf-8")))
    r = subprocess.run(
        ["bash", str(tmp_path / "tutorial.sh")],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=1800,
        env=_fresh_environment(),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    assert (checkout / "report" / "index.html").is_file()
    assert (checkout / "report-mine" / "index.html").is_file()
    # grow.py printed its fingerprint, and `esper-es replay runs/mine.db` the same one.
    grown = re.search(r"-> .*(sha256:[0-9a-f]{64})", r.stdout)
    assert grown is not None, r.stdout[-3000:]
    assert r.stdout.count(grown.group(1)) >= 2
