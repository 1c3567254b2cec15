"""`esper-es`: the command line (SPEC §8).

Exit codes: 0 success · 1 error · 2 usage or invalid config · 3 verification failed ·
4 environment mismatch · 5 run database locked or concurrency conflict · 130 interrupted.
With `--json` exactly one JSON object goes to stdout, errors included.

The grammar is `esper_es.cli.app` (click); the commands live in `reading`, `running` and
`tools`; this module runs one command line and turns every failure into one error line."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from esper_es.cli.output import fail
from esper_es.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EsperError,
    MissingDependency,
    StorageError,
    TamperDetected,
    UsageError,
)

#: Import name -> the extra that installs it.
_EXTRA_MODULES = {
    "torch": "torch",
    "numpy": "torch",
    "sklearn": "torch",
    "matplotlib": "torch",
    "tensorboard": "tensorboard",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `esper-es` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in argv
    try:
        return _parse_and_run(argv)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours; stay quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        fail(want_json, "Interrupted", "interrupted", EXIT_INTERRUPTED, {})
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        # A bare `pip install esper-es` has the log, verify and history, not training: say
        # which extra brings what is missing instead of a traceback.
        top = (exc.name or "").partition(".")[0]
        if top not in _EXTRA_MODULES:
            return _internal_error(want_json, exc)
        missing = MissingDependency(top, _EXTRA_MODULES[top])
        fail(want_json, type(missing).__name__, str(missing), missing.exit_code, {})
        return missing.exit_code
    except EsperError as exc:
        extra: dict[str, Any] = {}
        if isinstance(exc, TamperDetected):
            extra = {"ok": False, "first_bad_seq": exc.seq, "reason": exc.reason}
        fail(want_json, type(exc).__name__, str(exc), exc.exit_code, extra)
        return exc.exit_code
    except (OSError, KeyError, ValueError) as exc:
        # str() of a KeyError is its repr, quotes and all; the message is its argument.
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(want_json, type(exc).__name__, text, EXIT_ERROR, {})
        return EXIT_ERROR
    except Exception as exc:
        return _internal_error(want_json, exc)


def _parse_and_run(argv: list[str]) -> int:
    """Run the command line through the click grammar; its usage errors become ours."""
    import click

    from esper_es.cli import app

    try:
        return app.parse_and_run(argv)
    except click.exceptions.NoArgsIsHelpError:
        names = ", ".join(sorted(app.cli.commands))
        raise UsageError(f"a command is required: {names} (usage: esper-es --help)") from None
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "esper-es"
        where = path.removeprefix("esper-es").strip()
        where = f"{where}: " if where else ""
        raise UsageError(f"{where}{exc.format_message()} (usage: {path} --help)") from None
    except click.exceptions.Abort:
        # click turns Ctrl-C during a command into Abort; it is still an interruption.
        raise KeyboardInterrupt from None


def run_command(args: argparse.Namespace, fn: Callable[[argparse.Namespace], int]) -> int:
    """Run one parsed command; an SQLite failure it did not classify names its database."""
    try:
        return int(fn(args))
    except sqlite3.DatabaseError as exc:
        # A full disk, an I/O error or a vanished file during a write: never a traceback,
        # never a false tamper alarm for what the file system refused.
        from esper_es.store.sqlite_files import sqlite_failure

        raise sqlite_failure(Path(str(getattr(args, "db", None) or "the database")), exc) from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        # A PostgreSQL server lost mid-command (or refusing a statement): the store's own
        # StorageError, naming the run without its password, never an internal error.
        raise _postgres_failure(args, exc) from None


def _postgres_failure(args: argparse.Namespace, exc: Exception) -> StorageError:
    """A psycopg error as a StorageError, its text scrubbed of the location's secrets."""
    from esper_es.store.pg_location import PgLocation, describe, is_postgres

    location = str(getattr(args, "db", None) or getattr(args, "src", None) or "the database")
    text = " ".join(str(exc).split())
    if is_postgres(location):
        text = PgLocation.parse(location).scrub(text)
    return StorageError(describe(location), f"PostgreSQL failed: {text}")


def _internal_error(want_json: bool, exc: Exception) -> int:
    # The last resort: no path lets a traceback reach the user (SPEC §9). Anything here
    # is a bug of ours; ESPER_ES_DEBUG=1 shows the traceback for the report.
    if os.environ.get("ESPER_ES_DEBUG"):
        raise exc
    message = (
        f"internal error ({type(exc).__name__}: {exc}); this is a bug in esper-es: please "
        "report it with the command you ran (ESPER_ES_DEBUG=1 shows the traceback)"
    )
    fail(want_json, "InternalError", " ".join(message.split()), EXIT_ERROR, {})
    return EXIT_ERROR


def entry() -> NoReturn:
    """Console-script entry point: run `main()` and exit with its code.

    Once the command is done (its run committed and closed, its report printed), the exit
    handlers run and the process leaves at once, skipping the interpreter's teardown: with
    torch loaded, freeing its thousands of modules and objects took longer than importing
    them in a measured `esper-es train --epochs 1` (start-up, issue 12). After a clean
    Ctrl-C stop (130), going through that teardown was also seen, under load, to end the
    process by SIGINT (-2) after the report had been printed.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone away (`| head`)
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    entry()
