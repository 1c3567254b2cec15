"""The shared-memory gradient reduction of ranks on one machine (`runtime.shared_reduce`).

Every case forks real ranks of a gloo group in a subprocess
(`tests/fixtures/shared_reduce_ranks.py`): ranks must fork before torch starts threads, and
this test process has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from esper_es.runtime import ranks, shared_reduce

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "fixtures" / "shared_reduce_ranks.py"

pytestmark = pytest.mark.skipif(not shared_reduce.supported(), reason="Linux only (memfd)")


def _ranks(mode: str, world: int, out: Path) -> tuple[list[int], list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(world), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return codes, reports


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_rank_order_sum_and_two_ranks_get_gloos_bits(
    tmp_path: Path, world: int
) -> None:
    codes, reports = _ranks("bits", world, tmp_path)
    assert codes == [0] * (world - 1) and len(reports) == world
    assert sum("messages" in r for r in reports) == world - 1
    for report in reports:
        assert report["shared"]
        # Three calls, the second growing the segment past its first capacity.
        assert report["rank_order"] == [True, True, True]
        assert report.get("messages", [True, True]) == [True, True]
        if world == 2:
            # One addition an element: gloo's bits, so the run records plain `gloo`.
            assert report["gloo"] == [True, True, True]
            assert report["backend"] == "gloo"
        else:
            assert report["backend"] == ranks.SHARED_BACKEND


@pytest.mark.parametrize(("mode", "world"), [("die", 2), ("die", 3), ("orphan", 2)])
def test_a_killed_rank_stops_the_others_with_rank_lost_at_once(
    tmp_path: Path, mode: str, world: int
) -> None:
    # `orphan`: the killed rank's child holds its sockets open, so no EOF comes: the peer's
    # process is checked while the others wait.
    codes, reports = _ranks(mode, world, tmp_path)
    assert codes[-1] == -9
    assert len(reports) == world - 1
    for report in reports:
        assert report["error"] is not None and "lost the other ranks" in report["error"]
        assert f"rank {world - 1} is gone" in report["error"]
        # Seen through the closed socket, not after the collective timeout (minutes).
        assert report["seconds"] < 30


def test_a_rank_out_of_step_is_an_error_not_data(tmp_path: Path) -> None:
    # Rank 0 sent a message where rank 1 waits for the barrier's byte (a rank that left the
    # protocol midway): rank 1 stops with RankLost instead of reading the message as a byte.
    _, (lead, follower) = _ranks("skew", 2, tmp_path)
    assert "rank 0 is out of step" in follower["error"]
    # Rank 0 may finish its reduction (rank 1's byte and slot were written before rank 1 read
    # the message) or find rank 1 gone (rank 1 closed its sockets before rank 0's byte went
    # out): a race between the two processes, and both are right. What it must never do is
    # hang or return without a word.
    assert lead["error"] is None or "rank 1 is gone" in lead["error"], lead["error"]


def test_leaving_closes_every_descriptor_and_mapping(tmp_path: Path) -> None:
    _, reports = _ranks("cleanup", 2, tmp_path)
    for report in reports:
        assert report["mapped"] >= 1
        assert report["after"] == report["before"]


def test_the_shared_reduction_is_for_cpu_ranks_on_one_machine() -> None:
    assert ranks.local_reduction("gloo", 2, local=True)
    assert not ranks.local_reduction("nccl", 2, local=True)
    assert not ranks.local_reduction("gloo", 2, local=False)
    # A 3-rank run recorded with gloo's own all-reduce re-executes with it (its sums' order).
    assert not ranks.local_reduction("gloo", 3, local=True, recorded_backend="gloo")
    assert ranks.local_reduction("gloo", 3, local=True, recorded_backend=ranks.SHARED_BACKEND)
    assert ranks.local_reduction("gloo", 2, local=True, recorded_backend="gloo")


def test_torchrun_ranks_are_local_when_the_node_holds_the_world(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "h")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not ranks.ranks_on_this_machine(4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert ranks.ranks_on_this_machine(4)
