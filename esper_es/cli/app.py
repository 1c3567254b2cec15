"""The command line's grammar: every command, option, default, example and exit code (click).

Why click: it is already installed with esper-es (sqlite-utils depends on it), so the CLI
costs no new dependency; it gives per-option help with defaults, shell completion for bash,
zsh and fish, and parses before anything heavy is imported. Typer would add a layer (and its
own rich help rendering) over the same click for no capability we need.

The commands themselves live in `esper_es.cli.main` (`cmd_<name>(args)`), which this module
calls with an `argparse.Namespace` of the parsed values, so the grammar and the behaviour
stay in separate files. Errors are not printed here: `main()` turns every click usage error
into the one error line (and JSON object) that every other error gets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import click

from esper_es import __version__

__all__ = ["EXIT_CODES_HELP", "cli", "parse_and_run"]

EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0 success                 3 verification failed       130 interrupted\n"
    "  1 error                   4 environment mismatch\n"
    "  2 usage or invalid config 5 database locked or concurrency conflict"
)
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# Seqs, seeds and counts are stored as SQLite INTEGERs (signed 64-bit): anything outside is a
# usage error here rather than an OverflowError deep inside.
_INT_MAX = 2**63 - 1


class WholeNumber(click.ParamType):  # type: ignore[type-arg]
    """An integer in [low, 2**63 - 1], refused with a one-line reason otherwise."""

    name = "integer"

    def __init__(self, low: int) -> None:
        self.low = low

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """The value as an int, or a usage error naming the bounds."""
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value))
            except ValueError:
                self.fail(f"expected a whole number, got {value!r}", param, ctx)
        if not self.low <= number <= _INT_MAX:
            self.fail(f"must be between {self.low} and {_INT_MAX}, got {value}", param, ctx)
        return number


NATURAL = WholeNumber(0)  # seqs and seeds: 0 is valid
COUNT = WholeNumber(1)  # epochs, limits, examples
DB_PATH = click.Path()


def _examples(*lines: str) -> str:
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines) + "\n\n" + EXIT_CODES_HELP


def _run(name: str, runner: str, values: dict[str, Any]) -> int:
    """Call `runner` (`module:cmd_x`, a module of esper_es.cli) with the parsed values, a
    portable run's numerics pinned before anything imports torch."""
    import importlib

    from esper_es.cli import main, ranks, running

    module_name, _, fn_name = runner.partition(":")
    args = argparse.Namespace(command=name, **values)
    running.pin_numerics(args)
    args.func = getattr(importlib.import_module(f"esper_es.cli.{module_name}"), fn_name)
    # On as many ranks as the command asks for (`--nproc`, the recorded world, torchrun's).
    return main.run_command(args, ranks.run)


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json",
        "json",
        is_flag=True,
        help="Print exactly one JSON object on stdout, errors included.",
    )(f)


def _db_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("db", type=DB_PATH, metavar="DB")(f)


def _factory_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--factory",
        metavar="MODULE:FUNCTION",
        help="The run factory that rebuilds a custom host's run (overrides the recorded one).",
    )(f)


def _allow_env_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--allow-env-mismatch",
        is_flag=True,
        help="Go on where the environment differs from the recorded one (bits may differ).",
    )(f)


def _nproc_option(recorded: bool) -> Callable[..., Any]:
    default = "the world size the run recorded" if recorded else "1"
    return click.option(
        "--nproc",
        type=int,
        metavar="N",
        help="Data-parallel ranks on this machine (gloo on CPU, NCCL on GPU); under torchrun, "
        f"torchrun's world.  [default: {default}]",
    )


def _branch_option(default: str | None, text: str) -> Callable[..., Any]:
    return click.option("--branch", default=default, show_default=default is not None, help=text)


class _InOrder(click.Group):
    """Commands listed in the order they are defined (run, read, sign, tools), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The command names, in definition order."""
        return list(self.commands)


@click.group(
    cls=_InOrder,
    context_settings=_CONTEXT,
    epilog="\b\nStart with:\n  esper-es train\n  esper-es runs\n"
    "  esper-es history runs/<file>.db\n\n" + EXIT_CODES_HELP,
)
@click.version_option(
    __version__, "--version", prog_name="esper-es", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Event-sourced morphogenetic training: networks that grow, with every decision on the
    record, bit-for-bit replay and rollback."""


# --- running -----------------------------------------------------------------------------


@cli.command(
    "train",
    epilog=_examples(
        "esper-es train",
        "esper-es train --config configs/text.toml --epochs 4",
        "esper-es train --db runs/exp1.db --seed 3 --numerics portable",
        "esper-es train --out model.pt",
    ),
)
@click.option(
    "--config",
    type=click.Path(),
    help="TOML run config.  [default: the built-in digits run]",
)
@click.option(
    "--db",
    type=DB_PATH,
    help="Run database to create.  [default: runs/<local time>-<config>.db]",
)
@click.option(
    "--out",
    type=click.Path(),
    metavar="FILE",
    help="Where the grown model goes (load it with esper_es.replay.load_model).  "
    "[default: beside the run database, as <name>.pt]",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace the run database at --db if there is one (not while another process writes it).",
)
@click.option("--epochs", type=COUNT, help="Override train.epochs of the config.")
@click.option("--seed", type=NATURAL, help="Master seed.  [default: 0]")
@click.option(
    "--baseline",
    is_flag=True,
    help="Also train the same host static (no seeds) for the same epochs and schedule, "
    "and print grown vs static.",
)
@click.option(
    "--numerics",
    type=click.Choice(["native", "portable"]),
    help="Override determinism.numerics: native (this CPU's fastest kernels; replays on the "
    "same CPU model) or portable (replays on any x86-64 CPU with AVX2).",
)
@_nproc_option(recorded=False)
@_json_option
def train(**values: Any) -> int:
    """Train the built-in task into a new run database.

    Trains the host of a run config (default: a small CNN on scikit-learn's digits) with
    seed layers and the controller; every decision and transition goes to the log. Prints
    the untrained host's and the grown model's accuracy (--baseline: also the same host
    trained static), seeds by stage, events written and the model's fingerprint."""
    return _run("train", "running:cmd_train", values)


@cli.command(
    "replay",
    epilog=_examples(
        "esper-es replay runs/r.db",
        "esper-es replay runs/r.db --to 120 --out model.pt",
        "esper-es replay runs/r.db --branch b1 --recompute-decisions",
    ),
)
@_db_argument
@click.option("--to", type=NATURAL, metavar="SEQ", help="Stop after this seq (from a snapshot).")
@_branch_option(None, "Branch to replay.  [default: the newest]")
@click.option(
    "--out",
    type=click.Path(),
    metavar="FILE",
    help="Write the model and its architecture.",
)
@click.option(
    "--recompute-decisions",
    is_flag=True,
    help="Run the controller and driver live; report the first difference from the log.",
)
@_allow_env_option
@click.option(
    "--compile",
    type=click.Choice(["on", "off"]),
    help="Background kernel compilation on or off, whatever the run used (compilation never "
    "changes the numbers).  [default: as recorded]",
)
@_factory_option
@_nproc_option(recorded=True)
@_json_option
def replay(**values: Any) -> int:
    """Re-execute a run from its log, checked bit for bit.

    Every Checkpointed is compared; the first difference exits 3 naming the seq, step and
    tensors. A run recorded on another CPU or torch build is refused with exit 4 first."""
    return _run("replay", "running:cmd_replay", values)


@cli.command(
    "rollback",
    epilog=_examples(
        "esper-es history runs/r.db --type AdaptationPlanned",
        "esper-es rollback runs/r.db --to 120",
        "esper-es rollback runs/r.db --to-epoch 2",
    ),
)
@_db_argument
@click.option(
    "--to",
    type=NATURAL,
    metavar="SEQ",
    help="The seq whose state the branch starts from (the end of a step boundary).",
)
@click.option(
    "--to-epoch",
    type=COUNT,
    metavar="N",
    help="Instead of --to: the state after epoch N's last step (on the newest branch).",
)
@_allow_env_option
@_factory_option
@_nproc_option(recorded=True)
@_json_option
def rollback(**values: Any) -> int:
    """Open a branch at the state after SEQ.

    Nothing is rewritten: the new branch starts with RunRolledBack and a snapshot, and
    `resume` continues it. A SEQ inside a step boundary is refused, naming the nearest
    valid ones."""
    return _run("rollback", "running:cmd_rollback", values)


@cli.command(
    "resume",
    epilog=_examples(
        "esper-es resume runs/r.db",
        "esper-es resume runs/r.db --branch b1 --epochs 16",
    ),
)
@_db_argument
@click.option(
    "--epochs", type=COUNT, help="Train to this many epochs in all.  [default: the config's]"
)
@_branch_option(None, "The branch to continue.  [default: the newest]")
@_allow_env_option
@click.option(
    "--library",
    type=click.Path(),
    metavar="PATH",
    help="Record the continued run's kernel outcomes in this shared kernel library (the path "
    "the run recorded is never written unless named here).",
)
@_factory_option
@_nproc_option(recorded=True)
@_json_option
def resume(**values: Any) -> int:
    """Continue a stopped, killed or rolled-back run.

    The continued run is bit-identical to one that was never stopped."""
    return _run("resume", "running:cmd_resume", values)


# --- reading a run -------------------------------------------------------------------------


@cli.command(
    "verify",
    epilog=_examples(
        "esper-es verify runs/r.db",
        "esper-es verify runs/r.db --key signer.pem.pub",
        "esper-es verify runs/r.db --expect-head <hash printed by sign>",
    ),
)
@_db_argument
@click.option(
    "--key",
    type=click.Path(),
    metavar="PUB",
    help="PEM public key: require its signatures to hold and to cover the head.",
)
@click.option(
    "--allow-unsigned-tail",
    is_flag=True,
    help="With --key: pass when events follow the last signed seq (reported).",
)
@click.option(
    "--expect-head",
    metavar="HASH",
    help="Require the chain's head hash to be HASH (kept elsewhere, e.g. from sign).",
)
@_json_option
def verify(**values: Any) -> int:
    """Check a run database's integrity.

    Checks the hash chain, gap-free seqs, schemas, stream versions, branches and blobs,
    and with --key the signatures. A failure exits 3 naming the first bad seq."""
    return _run("verify", "reading:cmd_verify", values)


@cli.command(
    "runs",
    epilog=_examples(
        "esper-es runs",
        "esper-es runs experiments/ --json",
        "esper-es runs postgresql://me@dbhost/esper",
    ),
)
@click.argument("dir", default="runs", type=click.Path(), metavar="[DIR|URL]")
@_json_option
def runs(**values: Any) -> int:
    """List the runs in a folder or a PostgreSQL database.

    The run databases in DIR (default: runs/), or the runs (one schema each) of the
    PostgreSQL database at URL, newest first: id, start, host, config digest, epochs,
    status, result, fingerprint, branches, size."""
    return _run("runs", "reading:cmd_runs", values)


@cli.command(
    "history",
    epilog=_examples(
        "esper-es history runs/r.db --type AdaptationDecided --full",
        "esper-es history runs/r.db --stream seed:layer1/0",
        "esper-es history runs/r.db --tail 20 --follow",
        "esper-es history runs/r.db --format csv > events.csv",
    ),
)
@_db_argument
@click.option(
    "--stream", help="Only this stream, e.g. seed:layer1/0 (one the file never wrote exits 2)."
)
@click.option(
    "--type",
    "type",
    multiple=True,
    metavar="TYPE",
    help="Only events of this type, e.g. SeedGerminated; repeat for several.",
)
@_branch_option(None, "Branch to read.  [default: the newest]")
@click.option("--limit", type=COUNT, metavar="N", help="Only the first N events.")
@click.option("--tail", type=COUNT, metavar="N", help="Only the last N events.")
@click.option("--full", is_flag=True, help="Untruncated reasons, telemetry and ids (wrapped).")
@click.option(
    "--format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="A table fitted to the terminal, JSON lines, or CSV.",
)
@click.option("--follow", is_flag=True, help="Keep printing a live run's events until it stops.")
@_json_option
def history(**values: Any) -> int:
    """The audit timeline of a run.

    Each event in seq order, with the command that caused it and the decision behind it.
    Unknown types and streams exit 2, listing what exists."""
    values["type"] = list(values["type"]) or None
    return _run("history", "reading:cmd_history", values)


@cli.command(
    "inspect",
    epilog=_examples("esper-es inspect runs/r.db", "esper-es inspect runs/r.db --at 120 --json"),
)
@_db_argument
@click.option(
    "--at", type=NATURAL, metavar="SEQ", help="State after this seq.  [default: the head]"
)
@_branch_option(None, "Branch to read.  [default: the newest]")
@_json_option
def inspect(**values: Any) -> int:
    """Seed stages, alphas and fingerprint at a point.

    Seed layers with each seed's stage, alpha and kernel, and the model fingerprint, after
    SEQ (default: the head)."""
    return _run("inspect", "reading:cmd_inspect", values)


@cli.command(
    "export",
    epilog=_examples(
        "esper-es export runs/r.db > metrics.csv",
        "esper-es export runs/r.db --format tensorboard --out tb/",
    ),
)
@_db_argument
@click.option(
    "--format",
    type=click.Choice(["csv", "tensorboard"]),
    default="csv",
    show_default=True,
    help="CSV (a row per step) or TensorBoard scalars.",
)
@click.option(
    "--out",
    type=click.Path(),
    help="CSV file (default: stdout), or the TensorBoard log folder (required).",
)
@_branch_option(None, "Branch to export.  [default: the newest]")
@_json_option
def export(**values: Any) -> int:
    """Export a run's metrics as CSV or TensorBoard.

    Read from the log: epoch metrics and each seed's alpha over the steps."""
    return _run("export", "reading:cmd_export", values)


@cli.command(
    "report",
    epilog=_examples("esper-es report runs/r.db -o report/"),
)
@_db_argument
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(),
    metavar="DIR",
    help="Folder to write into.",
)
@_json_option
def report(**values: Any) -> int:
    """Write an HTML report with plots of a run.

    Curves with architecture markers, seed swimlanes, decisions with their reasons,
    kernels by blueprint."""
    return _run("report", "reading:cmd_report", values)


@cli.command(
    "copy",
    epilog=_examples(
        "esper-es copy runs/a.db 'postgresql://me@db.example/runs?schema=a'",
        "esper-es copy 'postgresql://me@db.example/runs?schema=a' runs/a2.db",
    ),
)
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST")
@_json_option
def copy(**values: Any) -> int:
    """Copy a run between SQLite and PostgreSQL, chain intact.

    SRC and DST are files or postgresql://…[?schema=NAME] URLs. SRC is verified first; DST
    must be new (exit 2 otherwise); the copy is verified and must end at SRC's head hash
    (exit 3 otherwise). Pass passwords through PGPASSWORD or ~/.pgpass, not the URL."""
    return _run("copy", "copy:cmd_copy", values)


# --- signing -------------------------------------------------------------------------------


@cli.command(
    "sign",
    epilog=_examples(
        "esper-es keygen --out signer.pem", "esper-es sign runs/r.db --key signer.pem"
    ),
)
@_db_argument
@click.option(
    "--key",
    required=True,
    type=click.Path(),
    metavar="K",
    help="PEM private key (PKCS8).",
)
@_json_option
def sign(**values: Any) -> int:
    """Sign a run's chain head (Ed25519).

    The database is verified in full first; a live writer exits 5."""
    return _run("sign", "sign:cmd_sign", values)


@cli.command("keygen", epilog=_examples("esper-es keygen --out signer.pem"))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    metavar="K",
    help="Private key file (written 0600); the public key goes to K.pub.",
)
@click.option("--force", is_flag=True, help="Replace existing key files.")
@_json_option
def keygen(**values: Any) -> int:
    """Write a new Ed25519 key pair for signing runs."""
    return _run("keygen", "sign:cmd_keygen", values)


# --- tools ---------------------------------------------------------------------------------


@cli.command(
    "simulate",
    epilog=_examples(
        "esper-es simulate --db sim.db", "esper-es simulate --db big.db --events 1000000"
    ),
)
@click.option("--db", required=True, type=DB_PATH, help="Run database to create.")
@click.option("--seeds", type=COUNT, default=64, show_default=True, help="Seed slots in all.")
@click.option("--events", type=NATURAL, default=10_000, show_default=True, help="Events to write.")
@click.option("--seed", type=NATURAL, default=0, show_default=True, help="Master seed.")
@click.option("--config", type=click.Path(), help="TOML run config (its lifecycle gates).")
@_json_option
def simulate(**values: Any) -> int:
    """Write a synthetic run through the real command path.

    A synthetic controller drives the decider, store and chain; no torch, no training."""
    return _run("simulate", "tools:cmd_simulate", values)


@cli.command(
    "check-lifecycle",
    epilog=_examples(
        "esper-es check-lifecycle", "esper-es check-lifecycle --config my.toml --examples 1000"
    ),
)
@click.option("--config", type=click.Path(), help="TOML run config whose gates to test.")
@click.option(
    "--examples", type=COUNT, default=200, show_default=True, help="Random command sequences."
)
@click.option("--seed", type=NATURAL, help="Derandomise with this seed.")
@_json_option
def check_lifecycle(**values: Any) -> int:
    """Property-test the lifecycle under a config's gates.

    Random command sequences against the invariants of SPEC §2; a violation exits 3 with a
    minimal counterexample."""
    return _run("check-lifecycle", "tools:cmd_check_lifecycle", values)


@cli.command(
    "diagram",
    epilog=_examples("esper-es diagram", "esper-es diagram --format svg --out lifecycle.svg"),
)
@click.option(
    "--format",
    type=click.Choice(["mermaid", "dot", "png", "svg"]),
    default="mermaid",
    show_default=True,
    help="Source on stdout (mermaid, dot), or an image written to --out (png, svg).",
)
@click.option("--out", type=click.Path(), help="Where the png or svg image goes.")
@_json_option
def diagram(**values: Any) -> int:
    """Draw the seed lifecycle as a state diagram.

    Drawn from the definition the code runs: mermaid or dot source, or a png/svg image."""
    return _run("diagram", "tools:cmd_diagram", values)


@cli.command(
    "completion",
    epilog=_examples(
        'eval "$(esper-es completion bash)"        # in ~/.bashrc',
        'eval "$(esper-es completion zsh)"         # in ~/.zshrc',
        "esper-es completion fish > ~/.config/fish/completions/esper-es.fish",
    ),
)
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> int:
    """Print the shell completion script for bash, zsh or fish."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise click.BadParameter(f"no completion for {shell}")
    click.echo(cls(cli, {}, "esper-es", "_ESPER_ES_COMPLETE").source())
    return 0


def parse_and_run(argv: Sequence[str]) -> int:
    """Parse `argv` and run its command; click's usage errors propagate to the caller."""
    result = cli.main(args=list(argv), prog_name="esper-es", standalone_mode=False)
    return int(result or 0)
