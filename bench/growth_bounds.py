"""What growth within the seed design can reach on B9 and B12, and what B9's lift owes to selection.

Four measurements (issue 11), each on tuning seeds and the validation split, none a target:

- `digits-branches`: the width-4 digits host with residual branches of the kinds a seed may
  hold, present and trained from the first step (no lifecycle), against the same host static
  and at width 8. The most residual kernels could add if they were there all along.
- `text-branches`: the same for the text config: one `mlp` branch of the whole kernel budget
  on `ln_f` (the head's input), trained from the first step, against the narrow and the wide
  host. Then `text-late`: that branch switched on at a later step, in a plain loop (the
  trainer cannot add a module mid-run except through a seed's lifecycle).
- `digits-heldout`: B9's seeded and static runs with a test split held out of the training
  part, so the lift can be read on images the lifecycle gates never measured on.

    .venv/bin/python bench/growth_bounds.py            # all four (~12 minutes on 2 cores)
    .venv/bin/python bench/growth_bounds.py digits-branches [--seeds 100-115]
    .venv/bin/python bench/growth_bounds.py text-branches [--seeds 100-102]
    .venv/bin/python bench/growth_bounds.py text-late [--seeds 100-102] [--join 0 20 61]
    .venv/bin/python bench/growth_bounds.py digits-heldout [--seeds 100-115]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import print_machine, table
from esper_es.config import RunConfig, SeedsConfig, load_config
from esper_es.core.ids import derive_seed
from esper_es.core.lr_schedule import lr_factor
from esper_es.runtime.data import stratified_split
from esper_es.runtime.environment import pin_threads
from esper_es.trainer.loop import Trainer
from esper_es.trainer.tasks import Task, build_task

ROOT = Path(__file__).resolve().parent.parent


class WithBranch(nn.Module):
    """`inner` followed by a residual branch: y + branch(y), y = inner(x)."""

    def __init__(self, inner: nn.Module, branch: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.branch = branch
        #: Off: the branch is skipped (no output, no gradient), for a branch that joins later.
        self.on = True

    def forward(self, x: Tensor) -> Tensor:
        """The inner module's output plus the branch's, while the branch is on."""
        y: Tensor = self.inner(x)
        return y + self.branch(y) if self.on else y


def conv_branch(channels: int, hidden: int) -> nn.Module:
    """A conv3x3 residual body, channels → hidden → channels (the `conv3x3` kind's shape)."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, channels, 3, padding=1),
    )


def mlp_branch(features: int, hidden: int) -> nn.Module:
    """A two-layer MLP over features (the `mlp` kind's shape)."""
    return nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, features))


def add_branch(host: nn.Module, where: str, branch: nn.Module) -> None:
    """Wrap `host.<where>` (a direct child) in a `WithBranch`."""
    setattr(host, where, WithBranch(getattr(host, where), branch))


def seeded_branches(seed: int, make: Callable[[], None]) -> None:
    """Build branches from their own seed, leaving the caller's RNG stream alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "bound-branches"))
        make()


def train(
    config: RunConfig,
    task: Task,
    seed: int,
    *,
    seeded: bool,
    train_data: tuple[Tensor, Tensor] | None = None,
) -> tuple[Trainer, Any]:
    """`Trainer.run` on `task` (its host as modified), into a throw-away database."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            task.host,
            config=config,
            master_seed=seed,
            db_path=Path(tmp) / "run.db",
            train_data=train_data or (task.x_train, task.y_train),
            val_data=(task.x_val, task.y_val),
            loss_fn=task.loss_fn,
            metric_fn=task.metric_fn,
            loss_and_metric=task.loss_and_metric,
            example_input=task.example_input,
            dataset_fingerprint=task.fingerprint,
            **({} if seeded else {"controller": None}),
        )
        return trainer, trainer.run()


def static(config: RunConfig, **host: Any) -> RunConfig:
    """`config` with no seed layers and its host changed by `host`."""
    return attrs.evolve(config, host=attrs.evolve(config.host, **host), seeds=SeedsConfig({}))


def parameters(model: nn.Module) -> int:
    """How many parameters `model` holds."""
    return sum(p.numel() for p in model.parameters())


def digits_branches(seeds: list[int]) -> None:
    """Width-4 digits host + always-on residual branches vs static width 4 and 8."""
    base = RunConfig()

    def variant(name: str, seed: int) -> tuple[float, float, int]:
        width = 8 if name == "static, width 8" else 4
        config = static(base, width=width)
        task = build_task(config, seed)
        host = task.host
        if name == "conv3x3 4→16→4 after layer2":
            seeded_branches(seed, lambda: add_branch(host, "layer2", conv_branch(4, 16)))
        elif name == "the same after layer1 and layer2":
            seeded_branches(
                seed,
                lambda: [add_branch(host, n, conv_branch(4, 16)) for n in ("layer1", "layer2")],
            )
        elif name == "mlp 64→80→64 on flatten":
            seeded_branches(seed, lambda: add_branch(host, "flatten", mlp_branch(64, 80)))
        _, r = train(config, task, seed, seeded=False)
        return float(r.accuracy_end or 0.0), r.val_loss_end, parameters(host)

    names = [
        "static, width 4",
        "static, width 8",
        "conv3x3 4→16→4 after layer2",
        "the same after layer1 and layer2",
        "mlp 64→80→64 on flatten",
    ]
    rows = _interleaved(names, seeds, variant)
    print(f"## Digits: always-on residual branches (seeds {_span(seeds)})\n")
    table(["variant", "parameters", "mean val. accuracy", "mean val. loss"], rows)


def text_branches(seeds: list[int]) -> None:
    """Narrow text host + one always-on `mlp` x11 branch on `ln_f` vs narrow and wide static."""
    base = load_config(ROOT / "configs" / "text.toml")

    def variant(name: str, seed: int) -> tuple[float, float, int]:
        d = 64 if name == "static, d_model 64" else 32
        config = static(base, d_model=d)
        task = build_task(config, seed)
        if name.startswith("mlp"):
            seeded_branches(seed, lambda: add_branch(task.host, "ln_f", mlp_branch(32, 352)))
        _, r = train(config, task, seed, seeded=False)
        return float(r.accuracy_end or 0.0), r.val_loss_end, parameters(task.host)

    names = ["static, d_model 32", "static, d_model 64", "mlp 32→352→32 on ln_f, from step 0"]
    rows = _interleaved(names, seeds, variant)
    print(f"## Text: an always-on branch on ln_f (seeds {_span(seeds)})\n")
    table(["variant", "parameters", "mean val. accuracy", "mean val. loss"], rows)


def text_late(seeds: list[int], joins: list[int], rates: list[float]) -> None:
    """A plain loop: the `ln_f` branch switched on at step `join`, at learning rate `rate`."""
    base = load_config(ROOT / "configs" / "text.toml")
    t = base.train
    rows = []
    for label, join, rate in [
        ("static, d_model 32", None, None),
        ("static, d_model 64", None, None),
    ] + [(f"branch on from step {j}, lr {r:g}", j, r) for j in joins for r in rates]:
        losses = []
        for seed in seeds:
            d = 64 if label.endswith("64") else 32
            task = build_task(static(base, d_model=d), seed)
            model = task.host
            groups: list[dict[str, Any]] = []
            branch: WithBranch | None = None
            if join is not None:
                branch = _seeded_branch(seed, model)
                groups.append({"params": list(branch.branch.parameters()), "base": rate})
            own = {id(p) for g in groups for p in g["params"]}
            groups.insert(0, {"params": [p for p in model.parameters() if id(p) not in own]})
            groups[0]["base"] = t.lr
            opt = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
            x, y = task.x_train, task.y_train
            n = len(x)
            horizon = t.epochs * -(-n // t.batch_size)
            g = torch.Generator().manual_seed(derive_seed(seed, "bound-order"))
            step = 0
            for _ in range(t.epochs):
                model.train()
                order = torch.randperm(n, generator=g)
                for i in range(0, n, t.batch_size):
                    if branch is not None:
                        branch.on = step >= (join or 0)
                    f = lr_factor(t.lr_schedule, step, horizon, t.lr_warmup_steps, t.lr_min_factor)
                    for group in opt.param_groups:
                        group["lr"] = group["base"] * f
                    idx = order[i : i + t.batch_size]
                    opt.zero_grad(set_to_none=True)
                    task.loss_fn(model, (x[idx], y[idx])).backward()  # type: ignore[no-untyped-call]
                    opt.step()
                    step += 1
            model.eval()
            with torch.no_grad():
                losses.append(float(task.loss_fn(model, (task.x_val, task.y_val))))
        rows.append(
            [label, f"{statistics.mean(losses):.4f}", " / ".join(f"{v:.4f}" for v in losses)]
        )
    print(f"## Text: the ln_f branch joining later, plain loop (seeds {_span(seeds)})\n")
    table(["variant", "mean val. loss", "per seed"], rows)


def _seeded_branch(seed: int, model: nn.Module) -> WithBranch:
    seeded_branches(seed, lambda: add_branch(model, "ln_f", mlp_branch(32, 352)))
    wrapped = model.ln_f
    assert isinstance(wrapped, WithBranch)
    return wrapped


def digits_heldout(seeds: list[int]) -> None:
    """B9's seeded and static width-4 runs, read on validation and on a held-out test split."""
    base = RunConfig()
    out: dict[str, list[tuple[float, float]]] = {"seeded": [], "static": []}
    for seed in seeds:
        for name in out:
            config = base if name == "seeded" else static(base)
            task = build_task(config, seed)
            keep, test = stratified_split(task.y_train, seed, 0.2, tag="bound-test")
            trainer, r = train(
                config,
                task,
                seed,
                seeded=name == "seeded",
                train_data=(task.x_train[keep], task.y_train[keep]),
            )
            model = trainer.model.eval()
            with torch.no_grad():
                x, y = task.x_train[test], task.y_train[test]
                test_acc = float((model(x).argmax(-1) == y).to(torch.float64).mean())
            out[name].append((float(r.accuracy_end or 0.0), test_acc))
    rows = [
        [
            name,
            f"{100 * statistics.mean(v for v, _ in runs):.2f} %",
            f"{100 * statistics.mean(t for _, t in runs):.2f} %",
        ]
        for name, runs in out.items()
    ]
    lift_val = statistics.mean(
        a[0] - b[0] for a, b in zip(out["seeded"], out["static"], strict=True)
    )
    lift_test = statistics.mean(
        a[1] - b[1] for a, b in zip(out["seeded"], out["static"], strict=True)
    )
    rows.append(["seeded - static", f"{100 * lift_val:+.2f} pp", f"{100 * lift_test:+.2f} pp"])
    print(f"## Digits: the lift on validation and on held-out test images (seeds {_span(seeds)})\n")
    table(["variant", "validation (gates measure here)", "held-out test"], rows)


def _interleaved(
    names: list[str], seeds: list[int], run: Callable[[str, int], tuple[float, float, int]]
) -> list[list[str]]:
    results: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    for seed in seeds:
        for name in names:
            results[name].append(run(name, seed))
    return [
        [
            name,
            str(rs[0][2]),
            f"{100 * statistics.mean(a for a, _, _ in rs):.2f} %",
            f"{statistics.mean(v for _, v, _ in rs):.4f}",
        ]
        for name, rs in results.items()
    ]


def _span(seeds: list[int]) -> str:
    return (
        f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else str(seeds)
    )


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> int:
    """Run one measurement and print its table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "digits-branches", "text-branches", "text-late", "digits-heldout"],
    )
    ap.add_argument("--seeds", type=_seeds, default=None, help="e.g. 100-115 or 100,101")
    ap.add_argument("--join", type=int, nargs="+", default=[0, 20, 61])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.01, 0.03])
    args = ap.parse_args()
    pin_threads(1)
    print_machine()
    every = args.what == "all"
    if every or args.what == "digits-branches":
        digits_branches(args.seeds or _seeds("100-115"))
    if every or args.what == "text-branches":
        text_branches(args.seeds or _seeds("100-102"))
    if every or args.what == "text-late":
        text_late(args.seeds or _seeds("100-102"), args.join, args.rates)
    if every or args.what == "digits-heldout":
        digits_heldout(args.seeds or _seeds("100-115"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
