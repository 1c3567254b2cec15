"""`esper-es report`: the page of a real small run, rolled back onto a branch and resumed."""

from __future__ import annotations

import base64
import itertools
import json
import re
import tomllib
from pathlib import Path

import pytest

from esper_es.cli.main import main
from esper_es.config import config_from_dict
from esper_es.replay import resume, rollback
from esper_es.replay.log import RecordedLog
from esper_es.replay.rollback import boundary_ends
from esper_es.report import write_report
from esper_es.report.model import STAGE_AFTER, STAGES, extract
from esper_es.report.plots import STAGE_COLOURS
from esper_es.store.database import RunDatabase
from esper_es.trainer.api import built_in_trainer

# Small digits run whose controller decides at once, so a few seconds hold decisions,
# germinations, full lifecycles and blend ramps.
QUICK = (Path(__file__).resolve().parents[1] / "fixtures" / "quick_run.toml").read_text("utf-8")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def branched_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A trained run, rolled back to the end of its second decision's boundary, resumed."""
    db = tmp_path_factory.mktemp("report") / "run.db"
    config = config_from_dict(tomllib.loads(QUICK))
    built_in_trainer(config, seed=0, db_path=str(db), progress=False).run()
    with RunDatabase.open(db, readonly=True) as rdb:
        decided = [e.seq for e in rdb.read(types=["AdaptationDecided"])]
        assert len(decided) >= 2, "the quick config must make decisions"
        ends = boundary_ends(RecordedLog(rdb, "main"))
    to_seq = min(s for s in ends if s > decided[1])
    rollback(db, to_seq)
    resume(db, epochs=4)
    return db, to_seq


def test_model_has_every_seed_decision_and_both_branches(branched_run: tuple[Path, int]) -> None:
    """The extracted model holds both branches, every seed's lane and every decision."""
    db, to_seq = branched_run
    with RunDatabase.open(db, readonly=True) as rdb:
        report = extract(rdb)
        decisions = [e.payload for e in rdb.read(branch=None, types=["AdaptationDecided"])]
        seeds = {e.payload["seed"] for e in rdb.read(branch=None) if e.stream.startswith("seed:")}
    assert [b.name for b in report.branches] == ["main", "b1"]
    b1 = report.branch("b1")
    assert (b1.parent, b1.fork_seq) == ("main", to_seq)
    assert b1.own_events > 1 and b1.stopped == "completed"
    assert [d.decision_id for d in report.decisions] == [d["decision_id"] for d in decisions]
    assert seeds <= set(report.seeds)
    for branch in report.branches:
        assert set(branch.lanes) == set(report.seeds)
        for seed, spans in branch.lanes.items():
            # Lanes tile the run without gaps and end in the seed's final stage.
            assert spans[0].start == 0 and spans[-1].end == branch.last_step, seed
            assert all(a.end == b.start for a, b in itertools.pairwise(spans)), seed
            assert spans[-1].stage == branch.final_stages[seed]
    germinated = sum(k.germinated for k in report.kernels)
    assert germinated == report.event_counts.get("SeedGerminated", 0) > 0
    # Every decision's plan touched the seeds it names.
    assert all(d.seeds for d in report.decisions if d.adaptation_type == "add_seed")


def test_page_is_self_contained_and_shows_the_run(
    branched_run: tuple[Path, int], tmp_path: Path
) -> None:
    """The HTML names every seed, decision and branch, and embeds its plots as base64 PNGs."""
    db, to_seq = branched_run
    out = tmp_path / "out"
    assert main(["report", str(db), "-o", str(out)]) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    with RunDatabase.open(db, readonly=True) as rdb:
        report = extract(rdb, parameters=False)
    assert report.run_id in html
    for seed in report.seeds:
        assert f"{seed}" in html
    for d in report.decisions:
        assert re.search(rf"<td class=\"num\">{d.step}</td><td>{d.branch}</td>", html)
        assert d.reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in html
    assert "<td>b1</td><td>main</td>" in html and f'<td class="num">{to_seq}</td>' in html
    for stage in STAGES:  # the legend of lifecycle colours
        assert f"background:{STAGE_COLOURS[stage]}" in html and stage in html
    # Self-contained: no link, script or remote resource; every image is an inline PNG.
    assert not re.search(r"<script|<link|https?://|src=\"(?!data:)", html)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 4
    assert all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    for name in ("curves.png", "lifecycle.png", "alpha.png", "kernels.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_json_output(
    branched_run: tuple[Path, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json` prints one object with the run fields of SPEC §8 and the files written."""
    db, _ = branched_run
    assert main(["report", str(db), "-o", str(tmp_path), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["branch"] == "b1" and obj["branches"] == ["main", "b1"]
    assert obj["fingerprint"].startswith("sha256:") and obj["head_seq"] > 0
    assert Path(obj["html"]).is_file() and len(obj["images"]) == 4


def test_branch_built_through_the_bus_without_rollback(tmp_path: Path) -> None:
    """A branch opened by hand (no RunRolledBack) still gets its own lane and curve view."""
    from esper_es.command_bus import CommandBus
    from esper_es.core import commands as c
    from esper_es.core import events as ev

    db = tmp_path / "run.db"
    config = config_from_dict(tomllib.loads(QUICK.replace("epochs = 3", "epochs = 1")))
    built_in_trainer(config, seed=0, db_path=str(db), progress=False).run()
    with RunDatabase.open(db) as rdb:
        rdb.open_branch("manual", "main", 3)
        bus = CommandBus(rdb, branch="manual")
        bus.execute_all(
            [c.RecordFact(command_id="f1", event=ev.EpochCompleted(
                epoch=9, step=999, train_loss=1.0, val_loss=1.0, val_accuracy=0.5))]
        )  # fmt: skip
    files = write_report(db, tmp_path / "out")
    manual = files.report.branch("manual")
    assert manual.last_step == 999 and manual.epochs[-1].val_accuracy == 0.5
    assert "manual" in files.html.read_text(encoding="utf-8")


def test_stage_table_covers_every_lifecycle_event() -> None:
    """Each lifecycle event maps to the stage it enters; every stage has a colour."""
    assert set(STAGE_AFTER.values()) == set(STAGES)
    assert STAGE_AFTER["SeedReleased"] == "DORMANT"
    assert set(STAGE_COLOURS) == set(STAGES)
