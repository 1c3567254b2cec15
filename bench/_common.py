"""Shared by the bench scripts: the machine description, medians, markdown tables, workloads."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from esper_es.core import events as ev  # noqa: E402
from esper_es.core.envelope import NewEvent  # noqa: E402
from esper_es.core.ids import IdSource, event_id, new_id  # noqa: E402

PACKAGES = (
    "esper-es",
    "attrs",
    "cattrs",
    "transitions",
    "fastjsonschema",
    "jsonschema",
    "structlog",
    "sqlite-utils",
    "eventsourcing",
    "torch",
)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load average: other work on the machine skews every number."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine() -> list[tuple[str, str]]:
    """What ran the benchmark: platform, CPU, cores, Python, SQLite, package versions."""
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (absent)")
    return [
        ("platform", platform.platform()),
        ("CPU", cpu_model()),
        ("cores", str(os.cpu_count())),
        ("Python", sys.version.split()[0]),
        ("SQLite", sqlite3.sqlite_version),
        ("packages", ", ".join(versions)),
        ("load average at start (1, 5, 15 min)", load_average()),
    ]


def print_machine() -> None:
    """Print the machine as a markdown table."""
    table(["machine", ""], machine())


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print()


def adding_time(
    spent: MutableMapping[str, float], label: str, fn: Callable[..., Any]
) -> Callable[..., Any]:
    """`fn`, adding the wall seconds of each call to `spent[label]`."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    return timed


def median_of(reps: int, fn: Callable[[], float]) -> float:
    """Median of `reps` calls of `fn` (each returns a measurement)."""
    return statistics.median(fn() for _ in range(reps))


def timed(fn: Callable[[], Any]) -> float:
    """Seconds `fn()` took."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def lifecycle_events(
    n_events: int, *, seeds: int = 500, layers: int = 10, seed: int = 0
) -> Iterator[ev.SeedEvent]:
    """Realistic seed events, interleaved over many seeds: full lifecycles with blend ramps,
    fossilized, or culled / embargoed / released and germinated again."""
    rng = random.Random(seed)
    per_layer = max(1, seeds // layers)
    ids = [f"layer{i // per_layer}/{i % per_layer}" for i in range(seeds)]
    scripts: dict[str, Iterator[Callable[[int], ev.SeedEvent]]] = {}

    def script(s: str) -> Iterator[Callable[[int], ev.SeedEvent]]:
        while True:
            yield lambda t: ev.SeedGerminated(
                seed=s,
                step=t,
                layer=s.rsplit("/", 1)[0],
                blueprint=rng.choice(("conv3x3", "mlp", "lora")),
                kernel_id="k-" + new_id(rng).replace("-", ""),
                init_seed=rng.randrange(2**31),
                blend_target=1.0,
            )
            yield lambda t: ev.SeedTrainingStarted(seed=s, step=t)
            if rng.random() < 0.3:
                yield lambda t: ev.SeedCulled(seed=s, step=t, reason="no improvement")
                yield lambda t: ev.SeedEmbargoed(seed=s, step=t, until_step=t + 50)
                yield lambda t: ev.SeedReleased(seed=s, step=t)
                continue
            yield lambda t: ev.SeedGraftingStarted(seed=s, step=t, improvement=rng.random())
            for k in range(1, 11):
                yield lambda t, k=k: ev.BlendAdjusted(seed=s, step=t, alpha=k / 10)  # type: ignore[misc]
            yield lambda t: ev.SeedStabilized(seed=s, step=t, alpha=1.0)
            yield lambda t: ev.SeedEvaluationStarted(seed=s, step=t)
            yield lambda t: ev.SeedFineTuningStarted(seed=s, step=t, contribution=rng.random())
            if rng.random() < 0.5:
                yield lambda t: ev.SeedFossilized(seed=s, step=t, contribution=0.5, instability=0.1)
                return
            yield lambda t: ev.SeedRolledBack(seed=s, step=t, reason="contribution fell")
            yield lambda t: ev.SeedEmbargoed(seed=s, step=t, until_step=t + 50)
            yield lambda t: ev.SeedReleased(seed=s, step=t)

    step = 0
    produced = 0
    live = list(ids)
    while produced < n_events:
        if not live:  # every seed fossilized: open a fresh generation of slots
            live = [f"layer{j % layers}x{step}/{j}" for j in range(seeds)]
        s = rng.choice(live)
        gen = scripts.setdefault(s, script(s))
        make = next(gen, None)
        if make is None:
            live.remove(s)
            continue
        step += 1
        yield make(step)
        produced += 1


def stamped(events: Sequence[ev.Event], *, seed: int = 1) -> list[NewEvent]:
    """Each event as its own command's, with ordered command ids as the framework makes them
    (`IdSource`), correlated in tens to one decision."""
    rng = random.Random(seed)
    out = []
    commands, decisions = IdSource(rng), IdSource(rng)
    corr = decisions()
    for i, e in enumerate(events):
        if i % 10 == 0:
            corr = decisions()
        cid = commands()
        out.append(NewEvent(e, event_id(cid, 0), cid, corr))
    return out


def batches_of(
    events: Sequence[NewEvent], size: int, versions: dict[str, int]
) -> Iterator[list[tuple[str, int, list[NewEvent]]]]:
    """`append_batch` arguments: `size` events at a time, grouped by stream, versions tracked."""
    for i in range(0, len(events), size):
        groups: dict[str, list[NewEvent]] = {}
        for ne in events[i : i + size]:
            groups.setdefault(ne.event.stream(), []).append(ne)
        batch = []
        for stream, evs in groups.items():
            v = versions.get(stream, 0)
            batch.append((stream, v, evs))
            versions[stream] = v + len(evs)
        yield batch
