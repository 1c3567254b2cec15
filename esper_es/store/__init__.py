"""The run database: the append-only, hash-chained SQLite log that is a run's source of truth."""

from esper_es.store.database import AppendResult, RunDatabase
from esper_es.store.verify import VerifyReport, verify

__all__ = ["AppendResult", "RunDatabase", "VerifyReport", "verify"]
