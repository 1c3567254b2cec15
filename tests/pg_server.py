"""A throw-away PostgreSQL server for the tests: `initdb` + `pg_ctl` in a directory of its own.

    python3 tests/pg_server.py start DIR   # prints the server's URL (unix socket in DIR)
    python3 tests/pg_server.py stop DIR    # stops it and removes DIR

Standard library only, so `.ci/run` can call it before any virtual environment exists. The
server listens on a unix socket only (no TCP: nothing else on the machine can reach it),
trusts its one user, and runs with fsync off: it holds test data, and lives minutes.
As root (initdb refuses root) it runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "esper"


def find_binary(name: str) -> str | None:
    """`name` from PATH, else from the newest /usr/lib/postgresql/*/bin (Debian's layout)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


def available() -> bool:
    """Whether this machine can start a server (initdb and pg_ctl are installed)."""
    return find_binary("initdb") is not None and find_binary("pg_ctl") is not None


def _free_port() -> int:
    # The port only names the socket file (`.s.PGSQL.<port>`); a free TCP port keeps it unique.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], base: Path) -> None:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start(base: Path, *, durable: bool = False) -> str:
    """Start a server with its data and socket under `base`; its URL (database `postgres`).

    `durable` keeps PostgreSQL's own fsync (for benchmarks: commits reach the disk, as SQLite's
    synchronous=FULL does); tests run without it.
    """
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("initdb / pg_ctl not found: apt-get install postgresql")
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()
    _run([initdb, "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"], base)
    options = f"-k {base} -p {port} -c listen_addresses='' -c max_connections=200"
    if not durable:
        options += " -c fsync=off"
    _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "start"], base)
    (base / "port").write_text(str(port))
    return f"postgresql:///postgres?host={base}&port={port}&user={USER}"


def stop(base: Path) -> None:
    """Stop the server under `base` (immediately: its data is thrown away) and remove `base`."""
    pg_ctl = find_binary("pg_ctl")
    if pg_ctl is not None and (base / "data" / "postmaster.pid").exists():
        _run([pg_ctl, "-D", str(base / "data"), "-m", "immediate", "-w", "stop"], base)
    shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`start DIR` or `stop DIR`."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    base = Path(argv[1]).absolute()
    if argv[0] == "start":
        print(start(base))
    else:
        stop(base)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
