"""The kernel library: artifacts by hash, outcomes shared across runs, ranking from them."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from esper_es.config import load_config
from esper_es.core.canonical import canonical_json
from esper_es.core.decisions import AdaptationDecision
from esper_es.core.state import LayerState
from esper_es.core.strategies import plan
from esper_es.library.artifacts import (
    ArtifactMismatch,
    artifact_bytes,
    artifact_key,
    check_artifact,
    kernel_from_artifact,
    load_artifact,
)
from esper_es.library.database import KernelTables, LibraryDatabase, OutcomeRow
from esper_es.library.statistics import RankingPrior, rank_blueprints
from esper_es.nn.blueprints import get_blueprint
from esper_es.nn.kernels import build_kernel
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify
from esper_es.trainer import built_in_trainer

QUICK = Path(__file__).resolve().parents[1] / "fixtures" / "quick_trainer_run.toml"


def test_artifact_round_trips_by_hash() -> None:
    k = build_kernel("mlp", "image", 4, 123, {"expansion": 2.0})
    data = artifact_bytes(k)
    assert artifact_bytes(build_kernel("mlp", "image", 4, 123, {"expansion": 2.0})) == data
    assert artifact_bytes(build_kernel("mlp", "image", 4, 124, {"expansion": 2.0})) != data
    art = load_artifact(data)
    assert art.kernel_id == k.kernel_id
    again = kernel_from_artifact(data)
    assert artifact_bytes(again) == data
    assert artifact_key(data) == artifact_key(artifact_bytes(again))


def test_a_changed_weight_is_an_artifact_mismatch() -> None:
    k = build_kernel("lora", "vector", 6, 7)
    stored = artifact_bytes(k)
    check_artifact(k, stored)
    with pytest.MonkeyPatch.context():
        next(k.parameters()).data[0, 0] += 1e-6
    with pytest.raises(ArtifactMismatch) as err:
        check_artifact(k, stored)
    assert err.value.exit_code == 3


def test_library_database_stores_blobs_and_ignores_repeated_outcomes(tmp_path: Path) -> None:
    with LibraryDatabase(tmp_path / "lib.db") as lib:
        key = lib.put_blob(b"abc")
        assert lib.get_blob(key) == b"abc"
        row = _row("mlp", "fossilized", 0.05)
        lib.record_outcome(row)
        lib.record_outcome(row)
        assert lib.outcomes("image") == [row]
        assert lib.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with LibraryDatabase(tmp_path / "lib.db", readonly=True) as ro:
        assert ro.outcomes() == [row]


def _row(blueprint: str, outcome: str, contribution: float | None, run: str = "r1") -> OutcomeRow:
    return OutcomeRow(
        run_id=run, branch="main", seed=f"layer1/{blueprint}", kernel_id=f"k-{blueprint}",
        blueprint=blueprint, config=canonical_json({}), shape_kind="image", outcome=outcome,
        contribution=contribution, params=10, germinated_step=1, ended_step=9, seconds=0.1,
    )  # fmt: skip


def test_ranking_formula_prefers_evidence_and_keeps_name_order_without_any() -> None:
    names = ["conv3x3", "lora", "mlp", "se_attention"]
    prior = RankingPrior()
    assert rank_blueprints(names, "image", [], prior, {}) == sorted(names)
    rows = [_row("mlp", "fossilized", 0.05), _row("lora", "culled", -0.02)]
    assert rank_blueprints(names, "image", rows, prior, {}) == [
        "mlp", "conv3x3", "se_attention", "lora",
    ]  # fmt: skip
    # Another shape kind's outcomes say nothing about this one.
    assert rank_blueprints(names, "sequence", rows, prior, {}) == sorted(names)


def _config(tmp_path: Path, library: Path) -> object:
    text = QUICK.read_text("utf-8")
    path = tmp_path / "run.toml"
    path.write_text(text + f'\n[library]\npath = "{library}"\n', encoding="utf-8")
    return load_config(path)


def test_a_shared_library_changes_the_next_runs_diversify_ranking(tmp_path: Path) -> None:
    lib_path = tmp_path / "library.db"
    config = _config(tmp_path, lib_path)
    # Run 1's outcomes, as its recorder wrote them: mlp fossilized, lora culled (their configs
    # are the ones this config builds them with).
    with LibraryDatabase(lib_path) as lib:
        mlp = attrs.evolve(_row("mlp", "fossilized", 0.2), config='{"expansion":8.0}')
        lib.record_outcome(mlp)
        lib.record_outcome(attrs.evolve(_row("lora", "culled", -0.05), config='{"rank":4}'))
    trainer = built_in_trainer(config, seed=1, db_path=tmp_path / "run2.db")  # type: ignore[arg-type]
    trainer.db = RunDatabase.create(tmp_path / "run2.db", trainer.run_id)
    try:
        from esper_es.command_bus import CommandBus

        trainer.wire(CommandBus(trainer.db, trainer.config.lifecycle))
        # The start boundary records what the library holds (LibraryConsulted); ranking
        # reads that record.
        trainer._start_boundary()
        layer = LayerState("layer1", "image", 4, 2, frozenset({"lora", "mlp", "conv3x3"}), 1)
        ranked = trainer.recorder.ranking()(layer)
        assert ranked[0] == "mlp" and ranked[-1] == "lora"
        p = plan(
            AdaptationDecision(layer_name="layer1", adaptation_type="add_seed",
                               parameters={"num_seeds": 1}, decision_id="d1"),
            layer=layer, seeds={}, stats={}, candidates=ranked, step=0,
            new_id=lambda: "c1", germination=lambda s, b, c: ("k", 1),
        )  # fmt: skip
        assert [cmd.blueprint for cmd in p.commands] == ["mlp"]  # type: ignore[attr-defined]
    finally:
        trainer.recorder.library.close()  # type: ignore[union-attr]
        trainer.db.close()


def test_training_records_artifacts_and_outcomes_in_run_and_library(tmp_path: Path) -> None:
    lib_path = tmp_path / "library.db"
    config = _config(tmp_path, lib_path)
    db_path = tmp_path / "run.db"
    built_in_trainer(config, seed=3, db_path=db_path).run(3)  # type: ignore[arg-type]
    verify(db_path)
    with RunDatabase.open(db_path, readonly=True) as db:
        tables = KernelTables(db.sql, writable=False)
        germinated = [r.event for r in db.read() if r.type == "SeedGerminated"]
        assert germinated, "the quick run germinates seeds"
        for event in germinated:
            row = tables.artifact(event.kernel_id)  # type: ignore[attr-defined]
            assert row is not None
            art = load_artifact(db.get_blob(row.blob_key))
            assert art.kernel_id == event.kernel_id  # type: ignore[attr-defined]
            assert art.spec.init_seed == event.init_seed  # type: ignore[attr-defined]
        ended = [r for r in db.read() if r.type in ("SeedCulled", "SeedFossilized", "SeedCancelled",
                                                     "SeedRolledBack")]  # fmt: skip
        assert len(tables.outcomes()) == len(ended)
    with LibraryDatabase(lib_path, readonly=True) as lib:
        assert len(lib.outcomes()) == len(ended)
        assert {r.kernel_id for r in lib.outcomes()} <= {e.kernel_id for e in germinated}  # type: ignore[attr-defined]


def _germinated(db_path: Path, branch: str = "main") -> list[tuple[int, str, str]]:
    with RunDatabase.open(db_path, readonly=True) as db:
        return [
            (r.event.step, r.event.seed, r.event.blueprint)  # type: ignore[attr-defined]
            for r in db.read(types=["SeedGerminated"], branch=branch)
        ]


def test_ranking_reads_the_library_as_recorded_at_the_start(tmp_path: Path) -> None:
    from esper_es.core import events as ev
    from esper_es.replay import replay, resume, rollback
    from esper_es.replay.log import RecordedLog
    from esper_es.replay.rollback import boundary_ends

    lib_path = tmp_path / "library.db"
    config = _config(tmp_path, lib_path)
    built_in_trainer(config, seed=3, db_path=tmp_path / "run1.db").run(3)  # type: ignore[arg-type]
    with LibraryDatabase(lib_path, readonly=True) as lib:
        before = lib.outcomes()
    assert before, "run 1 left outcomes in the library"
    run2 = tmp_path / "run2.db"
    result = built_in_trainer(config, seed=5, db_path=run2).run(3)  # type: ignore[arg-type]
    with RunDatabase.open(run2, readonly=True) as db:
        recs = list(db.read())
    consulted = [r for r in recs if isinstance(r.event, ev.LibraryConsulted)]
    assert len(consulted) == 1 and consulted[0].seq == 2, "right after RunStarted"
    arms = consulted[0].event.arms  # type: ignore[attr-defined]
    assert sum(a["n"] for a in arms) == len(before)
    assert {a["blueprint"] for a in arms} == {r.blueprint for r in before}
    # The library changes after run 2 started: strong evidence for the blueprints run 2 never
    # germinated, against the ones it did, so a live ranking would now plan otherwise.
    used = {b for _, _, b in _germinated(run2)}
    assert used, "run 2 germinates seeds"
    with LibraryDatabase(lib_path) as lib:
        for i, name in enumerate(["conv3x3", "depthwise", "lora", "mlp", "norm", "se_attention"]):
            for j in range(20):
                good = name not in used
                lib.record_outcome(
                    attrs.evolve(
                        _row(name, "fossilized" if good else "culled", 5.0 if good else -5.0),
                        run_id="intruder", seed=f"layer1/{i}-{j}",
                        config=canonical_json(
                            get_blueprint(name).resolve_config(config.seeds.kernel_config.get(name))  # type: ignore[attr-defined]
                        ),
                    )
                )  # fmt: skip
    # A recomputing replay and a rollback + resume rank as run 2 did: same plans, same model.
    assert replay(run2, recompute_decisions=True).fingerprint == result.fingerprint
    with RunDatabase.open(run2, readonly=True) as db:
        ends = boundary_ends(RecordedLog(db, "main"))
    rollback(run2, ends[3])
    resumed = resume(run2)
    assert resumed.branch == "b1" and resumed.fingerprint == result.fingerprint
    assert _germinated(run2, "b1") == _germinated(run2)
    # A run started now does see the new outcomes (so the checks above could have failed).
    run3 = tmp_path / "run3.db"
    trainer = built_in_trainer(config, seed=5, db_path=run3)  # type: ignore[arg-type]
    trainer.run(3)
    assert {b for _, _, b in _germinated(run3)} != used


def _comparable(row: OutcomeRow) -> OutcomeRow:
    return attrs.evolve(row, run_id="", seconds=0.0)


def _kernel_rows(db_path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The run file's artifact and outcome rows, its run id and `seconds` (wall time) left out."""
    with RunDatabase.open(db_path, readonly=True) as db:
        tables = KernelTables(db.sql, writable=False)
        arts = sorted(
            attrs.astuple(tables.artifact(r.event.kernel_id))  # type: ignore[arg-type, attr-defined]
            for r in db.read(types=["SeedGerminated"])
        )
        outs = sorted(attrs.astuple(_comparable(r)) for r in tables.outcomes())
    return arts, outs


def test_deferred_library_writes_land_as_immediate_ones_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The live trainer defers the recorder's file work to the next boundary's commit (the
    # run file is still committing the boundary that projected the event): the rows it
    # finally holds, and what ranking reads meanwhile, are those of recording at once.
    from esper_es.trainer import boundary

    config = _config(tmp_path, tmp_path / "library.db")
    deferred_db, immediate_db = tmp_path / "deferred.db", tmp_path / "immediate.db"
    waited: list[int] = []
    trainer = built_in_trainer(config, seed=3, db_path=deferred_db)  # type: ignore[arg-type]
    trainer.on_step = lambda t, step: waited.append(len(t.recorder._pending))
    trainer.run(3)
    assert max(waited) > 0, "some boundary deferred file work to the next one"
    assert trainer.recorder._pending == []
    seen_deferred = [_comparable(r) for r in trainer.recorder.seen]

    project = boundary.project
    monkeypatch.setattr(
        boundary, "project", lambda t, to_seq=None, *, defer=False: project(t, to_seq)
    )
    config = _config(tmp_path, tmp_path / "library2.db")
    trainer = built_in_trainer(config, seed=3, db_path=immediate_db)  # type: ignore[arg-type]
    trainer.run(3)
    assert [_comparable(r) for r in trainer.recorder.seen] == seen_deferred
    assert seen_deferred, "the quick run ends kernels"
    assert _kernel_rows(deferred_db) == _kernel_rows(immediate_db)
