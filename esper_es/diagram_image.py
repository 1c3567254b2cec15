"""The lifecycle drawn as an image (PNG or SVG) with matplotlib, from the live machine.

Graphviz would lay this out too, but it is a system binary most users lack; matplotlib is
already a dependency (the report's plots), and the graph is small and mostly one path, so
a layered layout computed here reads well: the path to FOSSILIZED along the top, the
states that leave it in a row below, and what leads back to DORMANT below that.
"""

from __future__ import annotations

import io
from collections import defaultdict

from esper_es.core.lifecycle import MACHINE, TERMINAL_STAGES
from esper_es.diagram import lifecycle_edges

__all__ = ["IMAGE_FORMATS", "lifecycle_image", "lifecycle_layout"]

#: Image formats `lifecycle_image` writes.
IMAGE_FORMATS = ("png", "svg")

_MIN_GAP = 1.6  # horizontal room a box needs in one row, in column units


def _happy_path(succ: dict[str, list[str]]) -> list[str]:
    """The longest simple path from the initial state to a terminal one."""
    best: list[str] = []

    def walk(path: list[str]) -> None:
        nonlocal best
        here = path[-1]
        if here in TERMINAL_STAGES and len(path) > len(best):
            best = list(path)
        for nxt in succ[here]:
            if nxt not in path:
                walk([*path, nxt])

    walk([str(MACHINE.initial)])
    return best


def lifecycle_layout() -> dict[str, tuple[float, float]]:
    """Each state's (x, y): the happy path on row 0, its exits on row -1, the rest below."""
    edges, _ = lifecycle_edges()
    succ: dict[str, list[str]] = defaultdict(list)
    pred: dict[str, list[str]] = defaultdict(list)
    for src, _t, dst, _g in edges:
        if dst not in succ[src]:
            succ[src].append(dst)
            pred[dst].append(src)
    pos = {state: (float(i), 0.0) for i, state in enumerate(_happy_path(succ))}
    row = -1.0
    remaining = [str(s) for s in MACHINE.states if str(s) not in pos]
    while remaining:
        # A state joins the first row below every state that leads into it.
        placed = [s for s in remaining if any(p in pos for p in pred[s])]
        if not placed:  # unreachable from the drawn part: park them in a row of their own
            placed = remaining
        xs = {
            s: sum(pos[p][0] for p in pred[s] if p in pos) / max(1, sum(p in pos for p in pred[s]))
            for s in placed
        }
        last = float("-inf")
        for s in sorted(placed, key=lambda s: (xs[s], s)):
            x = max(xs[s], last + _MIN_GAP)
            pos[s] = (x, row)
            last = x
        remaining = [s for s in remaining if s not in pos]
        row -= 1.0
    return pos


def lifecycle_image(fmt: str = "png") -> bytes:
    """The lifecycle as a PNG or SVG image (bytes), reproducible for the same machine."""
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; known: {', '.join(IMAGE_FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, internal = lifecycle_edges()
    pos = lifecycle_layout()
    width = max(x for x, _ in pos.values()) + 2.0
    depth = -min(y for _, y in pos.values()) + 1.0
    fig, ax = plt.subplots(figsize=(1.9 * width, 1.7 * depth + 2.2))
    ax.set_axis_off()
    ax.set_xlim(-1.0, width - 1.0)
    ax.set_ylim(-depth - 0.9, 0.8)

    boxes = {}
    for state, (x, y) in pos.items():
        terminal = state in TERMINAL_STAGES
        boxes[state] = ax.annotate(
            state,
            (x, y),
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold" if terminal or state == MACHINE.initial else "normal",
            bbox={
                "boxstyle": "round,pad=0.4",
                "fc": "#d9f2d9" if terminal else "#eef3fb",
                "ec": "#2e7d32" if terminal else "#34495e",
                "lw": 2.0 if terminal else 1.0,
            },
        )

    # One label per (trigger, destination): `cull` from three states is one idea.
    groups: dict[tuple[str, str], list[tuple[str, str | None]]] = defaultdict(list)
    for src, trigger, dst, gate in edges:
        groups[(trigger, dst)].append((src, gate))
    gates: dict[str, str] = {}
    for (trigger, dst), sources in groups.items():
        back = pos[dst][0] < min(pos[s][0] for s, _ in sources) and pos[dst][1] > min(
            pos[s][1] for s, _ in sources
        )
        for i, (src, gate) in enumerate(sources):
            if gate:
                gates[trigger] = gate
            rad = -0.35 if back else (0.0 if pos[src][1] == pos[dst][1] else 0.08)
            ax.annotate(
                "",
                xy=(0.5, 0.5),
                xycoords=boxes[dst],
                xytext=(0.5, 0.5),
                textcoords=boxes[src],
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": "#34495e" if not back else "#8e44ad",
                    "lw": 1.0,
                    "shrinkA": 4,
                    "shrinkB": 4,
                    "connectionstyle": f"arc3,rad={rad}",
                    "patchA": boxes[src].get_bbox_patch(),
                    "patchB": boxes[dst].get_bbox_patch(),
                },
            )
            if i == len(sources) // 2:
                # The midpoint of arc3's quadratic Bézier: the chord's middle pushed
                # sideways by half the curvature (close enough in data units here).
                (x0, y0), (x1, y1) = pos[src], pos[dst]
                lx = (x0 + x1) / 2 + 0.5 * rad * (y1 - y0)
                ly = (y0 + y1) / 2 - 0.5 * rad * (x1 - x0)
                if y0 == y1:
                    ly += 0.2
                ax.text(
                    lx,
                    ly,
                    trigger,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#555",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"},
                )

    legend = [f"{t}: {g}" for t, g in gates.items()]
    legend += [f"{t} (stage kept) in {', '.join(s)}" for t, s in internal.items()]
    ax.text(
        -0.9,
        -depth - 0.75,
        "\n".join(["gates and internal triggers:", *legend]),
        ha="left",
        va="bottom",
        fontsize=8,
        family="monospace",
        color="#333",
    )
    ax.set_title("esper-es seed lifecycle", fontsize=11, loc="left")
    buf = io.BytesIO()
    # No dates or salts in the file, so the same machine draws the same bytes.
    metadata: dict[str, str | None] = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.hashsalt": "esper-es", "svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=metadata, dpi=110)
    plt.close(fig)
    return buf.getvalue()
