"""Schema validation per payload: fastjsonschema's compiled validator vs a reused `jsonschema`
Draft 2020-12 validator, on real event payloads (the code's choice of fastjsonschema rests on
this: validation sits on the append path and on every read)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
import jsonschema
from _common import lifecycle_events, median_of, print_machine, table

from esper_es.core.events import to_payload
from esper_es.store import schemas


def per_payload_us(
    check: Mapping[tuple[str, int], Callable[[Any], Any]],
    items: list[tuple[str, int, dict[str, Any]]],
) -> float:
    """µs per payload validating every item once with the validators in `check`."""
    t = time.perf_counter()
    for type_name, version, payload in items:
        check[(type_name, version)](payload)
    return (time.perf_counter() - t) / len(items) * 1e6


def main() -> None:
    """Run the comparison and print its table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--payloads", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    items = [(e.TYPE, e.VERSION, to_payload(e)) for e in lifecycle_events(args.payloads)]
    keys = {(t, v) for t, v, _ in items}
    all_schemas = schemas.load_schemas()
    fast = {k: fastjsonschema.compile(all_schemas[k]) for k in keys}
    slow = {k: jsonschema.Draft202012Validator(all_schemas[k]).validate for k in keys}
    per_type: list[list[str]] = []
    for key in sorted(keys):
        sub = [it for it in items if (it[0], it[1]) == key]
        f = median_of(args.reps, lambda sub=sub: per_payload_us(fast, sub))  # type: ignore[misc]
        s = median_of(args.reps, lambda sub=sub: per_payload_us(slow, sub))  # type: ignore[misc]
        per_type.append(
            [f"{key[0]} v{key[1]}", str(len(sub)), f"{f:.2f}", f"{s:.2f}", f"{s / f:.0f}x"]
        )
    f_all = median_of(args.reps, lambda: per_payload_us(fast, items))
    s_all = median_of(args.reps, lambda: per_payload_us(slow, items))

    print(f"## Schema validation: fastjsonschema vs jsonschema, {len(items):,} real payloads\n")
    print_machine()
    rows = [
        *per_type,
        [
            f"**all ({len(keys)} types, realistic mix)**",
            str(len(items)),
            f"**{f_all:.2f}**",
            f"**{s_all:.2f}**",
            f"**{s_all / f_all:.0f}x**",
        ],
    ]
    table(
        [
            f"payload type (median of {args.reps})",
            "payloads",
            "fastjsonschema µs",
            "jsonschema (reused Draft202012Validator) µs",
            "ratio",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
