"""The report's figures, drawn with matplotlib's Agg backend (no display, no network).

Each function takes the report model and returns PNG bytes; `render_all` names them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # before pyplot: the report runs headless, in CI and over ssh

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from esper_es.report.model import STAGES, BranchView, RunReport

#: One colour per lifecycle stage: greys for slots without a kernel, blues/greens on the way
#: in, dark green for kept, reds for removed. The HTML legend uses the same table.
STAGE_COLOURS: Mapping[str, str] = {
    "DORMANT": "#e6e6e6",
    "GERMINATED": "#c6dbef",
    "TRAINING": "#6baed6",
    "GRAFTING": "#fdd49e",
    "STABILIZATION": "#fdae6b",
    "EVALUATING": "#c994c7",
    "FINE_TUNING": "#74c476",
    "FOSSILIZED": "#006d2c",
    "CULLED": "#de2d26",
    "CANCELLED": "#fc9272",
    "ROLLED_BACK": "#a50f15",
    "EMBARGOED": "#969696",
}
#: Marker kind -> (colour, line style) on the curves.
MARKER_STYLE: Mapping[str, tuple[str, str]] = {
    "decision": ("#7f7f7f", ":"),
    "germinated": ("#2171b5", "--"),
    "fossilized": ("#006d2c", "-"),
    "culled": ("#de2d26", "--"),
    "seed rolled back": ("#a50f15", "--"),
    "cancelled": ("#fc9272", "--"),
    "run rollback": ("#000000", "-"),
}
BRANCH_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
assert set(STAGE_COLOURS) == set(STAGES)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _own_points(report: RunReport, b: BranchView) -> list[tuple[int, float, float | None, float]]:
    """(step, val_loss, val_accuracy, train_loss) of a branch, from its fork on (main: all)."""
    lo = b.fork_step if b.parent is not None else -1
    return [(p.step, p.val_loss, p.val_accuracy, p.train_loss) for p in b.epochs if p.step >= lo]


def curves(report: RunReport) -> bytes:
    """Loss and accuracy per epoch against step, per branch, with architecture events."""
    with plt.rc_context():
        return _curves(report)


def _curves(report: RunReport) -> bytes:
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for i, b in enumerate(report.branches):
        colour = BRANCH_COLOURS[i % len(BRANCH_COLOURS)]
        pts = _own_points(report, b)
        if b.parent is not None:
            # Start the branch's line at its fork, where it shares its parent's state.
            before = [p for p in report.branch(b.parent).epochs if p.step <= b.fork_step]
            if before:
                q = before[-1]
                pts.insert(0, (q.step, q.val_loss, q.val_accuracy, q.train_loss))
        if not pts:
            continue
        steps = [p[0] for p in pts]
        style = "-" if b.parent is None else "--"
        # The parent is drawn wide underneath, so a branch that repeats it stays visible on top.
        plt.rcParams["lines.linewidth"] = 3.0 if b.parent is None else 1.4
        own = [(st, lo) for st, lo in b.step_losses if b.parent is None or st > b.fork_step]
        if own:
            # Per step where the run recorded it: the epoch means hide what a decision did.
            ax_loss.plot([st for st, _ in own], [lo for _, lo in own], "-", color=colour,
                         alpha=0.3, lw=0.8, label=f"train loss per step ({b.name})")  # fmt: skip
        else:
            ax_loss.plot(steps, [p[3] for p in pts], style, color=colour, alpha=0.45,
                         label=f"train loss ({b.name})")  # fmt: skip
        ax_loss.plot(steps, [p[1] for p in pts], style, color=colour, marker="o", ms=3,
                     label=f"validation loss ({b.name})")  # fmt: skip
        accs = [(s, a) for s, _, a, _ in pts if a is not None]
        if accs:
            ax_acc.plot([s for s, _ in accs], [100 * a for _, a in accs], style, color=colour,
                        marker="o", ms=3, label=f"validation accuracy ({b.name})")  # fmt: skip
    seen_kinds: set[str] = set()
    for b in report.branches:
        for m in b.markers:
            if b.parent is not None and m.seq <= b.fork_seq and m.kind != "run rollback":
                continue  # drawn already by the parent
            colour, ls = MARKER_STYLE.get(m.kind, ("#444444", ":"))
            for ax in (ax_loss, ax_acc):
                ax.axvline(m.step, color=colour, ls=ls, lw=1.0, alpha=0.8)
            seen_kinds.add(m.kind)
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_acc.set_xlabel("training step")
    handles = [
        Line2D([0], [0], color=MARKER_STYLE[k][0], ls=MARKER_STYLE[k][1], label=k)
        for k in MARKER_STYLE
        if k in seen_kinds
    ]
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_acc.legend(handles=ax_acc.get_legend_handles_labels()[0] + handles, loc="lower right",
                  fontsize=8, title="curves and events", title_fontsize=8)  # fmt: skip
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    ax_loss.set_title("Loss and accuracy; vertical lines mark architecture events")
    return _png(fig)


def lifecycle(report: RunReport) -> bytes:
    """A swimlane per seed and branch: the lifecycle stage over the steps."""
    rows: list[tuple[str, BranchView, str]] = []
    for b in report.branches:
        for seed in report.seeds or sorted(b.lanes):
            rows.append((f"{seed}  [{b.name}]", b, seed))
    height = max(2.5, 0.42 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(11, height))
    last = max((b.last_step for b in report.branches), default=1) or 1
    min_width = last / 300  # a stage entered and left at one step still shows as a sliver
    for y, (_, b, seed) in enumerate(rows):
        for span in b.lanes.get(seed, ()):
            if b.parent is not None and span.end <= b.fork_step and span.end < b.last_step:
                colour = STAGE_COLOURS[span.stage]
                ax.broken_barh([(span.start, max(span.end - span.start, min_width))],
                               (y - 0.35, 0.7), facecolors=colour, alpha=0.35)  # fmt: skip
                continue
            ax.broken_barh([(span.start, max(span.end - span.start, min_width))],
                           (y - 0.35, 0.7), facecolors=STAGE_COLOURS[span.stage],
                           edgecolor="white", linewidth=0.5)  # fmt: skip
            if span.blueprint and span.stage == "GERMINATED":
                ax.text(span.start + min_width, y, f" {span.blueprint}", fontsize=7,
                        va="center", ha="right", color="#08306b")  # fmt: skip
        if b.parent is not None:
            ax.plot([b.fork_step, b.fork_step], [y - 0.45, y + 0.45], color="black", lw=1.5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, last * 1.01)
    ax.set_xlabel("training step")
    ax.set_title("Seed lifecycles (one lane per seed and branch; black tick = branch fork)")
    used = [s for s in STAGES if any(sp.stage == s for _, b, sd in rows for sp in b.lanes[sd])]
    ax.legend(
        handles=[Patch(facecolor=STAGE_COLOURS[s], label=s) for s in used],
        loc="upper center", bbox_to_anchor=(0.5, -0.5 / height - 0.04), ncol=min(6, len(used)),
        fontsize=8, frameon=False,
    )  # fmt: skip
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)


def alphas(report: RunReport) -> bytes:
    """Each seed's blend factor over the steps, one panel per branch."""
    n = len(report.branches)
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.6 * n + 0.6), sharex=True, squeeze=False)
    for ax, b in zip(axes[:, 0], report.branches, strict=True):
        drawn = False
        for seed, pts in sorted(b.alphas.items()):
            if not pts:
                continue
            ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", label=seed)
            drawn = True
        if b.parent is not None:
            ax.axvline(b.fork_step, color="black", lw=1.2, label=f"fork from {b.parent}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(0, max(1, max(x.last_step for x in report.branches)) * 1.01)
        ax.set_ylabel("alpha")
        ax.set_title(f"branch {b.name}", fontsize=9, loc="left")
        ax.grid(True, alpha=0.3)
        if drawn or b.parent is not None:
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no seed was blended in on this branch", transform=ax.transAxes,
                    ha="center", va="center", color="#666666")  # fmt: skip
    axes[-1, 0].set_xlabel("training step")
    return _png(fig)


def kernels(report: RunReport) -> bytes:
    """Per blueprint: how many kernels were germinated, fossilized and removed."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [k.blueprint for k in report.kernels]
    cols = (
        ("germinated", "#2171b5", [k.germinated for k in report.kernels]),
        ("fossilized", "#006d2c", [k.fossilized for k in report.kernels]),
        ("culled / rolled back / cancelled", "#de2d26",
         [k.culled + k.rolled_back + k.cancelled for k in report.kernels]),
    )  # fmt: skip
    width = 0.27
    for i, (label, colour, values) in enumerate(cols):
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=label,
               color=colour)  # fmt: skip
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("kernels")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not names:
        ax.text(0.5, 0.5, "no kernel was germinated", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Kernels per blueprint")
    return _png(fig)


def render_all(report: RunReport) -> dict[str, bytes]:
    """Every figure, by file name."""
    return {
        "curves.png": curves(report),
        "lifecycle.png": lifecycle(report),
        "alpha.png": alphas(report),
        "kernels.png": kernels(report),
    }
