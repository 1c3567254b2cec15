"""Upcasting: old payloads are lifted on read and never rewritten (SPEC §3)."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.decider import fold
from esper_es.core.envelope import NewEvent
from esper_es.core.lifecycle import Stage
from esper_es.core.state import SeedState
from esper_es.core.upcasting import UPCASTERS, current_version, upcast, upcaster
from esper_es.errors import SchemaViolation, TamperDetected, UnsupportedSchemaVersion
from esper_es.store import RunDatabase, schemas, verify
from esper_es.store.chain import row_hash

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE = FIXTURES / "SeedGerminated.v1.json"


def golden_v1() -> dict[str, Any]:
    """The golden v1 SeedGerminated payload kept as a fixture file."""
    payload: dict[str, Any] = json.loads(FIXTURE.read_text("utf-8"))
    return payload


def golden_v2() -> dict[str, Any]:
    """The golden v2 SeedGerminated payload (a blend target, no kernel config)."""
    payload: dict[str, Any] = json.loads((FIXTURES / "SeedGerminated.v2.json").read_text("utf-8"))
    return payload


def test_golden_v1_is_a_valid_v1_payload_and_not_v2() -> None:
    payload = golden_v1()
    schemas.validate("SeedGerminated", 1, payload)
    assert "blend_target" not in payload
    with pytest.raises(SchemaViolation):
        schemas.validate("SeedGerminated", 2, payload)


def test_v1_is_upcast_through_v2_to_v3_with_full_blend_target_and_default_config() -> None:
    payload = golden_v1()
    original = copy.deepcopy(payload)
    version, lifted = upcast("SeedGerminated", 1, payload)
    assert version == 3 == current_version("SeedGerminated") == ev.SeedGerminated.VERSION
    assert lifted == {**original, "blend_target": 1.0, "config": {}}
    assert payload == original, "upcasting must not mutate the stored payload"
    schemas.validate("SeedGerminated", 3, lifted)
    event = ev.from_payload("SeedGerminated", lifted)
    assert isinstance(event, ev.SeedGerminated) and event.blend_target == 1.0
    assert event.config == {}


def test_golden_v2_is_a_valid_v2_payload_and_not_v3() -> None:
    payload = golden_v2()
    schemas.validate("SeedGerminated", 2, payload)
    assert "config" not in payload and payload["blend_target"] == 0.75
    with pytest.raises(SchemaViolation):
        schemas.validate("SeedGerminated", 3, payload)
    with pytest.raises(SchemaViolation):
        schemas.validate("SeedGerminated", 2, {**payload, "config": {}})


def test_v2_is_upcast_to_v3_with_the_blueprint_defaults_and_keeps_its_blend_target() -> None:
    payload = golden_v2()
    original = copy.deepcopy(payload)
    version, lifted = upcast("SeedGerminated", 2, payload)
    assert version == 3
    assert lifted == {**original, "config": {}}
    assert payload == original, "upcasting must not mutate the stored payload"
    schemas.validate("SeedGerminated", 3, lifted)
    event = ev.from_payload("SeedGerminated", lifted)
    assert isinstance(event, ev.SeedGerminated)
    assert (event.blend_target, event.blueprint, event.config) == (0.75, "mlp", {})


def test_v3_requires_config_to_be_an_object() -> None:
    payload = {**golden_v2(), "config": {"expansion": 4.0}}
    schemas.validate("SeedGerminated", 3, payload)
    with pytest.raises(SchemaViolation):
        schemas.validate("SeedGerminated", 3, {**payload, "config": [1]})
    event = ev.from_payload("SeedGerminated", payload)
    assert isinstance(event, ev.SeedGerminated) and event.config == {"expansion": 4.0}
    assert ev.to_payload(event) == payload


def test_current_version_payload_passes_through_unchanged() -> None:
    payload = {**golden_v1(), "blend_target": 0.3, "config": {"rank": 2}}
    assert upcast("SeedGerminated", 3, payload) == (3, payload)
    assert upcast("SeedCulled", 1, {"seed": "a/0", "step": 1}) == (1, {"seed": "a/0", "step": 1})


def test_a_newer_version_than_the_code_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedSchemaVersion) as info:
        upcast("SeedGerminated", 4, {**golden_v1(), "blend_target": 1.0, "config": {}})
    message = str(info.value)
    assert "SeedGerminated" in message and "v4" in message and "newer" in message
    assert "upgrade" in message


def test_a_missing_upcaster_is_a_lookup_error() -> None:
    # Pretend SeedCulled is at v2 with no upcaster registered.
    cls = ev.EVENT_TYPES["SeedCulled"]
    saved = cls.VERSION
    cls.VERSION = 2
    try:
        with pytest.raises(LookupError, match="no upcaster"):
            upcast("SeedCulled", 1, {"seed": "a/0", "step": 1})
    finally:
        cls.VERSION = saved


def test_registering_an_upcaster_twice_is_refused() -> None:
    assert ("SeedGerminated", 1) in UPCASTERS and ("SeedGerminated", 2) in UPCASTERS
    with pytest.raises(ValueError, match="twice"):
        upcaster("SeedGerminated", 1)(lambda p: p)
    with pytest.raises(ValueError, match="twice"):
        upcaster("SeedGerminated", 2)(lambda p: p)


# --- a v1 row in a run database -------------------------------------------------------

SEED = "layer1/0"
COLUMNS = (
    "seq, event_id, run_id, branch, stream, stream_version, type, schema_version, payload,"
    " causation_id, correlation_id, recorded_at, prev_hash, hash"
)


def insert_row(path: Path, type_name: str, version: int, payload: dict[str, Any], stream: str,
               stream_version: int, event_id: str) -> int:  # fmt: skip
    """Append one row by hand with raw SQL, hash-chained as the store would; returns its seq."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        run_id = conn.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()[0]
        seq, prev = conn.execute(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq += 1
        text = canonical_json(payload)
        recorded_at = "2024-01-01T00:00:00.000000+00:00"
        h = row_hash(prev, seq, event_id, run_id, "main", stream, stream_version, type_name,
                     version, text, "cmd-old", None, recorded_at)  # fmt: skip
        conn.execute(
            f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 14)})",
            (seq, event_id, run_id, "main", stream, stream_version, type_name, version, text,
             "cmd-old", None, recorded_at, prev, h),
        )  # fmt: skip
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return int(seq)


def make_db_with_v1_row(path: Path) -> int:
    """A run database whose seed stream starts with a v1 SeedGerminated row; returns its seq."""
    with RunDatabase.create(path, "run-old") as db:
        db.append(
            "run", 0, [NewEvent(ev.RunStarted(run_id="run-old", master_seed=1, config={}), "e1")]
        )
        db.append(
            "layer:layer1",
            0,
            [NewEvent(ev.SeedLayerRegistered(layer="layer1", shape_kind="image", channels=4,
                                             num_seeds=2, blueprints=["conv3x3"]), "e2")],
        )  # fmt: skip
    return insert_row(path, "SeedGerminated", 1, golden_v1(), f"seed:{SEED}", 1, "e-old")


def raw_row(path: Path, seq: int) -> tuple[Any, ...]:
    """The stored row, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        row: tuple[Any, ...] = conn.execute(
            f"SELECT {COLUMNS} FROM events WHERE seq=?", (seq,)
        ).fetchone()
        return row
    finally:
        conn.close()


def test_a_stored_v1_row_reads_back_as_v3_and_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    seq = make_db_with_v1_row(path)
    stored = raw_row(path, seq)
    assert stored[7] == 1 and "blend_target" not in stored[8]

    report = verify(path)  # checks the v1 payload against the v1 schema, then upcasts
    assert report.events == seq

    with RunDatabase.open(path, readonly=True) as db:
        (rec,) = list(db.read(stream=f"seed:{SEED}"))
    assert rec.seq == seq and rec.schema_version == 1
    assert rec.payload == {**golden_v1(), "blend_target": 1.0, "config": {}}
    assert isinstance(rec.event, ev.SeedGerminated)
    assert rec.event.blend_target == 1.0 and rec.event.kernel_id == golden_v1()["kernel_id"]
    assert rec.event.config == {}
    schemas.validate("SeedGerminated", 3, dict(rec.payload))
    state = fold(SeedState.dormant(SEED), [rec.event])
    assert state.stage is Stage.GERMINATED and state.blend_target == 1.0

    # A writer continues the stream after the old row; still nothing is rewritten.
    with RunDatabase.open(path) as db:
        assert db.stream_version(f"seed:{SEED}") == 1
        db.append(
            f"seed:{SEED}", 1, [NewEvent(ev.SeedTrainingStarted(seed=SEED, step=41), "e-new")]
        )
        assert [r.type for r in db.read(stream=f"seed:{SEED}")] == [
            "SeedGerminated",
            "SeedTrainingStarted",
        ]
    assert raw_row(path, seq) == stored
    assert verify(path).events == seq + 1


def test_a_newer_stored_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    make_db_with_v1_row(path)
    seq = insert_row(
        path, "SeedGerminated", 4,
        {**golden_v1(), "seed": "layer1/1", "blend_target": 1.0, "config": {}},
        "seed:layer1/1", 1, "e-future",
    )  # fmt: skip
    with (
        RunDatabase.open(path, readonly=True) as db,
        pytest.raises(UnsupportedSchemaVersion, match="newer"),
    ):
        list(db.read())
    # Not tampering: a newer esper-es wrote it. Exit 2 ("newer format"), naming the type.
    with pytest.raises(UnsupportedSchemaVersion) as info:
        verify(path)
    assert info.value.exit_code == 2
    assert info.value.event_type == "SeedGerminated" and info.value.version == 4
    assert seq > 0


def test_a_v1_row_that_breaks_the_v1_schema_fails_verify(tmp_path: Path) -> None:
    """verify checks the schema of the version stored, not only the upcast result."""
    path = tmp_path / "bad.db"
    make_db_with_v1_row(path)
    # Valid once upcast (v2 allows blend_target), but not a valid v1 payload.
    seq = insert_row(
        path, "SeedGerminated", 1, {**golden_v1(), "seed": "layer1/1", "blend_target": 0.5},
        "seed:layer1/1", 1, "e-bad",
    )  # fmt: skip
    with pytest.raises(TamperDetected) as info:
        verify(path)
    assert info.value.seq == seq and "v1" in info.value.reason


# --- a v2 row in a run database -------------------------------------------------------


def make_db_with_v2_row(path: Path, payload: dict[str, Any] | None = None) -> int:
    """A run database (as `make_db_with_v1_row`) whose layer2/1 stream starts with a v2 row."""
    with RunDatabase.create(path, "run-v2") as db:
        db.append(
            "run", 0, [NewEvent(ev.RunStarted(run_id="run-v2", master_seed=1, config={}), "e1")]
        )
        db.append(
            "layer:layer2",
            0,
            [NewEvent(ev.SeedLayerRegistered(layer="layer2", shape_kind="image", channels=4,
                                             num_seeds=2, blueprints=["mlp"]), "e2")],
        )  # fmt: skip
    row = golden_v2() if payload is None else payload
    return insert_row(path, "SeedGerminated", 2, row, "seed:layer2/1", 1, "e-v2")


def test_a_stored_v2_row_verifies_reads_back_as_v3_and_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    seq = make_db_with_v2_row(path)
    stored = raw_row(path, seq)
    assert stored[7] == 2 and '"config"' not in stored[8]

    assert verify(path).events == seq  # the v2 payload checked against the v2 schema

    with RunDatabase.open(path, readonly=True) as db:
        (rec,) = list(db.read(stream="seed:layer2/1"))
    assert rec.schema_version == 2 and rec.payload == {**golden_v2(), "config": {}}
    assert isinstance(rec.event, ev.SeedGerminated) and rec.event.config == {}
    state = fold(SeedState.dormant("layer2/1"), [rec.event])
    assert state.stage is Stage.GERMINATED and state.blend_target == 0.75

    # A new (v3) germination after the old row; the old row is still stored as it was.
    with RunDatabase.open(path) as db:
        new = ev.SeedGerminated(seed="layer2/0", step=130, layer="layer2", blueprint="mlp",
                                kernel_id="k-new", init_seed=7, blend_target=1.0,
                                config={"expansion": 4.0})  # fmt: skip
        db.append("seed:layer2/0", 0, [NewEvent(new, "e-v3")])
        versions = {r.stream: r.schema_version for r in db.read() if r.type == "SeedGerminated"}
        assert versions == {"seed:layer2/1": 2, "seed:layer2/0": 3}
        (back,) = [r.event for r in db.read(stream="seed:layer2/0")]
        assert back == new
    assert raw_row(path, seq) == stored
    assert verify(path).events == seq + 1


def test_a_v2_row_that_breaks_the_v2_schema_fails_verify(tmp_path: Path) -> None:
    """A v2 row carrying `config` is valid once upcast but not as v2: verify names it."""
    path = tmp_path / "bad-v2.db"
    seq = make_db_with_v2_row(path, {**golden_v2(), "config": {"expansion": 4.0}})
    with pytest.raises(TamperDetected) as info:
        verify(path)
    assert info.value.seq == seq and "v2" in info.value.reason


def test_run_started_v1_is_upcast_with_no_host_no_initial_weights_and_one_rank() -> None:
    payload = {
        "run_id": "run-1", "master_seed": 0, "config": {}, "dataset_fingerprint": None,
        "environment": {}, "step": 0,
    }  # fmt: skip
    original = copy.deepcopy(payload)
    schemas.validate("RunStarted", 1, payload)
    version, lifted = upcast("RunStarted", 1, payload)
    assert version == 3 == current_version("RunStarted")
    two = {**original, "host": None, "initial_weights": None}
    assert lifted == {**two, "world_size": 1, "backend": None}
    schemas.validate("RunStarted", 3, lifted)
    assert upcast("RunStarted", 2, two) == (3, lifted)
    assert payload == original, "upcasting must not mutate the stored payload"
    event = ev.from_payload("RunStarted", lifted)
    assert isinstance(event, ev.RunStarted) and event.host is None
    assert (event.world_size, event.backend) == (1, None)
