"""The run's command ids: one seeded source per purpose, and their prefixes on branches.

Ids are `prefix-counter` (`esper_es.core.ids.IdSource`), each source seeded from the master
seed and its purpose, so the same run issues the same ids. A branch issues ids with its own
prefixes (derived from the branch name too) and the counters where the fork left them, so its
events never collide with the parent's, while a kernel germinated on it gets the init seed the
parent would have given it: `canonical` maps a branch id back to main's for that derivation.
"""

from __future__ import annotations

import random

from esper_es.core.ids import IdSource, derive_seed
from esper_es.store.database import MAIN

#: "compiler" issues the KernelCompiled facts' ids: when a background compile finishes is not
#: reproducible, so they must not shift the other sources' counts.
PURPOSES: tuple[str, ...] = ("orchestrator", "driver", "trainer", "compiler")


class RunIds:
    """The id sources of one run (see the module doc)."""

    def __init__(self, master_seed: int) -> None:
        self.master_seed = master_seed
        self.sources: dict[str, IdSource] = {p: self.source(p) for p in PURPOSES}
        #: Branch id prefix -> main's prefix of the same source.
        self._main_prefixes: dict[str, str] = {}

    def source(self, purpose: str, branch: str = MAIN) -> IdSource:
        """A fresh source of `purpose` with `branch`'s prefix (counter at 0)."""
        tags: tuple[str, ...] = (purpose,) if branch == MAIN else (purpose, "branch", branch)
        return IdSource(random.Random(derive_seed(self.master_seed, "ids", *tags)))

    def use_branch(self, branch: str) -> None:
        """Issue ids with `branch`'s prefixes from now on, keeping every source's count."""
        for purpose, source in self.sources.items():
            prefix = self.source(purpose, branch).prefix
            self._main_prefixes[prefix] = self.source(purpose).prefix
            source.prefix = prefix

    def canonical(self, command_id: str) -> str:
        """`command_id` as main would have issued it (unchanged on main)."""
        prefix, sep, count = command_id.rpartition("-")
        main = self._main_prefixes.get(prefix)
        return f"{main}{sep}{count}" if main is not None else command_id
