"""The append and read fast paths give byte for byte what the general code gives.

The audit trail renders a batch's lines in one structlog call, flat payloads skip the
encoder's circular-reference bookkeeping, and flat events are structured without cattrs: each
is checked here against the general path it replaces (canonical_json, cattrs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_json
from esper_es.core.envelope import NewEvent
from esper_es.errors import SchemaViolation
from esper_es.store import RunDatabase, schemas
from esper_es.store.audit import AuditTrail
from esper_es.store.chain import row_json
from esper_es.store.database import _encode, audit_path, decode_row
from esper_es.store.encoding import json_exact

AWKWARD = 'é"\\%s{}\n\u2028/'

EXAMPLES: list[ev.Event] = [
    ev.SeedGerminated(
        seed="l/0",
        step=3,
        layer="l",
        blueprint="conv3x3",
        kernel_id="k-1",
        init_seed=2**40,
        blend_target=1.0,
        config={"expansion": 8.0, "note": AWKWARD},
    ),
    ev.SeedTrainingStarted(seed="l/0", step=0),
    ev.SeedCancelled(seed="l/0", step=1, reason=AWKWARD),
    ev.SeedGraftingStarted(seed="l/0", step=1, improvement=-0.0),
    ev.SeedStabilized(seed="l/0", step=1, alpha=1e-300),
    ev.SeedEvaluationStarted(seed="l/0", step=1),
    ev.SeedFineTuningStarted(seed="l/0", step=1, contribution=1e300),
    ev.SeedFossilized(seed="l/0", step=1, contribution=0.1, instability=0.0),
    ev.SeedCulled(seed="l/0", step=1, reason=""),
    ev.SeedRolledBack(seed="l/0", step=1, reason="x"),
    ev.SeedEmbargoed(seed="l/0", step=1, until_step=51),
    ev.SeedReleased(seed="l/0", step=99),
    ev.BlendAdjusted(seed="l/0", step=1, alpha=1),  # an int where a float is declared
    ev.BlendTargetSet(seed="l/0", step=1, target=0.25),
    ev.CommandRefused(
        command_id="c",
        command="GerminateSeed",
        seed="l/0",
        trigger="germinate",
        stage="TRAINING",
        reason=AWKWARD,
        step=4,
    ),
    ev.SeedLayerRegistered(
        layer="l", shape_kind="image", channels=4, num_seeds=2, blueprints=["conv3x3"]
    ),
    ev.RunStarted(run_id="r", master_seed=1, config={"b": [1, 2.5], "a": AWKWARD}),
    ev.AdaptationDecided(
        decision_id="d",
        layer="l",
        adaptation_type="add_seed",
        parameters={"num_seeds": 2, "why": AWKWARD},
        reason=AWKWARD,
        strategy="diversify",
        source="user",
        telemetry_digest=None,
        telemetry={"loss": [0.5, 0.25]},
        step=7,
    ),
    ev.AdaptationPlanned(
        decision_id="d",
        strategy="ensemble",
        commands=[{"command": "GerminateSeed", "seed": "l/0"}],
        notes="",
        step=7,
    ),
    ev.DecisionOutcomeMeasured(
        decision_id="d",
        layer="l",
        strategy="replace",
        source="controller",
        decided_step=7,
        step=40,
        contribution=-0.125,
        paid=False,
        parts=[
            {
                "seed": "l/0",
                "role": "removed",
                "blueprint": None,
                "fate": "removed",
                "contribution": -0.125,
            }
        ],
    ),
    ev.EpochCompleted(epoch=1, step=45, train_loss=0.5, val_loss=0.25, val_accuracy=None),
    ev.StepMetricsRecorded(
        epoch=1, step=45, steps=[44, 45], train_loss=[0.5, None], lr=[0.01, 0.0095]
    ),
    ev.Checkpointed(
        epoch=1,
        step=45,
        fingerprint="sha256:" + "a" * 64,
        optimizer_fingerprint="sha256:" + "b" * 64,
        rng={"torch_cpu": "sha256:" + "c" * 64},
    ),
    ev.TrainingStopped(epoch=1, step=45, reason="interrupted"),
    ev.KernelCompiled(
        seed="l/0",
        kernel_id="k-1",
        step=45,
        backend="inductor",
        compile_seconds=1.5,
        variant={
            "shape": [32, 4, 8, 8],
            "dtype": "float32",
            "grad": True,
            "input_grad": True,
            "params_grad": True,
            "training": True,
        },
    ),
    ev.RunRolledBack(epoch=1, step=45, from_branch="main", branch="b1", to_seq=40),
    ev.LibraryConsulted(
        library="kernels.db",
        arms=[
            {
                "blueprint": "mlp",
                "config": '{"expansion":8.0}',
                "shape_kind": "image",
                "n": 3,
                "measured": 2,
                "contribution_sum": 0.125,
                "fossilized": 1,
            },
        ],
    ),
    ev.PolicyFitted(
        library="kernels.db",
        posterior={
            "names": ["bias", "blueprint:mlp"],
            "mean": [0.001, -0.0125],
            "cov": [[0.0004, -0.0001], [-0.0001, 0.0003]],
            "n": 4,
        },
        prior_scale=0.02,
        noise=0.01,
        fossil_bonus=0.02,
        rows_digest="sha256:" + "ab" * 32,
    ),
    ev.PolicySampled(
        step=270,
        posterior_digest="sha256:" + "cd" * 32,
        draw_seed=2**62,
        theta=[0.01, -0.5],
        candidates=[
            {
                "strategy": "diversify",
                "layer": "layer1",
                "blueprint": "mlp",
                "features": {"bias": 1.0, "blueprint:mlp": 1.0},
                "score": -0.49,
            }
        ],
        chosen=[0],
    ),
]


def test_every_event_type_has_an_example() -> None:
    """The examples cover every registered event type, so the checks below cover all."""
    assert {type(e) for e in EXAMPLES} == set(ev.EVENT_TYPES.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.TYPE)
def test_payload_text_is_canonical_json(event: ev.Event) -> None:
    """The appended payload text equals canonical_json of the payload, flat schema or not."""
    _, type_name, version, text, _ = _encode(NewEvent(event, "e"), event.stream())
    assert (type_name, version) == (event.TYPE, event.VERSION)
    assert text == canonical_json(ev.to_payload(event))


def _typed(value: Any) -> Any:
    """`value` with each scalar paired with its type, so that `==` compares types too."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value), [_typed(v) for v in value])
    return (type(value), value)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.TYPE)
def test_a_kept_payload_is_what_parsing_its_text_gives(event: ev.Event) -> None:
    """`encode` keeps the payload only where parsing the text gives it back, types and all."""
    kept = _encode(NewEvent(event, "e"), event.stream())[4]
    text = _encode(NewEvent(event, "e"), event.stream())[3]
    assert kept is not None  # every example is JSON-exact: each skips the parse
    assert _typed(kept) == _typed(json.loads(text))


@pytest.mark.parametrize(
    ("value", "exact"),
    [
        ({"a": [1, 2.5, None, True, "x", {"b": -0.0}]}, True),
        ({"a": (1, 2)}, False),  # JSON gives a list
        ({1: "a"}, False),  # JSON gives the key "1"
        ({"a": np.float64(0.5)}, False),  # JSON gives a float
        ([np.int64(1)], False),
        ({"a": {"b"}}, False),  # not JSON at all
    ],
)
def test_json_exact(value: Any, exact: bool) -> None:
    assert json_exact(value) is exact


def test_an_inexact_payload_is_parsed_from_its_text(tmp_path: Path) -> None:
    """What the trainer projects (`appended_after`) is what a read gives, payload types too."""
    event = ev.EpochCompleted(
        epoch=1,
        step=1,
        train_loss=0.5,
        val_loss=0.25,
        val_accuracy=None,
        metrics={"f": np.float64(0.5), "k": {1: 2}},
    )
    assert _encode(NewEvent(event, "e"), "run")[4] is None
    with RunDatabase.create(tmp_path / "r.db", "run") as db:
        db.commit_in_background()
        checkpointed = next(e for e in EXAMPLES if isinstance(e, ev.Checkpointed))  # kept
        db.append("run", 0, [NewEvent(event, "e"), NewEvent(checkpointed, "c")])
        kept = db.appended_after(0, "main")
        read = list(db.read())
        assert kept is not None and kept == read
        assert [_typed(r.payload) for r in kept] == [_typed(r.payload) for r in read]
        assert _typed(kept[0].payload["metrics"]) == _typed({"f": 0.5, "k": {"1": 2}})


def test_flat_schemas_are_the_scalar_ones() -> None:
    """Only schemas whose properties are all scalars take the fast encoder."""
    assert schemas.is_flat("BlendAdjusted", 1)
    assert schemas.is_flat("SeedGerminated", 2)
    assert not schemas.is_flat("RunStarted", 1)  # config and environment are objects
    assert not schemas.is_flat("SeedLayerRegistered", 1)  # blueprints is an array
    assert not schemas.is_flat("NoSuchType", 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_is_refused_and_appends_nothing(tmp_path: Path, bad: float) -> None:
    """NaN or Infinity in a flat payload still raises SchemaViolation, with nothing stored."""
    with RunDatabase.create(tmp_path / "r.db", "run") as db:
        event = ev.SeedGraftingStarted(seed="l/0", step=1, improvement=bad)
        with pytest.raises(SchemaViolation):
            db.append("seed:l/0", 0, [NewEvent(event, "e1")])
        assert db.head_seq() == 0


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.TYPE)
def test_from_payload_matches_cattrs(event: ev.Event) -> None:
    """from_payload gives the event cattrs gives, field values and their types alike."""
    payload = json.loads(canonical_json(ev.to_payload(event)))
    got = ev.from_payload(event.TYPE, payload)
    want = ev._converter.structure(dict(payload), type(event))
    assert got == want
    assert [type(v) for v in attrs.astuple(got, recurse=False)] == [
        type(v) for v in attrs.astuple(want, recurse=False)
    ]


@pytest.mark.parametrize(
    ("type_name", "payload"),
    [
        (
            "EpochCompleted",
            {"epoch": 1, "step": 2, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 0.75,
             "metrics": {}},
        ),
        (
            "EpochCompleted",  # an int where `float | None` is declared: cattrs makes a float
            {"epoch": 1, "step": 2, "train_loss": 0.5, "val_loss": 0.25, "val_accuracy": 1,
             "metrics": {}},
        ),
        (
            "Checkpointed",
            {"epoch": 1, "step": 2, "fingerprint": "f", "optimizer_fingerprint": "o",
             "rng": {"torch_cpu": "r"}, "snapshot": "k", "tensors": {"w": "t", "b": "u"}},
        ),
        (
            "Checkpointed",  # a non-str value in a `dict[str, str]`: cattrs makes it a str
            {"epoch": 1, "step": 2, "fingerprint": "f", "optimizer_fingerprint": "o",
             "rng": {"torch_cpu": 7}, "snapshot": None, "tensors": {}},
        ),
        (
            "StepMetricsRecorded",
            {"epoch": 1, "step": 4, "steps": [2, 4], "train_loss": [0.5, None], "lr": [0.1, 0.2]},
        ),
        (
            "StepMetricsRecorded",  # an int in a `list[float]`: cattrs makes it a float
            {"epoch": 1, "step": 4, "steps": [2, 4], "train_loss": [1, None], "lr": [1, 0.2]},
        ),
    ],
)  # fmt: skip
def test_optional_and_str_table_fields_structure_like_cattrs(
    type_name: str, payload: dict[str, Any]
) -> None:
    """The fast structurer's `str | None`, `float | None`, `dict[str, str]` and list fields."""
    assert type_name in ev._FAST_STRUCTURE
    got = ev.from_payload(type_name, payload)
    want = ev._converter.structure(dict(payload), ev.EVENT_TYPES[type_name])
    assert got == want
    assert _typed(attrs.asdict(got, recurse=False)) == _typed(attrs.asdict(want, recurse=False))


def test_from_payload_converts_like_cattrs() -> None:
    """An int for a float field becomes a float; defaults fill missing keys; extras fail."""
    got = ev.from_payload("BlendAdjusted", {"seed": "l/0", "step": 1, "alpha": 1})
    assert isinstance(got, ev.BlendAdjusted) and type(got.alpha) is float
    culled = ev.from_payload("SeedCulled", {"seed": "l/0", "step": 1})
    assert culled == ev.SeedCulled(seed="l/0", step=1, reason="")
    with pytest.raises(Exception) as fast:
        ev.from_payload("BlendAdjusted", {"seed": "l/0", "step": 1, "alpha": 0.5, "x": 1})
    with pytest.raises(Exception) as slow:
        ev._converter.structure({"seed": "l/0", "step": 1, "alpha": 0.5, "x": 1}, ev.BlendAdjusted)
    assert type(fast.value) is type(slow.value)


def test_decode_row_refuses_non_finite_constants() -> None:
    """A stored payload holding NaN is refused on read, as canonical.loads refuses it."""
    row: list[Any] = [
        1,
        "e",
        "r",
        "main",
        "seed:l/0",
        1,
        "BlendAdjusted",
        1,
        '{"alpha":NaN,"seed":"l/0","step":1}',
        None,
        None,
        "t",
        "0" * 64,
        "h",
    ]
    with pytest.raises(ValueError, match="non-finite"):
        decode_row(row)


def _rows(n: int, first_seq: int = 1) -> list[tuple[Any, ...]]:
    return [
        (
            seq,
            f"e{seq}/0",
            "run",
            "main",
            f"seed:l{AWKWARD}/{seq}",
            seq + 1,
            "BlendAdjusted",
            1,
            "{}",
            None if seq % 2 else f"c{AWKWARD}",
            "corr" if seq % 3 else None,
            "t",
            "p",
            f"h{seq}",
        )
        for seq in range(first_seq, first_seq + n)
    ]


def test_audit_lines_are_one_canonical_structlog_line_per_event(tmp_path: Path) -> None:
    """Each row gets one line: canonical JSON of run_id, event name, time stamp and its fields."""
    trail = AuditTrail(tmp_path / "a.jsonl", f"run{AWKWARD}")
    rows = _rows(5) + _rows(1, first_seq=6)
    trail.record(rows[:5])
    trail.record([])  # writes nothing
    trail.record(rows[5:])
    trail.close()
    lines = (tmp_path / "a.jsonl").read_text("utf-8").split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    assert len(lines[:-1]) == len(rows)
    for line, row in zip(lines[:-1], rows, strict=True):
        rec = json.loads(line)
        assert canonical_json(rec) == line
        stamp = rec.pop("timestamp")
        assert isinstance(stamp, str) and stamp.endswith("Z")
        assert rec == {
            "event": "event_appended",
            "run_id": f"run{AWKWARD}",
            "seq": row[0],
            "event_id": row[1],
            "branch": row[3],
            "stream": row[4],
            "stream_version": row[5],
            "type": row[6],
            "causation_id": row[9],
            "correlation_id": row[10],
            "hash": row[13],
        }


def test_audit_trail_of_a_real_append_names_every_seq_and_hash(tmp_path: Path) -> None:
    """After appends in batches, the trail holds each event's seq and hash, in order."""
    path = tmp_path / "r.db"
    with RunDatabase.create(path, "run") as db:
        for batch in range(3):
            evs = [
                NewEvent(ev.BlendTargetSet(seed=f"l/{i}", step=batch, target=0.5), f"b{batch}-{i}")
                for i in range(4)
            ]
            db.append_batch([(f"seed:l/{i}", batch, [evs[i]]) for i in range(4)])
        stored = [(r.seq, r.hash) for r in db.read()]
    lines = audit_path(path).read_text("utf-8").splitlines()
    assert [(json.loads(x)["seq"], json.loads(x)["hash"]) for x in lines] == stored


def test_row_json_is_canonical_json() -> None:
    """The hand-built row JSON of the hash chain equals canonical_json of the columns."""
    for causation in (None, AWKWARD):
        cols = dict(
            seq=7,
            event_id=AWKWARD,
            run_id="r",
            branch="main",
            stream="seed:l/0",
            stream_version=3,
            type_name="BlendAdjusted",
            schema_version=1,
            payload='{"a":"%s"}',
            causation_id=causation,
            correlation_id=None,
            recorded_at="t",
        )
        as_dict = {("type" if k == "type_name" else k): v for k, v in cols.items()}
        assert row_json(**cols) == canonical_json(as_dict)  # type: ignore[arg-type]
