"""With a real trainer attached, a malformed decision fails at `submit`, not at the next
boundary, and leaves the run exactly as if it had never been submitted (issue 10, item 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esper_es.config import load_config
from esper_es.core.decisions import AdaptationDecision
from esper_es.errors import EsperError
from esper_es.store.database import RunDatabase
from esper_es.trainer import Trainer, built_in_trainer


def malformed() -> list[AdaptationDecision]:
    """Decisions built valid, then changed by the caller (construction itself refuses these)."""
    out = []
    for params in (
        {"seeds": 5},
        {"seeds": "layer1/0"},
        {"blueprints": 7},
        {"num_sedes": 2},
        {"seeds": ["body/0"]},
        {"blueprint": "no-such-blueprint"},
    ):
        d = AdaptationDecision(layer_name="layer1", adaptation_type="optimize_parameters")
        d.parameters.update(params)
        out.append(d)
    none = AdaptationDecision(layer_name="layer1", adaptation_type="add_seed")
    object.__setattr__(none, "parameters", None)
    return [*out, none]


def test_a_malformed_decision_fails_at_submit_and_changes_nothing(
    quick_config: Path, tmp_path: Path
) -> None:
    config = load_config(quick_config)
    errors: list[tuple[int, BaseException]] = []
    tickets: list[Any] = []

    def submit_bad(trainer: Trainer, step: int) -> None:
        if step == 3:
            for d in malformed():
                try:
                    tickets.append(trainer.submit(d))
                except EsperError as exc:
                    errors.append((step, exc))

    with_bad = built_in_trainer(
        config, seed=0, db_path=tmp_path / "bad.db", on_step=submit_bad
    ).run(1)
    clean = built_in_trainer(config, seed=0, db_path=tmp_path / "clean.db").run(1)
    assert not tickets and len(errors) == len(malformed())
    assert all(step == 3 and exc.exit_code == 2 for step, exc in errors)
    messages = [str(exc) for _, exc in errors]
    assert "'seeds' must be a non-empty list of seed ids" in messages[0]
    assert "got the string 'layer1/0'" in messages[1]
    assert "'num_sedes' is not read by the replace strategy" in messages[3]
    assert "seed 'body/0' is not in layer 'layer1'" in messages[4]
    assert "unknown blueprint 'no-such-blueprint'" in messages[5]
    assert "parameters must be a mapping" in messages[6]
    with RunDatabase.open(tmp_path / "bad.db", readonly=True) as db:
        users = [r for r in db.read(types=["AdaptationDecided"]) if r.payload["source"] == "user"]
    assert users == []
    assert with_bad.fingerprint == clean.fingerprint
