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
from esper_es.nn.kernels import build_kernel
from esper_es.store.database import RunDatabase
from esper_es.store.verify import verify
from esper_es.trainer import built_in_trainer

QUICK = Path(__file__).parents[1] / "trainer" / "conftest.py"


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
    text = QUICK.read_text().split('QUICK = """', 1)[1].split('"""', 1)[0]
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
        tables = KernelTables(db.connection, writable=False)
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
