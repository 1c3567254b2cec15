"""Numerics modes (SPEC §5): CPU identity recorded, native runs bound to their CPU, portable
runs pinned so that no CPU-selecting variable of the outer environment changes their bits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from numerics_support import TINY, clean_env, esper, train_fingerprint

from esper_es import numerics
from esper_es.errors import EnvironmentMismatch
from esper_es.runtime.environment import (
    capture_environment,
    check_environment,
    compare_environments,
)

FLAGS = set(numerics.cpu_identity()["flags"])

#: Values of each CPU-selecting variable this machine can run (beyond what portable pins).
ATEN = ["default", "avx2"] + (["avx512"] if {"avx512f", "avx512bw", "avx512vl"} <= FLAGS else [])
MKL_ISA = ["SSE4_2", "AVX", "AVX2"] + (["AVX512"] if "avx512f" in FLAGS else [])
ONEDNN = ["SSE41", "AVX", "AVX2"] + (
    ["AVX512_CORE", "AVX512_CORE_VNNI", "AVX512_CORE_BF16"] if "avx512_bf16" in FLAGS else []
)
CBWR = ["COMPATIBLE", "AUTO"] + (["AVX512"] if "avx512f" in FLAGS else [])


def test_modes_and_pins() -> None:
    assert numerics.check_mode("portable") == "portable"
    with pytest.raises(ValueError, match="native, portable"):
        numerics.check_mode("fast")
    env = {"ATEN_CPU_CAPABILITY": "avx512", "OTHER": "x"}
    changed = numerics.pin_portable(env)
    assert set(changed) == set(numerics.PORTABLE_ENV)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["OTHER"] == "x"
    assert numerics.unpinned(env) == []
    assert numerics.pin_portable(env) == []
    assert ("MKL_CBWR", "AVX2,STRICT", None) in numerics.unpinned({})


def test_cpu_identity_is_recorded_with_the_mode() -> None:
    env = capture_environment()
    cpu = env["cpu"]
    assert cpu["vendor"] and cpu["family"] and cpu["model"]
    assert set(cpu["flags"]) <= set(numerics.KERNEL_FLAGS)
    assert {"avx2", "fma"} <= set(cpu["flags"])  # every machine this project runs on
    assert env["numerics"] in numerics.MODES
    assert env["blas_build"] and env["onednn_build"]


def _native(**cpu: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    recorded = capture_environment()
    recorded["numerics"] = "native"
    current = dict(recorded)
    current["cpu"] = {**recorded["cpu"], **cpu}
    return recorded, current


def test_a_native_run_is_bound_to_its_cpu() -> None:
    recorded, current = _native(vendor="GenuineIntel", model="143", flags=["avx2", "fma"])
    names = [d[0] for d in compare_environments(recorded, current)]
    assert names == ["cpu.flags", "cpu.model", "cpu.vendor"]
    with pytest.raises(EnvironmentMismatch, match=r"cpu\.vendor") as info:
        check_environment(recorded, current)
    assert info.value.exit_code == 4
    # Stepping and the marketing name do not select kernels: recorded only.
    recorded, current = _native(stepping="9", model_name="Some Other Name")
    assert compare_environments(recorded, current) == []


def test_a_portable_run_ignores_the_cpu_but_not_its_pins() -> None:
    recorded, current = _native(vendor="GenuineIntel", model="143")
    recorded["numerics"] = current["numerics"] = "portable"
    assert compare_environments(recorded, current) == []
    current["numerics_env"] = {**recorded["numerics_env"], "MKL_CBWR": "AVX512"}
    current["cpu_capability"] = "AVX512"
    names = [d[0] for d in compare_environments(recorded, current)]
    assert names == ["cpu_capability", "numerics_env.MKL_CBWR"]


def test_a_log_from_before_numerics_modes_compares_its_cpu_model() -> None:
    recorded = capture_environment()
    for name in ("numerics", "cpu", "nnpack_enabled", "blas_build", "onednn_build"):
        del recorded[name]
    current = capture_environment()
    assert compare_environments(recorded, current) == []
    current["cpu_model"] = "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert [d[0] for d in compare_environments(recorded, current)] == ["cpu_model"]


def _python(code: str) -> str:
    """Run `code` in a fresh interpreter without pins; its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_portable_refuses_when_torch_came_first_and_says_what_to_do() -> None:
    out = _python(
        "import torch; torch.ones(3).exp().sum()\n"
        "from esper_es import numerics\n"
        "try:\n"
        "    numerics.activate('portable')\n"
        "except numerics.PortableNotPinned as exc:\n"
        "    print(exc.exit_code, exc)\n"
    )
    assert out.startswith("4 ")
    assert "pin_portable()" in out and "ATEN_CPU_CAPABILITY=avx2" in out
    # Pinned before torch: accepted, and the process says it is portable.
    out = _python(
        "from esper_es import numerics; numerics.pin_portable()\n"
        "import torch\n"
        "numerics.activate('portable')\n"
        "from esper_es.runtime.environment import capture_environment\n"
        "e = capture_environment()\n"
        "print(e['numerics'], e['cpu_capability'], e['mkldnn_enabled'])\n"
    )
    assert out.split() == ["portable", "AVX2", "False"]


def _fingerprints(
    tmp: Path, runs: dict[str, tuple[dict[str, str], tuple[str, ...]]]
) -> dict[str, str]:
    # Two at a time: the machine has two cores and each run is one thread.
    (tmp / "tiny.toml").write_text(TINY)
    procs: dict[str, subprocess.Popen[str]] = {}
    out: dict[str, str] = {}
    names = list(runs)
    for i in range(0, len(names), 2):
        for name in names[i : i + 2]:
            env, extra = runs[name]
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "esper_es.cli.main", "train", "--config",
                 str(tmp / "tiny.toml"), "--db", str(tmp / f"{name}.db"), *extra, "--json"],
                env=clean_env(env), cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        for name in names[i : i + 2]:
            stdout, stderr = procs[name].communicate(timeout=300)
            assert procs[name].returncode == 0, stderr
            out[name] = json.loads(stdout.strip().splitlines()[-1])["fingerprint"]
    return out


LOW = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}
HIGH = {
    "ATEN_CPU_CAPABILITY": ATEN[-1],
    "MKL_CBWR": CBWR[-1],
    "MKL_ENABLE_INSTRUCTIONS": MKL_ISA[-1],
    "ONEDNN_MAX_CPU_ISA": ONEDNN[-1],
}


def test_portable_is_one_fingerprint_whatever_the_outer_environment_selects(
    tmp_path: Path,
) -> None:
    portable = ("--numerics", "portable")
    fps = _fingerprints(
        tmp_path,
        {
            "portable": ({}, portable),
            "portable_low": (LOW, portable),
            "portable_high": (HIGH, portable),
            "native_low": (LOW, ()),
        },
    )
    assert fps["portable"] == fps["portable_low"] == fps["portable_high"]
    # The variables do select other arithmetic when nothing pins them: this test could fail.
    assert fps["native_low"] != fps["portable"]


@pytest.mark.slow
def test_portable_under_every_value_this_machine_supports(tmp_path: Path) -> None:
    portable = ("--numerics", "portable")
    runs: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {"ref": ({}, portable)}
    for var, values in (
        ("ATEN_CPU_CAPABILITY", ATEN),
        ("MKL_ENABLE_INSTRUCTIONS", MKL_ISA),
        ("ONEDNN_MAX_CPU_ISA", ONEDNN),
        ("MKL_CBWR", CBWR),
    ):
        for value in values:
            runs[f"{var}={value}"] = ({var: value}, portable)
    runs["native_default"] = ({}, ())
    runs["native_aten_default"] = ({"ATEN_CPU_CAPABILITY": "default"}, ())
    fps = _fingerprints(tmp_path, runs)
    native = {fps.pop("native_default"), fps.pop("native_aten_default")}
    assert len(native) == 2  # unpinned, the variables change the bits
    assert set(fps.values()) == {fps["ref"]}, fps


def test_the_cli_pins_a_recorded_portable_run_before_replaying_it(tmp_path: Path) -> None:
    fp = train_fingerprint(tmp_path, "run", clean_env(), "--numerics", "portable")
    code, obj, err = esper("replay", tmp_path / "run.db", env=clean_env(HIGH), cwd=tmp_path)
    assert code == 0, err
    assert obj is not None and obj["fingerprint"] == fp
