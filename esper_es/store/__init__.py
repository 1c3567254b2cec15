"""The run database: the append-only, hash-chained log that is a run's source of truth.

`RunStore` is the protocol; `open_store` / `create_store` pick SQLite (a path) or PostgreSQL
(a `postgresql://` URL).
"""

from esper_es.store.backends import create_store, open_store
from esper_es.store.database import AppendResult, RunDatabase
from esper_es.store.protocol import RunStore
from esper_es.store.verify import VerifyReport, verify

__all__ = [
    "AppendResult",
    "RunDatabase",
    "RunStore",
    "VerifyReport",
    "create_store",
    "open_store",
    "verify",
]
