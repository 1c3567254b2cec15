"""The commands that train: `train`, `replay`, `rollback`, `resume`, and the numerics pinning
that must happen before any of them imports torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from esper_es.cli.output import emit, known_branch, one_line, progress_for
from esper_es.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EsperError,
    TrainingDiverged,
    UsageError,
)
from esper_es.store.pg_location import describe, is_postgres


def cmd_train(args: argparse.Namespace) -> int:
    """Train the built-in task of a run config (default: DigitsCNN on digits, with seeds)."""
    import attrs

    from esper_es.config import load_config

    feedback = progress_for(args)
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
    with feedback.phase("importing torch and the trainer"):
        from esper_es.trainer.api import built_in_trainer
    with feedback.phase(f"preparing the {config.host.task} task: data, host, seed layers"):
        trainer = built_in_trainer(
            config, seed=seed, db_path=args.db or "", progress=feedback.enabled
        )
    if args.db is None:
        trainer.db_path = _readable_run_path(args.config)
    elif args.force:
        _remove_run_file(args.db)
    # Beside a run file by default; a run in PostgreSQL has no "beside", so only with --out.
    model_path: Path | None = None
    if args.out:
        model_path = Path(args.out)
    elif not is_postgres(trainer.db_path):
        model_path = Path(trainer.db_path).with_suffix(".pt")
        # The run's folder is the database's to create (runs/ on a first run); --out's is not.
        model_path.parent.mkdir(parents=True, exist_ok=True)
    if model_path is not None:
        from esper_es.replay.export import check_writable

        check_writable(model_path)  # before training, not after it
    feedback.note(f"training {config.train.epochs} epochs into {describe(trainer.db_path)}")
    result = trainer.run()
    if result.diverged is not None:
        raise TrainingDiverged(result.diverged, result.db, result.head_seq)
    if model_path is not None:
        with feedback.phase(f"writing the grown model to {model_path}"):
            _write_trained_model(trainer, result, model_path)
    grown_params = sum(p.numel() for p in trainer.model.parameters())
    baseline = None
    if args.baseline and not result.interrupted:
        from esper_es.trainer.baseline import static_baseline

        with feedback.phase("training the same host static for the baseline"):
            baseline = static_baseline(config, seed)
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
        "model": None if model_path is None else str(model_path),
        "parameters": grown_params,
        "baseline": None if baseline is None else attrs.asdict(baseline),
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
            f"accuracy: untrained host {pct(result.accuracy_start)} -> grown model "
            f"{pct(result.accuracy_end)}  (val loss {result.val_loss_start:.4f} -> "
            f"{result.val_loss_end:.4f}; {grown_params} parameters)"
        )
        if baseline is not None:
            lift = ""
            if baseline.accuracy is not None and result.accuracy_end is not None:
                lift = f", grown - static {100 * (result.accuracy_end - baseline.accuracy):+.2f} pp"
            print(
                f"baseline: the same host trained static for the same {baseline.epochs} epochs "
                f"and schedule {pct(baseline.accuracy)} (val loss {baseline.val_loss:.4f}; "
                f"{baseline.parameters} parameters){lift}"
            )
        elif not result.interrupted:
            print("(--baseline also trains the same host static, to compare with)")
        print("seeds: " + ", ".join(f"{k} {v}" for k, v in result.seeds.items()))
        print(f"events written: {result.events}  fingerprint: {result.fingerprint}")
        print(f"run database: {result.db}")
        if model_path is not None:
            print(f"model: {model_path} (load with esper_es.replay.load_model)")
        if result.interrupted:
            print(f"continue it with: esper-es resume {result.db}")

    emit(args, obj, text)
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def _remove_run_file(location: str) -> None:
    """`train --force`: remove the run database at `path` and its side files, after checking
    that it is a run database and that no process is writing it (exit 2 / exit 5)."""
    from esper_es.store.database import RunDatabase

    if is_postgres(location):
        raise UsageError("train: --force replaces files only; drop the schema yourself")
    path = Path(location)
    if not path.exists():
        return
    # Opened for writing: refuses a file that is not a run database, and a live writer.
    RunDatabase.open(path, audit=False).close()
    for suffix in ("", "-wal", "-shm", ".audit.jsonl"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _readable_run_path(config: str | None, folder: Path = Path("runs")) -> Path:
    """`runs/<local time>-<config>.db`, e.g. runs/20261129-051427-digits.db; never an
    existing file (a second run in the same second gets -2, -3, ...)."""
    import time

    stem = Path(config).stem if config else "digits"
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    path, n = folder / f"{base}.db", 1
    while path.exists():
        n += 1
        path = folder / f"{base}-{n}.db"
    return path


def _write_trained_model(trainer: Any, result: Any, path: Path) -> None:
    """The grown model with what rebuilds its architecture, as `replay --out` writes it."""
    from esper_es.replay.export import export_model
    from esper_es.store.database import RunDatabase

    with RunDatabase.open(result.db, readonly=True) as db:
        events = list(db.read(branch=result.branch))
    started = next(rec for rec in events if rec.type == "RunStarted").payload
    export_model(
        path, trainer.model, run_id=result.run_id, branch=result.branch, seq=result.head_seq,
        config=started["config"], master_seed=started["master_seed"], events=events,
    )  # fmt: skip


def _factory(args: argparse.Namespace) -> Any:
    """`--factory module:function` as a trainer factory (None: what the run recorded)."""
    if not args.factory:
        return None
    from esper_es.replay.factory import run_factory

    return run_factory(args.factory)


def cmd_replay(args: argparse.Namespace) -> int:
    """Re-execute a run from its log and check it bit for bit."""
    from esper_es.errors import EXIT_VERIFY

    feedback = progress_for(args)
    with feedback.phase("importing torch and the trainer"):
        from esper_es.replay import Divergence, replay

    from esper_es.store.backends import open_store

    with open_store(args.db, readonly=True) as db:
        args.branch = known_branch(db, args.branch)

    def show_epochs(trainer: Any) -> None:
        trainer.progress = feedback.enabled
        trainer.progress_label = "replay"

    try:
        with feedback.phase(f"replaying {describe(args.db)} (branch {args.branch})"):
            result = replay(
                args.db, to_seq=args.to, branch=args.branch, out=args.out,
                recompute_decisions=args.recompute_decisions,
                allow_env_mismatch=args.allow_env_mismatch,
                trainer_factory=_factory(args),
                compile=None if args.compile is None else args.compile == "on",
                after_restore=show_epochs,
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

    emit(args, obj, text)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Open a branch whose state is the state at SEQ."""
    if (args.to is None) == (args.to_epoch is None):
        raise UsageError("rollback: give --to SEQ or --to-epoch N (one of them)")
    feedback = progress_for(args)
    with feedback.phase("importing torch and the trainer"):
        from esper_es.replay import rollback
        from esper_es.replay.rollback import epoch_end
    to = args.to if args.to is not None else epoch_end(args.db, args.to_epoch)
    with feedback.phase(f"rebuilding the state at seq {to}"):
        obj = rollback(
            args.db, to, allow_env_mismatch=args.allow_env_mismatch,
            trainer_factory=_factory(args),
        )  # fmt: skip
    emit(
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
    if args.epochs is not None and args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    feedback = progress_for(args)
    with feedback.phase("importing torch and the trainer"):
        from esper_es.replay import resume
    with feedback.phase(f"resuming {describe(args.db)}"):
        result = resume(
            args.db, epochs=args.epochs, branch=args.branch,
            allow_env_mismatch=args.allow_env_mismatch, trainer_factory=_factory(args),
            library=args.library,
        )  # fmt: skip
    obj = {**result.to_dict(), "seconds": round(result.seconds, 3)}

    def text() -> None:
        state = "interrupted" if result.interrupted else "completed"
        print(
            f"run {result.run_id} branch {result.branch} {state} at step {result.steps} "
            f"(epoch {result.epochs}), head seq {result.head_seq}"
        )
        if result.accuracy_end is not None:
            print(
                f"accuracy: {100 * result.accuracy_end:.2f} %  (val loss {result.val_loss_end:.4f})"
            )
        else:
            print(f"val loss: {result.val_loss_end:.4f}")
        print(f"fingerprint: {result.fingerprint}")
        if result.interrupted:
            print(f"continue it with: esper-es resume {describe(args.db)} --branch {result.branch}")

    emit(args, obj, text)
    return EXIT_INTERRUPTED if result.interrupted else EXIT_OK


def pin_numerics(args: argparse.Namespace) -> None:
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
