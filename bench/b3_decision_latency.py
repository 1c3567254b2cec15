"""B3: decision → events committed → projected (SPEC §10: p50 ≤ 5 ms, p99 ≤ 5 ms).

A DigitsCNN with seed layers (`layer1`, `layer2`, 4 seeds each) on a real run database on disk
(WAL, synchronous=FULL, audit trail on). Each timed call is one
`SeedOrchestrator.apply_architecture_modification_sync(model, decision)` with no trainer
attached, so the call is its own step boundary: the decision is validated and planned, its
`AdaptationDecided`, seed commands and `AdaptationPlanned` are decided and committed in one
transaction, and the new events are projected into the model and the Adam optimizer (kernels
built from their seeded generators, param groups added or freed). Decisions cycle through the
four strategies on both layers. Between decisions, untimed, a stand-in for the lifecycle driver
moves seeds on (germinated → training, culled/rolled back → embargoed → released), so every
strategy keeps finding work, and its events are projected before the next timed call.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import print_machine, table

from esper_es.command_bus import CommandBus
from esper_es.core import commands as c
from esper_es.core.config import LifecycleConfig
from esper_es.core.decisions import AdaptationDecision, SeedStats
from esper_es.core.ids import IdSource
from esper_es.core.lifecycle import Stage
from esper_es.nn import DigitsCNN, Projector, place_seed_layers
from esper_es.orchestrator import SeedOrchestrator
from esper_es.store.database import RunDatabase

P50_MS, P99_MS = 5.0, 5.0
KINDS = ("remove_seed", "add_seed", "optimize_parameters", "modify_architecture")
CONFIG = LifecycleConfig(
    min_training_steps=0, min_stabilization_steps=0, embargo_steps=0, min_improvement=-1.0
)


def maintain(bus: CommandBus, ids: IdSource, step: int, rng: random.Random) -> None:
    """Move seeds along as a lifecycle driver would, so the strategies keep finding work."""
    cmds: list[c.Command] = []
    for layer in bus.layers.values():
        for sid in layer.seed_ids():
            s = bus.seed(sid)
            base = {"command_id": ids(), "seed": sid, "step": step}
            if s.stage in (Stage.CULLED, Stage.CANCELLED, Stage.ROLLED_BACK):
                cmds.append(c.EmbargoSeed(**base))
                cmds.append(c.ReleaseSeed(command_id=ids(), seed=sid, step=step))
            elif s.stage is Stage.GERMINATED:
                cmds.append(c.StartTraining(**base))
            elif s.stage is Stage.TRAINING and rng.random() < 0.5:
                cmds.append(c.StartGrafting(improvement=0.1, **base))
    if cmds:
        bus.execute_all(cmds)


def run(decisions: int, seed: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Time `decisions` modifications: milliseconds and accepted seed commands, by type."""
    torch.set_num_threads(1)
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="b3-"))
    try:
        model = DigitsCNN(seed=seed)
        layers = place_seed_layers(model, {"layer1": 4, "layer2": 4}, model.example_input())
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        with RunDatabase.create(tmp / "run.db", "b3") as db:
            bus = CommandBus(db, CONFIG)
            setup: list[c.Command] = [c.StartRun(command_id="start", run_id="b3", master_seed=seed)]
            setup += [layer.register_command(f"reg-{name}") for name, layer in layers.items()]
            bus.execute_all(setup)
            proj = Projector(model, opt)
            proj.apply_all((r.seq, r.event) for r in db.read())
            orch = SeedOrchestrator(bus, master_seed=seed, projector=proj)
            driver_ids = IdSource(rng)
            times: dict[str, list[float]] = {k: [] for k in KINDS}
            done: dict[str, list[int]] = {k: [] for k in KINDS}
            for i in range(decisions):
                step = i + 1
                maintain(bus, driver_ids, step, rng)
                proj.apply_all((r.seq, r.event) for r in db.read(from_seq=proj.last_seq + 1))
                stats = {
                    sid: SeedStats(seed=sid, contribution=rng.uniform(-0.05, 0.1))
                    for layer in bus.layers.values()
                    for sid in layer.seed_ids()
                }
                kind = KINDS[i % len(KINDS)]
                decision = AdaptationDecision(
                    layer_name=("layer1", "layer2")[(i // len(KINDS)) % 2],
                    adaptation_type=kind,
                    parameters={"num_seeds": 2} if kind == "add_seed" else {},
                    reason="b3",
                )
                t = time.perf_counter()
                _, details = orch.apply_architecture_modification_sync(
                    model, decision, stats=stats, step=step
                )
                times[kind].append((time.perf_counter() - t) * 1e3)
                done[kind].append(sum(1 for x in details["commands"] if x["accepted"]))
            assert proj.last_seq == db.head_seq()
        return times, done
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    """Print the machine and the latency table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--decisions", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run(20, args.seed + 1)  # warm-up: imports, first kernel builds, SQLite caches
    times, done = run(args.decisions, args.seed)
    every = [x for xs in times.values() for x in xs]
    print("### B3: decision → committed → projected (DigitsCNN, 2 seed layers of 4 seeds)\n")
    print_machine()
    rows = [
        [
            k,
            len(v),
            f"{statistics.mean(done[k]):.1f}",
            f"{statistics.median(v):.2f}",
            f"{pct(v, 0.99):.2f}",
            f"{max(v):.2f}",
        ]
        for k, v in times.items()
    ]
    per = statistics.mean(x for xs in done.values() for x in xs)
    p50, p99 = statistics.median(every), pct(every, 0.99)
    rows.append(
        [
            "**all**",
            len(every),
            f"{per:.1f}",
            f"**{p50:.2f}**",
            f"**{p99:.2f}**",
            f"{max(every):.2f}",
        ]
    )
    header = ["adaptation_type", "decisions", "seed commands / decision", "p50 ms", "p99 ms"]
    table([*header, "max ms"], rows)
    verdict = "meets" if p50 <= P50_MS and p99 <= P99_MS else "MISSES"
    print(f"Target p50 ≤ {P50_MS:g} ms, p99 ≤ {P99_MS:g} ms: {verdict} the target.")


if __name__ == "__main__":
    main()
