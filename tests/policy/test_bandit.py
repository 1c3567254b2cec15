"""The learned controller's posterior math (esper_es.core.bandit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper_es.core.bandit import Posterior, cholesky, fit, sample, standard_normal, uniform


def test_one_feature_posterior_is_the_conjugate_normal_update() -> None:
    # Prior N(0, s^2), known noise sigma, n outcomes: precision 1/s^2 + n/sigma^2.
    s, sigma = 0.5, 0.2
    ys = [0.3, 0.1, 0.2, 0.4]
    post = fit(["bias"], [({"bias": 1.0}, y) for y in ys], prior_scale=s, noise=sigma)
    var = 1.0 / (1.0 / s**2 + len(ys) / sigma**2)
    assert post.cov[0][0] == pytest.approx(var, rel=1e-12)
    assert post.mean[0] == pytest.approx(var * sum(ys) / sigma**2, rel=1e-12)
    assert post.n == 4


def test_posterior_matches_the_closed_form_on_synthetic_data_and_recovers_the_weights() -> None:
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    true = np.array([0.5, -1.0, 0.25])
    x = rng.normal(size=(400, 3))
    y = x @ true + rng.normal(scale=0.1, size=400)
    rows = [
        ({n: float(v) for n, v in zip(names, r, strict=True)}, float(t))
        for r, t in zip(x, y, strict=True)
    ]
    post = fit(names, rows, prior_scale=2.0, noise=0.1)
    # Ridge form of the same posterior mean: (XᵀX + (σ²/s²) I)⁻¹ Xᵀy.
    ridge = np.linalg.solve(x.T @ x + (0.1**2 / 2.0**2) * np.eye(3), x.T @ y)
    assert np.allclose(post.mean, ridge, rtol=1e-9, atol=1e-12)
    assert np.allclose(post.mean, true, atol=0.02)
    # More data, less uncertainty.
    few = fit(names, rows[:20], prior_scale=2.0, noise=0.1)
    assert all(post.cov[i][i] < few.cov[i][i] for i in range(3))


def test_features_outside_the_names_are_ignored_and_unknown_names_weigh_nothing() -> None:
    post = fit(["bias"], [({"bias": 1.0, "other": 5.0}, 1.0)], prior_scale=1.0, noise=1.0)
    assert post.names == ("bias",)
    assert post.predict({"bias": 1.0, "other": 100.0}) == pytest.approx(post.mean[0])


def test_posterior_round_trips_through_its_dict() -> None:
    post = fit(["a", "b"], [({"a": 1.0}, 0.5), ({"b": 1.0}, -0.5)], prior_scale=1.0, noise=0.5)
    assert Posterior.from_dict(post.to_dict()) == post


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=2**31))
def test_cholesky_factors_a_positive_definite_matrix(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    a = m @ m.T + n * np.eye(n)
    lower = np.array(cholesky(a.tolist()))
    assert np.allclose(lower @ lower.T, a, rtol=1e-10, atol=1e-10)
    assert np.allclose(np.triu(lower, 1), 0.0)


def test_draws_are_uniform_and_standard_normal_enough() -> None:
    us = [uniform(3, i) for i in range(20000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert sum(us) / len(us) == pytest.approx(0.5, abs=0.01)
    zs = standard_normal(11, 20000)
    mean = sum(zs) / len(zs)
    var = sum((z - mean) ** 2 for z in zs) / len(zs)
    assert mean == pytest.approx(0.0, abs=0.03)
    assert var == pytest.approx(1.0, abs=0.05)


def test_a_draw_is_a_function_of_its_seed_and_follows_the_posterior() -> None:
    post = Posterior(names=("a", "b"), mean=(1.0, -2.0), cov=((0.04, 0.018), (0.018, 0.09)), n=0)
    assert sample(post, 5) == sample(post, 5)
    assert sample(post, 5) != sample(post, 6)
    draws = np.array([sample(post, s) for s in range(4000)])
    assert np.allclose(draws.mean(axis=0), post.mean, atol=0.02)
    assert np.allclose(np.cov(draws.T), np.array(post.cov), atol=0.01)
    assert all(math.isfinite(v) for v in draws.ravel())
