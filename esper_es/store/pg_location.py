"""`postgresql://…` run locations: which server, which database, which run (schema).

A run lives in its own PostgreSQL schema. The location is a libpq URL plus one parameter of
ours, `schema`, naming the run's schema; it is taken off before the URL reaches libpq. The
password (in the URL or a `password=` parameter) is kept for connecting only: `redacted`
is what goes into messages, logs and `--json` output.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from esper_es.errors import NotARunDatabase

SCHEMES = ("postgresql://", "postgres://")
#: PostgreSQL truncates identifiers at 63 bytes; a longer schema name would alias another.
_MAX_IDENTIFIER = 63


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Whether `location` names a PostgreSQL run rather than an SQLite file."""
    return isinstance(location, str) and location.startswith(SCHEMES)


@attrs.frozen
class PgLocation:
    """A parsed `postgresql://` location: libpq's URL, the schema (None: not named)."""

    conninfo: str = attrs.field(repr=False)
    schema: str | None
    redacted_server: str
    secrets: tuple[str, ...] = attrs.field(repr=False, default=())

    @classmethod
    def parse(cls, location: str) -> PgLocation:
        """Split the `schema` parameter off `location` and note what must never be shown."""
        parts = urlsplit(location)
        params = parse_qsl(parts.query, keep_blank_values=True)
        schema = None
        rest: list[tuple[str, str]] = []
        secrets: list[str] = []
        for key, value in params:
            if key == "schema":
                schema = value
            else:
                rest.append((key, value))
                if key == "password" and value:
                    secrets.append(value)
        if parts.password:
            secrets.append(parts.password)
        if schema is not None:
            check_schema_name(schema)
        conninfo = _join(parts.scheme, parts.netloc, parts.path, rest)
        shown = [(k, "***" if k == "password" else v) for k, v in rest]
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.split(':', 1)[0]}@{host}"
        server = _join(parts.scheme, netloc, parts.path, shown)
        return cls(conninfo, schema, server, tuple(secrets))

    def with_schema(self, schema: str) -> PgLocation:
        """The same server and database, the run in `schema`."""
        check_schema_name(schema)
        return attrs.evolve(self, schema=schema)

    @property
    def redacted(self) -> str:
        """The location as people may see it: no password."""
        if self.schema is None:
            return self.redacted_server
        sep = "&" if "?" in self.redacted_server else "?"
        return f"{self.redacted_server}{sep}{urlencode({'schema': self.schema})}"

    def scrub(self, text: str) -> str:
        """`text` with every secret of this location replaced (for error messages)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _join(scheme: str, netloc: str, path: str, params: list[tuple[str, str]]) -> str:
    # Not urlunsplit: it drops the `//` of an empty host (`postgresql:///db?host=/socket`).
    query = f"?{urlencode(params, safe='/')}" if params else ""
    return f"{scheme}://{netloc}{path}{query}"


def check_schema_name(name: str) -> None:
    """NotARunDatabase (exit 2) unless `name` can be a run's schema."""
    if not name or len(name.encode("utf-8")) > _MAX_IDENTIFIER or "\x00" in name:
        raise NotARunDatabase(f"schema {name!r}", f"a name must be 1 to {_MAX_IDENTIFIER} bytes")
    if name.startswith("pg_") or name == "information_schema":
        raise NotARunDatabase(f"schema {name!r}", "the name is reserved by PostgreSQL")


def refuse_mistyped_url(location: str | os.PathLike[str]) -> None:
    """NotARunDatabase for `postgresql:/…` or `postgres:host/…`, which would otherwise name an
    SQLite file in a folder called `postgresql:` (what a missing slash used to create)."""
    text = str(location)
    scheme, colon, _ = text.partition(":")
    if colon and scheme.lower() in ("postgresql", "postgres") and not is_postgres(text):
        # Nothing after the scheme is shown: it may hold a password.
        raise NotARunDatabase(
            f"{scheme}:…", "a PostgreSQL URL starts with postgresql:// (lower case, two slashes)"
        )


def describe(location: str | os.PathLike[str]) -> str:
    """`location` as people may see it: a URL loses its password; a path is itself."""
    if is_postgres(location):
        return PgLocation.parse(str(location)).redacted
    return str(location)
