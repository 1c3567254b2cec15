"""`esper-es inspect`: seed states and alphas at any seq, checked against an independent fold."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from esper_es.errors import EXIT_OK, EXIT_USAGE

# The lifecycle written out again, by event type, without esper-es's decider: stage entered.
_ENTERS = {
    "SeedGerminated": "GERMINATED",
    "SeedTrainingStarted": "TRAINING",
    "SeedCancelled": "CANCELLED",
    "SeedGraftingStarted": "GRAFTING",
    "SeedStabilized": "STABILIZATION",
    "SeedEvaluationStarted": "EVALUATING",
    "SeedFineTuningStarted": "FINE_TUNING",
    "SeedFossilized": "FOSSILIZED",
    "SeedCulled": "CULLED",
    "SeedRolledBack": "ROLLED_BACK",
    "SeedEmbargoed": "EMBARGOED",
    "SeedReleased": "DORMANT",
}
_NO_KERNEL = {"DORMANT", "CULLED", "CANCELLED", "ROLLED_BACK", "EMBARGOED"}
_BLENDING = {"GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING", "FOSSILIZED"}


def fold_by_hand(path: Path, at: int) -> dict[str, dict[str, Any]]:
    """Seed -> {stage, alpha, blueprint} after seq `at`, straight from the table's rows."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = conn.execute("SELECT type, payload FROM events WHERE seq <= ? ORDER BY seq", (at,))
    seeds: dict[str, dict[str, Any]] = {}
    for type_name, text in rows:
        p = json.loads(text)
        if type_name == "SeedLayerRegistered":
            for i in range(p["num_seeds"]):
                seeds[f"{p['layer']}/{i}"] = {"stage": "DORMANT", "alpha": 0.0, "blueprint": None}
            continue
        if "seed" not in p or type_name == "CommandRefused":
            continue
        s = seeds[p["seed"]]
        if type_name == "BlendAdjusted":
            s["alpha"] = p["alpha"]
        elif type_name in _ENTERS:
            s["stage"] = _ENTERS[type_name]
            if type_name == "SeedGerminated":
                s["blueprint"] = p["blueprint"]
            if s["stage"] in _NO_KERNEL:
                s["blueprint"] = None
            if s["stage"] not in _BLENDING:
                s["alpha"] = 0.0
    conn.close()
    return seeds


def _flatten(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        s["seed"]: {"stage": s["stage"], "alpha": s["alpha"], "blueprint": s["blueprint"]}
        for layer in obj["layers"].values()
        for s in layer["seeds"]
    }


@pytest.mark.parametrize("at", [2, 40, 333, 1500, 2999])
def test_inspect_at_seq_matches_a_fold_by_hand(cli, sim_db: Path, at: int) -> None:
    obj = cli("inspect", sim_db, "--at", at, "--json").json()
    assert obj["at_seq"] == at
    want = fold_by_hand(sim_db, at)
    assert _flatten(obj) == want
    counts: dict[str, int] = {}
    for s in want.values():
        counts[s["stage"]] = counts.get(s["stage"], 0) + 1
    assert obj["stages"] == counts


def test_inspect_sees_the_lifecycle_move(cli, sim_db: Path) -> None:
    early = cli("inspect", sim_db, "--at", 40, "--json").json()["stages"]
    late = cli("inspect", sim_db, "--json").json()["stages"]
    assert early != late
    assert set(late) - {"DORMANT"}


def test_inspect_json_shape_at_head(cli, sim_db: Path) -> None:
    obj = cli("inspect", sim_db, "--json").json()
    assert {"run_id", "branch", "head_seq", "fingerprint", "at_seq", "layers", "stages"} <= (
        obj.keys()
    )
    assert obj["at_seq"] == obj["head_seq"]
    assert obj["fingerprint"] is None  # a simulation has no model to fingerprint
    assert obj["branch"] == "main"
    assert len(obj["layers"]) == 8  # 64 seeds, 8 per layer
    layer = obj["layers"]["sim0"]
    assert {"shape_kind", "channels", "blueprints", "seeds"} <= layer.keys()
    assert len(layer["seeds"]) == 8
    seed = layer["seeds"][0]
    assert {"seed", "stage", "blueprint", "kernel_id", "alpha", "blend_target", "version"} <= (
        seed.keys()
    )
    assert sum(obj["stages"].values()) == 64
    assert _flatten(obj) == fold_by_hand(sim_db, obj["head_seq"])


def test_inspect_before_any_layer_is_empty(cli, sim_db: Path) -> None:
    obj = cli("inspect", sim_db, "--at", 1, "--json").json()
    assert obj["layers"] == {}
    assert obj["stages"] == {}


def test_inspect_text(cli, sim_db: Path) -> None:
    r = cli("inspect", sim_db, "--at", 1500)
    assert r.code == EXIT_OK
    assert "at seq 1500" in r.out
    assert "layer sim0 (image, 16 channels)" in r.out
    assert "sim7/7" in r.out
    assert r.out.rstrip().splitlines()[-1].startswith("stages: ")


def test_inspect_of_a_missing_database(cli, tmp_path: Path) -> None:
    r = cli("inspect", tmp_path / "missing.db", "--json")
    assert r.code == EXIT_USAGE
    assert r.json()["error"] == "NotARunDatabase"


def test_inspect_past_the_head_is_a_usage_error(cli, sim_db) -> None:
    head = cli("inspect", sim_db, "--json").json()["head_seq"]
    assert cli("inspect", sim_db, "--at", head, "--json").code == EXIT_OK
    r = cli("inspect", sim_db, "--at", head + 1)
    assert r.code == EXIT_USAGE
    assert f"seq {head}" in r.err
