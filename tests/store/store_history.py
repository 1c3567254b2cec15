"""The known history the store tests share: its events, their seqs, and how to write it."""

from __future__ import annotations

from esper_es.core import events as ev
from esper_es.core.envelope import NewEvent
from esper_es.store.protocol import RunStore

RUN_ID = "run-test"
S0, S1 = "layer1/0", "layer1/1"

#: The seqs of the `history` fixture's events, by what they are (the tamper tests aim at them).
SEQ = {
    "run": 1,
    "layer": 2,
    "s0_germinated": 3,
    "s0_training": 4,
    "s0_grafting": 5,
    "s0_alpha_half": 6,
    "s0_alpha_full": 7,
    "s0_stabilized": 8,
    "s1_germinated": 9,
    "s1_training": 10,
    "refused": 11,
    "s1_culled": 12,
}
HISTORY_LEN = len(SEQ)


def germinated(seed: str, step: int = 1) -> ev.SeedGerminated:
    """A valid SeedGerminated for `seed` of layer1."""
    return ev.SeedGerminated(
        seed=seed, step=step, layer="layer1", blueprint="conv3x3", kernel_id=f"k-{seed}",
        init_seed=7, blend_target=1.0,
    )  # fmt: skip


def fill_history(db: RunStore, padding: int = 0) -> None:
    """Append the SEQ history to the empty store `db`, then `padding` blend events, and a blob."""
    db.append(
        "run",
        0,
        [NewEvent(ev.RunStarted(run_id=RUN_ID, master_seed=1, config={"lr": 0.1}), "e1")],
    )
    db.append(
        "layer:layer1",
        0,
        [NewEvent(ev.SeedLayerRegistered(layer="layer1", shape_kind="image", channels=4,
                                         num_seeds=2, blueprints=["conv3x3"]), "e2")],
    )  # fmt: skip
    db.append(
        f"seed:{S0}",
        0,
        [
            NewEvent(germinated(S0), "e3", "cmd-3"),
            NewEvent(ev.SeedTrainingStarted(seed=S0, step=2), "e4", "cmd-4"),
            NewEvent(ev.SeedGraftingStarted(seed=S0, step=30, improvement=0.2), "e5", "cmd-5"),
            NewEvent(ev.BlendAdjusted(seed=S0, step=31, alpha=0.5), "e6", "cmd-6"),
            NewEvent(ev.BlendAdjusted(seed=S0, step=32, alpha=1.0), "e7", "cmd-7"),
            NewEvent(ev.SeedStabilized(seed=S0, step=33, alpha=1.0), "e8", "cmd-8"),
        ],
    )
    db.append(
        f"seed:{S1}",
        0,
        [
            NewEvent(germinated(S1), "e9", "cmd-9", "decision-1"),
            NewEvent(ev.SeedTrainingStarted(seed=S1, step=3), "e10", "cmd-10", "decision-1"),
        ],
    )
    db.append(
        "controller",
        0,
        [NewEvent(ev.CommandRefused(command_id="cmd-11", command="StartGrafting", seed=S1,
                                    trigger="start_grafting", stage="TRAINING",
                                    reason="too early", step=4), "e11", "cmd-11")],
    )  # fmt: skip
    db.append(f"seed:{S1}", 2, [NewEvent(ev.SeedCulled(seed=S1, step=5, reason="x"), "e12")])
    if padding:
        db.append(
            f"seed:{S0}",
            6,
            [
                NewEvent(ev.BlendAdjusted(seed=S0, step=40 + i, alpha=(i % 10) / 10), f"p{i}")
                for i in range(padding)
            ],
        )
    db.put_blob(b"kernel weights \x00\x01\x02" * 10)
