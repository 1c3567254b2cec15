"""Bayesian linear regression with Thompson sampling: the learned controller's policy math.

The model: an outcome `y` (a kernel's measured contribution, see docs/controller.md) is
linear in a feature vector, `y = x·θ + ε` with `ε ~ N(0, noise²)`, under the prior
`θ ~ N(0, prior_scale² I)`. Given rows `(x_i, y_i)` the posterior is Gaussian:

    Σ = (I / prior_scale² + XᵀX / noise²)⁻¹        μ = Σ Xᵀy / noise²

Fitting (`fit`) runs once, live, and its result is recorded in the log (`PolicyFitted`), so
nothing downstream depends on how this machine's LAPACK rounds. Sampling (`sample`) reads
only the recorded `μ, Σ` and uses only exactly rounded arithmetic (+, -, *, / and sqrt, which
IEEE 754 rounds correctly everywhere): a standard normal draw is approximated by the sum of 12
uniforms minus 6 (Irwin-Hall: mean 0, variance 1), and the uniforms come from SHA-256 of the
draw's seed and index. `exp`, `log`, `cos`, whose last bit differs between C libraries, are
never used, so `replay --recompute-decisions` draws the same θ on any CPU.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np


@attrs.frozen
class Posterior:
    """A Gaussian over the weights of named features: mean and covariance."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    n: int = 0
    """How many outcome rows it was fitted on."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the `posterior` of `PolicyFitted`)."""
        return {
            "names": list(self.names),
            "mean": list(self.mean),
            "cov": [list(r) for r in self.cov],
            "n": self.n,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Posterior:
        """The posterior a `PolicyFitted` recorded."""
        return cls(
            names=tuple(str(x) for x in data["names"]),
            mean=tuple(float(x) for x in data["mean"]),
            cov=tuple(tuple(float(x) for x in r) for r in data["cov"]),
            n=int(data["n"]),
        )

    def predict(self, x: Mapping[str, float], theta: Sequence[float] | None = None) -> float:
        """`x·θ` with `θ` = `theta` (a draw) or the posterior mean; unknown names weigh 0."""
        w = self.mean if theta is None else theta
        index = {name: i for i, name in enumerate(self.names)}
        return math.fsum(v * w[index[k]] for k, v in sorted(x.items()) if k in index)


def fit(
    names: Sequence[str],
    rows: Sequence[tuple[Mapping[str, float], float]],
    *,
    prior_scale: float,
    noise: float,
) -> Posterior:
    """The posterior over the weights of `names` after `rows` of `(features, outcome)`.

    Features not in `names` are ignored (a row from another host's layers still informs the
    features both share).
    """
    d = len(names)
    index = {name: i for i, name in enumerate(names)}
    x = np.zeros((len(rows), d))
    y = np.zeros(len(rows))
    for r, (features, outcome) in enumerate(rows):
        for k, v in features.items():
            if k in index:
                x[r, index[k]] = float(v)
        y[r] = float(outcome)
    precision = np.eye(d) / prior_scale**2 + x.T @ x / noise**2
    cov = np.linalg.inv(precision)
    cov = (cov + cov.T) / 2.0  # exactly symmetric, so the Cholesky below reads one triangle
    mean = cov @ (x.T @ y) / noise**2
    return Posterior(
        names=tuple(names),
        mean=tuple(float(m) for m in mean),
        cov=tuple(tuple(float(c) for c in row) for row in cov),
        n=len(rows),
    )


def cholesky(a: Sequence[Sequence[float]]) -> list[list[float]]:
    """Lower-triangular `L` with `L Lᵀ = a` (a symmetric positive-definite), in plain floats.

    Pure Python on purpose: the sum order is fixed here, so the factor is the same on every
    machine (a BLAS may block and vectorise differently). A pivot that rounding made
    non-positive is clamped to 0, which only drops that direction from the draw.
    """
    n = len(a)
    lower = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = a[i][j]
            for k in range(j):
                s -= lower[i][k] * lower[j][k]
            if i == j:
                lower[i][i] = math.sqrt(s) if s > 0.0 else 0.0
            else:
                lower[i][j] = s / lower[j][j] if lower[j][j] > 0.0 else 0.0
    return lower


def uniform(seed: int, index: int) -> float:
    """A uniform float in [0, 1) from SHA-256 of `(seed, index)` (53 bits, exact)."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def standard_normal(seed: int, count: int) -> list[float]:
    """`count` approximately N(0, 1) draws: each the sum of 12 uniforms minus 6."""
    out = []
    for i in range(count):
        s = 0.0
        for j in range(12):
            s += uniform(seed, 12 * i + j)
        out.append(s - 6.0)
    return out


def sample(posterior: Posterior, seed: int) -> tuple[float, ...]:
    """One draw `θ = μ + L z` from `posterior` (`L` its covariance's Cholesky factor)."""
    z = standard_normal(seed, len(posterior.names))
    lower = cholesky(posterior.cov)
    theta = []
    for i, m in enumerate(posterior.mean):
        s = m
        for k in range(i + 1):
            s += lower[i][k] * z[k]
        theta.append(s)
    return tuple(theta)
