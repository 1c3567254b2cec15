"""Event classes, their registry, payload round trips, canonical JSON and the JSON Schemas."""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from typing import Any, cast

import attrs
import cattrs
import pytest

from esper_es.core import events as ev
from esper_es.core.canonical import canonical_bytes, canonical_json, loads
from esper_es.errors import SchemaViolation
from esper_es.store import schemas

#: Every event type the skeleton defines; others may be added, none may go missing.
KNOWN_TYPES = {
    "RunStarted", "SeedLayerRegistered", "SeedGerminated", "SeedTrainingStarted",
    "SeedCancelled", "SeedGraftingStarted", "SeedStabilized", "SeedEvaluationStarted",
    "SeedFineTuningStarted", "SeedFossilized", "SeedCulled", "SeedRolledBack",
    "SeedEmbargoed", "SeedReleased", "BlendAdjusted", "BlendTargetSet", "CommandRefused",
}  # fmt: skip

# Values that satisfy the schemas' patterns and ranges, by field name, then by type.
BY_NAME: dict[str, Any] = {
    "seed": "layer1/0",
    "layer": "layer1",
    "alpha": 0.5,
    "target": 0.75,
    "blend_target": 0.9,
    "shape_kind": "image",
    "blueprint": "conv3x3",
    "blueprints": ["conv3x3", "mlp"],
    "stage": "TRAINING",
    "trigger": "cull",
    "dataset_fingerprint": "sha256:" + "ab" * 32,
    "fingerprint": "sha256:" + "cd" * 32,
    "optimizer_fingerprint": "sha256:" + "ef" * 32,
    "rng": {"torch_cpu": "sha256:" + "01" * 32},
    "tensors": {"layer1.weight": "sha256:" + "02" * 32},
    "source": "controller",
    "strategy": "diversify",
    "reason": "completed",
    "val_accuracy": 0.5,
    "branch": "b1",
    "from_branch": "main",
    "host": {"kind": "custom", "factory": "my_pkg.hosts:make_run"},
    "initial_weights": {"snapshot": "ab" * 32, "fingerprint": "sha256:" + "cd" * 32},
    "parts": [
        {
            "seed": "layer1/0",
            "role": "added",
            "blueprint": "mlp",
            "fate": "fossilized",
            "contribution": 0.25,
        },
    ],
    "variant": {
        "shape": [32, 4, 8, 8],
        "dtype": "float32",
        "grad": True,
        "input_grad": True,
        "params_grad": True,
        "training": True,
    },
    "arms": [
        {
            "blueprint": "mlp",
            "config": "{}",
            "shape_kind": "image",
            "n": 2,
            "measured": 1,
            "contribution_sum": -0.5,
            "fossilized": 0,
        },
    ],
    "posterior": {"names": ["bias"], "mean": [0.0], "cov": [[0.0004]], "n": 0},
    "rows_digest": "sha256:" + "03" * 32,
    "posterior_digest": "sha256:" + "04" * 32,
    "draw_seed": 7,
    "theta": [0.01],
    "chosen": [0],
    "candidates": [
        {
            "strategy": "diversify",
            "layer": "layer1",
            "blueprint": "mlp",
            "features": {"bias": 1.0},
            "score": 0.01,
        },
    ],
}
BY_TYPE: dict[Any, Any] = {
    str: 'x-é"\\',
    int: 3,
    float: 0.25,
    bool: True,
}


def sample_value(name: str, tp: Any) -> Any:
    """A schema-valid sample for one field."""
    if name in BY_NAME:
        return BY_NAME[name]
    if tp in BY_TYPE:
        return BY_TYPE[tp]
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and args:
        return sample_value(name, args[0])
    if origin is dict or tp is dict:
        return {"lr": 0.1, "name": "ü", "nested": {"b": [1, 2], "a": None}}
    if origin is list:
        return [sample_value(name, args[0] if args else str)]
    raise AssertionError(f"no sample value for field {name!r} of type {tp!r}; extend BY_NAME")


def sample_event(cls: type[ev.Event]) -> ev.Event:
    """An instance of `cls` with every field (defaults included) set to a sample value."""
    hints = typing.get_type_hints(cls)
    kwargs = {f.name: sample_value(f.name, hints[f.name]) for f in fields_of(cls)}
    return cls(**kwargs)


ALL_TYPES = sorted(ev.EVENT_TYPES)


def fields_of(cls: type[ev.Event]) -> tuple[attrs.Attribute[Any], ...]:
    """The attrs fields of an event class."""
    return tuple(attrs.fields(cast(Any, cls)))


def all_event_classes() -> set[type]:
    """Every concrete event class defined in esper_es.core.events."""
    return {
        obj
        for _, obj in inspect.getmembers(ev, inspect.isclass)
        if issubclass(obj, ev.Event) and obj.__module__ == ev.__name__ and attrs.has(obj)
    }


# --- the registry ---------------------------------------------------------------------


def test_registry_holds_every_event_class() -> None:
    assert set(ev.EVENT_TYPES.values()) == all_event_classes()
    assert set(ev.EVENT_TYPES) >= KNOWN_TYPES
    for name, cls in ev.EVENT_TYPES.items():
        assert cls.TYPE == name == cls.__name__
        assert isinstance(cls.VERSION, int) and cls.VERSION >= 1


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        ev.event_type(1)(type("SeedCulled", (ev.SeedEvent,), {}))


def test_every_trigger_has_its_event_and_back() -> None:
    assert set(ev.EVENT_TRIGGERS) == set(ev.TRIGGER_EVENTS.values())
    for trigger, cls in ev.TRIGGER_EVENTS.items():
        assert ev.EVENT_TRIGGERS[cls] == trigger
        assert cls in ev.EVENT_TYPES.values()


def test_streams() -> None:
    assert sample_event(ev.SeedCulled).stream() == "seed:layer1/0"
    assert sample_event(ev.RunStarted).stream() == "run"
    assert sample_event(ev.SeedLayerRegistered).stream() == "layer:layer1"
    assert sample_event(ev.CommandRefused).stream() == "controller"


def test_events_are_frozen() -> None:
    e = sample_event(ev.BlendAdjusted)
    assert isinstance(e, ev.BlendAdjusted)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        e.alpha = 0.1  # type: ignore[misc]


# --- payloads -------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_payload_round_trip(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    event = sample_event(cls)
    payload = ev.to_payload(event)
    assert set(payload) == {f.name for f in fields_of(cls)}
    # Through canonical JSON and back, as the store does it.
    text = canonical_json(payload)
    back = ev.from_payload(type_name, loads(text))
    assert back == event
    assert type(back) is cls
    assert canonical_json(ev.to_payload(back)) == text


def test_from_payload_refuses_unknown_types_and_extra_keys() -> None:
    with pytest.raises(KeyError, match="NoSuchEvent"):
        ev.from_payload("NoSuchEvent", {})
    payload = ev.to_payload(sample_event(ev.BlendAdjusted))
    with pytest.raises(cattrs.ClassValidationError):
        ev.from_payload("BlendAdjusted", {**payload, "extra": 1})
    missing = dict(payload)
    del missing["alpha"]
    with pytest.raises(cattrs.ClassValidationError):
        ev.from_payload("BlendAdjusted", missing)


# --- canonical JSON -------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    value = {"b": 1, "a": {"d": [1, 2, {"z": None, "y": True}], "c": "x"}}
    assert canonical_json(value) == '{"a":{"c":"x","d":[1,2,{"y":true,"z":null}]},"b":1}'


def test_canonical_json_keeps_non_ascii_as_utf8() -> None:
    text = canonical_json({"name": "café ✓ 🙂"})
    assert text == '{"name":"café ✓ 🙂"}'
    assert canonical_bytes({"name": "é"}) == '{"name":"é"}'.encode()
    assert b"\\u" not in canonical_bytes({"name": "é"})


def test_canonical_json_escapes_what_json_must() -> None:
    text = canonical_json({"s": 'q"b\\n\n\x01'})
    assert text == '{"s":"q\\"b\\\\n\\n\\u0001"}'
    assert json.loads(text) == {"s": 'q"b\\n\n\x01'}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_non_finite_numbers(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": bad})
    with pytest.raises(ValueError):
        canonical_bytes([1, bad])


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_loads_refuses_non_finite_tokens(token: str) -> None:
    with pytest.raises(ValueError):
        loads(f'{{"x":{token}}}')


def test_canonical_json_is_order_independent() -> None:
    a = {"x": 1, "y": 2, "z": {"q": 1, "p": 2}}
    b = {"z": {"p": 2, "q": 1}, "y": 2, "x": 1}
    assert canonical_json(a) == canonical_json(b)


# --- schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_event_type_has_its_schema_file(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    path = schemas.schema_dir() / f"{type_name}.v{cls.VERSION}.json"
    assert path.is_file(), f"missing {path.name}"
    schema = json.loads(path.read_text("utf-8"))
    assert schema.get("additionalProperties") is False
    # Every field the class has is described, and the required ones are the ones without default.
    fields = fields_of(cls)
    assert set(schema["properties"]) == {f.name for f in fields}
    assert {f.name for f in fields if f.default is attrs.NOTHING} <= set(schema["required"])


def test_every_schema_file_is_a_valid_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    found = schemas.load_schemas()
    assert found
    for (type_name, version), schema in found.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert type_name in ev.EVENT_TYPES, f"schema for unknown type {type_name}"
        assert version <= ev.EVENT_TYPES[type_name].VERSION


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_sample_payload_validates(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    schemas.validate(type_name, cls.VERSION, ev.to_payload(sample_event(cls)))


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_extra_key_is_refused(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    payload = {**ev.to_payload(sample_event(cls)), "sneaky": 1}
    with pytest.raises(SchemaViolation) as info:
        schemas.validate(type_name, cls.VERSION, payload)
    assert info.value.event_type == type_name and info.value.version == cls.VERSION


def wrong_type(value: Any) -> Any:
    """A value of a JSON type different from `value`'s."""
    if isinstance(value, str):
        return 12345
    if isinstance(value, bool | int | float):
        return "not a number"
    return "not a container"


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_wrong_type_is_refused(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    good = ev.to_payload(sample_event(cls))
    for key, value in good.items():
        if value is None:
            continue
        with pytest.raises(SchemaViolation):
            schemas.validate(type_name, cls.VERSION, {**good, key: wrong_type(value)})


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_missing_required_key_is_refused(type_name: str) -> None:
    cls = ev.EVENT_TYPES[type_name]
    good = ev.to_payload(sample_event(cls))
    required = [f.name for f in fields_of(cls) if f.default is attrs.NOTHING]
    for key in required:
        payload = {k: v for k, v in good.items() if k != key}
        with pytest.raises(SchemaViolation):
            schemas.validate(type_name, cls.VERSION, payload)


@pytest.mark.parametrize(
    "type_name,key,value",
    [
        ("BlendAdjusted", "alpha", 2.0),
        ("BlendAdjusted", "alpha", -0.1),
        ("BlendTargetSet", "target", 1.5),
        ("SeedGerminated", "blend_target", -1.0),
        ("BlendAdjusted", "step", -1),
        ("BlendAdjusted", "seed", "no-index"),
        ("SeedGerminated", "layer", "a/b"),
    ],
)
def test_out_of_range_values_are_refused(type_name: str, key: str, value: Any) -> None:
    cls = ev.EVENT_TYPES[type_name]
    good = ev.to_payload(sample_event(cls))
    with pytest.raises(SchemaViolation):
        schemas.validate(type_name, cls.VERSION, {**good, key: value})


def test_unknown_schema_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation, match="no schema file"):
        schemas.validate("NoSuchEvent", 1, {})
