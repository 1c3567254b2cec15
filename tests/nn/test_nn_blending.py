"""Alpha schedules (esper_es.core.blending): bounds, endpoints, monotonicity, holding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_es.core.blending import BLEND_KINDS, BlendSchedule, blend_alpha

kinds = st.sampled_from(BLEND_KINDS)
ramps = st.integers(min_value=0, max_value=10_000)
targets = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
steps = st.integers(min_value=-5, max_value=20_000)


@settings(max_examples=50, deadline=None)
@given(kinds, steps, ramps, targets)
def test_alpha_stays_within_zero_and_target(kind: str, step: int, ramp: int, target: float) -> None:
    a = blend_alpha(kind, step, ramp, target)
    assert 0.0 <= a <= target


@settings(max_examples=50, deadline=None)
@given(kinds, ramps, targets, st.integers(min_value=0, max_value=50))
def test_endpoints_are_exact_and_alpha_holds(
    kind: str, ramp: int, target: float, extra: int
) -> None:
    assert blend_alpha(kind, ramp, ramp, target) == target
    assert blend_alpha(kind, ramp + extra, ramp, target) == target
    if ramp > 0:
        assert blend_alpha(kind, 0, ramp, target) == 0.0


@settings(max_examples=50, deadline=None)
@given(kinds, ramps, targets, steps, steps)
def test_alpha_is_monotone_in_steps(kind: str, ramp: int, target: float, a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert blend_alpha(kind, lo, ramp, target) <= blend_alpha(kind, hi, ramp, target)


@pytest.mark.parametrize("kind", BLEND_KINDS)
def test_every_step_of_a_ramp_is_monotone(kind: str) -> None:
    values = [blend_alpha(kind, s, 97, 0.8) for s in range(-1, 100)]
    assert values == sorted(values)
    assert 0.0 < values[50] < 0.8


def test_schedule_object_and_bad_input() -> None:
    sched = BlendSchedule("cosine", 10)
    assert sched.alpha(5, 1.0) == pytest.approx(0.5)
    assert sched.done(10) and not sched.done(9)
    with pytest.raises(ValueError, match="unknown blend schedule"):
        BlendSchedule("cubic", 10)
    with pytest.raises(ValueError):
        BlendSchedule("linear", -1)
    with pytest.raises(ValueError, match="outside"):
        blend_alpha("linear", 1, 2, 1.5)


def test_blending_is_pure_python() -> None:
    import subprocess
    import sys

    code = "import sys, esper_es.core.blending; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
