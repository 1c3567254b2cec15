"""`esper-es check-lifecycle`: 0 when invariants hold, 3 with a counterexample, 2 on bad config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from esper_es.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFY


def test_default_lifecycle_holds(cli) -> None:
    r = cli("check-lifecycle", "--examples", 25, "--seed", 1)
    assert r.code == EXIT_OK, r.out + r.err
    assert "hold" in r.out


def test_default_lifecycle_holds_json(cli) -> None:
    r = cli("check-lifecycle", "--examples", 25, "--seed", 1, "--json")
    assert r.code == EXIT_OK
    obj = r.json()
    assert obj["passed"] is True
    assert obj["invariant"] is None
    assert obj["counterexample"] is None
    assert obj["examples"] >= 1


def test_a_valid_config_holds(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[lifecycle]\nmin_training_steps = 2\nembargo_steps = 0\n")
    r = cli("check-lifecycle", "--config", cfg, "--examples", 25, "--seed", 2, "--json")
    assert r.code == EXIT_OK
    assert r.json()["passed"] is True


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("[lifecycle]\nmin_trainig_steps = 3\n", "lifecycle.min_trainig_steps", "unknown key"),
        ("[lifecycel]\nmin_training_steps = 3\n", "lifecycel", "unknown key"),
        ("[lifecycle]\nmin_training_steps = 'ten'\n", "lifecycle.min_training_steps", "integer"),
        ("[lifecycle]\nmin_training_steps = 2.5\n", "lifecycle.min_training_steps", "integer"),
        ("[lifecycle]\ncontribution_threshold = true\n", "lifecycle.contribution_threshold", ""),
        ("[lifecycle]\nembargo_steps = -1\n", "lifecycle.embargo_steps", ""),
        ("lifecycle = 3\n", "lifecycle", "table"),
    ],
)
def test_bad_config_exits_2_naming_the_key(
    cli, tmp_path: Path, toml: str, key: str, words: str
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    r = cli("check-lifecycle", "--config", cfg, "--json")
    assert r.code == EXIT_USAGE
    obj = r.json()
    assert obj["error"] == "ConfigError"
    assert repr(key) in obj["message"]
    assert words in obj["message"]
    # Without --json the key is named on stderr.
    r = cli("check-lifecycle", "--config", cfg)
    assert r.code == EXIT_USAGE
    assert repr(key) in r.err


def test_unknown_key_lists_the_known_ones(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[lifecycle]\nmin_trainig_steps = 3\n")
    message = cli("check-lifecycle", "--config", cfg, "--json").json()["message"]
    assert "min_training_steps" in message


def test_missing_config_file(cli, tmp_path: Path) -> None:
    r = cli("check-lifecycle", "--config", tmp_path / "nope.toml", "--json")
    assert r.code == EXIT_USAGE
    assert r.json()["message"] == f"config file {tmp_path / 'nope.toml'}: not found"
    directory = cli("check-lifecycle", "--config", tmp_path)
    assert directory.code == EXIT_USAGE
    assert "cannot be read" in directory.err


def test_config_that_is_not_toml(cli, tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text("[lifecycle\nmin_training_steps = \n")
    r = cli("check-lifecycle", "--config", cfg, "--json")
    assert r.code == EXIT_USAGE
    assert "TOML" in r.json()["message"]


def test_examples_must_be_positive(cli) -> None:
    assert cli("check-lifecycle", "--examples", 0, "--json").code == EXIT_USAGE


def test_a_failing_invariant_exits_3_with_its_counterexample(
    cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import esper_es.check_lifecycle as module

    seen: dict[str, Any] = {}

    def failing(config: Any, *, examples: int, seed: int | None) -> SimpleNamespace:
        seen.update(config=config, examples=examples, seed=seed)
        return SimpleNamespace(
            passed=False,
            examples=7,
            invariant="L2",
            counterexample="germinate, ..., fossilize, cull -> CULLED",
        )

    monkeypatch.setattr(module, "check_lifecycle", failing)
    r = cli("check-lifecycle", "--examples", 9, "--seed", 4)
    assert r.code == EXIT_VERIFY
    assert "L2" in r.out
    assert "fossilize, cull" in r.out
    assert seen["examples"] == 9
    assert seen["seed"] == 4
    obj = cli("check-lifecycle", "--json").json()
    assert obj == {
        "passed": False,
        "examples": 7,
        "invariant": "L2",
        "counterexample": "germinate, ..., fossilize, cull -> CULLED",
    }


def test_command_leaves_nothing_in_the_working_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    r = subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", "check-lifecycle", "--examples", "5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == EXIT_OK, r.stderr
    assert list(tmp_path.iterdir()) == []
