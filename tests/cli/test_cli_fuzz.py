"""Files are untrusted input (SPEC §9): random bytes, random SQLite files, damaged run
databases and random TOML given to every command get a documented exit code, one error line
on stderr (one JSON object on stdout with --json), never a traceback, and no file changes but
the ones the command was asked to write.

No command leaves a `.lock` file: a writer removes its lock file when it lets go, whether it
finished or was refused. Readers leave nothing, not even
SQLite's `-wal` / `-shm` (they did until readers closed as `query_only` read-write
connections where they may write).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esper_es.cli.main import main

CORPUS_RUN = Path(__file__).resolve().parents[2] / "replay" / "digits" / "run.db"
EXIT_CODES = {0, 1, 2, 3, 4, 5}
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Commands that read a run database: (argv after the command, with F for the file and O for
#: an output the command may write).
DB_COMMANDS: list[list[str]] = [
    ["verify", "F"],
    ["verify", "F", "--expect-head", "0" * 64],
    ["history", "F"],
    ["inspect", "F"],
    ["inspect", "F", "--at", "3"],
    ["replay", "F"],
    ["replay", "F", "--to", "9", "--out", "O/model.pt"],
    ["resume", "F"],
    ["rollback", "F", "--to", "5"],
    ["report", "F", "-o", "O"],
    ["sign", "F", "--key", "K"],
    ["verify", "F", "--key", "K.pub"],
]


WRITERS = {"resume", "rollback", "sign"}


def _state(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run(argv: list[str], root: Path, allowed: Callable[[str, int], bool]) -> None:
    before = _state(root)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([*argv, "--json"])
    assert code in EXIT_CODES, (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue(), err.getvalue()
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, (argv, out.getvalue())
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    if code != 0:
        assert obj["exit_code"] == code and obj["message"]
        errors = err.getvalue().strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("esper-es: "), err.getvalue()
    after = _state(root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(allowed(k, code) for k in changed), (argv, code, sorted(changed))


def _check_db_commands(content_writer: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as keys:
        root = Path(tmp)
        key = Path(keys) / "k.pem"
        with redirect_stdout(io.StringIO()):
            assert main(["keygen", "--out", str(key), "--json"]) == 0
        for template in DB_COMMANDS:
            f = root / "in.db"
            for leftover in root.iterdir():
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
            content_writer(f)
            names = {"F": str(f), "O": str(root / "out"), "K": str(key)}
            argv = [names.get(a[0], "") + a[1:] if a[:1] in names else a for a in template]

            def allowed(name: str, code: int, writer: bool = template[0] in WRITERS) -> bool:
                if name.startswith("out"):
                    return True
                # A damaged byte SQLite never reads (free space) leaves a valid run, which
                # resume and rollback were asked to append to.
                return writer and code == 0 and name.startswith("in.db")

            _run(argv, root, allowed)


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _check_db_commands(lambda f: f.write_bytes(data))


_NAMES = st.sampled_from(["meta", "events", "blobs", "branches", "kernel_artifacts", "t", "x"])
_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.none(),
)


@SETTINGS
@given(
    st.lists(
        st.tuples(_NAMES, st.lists(st.lists(_VALUES, min_size=2, max_size=2), max_size=4)),
        max_size=4,
        unique_by=lambda t: t[0],
    ),
    st.booleans(),
)
def test_random_sqlite_files(tables: list[tuple[str, list[list[object]]]], wal: bool) -> None:
    def write(f: Path) -> None:
        conn = sqlite3.connect(f)
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        for name, rows in tables:
            if name == "meta":
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
                conn.execute("INSERT INTO meta VALUES ('format', 'esper-es run database')")
                conn.execute("INSERT INTO meta VALUES ('format_version', '1')")
                conn.execute("INSERT INTO meta VALUES ('run_id', 'run-fuzz')")
                continue
            conn.execute(f"CREATE TABLE {name} (a, b)")
            conn.executemany(f"INSERT INTO {name} VALUES (?, ?)", rows)
        conn.commit()
        conn.close()

    _check_db_commands(write)


@SETTINGS
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(min_value=1, max_value=64))
def test_damaged_run_databases(seed: int, flips: int) -> None:
    original = CORPUS_RUN.read_bytes()

    def write(f: Path) -> None:
        rng = random.Random(seed)
        data = bytearray(original)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        for _ in range(flips):
            if data:
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256)
        f.write_bytes(bytes(data))

    _check_db_commands(write)


_SECTIONS = st.sampled_from(
    ["train", "host", "seeds", "driver", "lifecycle", "runtime", "determinism", "library", "zzz"]
)
_TOML_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(
        lambda x: "nan" if x != x else ("inf" if x == float("inf") else repr(x))
    ),
    st.text(alphabet="abc'\"\\ \n#[]=", max_size=12).map(json.dumps),
    st.sampled_from(["true", "[]", "{}", "[1, 'a']", '"portable"', "0", "-1"]),
)


@SETTINGS
@given(
    st.lists(st.tuples(_SECTIONS, st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
                       _TOML_VALUES), min_size=1, max_size=4),
    st.binary(max_size=64),
)  # fmt: skip
def test_random_configs(entries: list[tuple[str, str, str]], junk: bytes) -> None:
    text = "".join(f"[{section}]\n{key} = {value}\n" for section, key, value in entries)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for body in (text.encode(), junk):
            config = root / "c.toml"
            config.write_bytes(body)
            for argv, writes in (
                (["train", "--config", str(config), "--db", str(root / "t.db"), "--epochs", "1"],
                 ("t.db", "t.pt")),
                (["simulate", "--config", str(config), "--db", str(root / "s.db"), "--events",
                  "20"], ("s.db",)),
            ):  # fmt: skip
                _run(argv, root, lambda name, _, w=writes: name.startswith((*w, "runs")))
                for w in writes:
                    for p in root.glob(f"{w}*"):
                        p.unlink()
