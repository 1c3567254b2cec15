"""Typed errors. Each carries what a user needs to act, and the CLI exit code (SPEC §8)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_ENVIRONMENT = 4
EXIT_LOCKED = 5
EXIT_INTERRUPTED = 130


class EsperError(Exception):
    """Base of every error esper-es raises on purpose."""

    exit_code: int = EXIT_ERROR


class ConfigError(EsperError):
    """A run config is malformed: an unknown key, a wrong type or an out-of-range value."""

    exit_code = EXIT_USAGE

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config key {key!r}: {problem}")


class ConfigFileError(ConfigError):
    """The run config file itself cannot be used: missing, unreadable or not TOML."""

    def __init__(self, path: str, problem: str) -> None:
        EsperError.__init__(self, f"config file {path}: {problem}")
        self.key = path
        self.problem = problem


class MissingDependency(EsperError):
    """A command needs a package of an extra (`torch`, `tensorboard`) that is not installed."""

    exit_code = EXIT_ERROR

    def __init__(self, module: str, extra: str = "torch") -> None:
        self.module = module
        self.extra = extra
        first = (
            "install PyTorch for your machine first (CPU only: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu), then the extra: "
            if extra == "torch"
            else "install the extra: "
        )
        super().__init__(
            f"this command needs {module!r}, which is not installed: {first}"
            f"pip install 'esper-es[{extra}]' (from a checkout: pip install -e '.[{extra}]', "
            "or make venv)"
        )


class UnknownBranch(EsperError):
    """A command names a branch the run database does not have; lists the ones it has."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"no branch {name!r}; branches: {', '.join(known)}")


class UnknownBlueprint(EsperError):
    """A command names a blueprint that is not registered or does not fit the layer."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str, known: Iterable[str], layer: str | None = None) -> None:
        self.name = name
        self.known = tuple(sorted(known))
        self.layer = layer
        where = f" for layer {layer!r}" if layer else ""
        super().__init__(
            f"unknown blueprint {name!r}{where}; known: {', '.join(self.known) or '(none)'}"
        )


class IllegalTransition(EsperError):
    """A lifecycle command was refused: not a transition from this state, or its gate failed."""

    def __init__(self, seed: str, state: str, trigger: str, reason: str = "") -> None:
        self.seed = seed
        self.state = state
        self.trigger = trigger
        self.reason = reason or f"no transition {trigger!r} from {state}"
        super().__init__(f"seed {seed}: cannot {trigger} in state {state}: {self.reason}")


class ConcurrencyError(EsperError):
    """An append's expected stream version did not match, or an event id was reused."""

    exit_code = EXIT_LOCKED

    def __init__(self, stream: str, expected: int | None, actual: int | None, detail: str = ""):
        self.stream = stream
        self.expected = expected
        self.actual = actual
        msg = detail or (
            f"stream {stream!r}: expected version {expected}, but it is at {actual}; "
            "reload the stream and decide again"
        )
        super().__init__(msg)


class DatabaseLocked(EsperError):
    """Another writer holds the run database."""

    exit_code = EXIT_LOCKED

    def __init__(self, path: str, holder: str = "") -> None:
        self.path = path
        self.holder = holder
        extra = f" (held by {holder})" if holder else ""
        super().__init__(
            f"run database {path} is open for writing by another process{extra}; "
            "wait for it to finish, or open it read-only (verify, history, inspect)"
        )


class NotARunDatabase(EsperError):
    """The file is not an esper-es run database, or has a format this version cannot read."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} is not a usable esper-es run database: {reason}")


class StorageError(EsperError):
    """The file system refused what a run database needs: a read-only place, a full disk,
    missing permissions. Never a sign of tampering; the data already written is intact."""

    exit_code = EXIT_ERROR

    def __init__(self, path: str, cause: str) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"cannot use {path}: {cause}")


class TamperDetected(EsperError):
    """Verification found the log altered, truncated or corrupt; names the first bad seq."""

    exit_code = EXIT_VERIFY

    def __init__(self, seq: int | None, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        where = f"at seq {seq}" if seq is not None else "in the file"
        super().__init__(f"verification failed {where}: {reason}")


class SchemaViolation(EsperError):
    """An event payload does not match its JSON Schema."""

    exit_code = EXIT_USAGE

    def __init__(self, event_type: str, version: int, problem: str) -> None:
        self.event_type = event_type
        self.version = version
        self.problem = problem
        super().__init__(f"{event_type} v{version} payload is invalid: {problem}")


class EnvironmentMismatch(EsperError):
    """The environment differs from the one recorded in RunStarted."""

    exit_code = EXIT_ENVIRONMENT

    def __init__(
        self, differences: Sequence[tuple[str, object, object]], hint: str | None = None
    ) -> None:
        self.differences = tuple(differences)
        lines = "; ".join(f"{k}: recorded {a!r}, here {b!r}" for k, a, b in self.differences)
        tail = f" ({hint})" if hint else ""
        super().__init__(f"environment differs from the recorded run: {lines}{tail}")


class InconsistentHistory(EsperError):
    """Folding a log met an event that cannot follow the state before it."""

    exit_code = EXIT_VERIFY

    def __init__(self, stream: str, version: int, reason: str) -> None:
        self.stream = stream
        self.version = version
        self.reason = reason
        super().__init__(f"stream {stream!r} version {version}: {reason}")


class UnsupportedSchemaVersion(EsperError):
    """A stored event has a schema version newer than this esper-es can read."""

    exit_code = EXIT_USAGE

    def __init__(self, event_type: str, version: int, supported: int) -> None:
        self.event_type = event_type
        self.version = version
        self.supported = supported
        super().__init__(
            f"{event_type} v{version} is newer than this esper-es reads (v{supported}); "
            "upgrade esper-es to read this run database"
        )


class HostFactoryError(EsperError):
    """A run's host cannot be (re)built: no factory known, not importable, or not the run's."""

    exit_code = EXIT_USAGE


class KeyFileError(EsperError):
    """A signing key file cannot be used: missing, unreadable, not the PEM key expected, or
    an output that would replace an existing key."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"key file {path}: {problem}")


class RankLost(EsperError):
    """A rank of a data-parallel run stopped (killed, crashed, unreachable) while others ran.

    Rank 0 commits each boundary in one transaction, so the log stays verifiable up to the
    last committed boundary; `resume` with the same number of ranks continues from there.
    """

    exit_code = EXIT_ERROR

    def __init__(self, rank: int, world_size: int, detail: str) -> None:
        self.rank = rank
        self.world_size = world_size
        super().__init__(
            f"rank {rank} of {world_size} lost the other ranks ({' '.join(detail.split())}); "
            f"what was committed is verified, continue with: esper-es resume DB --nproc "
            f"{world_size}"
        )


class RanksDisagree(EsperError):
    """At a `Checkpointed`, a rank's model, optimizer or RNG state differs from rank 0's."""

    exit_code = EXIT_VERIFY

    def __init__(self, rank: int, step: int, what: Sequence[str]) -> None:
        self.rank = rank
        self.step = step
        self.what = tuple(what)
        super().__init__(
            f"rank {rank} differs from rank 0 at the checkpoint of step {step}: "
            f"{', '.join(self.what)}; the run stopped before recording it"
        )


class WorldSizeError(EsperError):
    """`--nproc` cannot be used as given (below 1, or not the world `torchrun` started)."""

    exit_code = EXIT_USAGE


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
