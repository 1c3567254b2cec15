"""`esper-es`: the command line (SPEC §8).

Exit codes: 0 success · 1 error · 2 usage or invalid config · 3 verification failed ·
4 environment mismatch · 5 run database locked or concurrency conflict · 130 interrupted.
With `--json` exactly one JSON object goes to stdout, errors included.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from esper_es import __version__
from esper_es.cli import copy as copy_cli
from esper_es.cli import ranks as ranks_cli
from esper_es.cli import sign as sign_cli
from esper_es.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    EsperError,
    MissingDependency,
    StorageError,
    TamperDetected,
    UnknownBranch,
)
from esper_es.store.pg_location import describe

EXIT_INTERRUPTED = 130
#: Import name -> the extra that installs it.
_EXTRA_MODULES = {
    "torch": "torch",
    "numpy": "torch",
    "sklearn": "torch",
    "matplotlib": "torch",
    "tensorboard": "tensorboard",
}


class UsageError(EsperError):
    """A bad command line."""

    exit_code = EXIT_USAGE


class TrainingDiverged(EsperError):
    """Training produced a non-finite loss and stopped; its log is whole and verifies."""

    exit_code = EXIT_ERROR

    def __init__(self, why: str, db: str, head_seq: int) -> None:
        super().__init__(
            f"training diverged ({why}) and stopped; {db} ends with TrainingStopped(diverged) "
            f"at seq {head_seq} and verifies. The same config diverges again: start a new run "
            "with a lower learning rate (train.lr, train.seed_lr)"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error (SPEC §9), naming where the usage is; `_fail`
        # adds the program name, so it is not repeated here.
        command = self.prog.removeprefix("esper-es").strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (usage: {self.prog} --help)")


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: Callable[[], None]) -> None:
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    else:
        text()


def _run_fields(db: Any, branch: str, fingerprint: str | None = None) -> dict[str, Any]:
    return {
        "run_id": db.run_id,
        "branch": branch,
        "head_seq": db.head_seq(branch),
        "fingerprint": fingerprint,
    }


# --- sub-commands ---------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    """Check hash chain, gap-free sequence, schemas, stream versions."""
    from esper_es.store.verify import verify

    report = verify(args.db)
    extra = sign_cli.check_verified(args, report.head_seq, report.head_hash)
    obj = {
        "ok": True,
        "run_id": report.run_id,
        "branch": "main",
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "fingerprint": None,
        "events": report.events,
        "streams": report.streams,
        "branches": list(report.branches),
        "blobs": report.blobs,
        "audit_lines": report.audit_lines,
        **extra,
    }
    signed = sign_cli.describe(extra)
    _emit(
        args,
        obj,
        lambda: print(
            f"OK  {describe(args.db)}: {report.events} events, {report.streams} streams, "
            f"branches {', '.join(report.branches)}, {report.blobs} blobs; "
            f"head seq {report.head_seq} hash {report.head_hash[:16]}…"
            + (f"; {signed}" if signed else "")
        ),
    )
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    """The audit timeline, with causes."""
    from esper_es.cli import history
    from esper_es.store.backends import open_store

    types = history.check_types(args.type)
    if args.limit is not None and args.tail is not None:
        raise UsageError("history: --limit and --tail cannot be combined")
    if args.follow and (args.json or args.limit is not None):
        raise UsageError("history: --follow streams rows; it takes neither --json nor --limit")
    with open_store(args.db, readonly=True) as db:
        branch = args.branch
        _known_branch(db, branch)
        history.check_stream(db, args.stream, branch)
        rows = list(
            history.timeline(
                db, branch=branch, stream=args.stream, types=types, limit=args.limit, tail=args.tail
            )
        )
        head = db.head_seq(branch)
        if args.json:
            obj = {**_run_fields(db, branch), "events": rows, "branches": _branches(db)}
            _emit(args, obj, lambda: None)
            return EXIT_OK
        write = history.write_rows(args.format, sys.stdout, full=args.full)
        shown = write(rows)
        if args.follow:
            ended = any(
                r["type"] == "TrainingStopped" for r in history.timeline(db, branch=branch, tail=1)
            )
            shown += history.follow(
                db,
                write,
                branch=branch,
                after_seq=head,
                stream=args.stream,
                types=types,
                ended=ended,
            )
    if args.format == "table":
        print(f"-- {history.plural(shown, 'event')} on branch {branch}")
    return EXIT_OK


def _known_branch(db: Any, name: str) -> None:
    if name not in {b.name for b in db.branches()}:
        raise UnknownBranch(name, sorted(b.name for b in db.branches()))


def cmd_runs(args: argparse.Namespace) -> int:
    """The run databases in a folder, newest first."""
    from esper_es.cli import runs as runs_cli

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(f"runs: {folder} is not a folder (train writes to runs/ by default)")
    found, skipped = runs_cli.scan(folder)
    obj = {"dir": str(folder), "runs": found, "skipped": skipped}

    def text() -> None:
        if found:
            print("\n".join(runs_cli.format_table(found)))
        note = f"; {len(skipped)} other database file(s) skipped" if skipped else ""
        print(f"-- {len(found)} run{'' if len(found) == 1 else 's'} in {folder}{note}")

    _emit(args, obj, text)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """A run's metrics as CSV or TensorBoard scalars."""
    from esper_es.report import export
    from esper_es.store.backends import open_store

    if args.format == "tensorboard" and not args.out:
        raise UsageError("export: --format tensorboard writes a folder: give --out DIR")
    if args.format == "csv" and args.out is None and args.json:
        raise UsageError("export: --json with csv needs --out FILE (stdout carries the JSON)")
    with open_store(args.db, readonly=True) as db:
        _known_branch(db, args.branch)
        series = list(export.scalars(db, args.branch))
        run_id = db.run_id
    tags = sorted({s.tag for s in series})
    if args.format == "tensorboard":
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise StorageError(str(out), "exists and is not a folder")
        written = export.write_tensorboard(series, out)
    elif args.out:
        try:
            with open(args.out, "w", newline="", encoding="utf-8") as fh:
                written = export.write_csv(series, fh)
        except OSError as exc:
            raise StorageError(str(args.out), f"cannot write ({exc.strerror or exc})") from None
    else:
        export.write_csv(series, sys.stdout)
        return EXIT_OK
    obj = {"run_id": run_id, "branch": args.branch, "format": args.format, "out": args.out}
    obj.update({"written": written, "series": tags})
    what = "scalars" if args.format == "tensorboard" else "rows"
    _emit(args, obj, lambda: print(f"wrote {written} {what} of {len(tags)} series to {args.out}"))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """Architecture, seed states and alphas at a point."""
    from esper_es.cli.inspect import lifecycle_at
    from esper_es.store.backends import open_store

    with open_store(args.db, readonly=True) as db:
        _known_branch(db, args.branch)
        head = db.head_seq(args.branch)
        if args.at is not None and args.at > head:
            # Showing the head for a seq the branch never reached would answer another question.
            raise UsageError(
                f"inspect: --at {args.at} is past the head of {args.branch} (seq {head})"
            )
        view = lifecycle_at(db, args.at, args.branch)
        obj = {**_run_fields(db, args.branch, view["fingerprint"]), **view}
    if args.at is not None:
        obj["model"] = _model_at(args.db, args.at, args.branch)
        if obj["model"].get("fingerprint"):
            obj["fingerprint"] = obj["model"]["fingerprint"]

    def text() -> None:
        print(f"run {obj['run_id']}  branch {obj['branch']}  at seq {obj['at_seq']}")
        for name, layer in obj["layers"].items():
            print(f"layer {name} ({layer['shape_kind']}, {layer['channels']} channels)")
            for s in layer["seeds"]:
                kernel = f"{s['blueprint']} {s['kernel_id']}" if s["kernel_id"] else "-"
                print(f"  {s['seed']:<16} {s['stage']:<14} alpha {s['alpha']:.4f}  {kernel}")
        print("stages: " + ", ".join(f"{k} {v}" for k, v in obj["stages"].items()))

    _emit(args, obj, text)
    return EXIT_OK


def _model_at(db: str, seq: int, branch: str) -> dict[str, Any]:
    """The model's fingerprint and architecture at `seq`, replayed from the nearest snapshot."""
    from esper_es.errors import EsperError as _Err
    from esper_es.replay.replayer import replay_model

    try:
        return replay_model(db, seq, branch)
    except (_Err, KeyError, ValueError, TypeError) as exc:
        return {"fingerprint": None, "manifest": None, "unavailable": str(exc)}


def cmd_simulate(args: argparse.Namespace) -> int:
    """Drive the real command path with a synthetic controller."""
    from esper_es.config import load_config
    from esper_es.simulate import simulate

    config = load_config(args.config)
    if args.seeds < 1 or args.events < 0:
        raise UsageError("--seeds must be at least 1 and --events at least 0")
    progress = None if args.json or not sys.stderr.isatty() else _progress(args.events)
    report = simulate(
        args.db, seeds=args.seeds, events=args.events, seed=args.seed, config=config,
        on_step=progress,
    )  # fmt: skip
    obj = {
        "run_id": report.run_id,
        "branch": "main",
        "head_seq": report.events,
        "fingerprint": None,
        "db": report.path,
        "steps": report.steps,
        "events": report.events,
        "commands": report.commands,
        "refused": report.refused,
        "stages": report.stages,
        "interrupted": report.interrupted,
    }
    _emit(
        args,
        obj,
        lambda: print(
            f"simulated run {report.run_id}: {report.events} events over {report.steps} steps, "
            f"{report.commands} commands ({report.refused} refused) -> {report.path}\n"
            "seeds: " + ", ".join(f"{k} {v}" for k, v in sorted(report.stages.items()))
        ),
    )
    return EXIT_INTERRUPTED if report.interrupted else EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train the built-in task of a run config (default: DigitsCNN on digits, with seeds)."""
    import attrs

    from esper_es.config import load_config
    from esper_es.trainer.api import built_in_trainer

    config = load_config(args.config)
    if args.numerics is not None:
        config = attrs.evolve(
            config, determinism=attrs.evolve(config.determinism, numerics=args.numerics)
        )
    if args.epochs is not None:
        if args.epochs < 1:
            raise UsageError("--epochs must be at least 1")
        config = attrs.evolve(config, train=attrs.evolve(config.train, epochs=args.epochs))
    seed = 0 if args.seed is None else args.seed
    progress = not args.json and sys.stderr.isatty()
    trainer = built_in_trainer(config, seed=seed, db_path=args.db or "", progress=progress)
    if args.db is None:
        trainer.db_path = Path("runs") / f"{trainer.run_id}.db"
    result = trainer.run()
    if result.diverged is not None:
        raise TrainingDiverged(result.diverged, result.db, result.head_seq)
    obj = {
        "run_id": result.run_id,
        "branch": result.branch,
        "head_seq": result.head_seq,
        "fingerprint": result.fingerprint,
        "accuracy_start": result.accuracy_start,
        "accuracy_end": result.accuracy_end,
        "val_loss_start": result.val_loss_start,
        "val_loss_end": result.val_loss_end,
        "seeds": result.seeds,
        "events": result.events,
        "steps": result.steps,
        "epochs": result.epochs,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "db": result.db,
    }

    def text() -> None:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f} %"

        state = "interrupted" if result.interrupted else "completed"
        print(
            f"run {result.run_id} {state}: {result.epochs} epochs, {result.steps} steps "
            f"in {result.seconds:.1f} s ({config.host.task})"
        )
        print(
            f"accuracy: static host at start {pct(result.accuracy_start)} -> grown model "
            f"{pct(result.accuracy_end)}  (val loss {result.val_loss_start:.4f} -> "
            f"{result.val_loss_end:.4f})"
        )
        print("seeds: " + ", ".join(f"{k} {v}" for k, v in result.seeds.items()))
        print(f"events written: {result.events}  fingerprint: {result.fingerprint}")
        print(f"run database: {result.db}")

    _emit(args, obj, text)
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _factory(args: argparse.Namespace) -> Any:
    """`--factory module:function` as a trainer factory (None: what the run recorded)."""
    if not args.factory:
        return None
    from esper_es.replay.factory import run_factory

    return run_factory(args.factory)


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-execute a run from its log and check it bit for bit."""
    from esper_es.errors import EXIT_VERIFY
    from esper_es.replay import Divergence, replay

    try:
        result = replay(
            args.db, to_seq=args.to, branch=args.branch, out=args.out,
            recompute_decisions=args.recompute_decisions,
            allow_env_mismatch=args.allow_env_mismatch,
            trainer_factory=_factory(args),
            compile=None if args.compile is None else args.compile == "on",
        )  # fmt: skip
    except Divergence as exc:
        print(f"esper-es: {one_line(str(exc))}", file=sys.stderr)
        obj = {"error": "Divergence", "message": str(exc), "exit_code": EXIT_VERIFY}
        obj.update(exc.to_dict())
        if args.json:
            sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        return EXIT_VERIFY
    obj = {**result.to_dict(), "seconds": round(result.seconds, 3), "out": args.out}

    def text() -> None:
        what = "recomputed" if result.recomputed else "replayed"
        start = f"from the snapshot at seq {result.from_snapshot}" if result.from_snapshot else ""
        print(
            f"OK  {what} run {result.run_id} branch {result.branch} to seq {result.head_seq} "
            f"{start}({result.steps} steps, {result.checkpoints_checked} checkpoints checked) "
            f"in {result.seconds:.2f} s"
        )
        print(f"fingerprint: {result.fingerprint}")
        if args.out:
            print(f"model written to {args.out}")

    _emit(args, obj, text)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Open a branch whose state is the state at SEQ."""
    from esper_es.replay import rollback

    obj = rollback(
        args.db, args.to, allow_env_mismatch=args.allow_env_mismatch,
        trainer_factory=_factory(args),
    )  # fmt: skip
    _emit(
        args,
        obj,
        lambda: print(
            f"opened branch {obj['branch']} at seq {obj['to_seq']} of {obj['from_branch']} "
            f"(step {obj['step']}); continue it with: esper-es resume {describe(args.db)} "
            f"--branch {obj['branch']}\nfingerprint: {obj['fingerprint']}"
        ),
    )
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a stopped, crashed or rolled-back run."""
    from esper_es.replay import resume

    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    result = resume(
        args.db, epochs=args.epochs, branch=args.branch,
        allow_env_mismatch=args.allow_env_mismatch, trainer_factory=_factory(args),
        library=args.library,
    )  # fmt: skip
    obj = {**result.to_dict(), "seconds": round(result.seconds, 3)}
    _emit(
        args,
        obj,
        lambda: print(
            f"run {result.run_id} branch {result.branch} "
            f"{'interrupted' if result.interrupted else 'completed'} at step {result.steps} "
            f"(epoch {result.epochs}), head seq {result.head_seq}\n"
            f"fingerprint: {result.fingerprint}"
        ),
    )
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _progress(total: int) -> Callable[[int, int], None]:
    from rich.console import Console

    console = Console(stderr=True)
    every = max(1, total // 20)
    last = [0]

    def show(step: int, head: int) -> None:
        if head - last[0] >= every:
            last[0] = head
            console.print(f"step {step}: {head}/{total} events", highlight=False)

    return show


def cmd_check_lifecycle(args: argparse.Namespace) -> int:
    """Property-test the lifecycle and the gates of a config."""
    import tempfile

    from esper_es.config import load_config

    config = load_config(args.config)
    if args.examples < 1:
        raise UsageError("--examples must be at least 1")
    # hypothesis caches into ./.hypothesis by default, which a command line tool must not
    # leave in the user's directory; a user who sets the variable keeps their own place.
    with tempfile.TemporaryDirectory(prefix="esper-es-hypothesis-") as scratch:
        os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", scratch)
        from esper_es.check_lifecycle import check_lifecycle

        result = check_lifecycle(config.lifecycle, examples=args.examples, seed=args.seed)
    obj = {
        "passed": result.passed,
        "examples": result.examples,
        "invariant": result.invariant,
        "counterexample": result.counterexample,
    }

    def text() -> None:
        if result.passed:
            print(f"lifecycle invariants hold over {result.examples} random command sequences")
        else:
            print(f"invariant {result.invariant} FAILED; minimal counterexample:")
            print(result.counterexample)

    _emit(args, obj, text)
    return EXIT_OK if result.passed else TamperDetected.exit_code


def cmd_diagram(args: argparse.Namespace) -> int:
    """The lifecycle as a state diagram, from the definition the code runs."""
    from esper_es.diagram import FORMATS, lifecycle_diagram

    if args.format in FORMATS:
        if args.out:
            raise UsageError("diagram: --out is for the image formats png and svg")
        text = lifecycle_diagram(args.format).rstrip("\n")
        # `--json` promises one JSON object on stdout for every command, this one included.
        _emit(args, {"format": args.format, "diagram": text}, lambda: print(text))
        return EXIT_OK
    from esper_es.diagram_image import lifecycle_image

    if not args.out:
        raise UsageError(f"diagram: --format {args.format} is an image: give --out FILE")
    data = lifecycle_image(args.format)
    try:
        Path(args.out).write_bytes(data)
    except OSError as exc:
        raise StorageError(
            str(args.out), f"cannot write the image ({exc.strerror or exc})"
        ) from None
    obj = {"format": args.format, "out": str(args.out), "bytes": len(data)}
    _emit(args, obj, lambda: print(f"wrote {args.out} ({len(data)} bytes, {args.format})"))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write a self-contained HTML report with plots of a run into a directory."""
    from esper_es.report import write_report

    files = write_report(args.db, args.out)
    rep = files.report
    newest = rep.newest
    obj = {
        "run_id": rep.run_id,
        "branch": newest.name,
        "head_seq": rep.head_seq,
        "fingerprint": newest.fingerprint,
        "html": str(files.html),
        "images": [str(p) for p in files.images],
        "branches": [b.name for b in rep.branches],
        "decisions": len(rep.decisions),
        "seeds": list(rep.seeds),
        "strategies": [s.to_dict() for s in rep.strategies],
    }

    def text() -> None:
        print(
            f"report of run {rep.run_id} ({len(rep.branches)} branch(es), "
            f"{len(rep.decisions)} decisions) -> {files.html}\n"
            "plots: " + ", ".join(p.name for p in files.images)
        )
        for s in rep.strategies:
            if s.decisions:
                frac = "" if s.paid_fraction is None else f" ({100 * s.paid_fraction:.0f} %)"
                print(
                    f"  {s.strategy}: {s.decisions} decision(s), {s.measured} outcome(s) "
                    f"measured, {s.paid} paid{frac}"
                )

    _emit(args, obj, text)
    return EXIT_OK


def _branches(db: Any) -> list[dict[str, Any]]:
    return [{"name": b.name, "parent": b.parent, "fork_seq": b.fork_seq} for b in db.branches()]


# --- parser ---------------------------------------------------------------------------


# Seqs, seeds and counts are stored as SQLite INTEGERs (signed 64-bit): anything outside is a
# usage error here rather than an OverflowError deep inside.
_INT_MAX = 2**63 - 1


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= _INT_MAX:
            raise argparse.ArgumentTypeError(f"must be between {low} and {_INT_MAX}, got {text}")
        return value

    parse.__name__ = "int"
    return parse


_natural = _int_at_least(0)  # seqs and seeds: 0 is valid
_count = _int_at_least(1)  # epochs, limits, examples


def _factory_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--factory",
        metavar="MODULE:FUNCTION",
        help="the run factory that rebuilds a custom host's run (overrides the recorded one)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    p = _Parser(prog="esper-es", description="Event-sourced morphogenetic training.")
    p.add_argument("--version", action="version", version=f"esper-es {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> _Parser:
        sp: _Parser = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn)
        sp.add_argument("--json", action="store_true", help="print exactly one JSON object")
        return sp

    sp = add("train", cmd_train, "train the built-in task of a run config, with seeds")
    sp.add_argument("--config", help="TOML run config (default: the built-in digits run)")
    sp.add_argument("--db", help="run database to create (default: runs/<run_id>.db)")
    sp.add_argument("--epochs", type=_count, help="override train.epochs")
    sp.add_argument("--seed", type=_natural, help="master seed (default 0)")
    sp.add_argument(
        "--numerics",
        choices=("native", "portable"),
        help="override determinism.numerics: native (this CPU's fastest kernels, replays on "
        "the same CPU model) or portable (replays on any x86-64 CPU with AVX2)",
    )
    ranks_cli.nproc_option(sp, recorded=False)
    sp = add("replay", cmd_replay, "re-execute a run from its log and check it bit for bit")
    sp.add_argument("db")
    sp.add_argument(
        "--to", type=_natural, metavar="SEQ", help="stop after this seq (from a snapshot)"
    )
    sp.add_argument("--branch", default="main")
    sp.add_argument("--out", metavar="FILE", help="write the model with its architecture")
    sp.add_argument(
        "--recompute-decisions",
        action="store_true",
        help="run the controller and driver live; report the first difference",
    )
    sp.add_argument(
        "--allow-env-mismatch",
        action="store_true",
        help="replay even where the environment differs from the recorded one",
    )
    sp.add_argument(
        "--compile",
        choices=("on", "off"),
        help="background kernel compilation on or off, whatever the run used (default: as "
        "recorded); compilation never changes the numbers, so both reproduce the run",
    )
    _factory_option(sp)
    ranks_cli.nproc_option(sp)
    sp = add("rollback", cmd_rollback, "open a branch whose state is the state at SEQ")
    sp.add_argument("db")
    sp.add_argument("--to", type=_natural, metavar="SEQ", required=True)
    sp.add_argument("--allow-env-mismatch", action="store_true")
    _factory_option(sp)
    ranks_cli.nproc_option(sp)
    sp = add("resume", cmd_resume, "continue a stopped, crashed or rolled-back run")
    sp.add_argument("db")
    sp.add_argument("--epochs", type=_count, help="train to this many epochs in all")
    sp.add_argument("--branch", help="the branch to continue (default: the newest)")
    sp.add_argument("--allow-env-mismatch", action="store_true")
    sp.add_argument(
        "--library",
        metavar="PATH",
        help="record the continued run's kernel outcomes in this shared kernel library (the "
        "path the run recorded is never written unless named here)",
    )
    _factory_option(sp)
    ranks_cli.nproc_option(sp)
    sp = add("verify", cmd_verify, "check hash chain, gap-free sequence, schemas, stream versions")
    sp.add_argument("db")
    sign_cli.verify_options(sp)
    sign_cli.register(add)
    copy_cli.register(add)
    sp = add("history", cmd_history, "the audit timeline, with causes")
    sp.add_argument("db", help="run database")
    sp.add_argument("--stream", help="only this stream, e.g. seed:layer1/0 (checked: must exist)")
    sp.add_argument(
        "--type",
        action="append",
        metavar="TYPE",
        help="only events of this type, e.g. SeedGerminated; repeat for several",
    )
    sp.add_argument("--branch", default="main", help="branch to read (default: main)")
    sp.add_argument("--limit", type=_count, metavar="N", help="only the first N events")
    sp.add_argument("--tail", type=_count, metavar="N", help="only the last N events")
    sp.add_argument("--full", action="store_true", help="untruncated reasons, telemetry and causes")
    sp.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (fits the terminal), json (one event per line) or csv (default: table)",
    )
    sp.add_argument(
        "--follow", action="store_true", help="keep printing a live run's events until it stops"
    )
    sp = add("runs", cmd_runs, "list the runs in a folder: when, what, how they ended")
    sp.add_argument(
        "dir", nargs="?", default="runs", help="folder of run databases (default: runs)"
    )
    sp = add("export", cmd_export, "a run's metrics as CSV or TensorBoard scalars")
    sp.add_argument("db", help="run database")
    sp.add_argument("--format", choices=("csv", "tensorboard"), default="csv", help="default: csv")
    sp.add_argument("--out", help="CSV file (default: stdout) or TensorBoard log folder (required)")
    sp.add_argument("--branch", default="main", help="branch to export (default: main)")
    sp = add("inspect", cmd_inspect, "seed states, alphas and fingerprint at a point")
    sp.add_argument("db")
    sp.add_argument(
        "--at", type=_natural, metavar="SEQ", help="state after this seq (default: head)"
    )
    sp.add_argument("--branch", default="main")
    sp = add("report", cmd_report, "write an HTML report with plots of a run")
    sp.add_argument("db")
    sp.add_argument("-o", "--out", required=True, metavar="DIR", help="directory to write into")
    sp = add("simulate", cmd_simulate, "drive the real command path with a synthetic controller")
    sp.add_argument("--db", required=True)
    sp.add_argument("--seeds", type=_count, default=64)
    sp.add_argument("--events", type=_natural, default=10_000)
    sp.add_argument("--seed", type=_natural, default=0)
    sp.add_argument("--config", help="TOML run config")
    sp = add("check-lifecycle", cmd_check_lifecycle, "property-test the lifecycle of a config")
    sp.add_argument("--config", help="TOML run config")
    sp.add_argument("--examples", type=_count, default=200)
    sp.add_argument("--seed", type=_natural, help="derandomise with this seed")
    sp = add("diagram", cmd_diagram, "the lifecycle as a state diagram")
    sp.add_argument(
        "--format",
        choices=("mermaid", "dot", "png", "svg"),
        default="mermaid",
        help="text source (mermaid, dot) on stdout, or an image (png, svg) written to --out",
    )
    sp.add_argument("--out", help="where the png or svg image goes")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `esper-es` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        _pin_numerics(args)
        return ranks_cli.run(args)
    except SystemExit as exc:  # --help and --version
        return int(exc.code or 0)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours; stay quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        _fail(want_json, "Interrupted", "interrupted", EXIT_INTERRUPTED, {})
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        # A bare `pip install esper-es` has the log, verify and history, not training: say
        # which extra brings what is missing instead of a traceback.
        top = (exc.name or "").partition(".")[0]
        if top not in _EXTRA_MODULES:
            return _internal_error(want_json, exc)
        missing = MissingDependency(top, _EXTRA_MODULES[top])
        _fail(want_json, type(missing).__name__, str(missing), missing.exit_code, {})
        return missing.exit_code
    except EsperError as exc:
        extra: dict[str, Any] = {}
        if isinstance(exc, TamperDetected):
            extra = {"ok": False, "first_bad_seq": exc.seq, "reason": exc.reason}
        _fail(want_json, type(exc).__name__, str(exc), exc.exit_code, extra)
        return exc.exit_code
    except sqlite3.DatabaseError as exc:
        # Reached only where a command did not classify it itself: a full disk, an I/O error
        # or a vanished file during a write. Never a traceback, never a false tamper alarm
        # for what the file system refused.
        from esper_es.store.sqlite_files import sqlite_failure

        failure = sqlite_failure(Path(str(getattr(args, "db", None) or "the database")), exc)
        _fail(want_json, type(failure).__name__, str(failure), failure.exit_code, {})
        return failure.exit_code
    except (OSError, KeyError, ValueError) as exc:
        # str() of a KeyError is its repr, quotes and all; the message is its argument.
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        _fail(want_json, type(exc).__name__, text, EXIT_ERROR, {})
        return EXIT_ERROR
    except Exception as exc:
        return _internal_error(want_json, exc)


def _internal_error(want_json: bool, exc: Exception) -> int:
    # The last resort: no path lets a traceback reach the user (SPEC §9). Anything here
    # is a bug of ours; ESPER_ES_DEBUG=1 shows the traceback for the report.
    if os.environ.get("ESPER_ES_DEBUG"):
        raise exc
    message = (
        f"internal error ({type(exc).__name__}: {exc}); this is a bug in esper-es: please "
        "report it with the command you ran (ESPER_ES_DEBUG=1 shows the traceback)"
    )
    _fail(want_json, "InternalError", " ".join(message.split()), EXIT_ERROR, {})
    return EXIT_ERROR


def _pin_numerics(args: argparse.Namespace) -> None:
    """Pin a portable run's CPU code paths now, before any command imports torch.

    The mode comes from `--numerics` or the config (train) or from the log's `RunStarted`
    (replay, resume, rollback). Anything unreadable is left for the command to report.
    """
    from esper_es import numerics

    mode: str | None = None
    try:
        if args.command == "train":
            from esper_es.config import load_config

            mode = args.numerics or load_config(args.config).determinism.numerics
        elif args.command in ("replay", "resume", "rollback"):
            mode = _recorded_numerics(args.db)
    except (EsperError, OSError, ValueError):
        return
    if mode == numerics.PORTABLE:
        numerics.pin_portable()


def _recorded_numerics(db_path: str) -> str | None:
    from esper_es.store.backends import open_store

    with open_store(db_path, readonly=True) as db:
        for rec in db.read(branch=None, types=["RunStarted"]):
            return str(rec.payload.get("environment", {}).get("numerics", "native"))
    return None


def one_line(message: str) -> str:
    """`message` on one line: control characters (from a damaged file's bytes) escaped."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in message
    )


def _fail(want_json: bool, kind: str, message: str, code: int, extra: dict[str, Any]) -> None:
    message = one_line(message)
    print(f"esper-es: {message}", file=sys.stderr)
    if want_json:
        obj = {"error": kind, "message": message, "exit_code": code, **extra}
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def entry() -> NoReturn:
    """Console-script entry point: run `main()` and exit with its code.

    After a clean Ctrl-C stop (the run is committed and closed, the report printed) the
    process leaves at once with 130. Going through interpreter shutdown instead was seen,
    under load, to end the process by SIGINT (-2) after the report had been printed.
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
