"""Environment capture, comparison and the replay gate (SPEC §5)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
import torch

import esper_es
from esper_es.core.canonical import canonical_json, loads
from esper_es.errors import EXIT_ENVIRONMENT, EnvironmentMismatch
from esper_es.runtime.environment import (
    ABSENT,
    RECORDED_ONLY,
    InteropThreadsLocked,
    apply_settings,
    capture_environment,
    check_environment,
    compare_environments,
    configure_determinism,
    pin_threads,
)

# The fields SPEC §5 names for RunStarted, by the key esper-es records them under.
SPEC_FIELDS = {
    "python_version",
    "torch_version",
    "numpy_version",
    "esper_es_version",
    "torch_num_threads",
    "torch_num_interop_threads",
    "deterministic_algorithms",
    "deterministic_warn_only",
    "float32_matmul_precision",
    "platform_system",
    "platform_machine",
    "libc",
    "cpu_capability",
    "cudnn_deterministic",
    "cudnn_benchmark",
}


@pytest.fixture
def restore_torch_settings() -> Iterator[None]:
    """Put back what a test changes in this process's torch settings."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    precision = torch.get_float32_matmul_precision()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    mkldnn_matmul = torch.backends.mkldnn.matmul.fp32_precision  # type: ignore[attr-defined]
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    # After the legacy setter above, which overwrites the per-backend value.
    torch.backends.mkldnn.matmul.fp32_precision = mkldnn_matmul  # type: ignore[attr-defined]


def test_capture_has_every_spec_field_and_is_canonical_json() -> None:
    env = capture_environment()
    missing = SPEC_FIELDS - set(env)
    assert not missing, missing
    assert loads(canonical_json(env)) == env
    assert env["esper_es_version"] == esper_es.__version__
    assert env["torch_version"] == torch.__version__
    assert env["torch_num_threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["device"] == "cpu" and env["cudnn_deterministic"] is None
    assert env["torch_build_digest"].startswith("sha256:")
    # Identifying facts stay out of the log.
    assert not {"hostname", "host", "node", "user", "cwd"} & set(env)


def test_capture_is_stable_within_a_process() -> None:
    assert compare_environments(capture_environment(), capture_environment()) == []


def test_compare_names_each_differing_field() -> None:
    recorded = capture_environment()
    current = dict(recorded)
    current["torch_num_threads"] = recorded["torch_num_threads"] + 1
    current["esper_es_version"] = "9.9.9"
    current["numerics_env"] = {**recorded["numerics_env"], "MKL_CBWR": "COMPATIBLE"}
    assert not RECORDED_ONLY - set(recorded)
    for name in RECORDED_ONLY:  # recorded only: never a difference
        current[name] = "elsewhere"
    del current["libc"]
    current["new_field"] = 1
    diffs = compare_environments(recorded, current)
    assert [d[0] for d in diffs] == [
        "esper_es_version",
        "libc",
        "new_field",
        "numerics_env.MKL_CBWR",
        "torch_num_threads",
    ]
    assert ("libc", recorded["libc"], ABSENT) in diffs
    assert ("new_field", ABSENT, 1) in diffs
    assert ("numerics_env.MKL_CBWR", recorded["numerics_env"]["MKL_CBWR"], "COMPATIBLE") in diffs
    ignored = compare_environments(recorded, current, ignore={"numerics_env", "new_field"})
    assert [d[0] for d in ignored] == ["esper_es_version", "libc", "torch_num_threads"]


def test_bool_and_int_are_different_values() -> None:
    assert compare_environments({"a": True}, {"a": 1}) == [("a", True, 1)]


def test_different_thread_count_is_refused(restore_torch_settings: None) -> None:
    recorded = capture_environment()
    pin_threads(recorded["torch_num_threads"] % 2 + 1)  # 1 <-> 2, both always valid
    with pytest.raises(EnvironmentMismatch) as info:
        check_environment(recorded)
    assert [d[0] for d in info.value.differences] == ["torch_num_threads"]
    assert "torch_num_threads" in str(info.value)
    assert info.value.exit_code == EXIT_ENVIRONMENT


def test_override_returns_the_differences(restore_torch_settings: None) -> None:
    recorded = {**capture_environment(), "torch_version": "0.0.1", "python_version": "2.7"}
    diffs = check_environment(recorded, override=True)
    assert [d[0] for d in diffs] == ["python_version", "torch_version"]
    canonical_json(diffs)  # the caller records them
    assert check_environment(capture_environment()) == []


def test_configure_determinism_and_apply_settings(restore_torch_settings: None) -> None:
    configure_determinism()
    env = capture_environment()
    assert env["deterministic_algorithms"] is True
    assert env["float32_matmul_precision"] == "highest"
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(env["torch_num_threads"] % 2 + 1)
    assert {d[0] for d in compare_environments(env, capture_environment())} == {
        "deterministic_algorithms",
        "torch_num_threads",
    }
    apply_settings(env)
    assert check_environment(env) == []


def test_pin_threads_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        pin_threads(0)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_inter_op_threads_once_per_process() -> None:
    # In a fresh process: the inter-op count is set once; asking again for the same count is
    # fine, asking for another is a typed, explained refusal.
    proc = _run(
        """
        import torch
        from esper_es.runtime.environment import InteropThreadsLocked, pin_threads
        assert pin_threads(1, 3) == {"torch_num_threads": 1, "torch_num_interop_threads": 3}
        assert pin_threads(1, 3)["torch_num_interop_threads"] == 3
        try:
            pin_threads(1, 2)
        except InteropThreadsLocked as exc:
            assert exc.differences == (("torch_num_interop_threads", 2, 3),), exc.differences
            assert "fresh process" in str(exc), str(exc)
            print("refused")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "refused"
    assert issubclass(InteropThreadsLocked, EnvironmentMismatch)
