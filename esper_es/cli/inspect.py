"""`esper-es inspect`: seed states and alphas at any seq, folded from the log."""

from __future__ import annotations

from typing import Any

from esper_es.core import events as ev
from esper_es.core.decider import evolve
from esper_es.core.state import LayerState, SeedState
from esper_es.store.protocol import RunStore


def lifecycle_at(db: RunStore, at_seq: int | None, branch: str) -> dict[str, Any]:
    """The architecture's lifecycle part at `at_seq` (head when None) on `branch`."""
    layers: dict[str, LayerState] = {}
    seeds: dict[str, SeedState] = {}
    fingerprint: str | None = None
    last = 0
    for rec in db.read(branch=branch, to_seq=at_seq):
        e = rec.event
        last = rec.seq
        if isinstance(e, ev.SeedEvent):
            seeds[e.seed] = evolve(seeds.get(e.seed) or SeedState.dormant(e.seed), e)
        elif isinstance(e, ev.SeedLayerRegistered):
            layers[e.layer] = evolve(layers.get(e.layer), e)
        fp = rec.payload.get("fingerprint")
        if isinstance(fp, str) and fp.startswith("sha256:"):
            fingerprint = fp
    counts: dict[str, int] = {}
    out_layers: dict[str, Any] = {}
    for name in sorted(layers):
        layer = layers[name]
        rows = []
        for sid in layer.seed_ids():
            s = seeds.get(sid) or SeedState.dormant(sid)
            counts[s.stage.value] = counts.get(s.stage.value, 0) + 1
            rows.append(
                {
                    "seed": sid,
                    "stage": s.stage.value,
                    "blueprint": s.blueprint,
                    "kernel_id": s.kernel_id,
                    "alpha": s.alpha,
                    "blend_target": s.blend_target,
                    "version": s.version,
                }
            )
        out_layers[name] = {
            "shape_kind": layer.shape_kind,
            "channels": layer.channels,
            "blueprints": sorted(layer.blueprints),
            "seeds": rows,
        }
    return {
        "at_seq": last,
        "fingerprint": fingerprint,
        "layers": out_layers,
        "stages": dict(sorted(counts.items())),
    }
