"""B7: creating 10 000 seeds with their lifecycle machines.

esper-es: a seed is an immutable `SeedState` value; the one shared `transitions` machine runs
on a throw-away cursor. Timed: registering the seed layers through the CommandBus (events
appended), then 10 000 dormant seeds each given its first real transition, `germinate`, through
`decide` (the shared machine and its gate) and `evolve`. For context, the same germinations
through `CommandBus.execute_all` (decided, appended and audited in one transaction).

Naive: one `transitions.Machine` per seed, `Machine(model=seed, states=..., transitions=...,
auto_transitions=False)`, timed for a few hundred seeds and extrapolated; and one machine
with `add_model` for growing numbers of models, to show how it grows.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from _common import median_of, print_machine, table, timed
from transitions import Machine

from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core.decider import Context, decide, evolve
from esper_es.core.lifecycle import TRANSITIONS, Stage
from esper_es.core.state import SeedState
from esper_es.store.database import RunDatabase

TARGET_S = 1.0
BLUEPRINTS = ("conv3x3", "mlp", "lora")


def layer_commands(seeds: int, per_layer: int) -> list[c.RegisterSeedLayer]:
    """Commands registering enough seed layers for `seeds` seeds."""
    return [
        c.RegisterSeedLayer(
            command_id=f"reg-{i}",
            layer=f"layer{i}",
            shape_kind="image",
            channels=16,
            num_seeds=per_layer,
            blueprints=BLUEPRINTS,
        )
        for i in range(seeds // per_layer)
    ]


def germinations(bus: CommandBus, per_layer: int) -> list[c.GerminateSeed]:
    """One germinate command for every seed of every registered layer."""
    return [
        c.GerminateSeed(
            command_id=f"g-{seed}",
            seed=seed,
            step=1,
            blueprint=BLUEPRINTS[i % 3],
            kernel_id=f"k-{i:032x}",
            init_seed=i,
        )
        for layer in bus.layers.values()
        for i, seed in enumerate(layer.seed_ids())
    ]


def esper(seeds: int, per_layer: int, *, through_bus: bool) -> float:
    """Seconds to register the layers and germinate `seeds` seeds, the esper-es way."""
    tmp = Path(tempfile.mkdtemp(prefix="b7-"))
    try:
        with RunDatabase.create(tmp / "run.db", "bench") as db:

            def go() -> None:
                bus = CommandBus(db)
                bus.execute_all(layer_commands(seeds, per_layer))
                commands = germinations(bus, per_layer)
                if through_bus:
                    outcomes = bus.execute_all(commands)
                    assert all(o.accepted for o in outcomes)
                    return
                states: dict[str, SeedState] = {}
                for cmd in commands:
                    s = SeedState.dormant(cmd.seed)
                    ctx = Context(bus.config, bus.layers[cmd.seed.rsplit("/", 1)[0]])
                    for e in decide(s, cmd, ctx):
                        s = evolve(s, e)
                    states[cmd.seed] = s
                assert len(states) == seeds
                assert all(s.stage is Stage.GERMINATED for s in states.values())

            return timed(go)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _naive_rows() -> tuple[list[Stage], list[dict[str, Any]]]:
    rows = [
        {"trigger": t.trigger, "source": list(t.sources), "dest": t.dest if t.dest else "="}
        for t in TRANSITIONS
    ]
    return list(Stage), rows


class _Seed:
    """A model object for the naive machines."""

    def __init__(self, name: str) -> None:
        self.name = name


def naive_per_seed(n: int) -> float:
    """Seconds to create `n` seeds with a `transitions.Machine` each, and germinate them."""
    states, rows = _naive_rows()

    def go() -> None:
        for i in range(n):
            m = _Seed(f"layer/{i}")
            Machine(
                model=m,
                states=states,
                transitions=rows,
                initial=Stage.DORMANT,
                auto_transitions=False,
            )
            m.germinate()  # type: ignore[attr-defined]

    return timed(go)


def naive_add_model(n: int) -> float:
    """Seconds to add `n` seed models to one shared `transitions.Machine`, and germinate them."""
    states, rows = _naive_rows()

    def go() -> None:
        machine = Machine(
            model=None,
            states=states,
            transitions=rows,
            initial=Stage.DORMANT,
            auto_transitions=False,
        )
        models = [_Seed(f"layer/{i}") for i in range(n)]
        for m in models:
            machine.add_model(m)
        for m in models:
            m.germinate()  # type: ignore[attr-defined]

    return timed(go)


def main() -> None:
    """Run B7 and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=10_000)
    ap.add_argument("--per-layer", type=int, default=100)
    ap.add_argument("--naive", type=int, default=500, help="per-seed machines actually built")
    ap.add_argument("--add-model", default="1000,2000,4000")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    n, reps = args.seeds, args.reps

    ours = median_of(reps, lambda: esper(n, args.per_layer, through_bus=False))
    ours_bus = median_of(reps, lambda: esper(n, args.per_layer, through_bus=True))
    per_seed = median_of(reps, lambda: naive_per_seed(args.naive))
    per_seed_all = per_seed * n / args.naive
    adds: list[tuple[int, float]] = []
    for k in (int(x) for x in args.add_model.split(",")):
        adds.append((k, median_of(reps, functools.partial(naive_add_model, k))))

    print(f"## B7: creating {n:,} seeds with their lifecycle machines\n")
    print_machine()
    rows = [
        [
            f"esper-es: {n // args.per_layer} layers registered via CommandBus + {n:,} seeds "
            "germinated via `decide` on the shared machine",
            f"{ours:.3f}",
            "1.0x",
            "met" if ours <= TARGET_S else "missed",
        ],
        [
            f"esper-es: the same, germinations via `CommandBus.execute_all` (+ append + audit of "
            f"{n:,} events)",
            f"{ours_bus:.3f}",
            f"{ours_bus / ours:.1f}x",
            "(context)",
        ],
        [
            f"naive: a `Machine` per seed, {args.naive} built, x{n / args.naive:g} extrapolated",
            f"{per_seed_all:.3f}",
            f"{per_seed_all / ours:.1f}x",
            "",
        ],
    ]
    for k, t in adds:
        rows.append(
            [
                f"naive: one `Machine`, `add_model` x {k:,} (measured, not extrapolated)",
                f"{t:.3f}",
                "",
                "",
            ]
        )
    table([f"what (median of {reps})", "seconds", "÷ esper-es", f"target ≤ {TARGET_S:g} s"], rows)
    if len(adds) >= 2:
        (k0, t0), (k1, t1) = adds[0], adds[-1]
        print(
            f"`add_model` grows x{t1 / t0:.1f} for x{k1 / k0:g} models (linear would be "
            f"x{k1 / k0:g}, quadratic x{(k1 / k0) ** 2:g}).\n"
        )
    print(f"Ratio naive per-seed machines ÷ esper-es: {per_seed_all / ours:.1f}x.")


if __name__ == "__main__":
    main()
