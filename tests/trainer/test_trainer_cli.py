"""`esper-es train` end to end: exit codes, the database it writes, the summary, bad configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_es.cli.main import main
from esper_es.errors import EXIT_OK, EXIT_USAGE
from esper_es.store.verify import verify

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_json(out: str) -> dict[str, Any]:
    lines = out.splitlines()
    assert len(lines) == 1, out
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def test_train_writes_a_verifying_run_with_decisions_behind_its_seeds(
    capsys: pytest.CaptureFixture[str], quick_config: Path, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    code, out, _ = run_cli(capsys, "train", "--config", quick_config, "--db", db, "--json")
    assert code == EXIT_OK
    obj = one_json(out)
    for key in ("run_id", "branch", "head_seq", "fingerprint", "accuracy_start", "accuracy_end"):
        assert key in obj
    assert obj["db"] == str(db) and obj["branch"] == "main"
    assert obj["fingerprint"].startswith("sha256:")
    assert obj["accuracy_end"] > obj["accuracy_start"]
    assert sum(obj["seeds"].values()) == 4  # two layers, two slots each
    report = verify(db)
    assert report.head_seq == obj["head_seq"] == obj["events"]

    code, out, _ = run_cli(capsys, "history", db, "--json")
    assert code == EXIT_OK
    events = one_json(out)["events"]
    types = [e["type"] for e in events]
    assert types[0] == "RunStarted" and types[-1] == "TrainingStopped"
    decided = {e["payload"]["decision_id"] for e in events if e["type"] == "AdaptationDecided"}
    assert decided, "the controller made no decision"
    germinated = [e for e in events if e["type"] == "SeedGerminated"]
    assert germinated
    assert all(e["correlation_id"] in decided for e in germinated)
    assert types.count("Checkpointed") >= 4  # step 0 and each of the 3 epochs


def test_train_text_summary_and_default_db_path(
    capsys: pytest.CaptureFixture[str],
    quick_config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "train", "--config", quick_config, "--epochs", "1")
    assert code == EXIT_OK
    assert "accuracy: untrained host" in out and "run database: runs/" in out
    assert "static host" not in out  # the untrained host is no baseline
    assert "--baseline also trains the same host static" in out
    dbs = list((tmp_path / "runs").glob("*.db"))
    assert len(dbs) == 1
    verify(dbs[0])
    assert (tmp_path / "runs" / (dbs[0].name + ".audit.jsonl")).exists()


def test_train_baseline_trains_the_same_host_static_for_the_same_epochs(
    capsys: pytest.CaptureFixture[str], quick_config: Path, tmp_path: Path
) -> None:
    db = tmp_path / "grown.db"
    argv = ("train", "--config", quick_config, "--db", db, "--epochs", "2", "--baseline")
    code, out, _ = run_cli(capsys, *argv, "--json")
    assert code == EXIT_OK
    obj = one_json(out)
    base = obj["baseline"]
    assert base["epochs"] == obj["epochs"] == 2
    assert 0.0 <= base["accuracy"] <= 1.0 and base["parameters"] < obj["parameters"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["grown.db"]
    code, out, _ = run_cli(capsys, *argv[:4], tmp_path / "again.db", *argv[5:])
    lift = 100 * (obj["accuracy_end"] - base["accuracy"])
    assert code == EXIT_OK
    assert "baseline: the same host trained static for the same 2 epochs and schedule" in out
    assert f"grown - static {lift:+.2f} pp" in out


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[train]\nepochs = 2\nbogus = 1\n", "train.bogus"),
        ("[train]\noptimizer = 'rmsprop'\n", "train.optimizer"),
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[seeds.layers]\nlayer1 = 'two'\n", "seeds.layers.layer1"),
        ("[seeds.layers]\nlayer1 = 0\n", "seeds.layers"),
        ("[blending]\nkind = 'cubic'\n", "blending.kind"),
        ("[host]\ntask = 'imagenet'\n", "host.task"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("[train\n", "bad.toml"),
    ],
)
def test_bad_config_exits_2_naming_the_key_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, toml: str, key: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml, encoding="utf-8")
    db = tmp_path / "never.db"
    code, out, err = run_cli(capsys, "train", "--config", config, "--db", db, "--json")
    assert code == EXIT_USAGE
    assert key in err and key in one_json(out)["message"]
    assert not db.exists()
    assert list(tmp_path.iterdir()) == [config]


def test_bad_epochs_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    code, _, err = run_cli(capsys, "train", "--epochs", "0", "--db", db)
    assert code == EXIT_USAGE and "--epochs" in err
    assert not db.exists()


def test_console_script_trains_one_epoch(tmp_path: Path) -> None:
    db = tmp_path / "sub.db"
    proc = subprocess.run(
        [sys.executable, "-m", "esper_es.cli.main", "train", "--epochs", "1", "--json", "--db",
         str(db)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    obj = one_json(proc.stdout)
    assert obj["epochs"] == 1 and obj["steps"] == 45  # 1437 training digits / 32
    assert verify(db).head_seq == obj["head_seq"]
