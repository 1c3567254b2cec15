"""The tools: `simulate` (the real command path, no torch), `check-lifecycle` (property tests of
a config's gates) and `diagram` (the lifecycle drawn from the machine the code runs)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from esper_es.cli.output import emit, progress_for
from esper_es.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    StorageError,
    TamperDetected,
    UsageError,
)
from esper_es.store.pg_location import describe


def cmd_simulate(args: argparse.Namespace) -> int:
    """Drive the real command path with a synthetic controller."""
    from esper_es.config import load_config
    from esper_es.simulate import simulate

    config = load_config(args.config)
    if args.seeds < 1 or args.events < 0:
        raise UsageError("--seeds must be at least 1 and --events at least 0")
    feedback = progress_for(args)
    count = feedback.counter("events", args.events) if feedback.enabled else None
    with feedback.phase(f"writing {args.events} events into {describe(args.db)}"):
        report = simulate(
            args.db, seeds=args.seeds, events=args.events, seed=args.seed, config=config,
            on_step=None if count is None else (lambda _step, head: count(min(head, args.events))),
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
    emit(
        args,
        obj,
        lambda: print(
            f"simulated run {report.run_id}: {report.events} events over {report.steps} steps, "
            f"{report.commands} commands ({report.refused} refused) -> {report.path}\n"
            "seeds: " + ", ".join(f"{k} {v}" for k, v in sorted(report.stages.items()))
        ),
    )
    return EXIT_INTERRUPTED if report.interrupted else EXIT_OK


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

        with progress_for(args).phase(f"running {args.examples} random command sequences"):
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

    emit(args, obj, text)
    return EXIT_OK if result.passed else TamperDetected.exit_code


def cmd_diagram(args: argparse.Namespace) -> int:
    """The lifecycle as a state diagram, from the definition the code runs."""
    from esper_es.diagram import FORMATS, lifecycle_diagram

    if args.format in FORMATS:
        if args.out:
            raise UsageError("diagram: --out is for the image formats png and svg")
        text = lifecycle_diagram(args.format).rstrip("\n")
        # `--json` promises one JSON object on stdout for every command, this one included.
        emit(args, {"format": args.format, "diagram": text}, lambda: print(text))
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
    emit(args, obj, lambda: print(f"wrote {args.out} ({len(data)} bytes, {args.format})"))
    return EXIT_OK
