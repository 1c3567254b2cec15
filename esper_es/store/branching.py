"""Branches as every backend keeps them: a name, its parent and fork point (SPEC §6)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from esper_es.store.records import Branch


class BranchIndex:
    """The run's branches, loaded once per open and after each `open_branch`."""

    _branches: dict[str, Branch]

    def _set_branches(self, rows: Iterable[tuple[str, str | None, int, int]]) -> None:
        self._branches = {r[0]: Branch(*r) for r in rows}

    def branches(self) -> list[Branch]:
        """Every branch, oldest first."""
        return sorted(self._branches.values(), key=lambda b: (b.created_seq, b.name))

    def branch(self, name: str) -> Branch:
        """The branch called `name`."""
        try:
            return self._branches[name]
        except KeyError:
            known = ", ".join(sorted(self._branches))
            raise KeyError(f"no branch {name!r}; branches: {known}") from None

    def lineage(self, branch: str) -> list[tuple[str, int | None]]:
        """`(branch, last seq visible from it)` from `branch` up to `main`; None = unbounded."""
        out: list[tuple[str, int | None]] = []
        bound: int | None = None
        name: str | None = branch
        while name is not None:
            b = self.branch(name)
            out.append((name, bound))
            bound = b.fork_seq if bound is None else min(bound, b.fork_seq)
            name = b.parent
        return out

    def lineage_levels(
        self, branch: str, mark: str = "?", column: str = "branch"
    ) -> list[tuple[str, list[Any]]]:
        """Per level of `branch`'s lineage, nearest first: the SQL condition selecting the
        events visible from it at that level, and its arguments (`mark` is the placeholder)."""
        levels: list[tuple[str, list[Any]]] = []
        for name, bound in self.lineage(branch):
            if bound is None:
                levels.append((f"{column} = {mark}", [name]))
            else:
                levels.append((f"{column} = {mark} AND seq <= {mark}", [name, bound]))
        return levels

    def lineage_condition(
        self, branch: str, mark: str = "?", column: str = "branch"
    ) -> tuple[str, list[Any]]:
        """One SQL condition for every event visible from `branch`: its own, and its
        parents' up to each fork; with its arguments."""
        levels = self.lineage_levels(branch, mark, column)
        sql = "(" + " OR ".join(f"({cond})" for cond, _ in levels) + ")"
        return sql, [arg for _, args in levels for arg in args]

    def _check_new_branch(self, name: str, parent: str, fork_seq: int, head: int) -> None:
        if name in self._branches:
            raise ValueError(f"branch {name!r} already exists")
        self.branch(parent)
        if not 0 <= fork_seq <= head:
            raise ValueError(f"fork seq {fork_seq} is outside 0..{head}")
