"""The commands that read a run: `verify`, `history`, `runs`, `export`, `inspect`, `report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from esper_es.cli import sign as sign_cli
from esper_es.cli.output import branch_list, emit, known_branch, progress_for, run_fields
from esper_es.errors import (
    EXIT_OK,
    StorageError,
    UsageError,
)
from esper_es.store.pg_location import describe


def cmd_verify(args: argparse.Namespace) -> int:
    """Check hash chain, gap-free sequence, schemas, stream versions."""
    from esper_es.store.verify import verify

    with progress_for(args).phase(f"verifying {describe(args.db)}"):
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
    emit(
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
        branch = known_branch(db, args.branch)
        history.check_stream(db, args.stream, branch)
        rows = list(
            history.timeline(
                db, branch=branch, stream=args.stream, types=types, limit=args.limit, tail=args.tail
            )
        )
        head = db.head_seq(branch)
        if args.json:
            obj = {**run_fields(db, branch), "events": rows, "branches": branch_list(db)}
            emit(args, obj, lambda: None)
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


def cmd_runs(args: argparse.Namespace) -> int:
    """The run databases in a folder, newest first."""
    from esper_es.cli import runs as runs_cli
    from esper_es.store.backends import describe, is_postgres

    where = str(args.dir)
    if not is_postgres(where) and not Path(where).is_dir():
        raise UsageError(f"runs: {where} is not a folder (train writes to runs/ by default)")
    found, skipped = runs_cli.scan(where)
    shown = describe(where)
    obj = {"dir": shown, "runs": found, "skipped": skipped}

    def text() -> None:
        if found:
            print("\n".join(runs_cli.format_table(found)))
        note = f"; {len(skipped)} other database file(s) skipped" if skipped else ""
        print(f"-- {len(found)} run{'' if len(found) == 1 else 's'} in {shown}{note}")

    emit(args, obj, text)
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
        args.branch = known_branch(db, args.branch)
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
    emit(args, obj, lambda: print(f"wrote {written} {what} of {len(tags)} series to {args.out}"))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    """Architecture, seed states and alphas at a point."""
    from esper_es.cli.inspect import lifecycle_at
    from esper_es.store.backends import open_store

    with open_store(args.db, readonly=True) as db:
        args.branch = known_branch(db, args.branch)
        head = db.head_seq(args.branch)
        if args.at is not None and args.at > head:
            # Showing the head for a seq the branch never reached would answer another question.
            raise UsageError(
                f"inspect: --at {args.at} is past the head of {args.branch} (seq {head})"
            )
        view = lifecycle_at(db, args.at, args.branch)
        obj = {**run_fields(db, args.branch, view["fingerprint"]), **view}
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

    emit(args, obj, text)
    return EXIT_OK


def _model_at(db: str, seq: int, branch: str) -> dict[str, Any]:
    """The model's fingerprint and architecture at `seq`, replayed from the nearest snapshot."""
    from esper_es.errors import EsperError as _Err
    from esper_es.replay.replayer import replay_model

    try:
        return replay_model(db, seq, branch)
    except (_Err, KeyError, ValueError, TypeError) as exc:
        return {"fingerprint": None, "manifest": None, "unavailable": str(exc)}


def cmd_report(args: argparse.Namespace) -> int:
    """Write a self-contained HTML report with plots of a run into a directory."""
    feedback = progress_for(args)
    with feedback.phase("importing matplotlib"):
        from esper_es.report import write_report
    with feedback.phase(f"reading {describe(args.db)} and drawing the plots"):
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

    emit(args, obj, text)
    return EXIT_OK
