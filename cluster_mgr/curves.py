"""Ground-truth reward curves (Cilantro's synthetic job families), for emulation and oracles.

A job's reward is the success probability of its requests,
``p = mu(coeff * alloc / load)``, with ``mu`` one of Cilantro's families
(DESIGN.md). Pure numpy; used only by the emulation (sim backend, emulated
replicas) and by oracles, which see the truth through the same
``PerformanceModel.bounds`` interface a learner offers (lcb = mean = ucb).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cluster_mgr.model import ModelError

#: family -> default coefficient, from Cilantro's cluster-sharing experiments.
CILANTRO_FAMILIES: dict[str, float] = {
    "tanh": 750.42,
    "inverse": 623.45,  # mu(x) = 1 - 1/(1+x); Cilantro also used 919.67
    "logistic": 1129.92,  # with bias 9.1; Cilantro also used bias 4.9 with 1761.53
    "linear": 400.0,  # with Gaussian noise
}
DEFAULT_BIAS = {"logistic": 9.1}


def mu(family: str, x: np.ndarray, bias: float = 0.0) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if family == "tanh":
        return np.tanh(x)
    if family == "inverse":
        return x / (1.0 + x)
    if family == "logistic":
        return 1.0 / (1.0 + np.exp(bias - x))
    if family == "linear":
        return np.clip(x, 0.0, 1.0)
    raise ModelError(
        f"unknown curve family {family!r}; expected one of {sorted(CILANTRO_FAMILIES)}"
    )


@dataclass(frozen=True)
class RewardCurve:
    """reward(alloc, load) = mu(coeff * alloc / load), with optional Gaussian noise (linear family).

    ``scale`` divides the coefficient so that scenarios can use loads and
    allocations of their own magnitude: x = coeff * alloc / (load * scale).
    """

    family: str = "tanh"
    coeff: float | None = None
    bias: float | None = None
    noise: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in CILANTRO_FAMILIES:
            raise ModelError(
                f"unknown curve family {self.family!r}; expected one of {sorted(CILANTRO_FAMILIES)}"
            )
        if self.coeff is not None and not self.coeff > 0:
            raise ModelError(f"curve coeff must be > 0, got {self.coeff}")
        if self.noise < 0 or not self.scale > 0:
            raise ModelError("curve noise must be >= 0 and scale > 0")

    @property
    def k(self) -> float:
        return (
            self.coeff if self.coeff is not None else CILANTRO_FAMILIES[self.family]
        ) / self.scale

    def mean(self, alloc: np.ndarray, load: np.ndarray | float) -> np.ndarray:
        alloc = np.asarray(alloc, dtype=float)
        if alloc.ndim == 2:
            alloc = alloc[:, 0]
        load = np.maximum(np.asarray(load, dtype=float), 1e-9)
        bias = self.bias if self.bias is not None else DEFAULT_BIAS.get(self.family, 0.0)
        return mu(self.family, self.k * alloc / load, bias)

    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = self.mean(alloc, load)
        return m, m, m

    @classmethod
    def bounds_batch(
        cls, curves: list[RewardCurve], alloc: np.ndarray, load: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Truth of many curves at once: ``alloc`` (k, m), ``load`` (k,) -> three (k, m) arrays.

        One numpy evaluation per family instead of one Python call per curve, so an
        oracle over 1,000 jobs costs what a learner bank's batched query costs.
        """
        return cls.prepare_batch(curves, load)(alloc)

    @classmethod
    def prepare_batch(
        cls, curves: list[RewardCurve], load: np.ndarray
    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``bounds_batch`` bound to these curves and loads: the per-curve reading (family,
        coefficient, bias) is done once, so each later batch is only the arithmetic.
        A solver that queries the same jobs many times per decision prepares once."""
        load = np.maximum(np.asarray(load, dtype=float), 1e-9)
        families: dict[str, list[int]] = {}
        for i, c in enumerate(curves):
            families.setdefault(c.family, []).append(i)
        groups = []
        for family, idx in families.items():
            # k and load kept apart: k * alloc / load, the same arithmetic as ``mean``.
            k = np.array([curves[i].k for i in idx])
            bias = np.array(
                [
                    DEFAULT_BIAS.get(family, 0.0) if curves[i].bias is None else curves[i].bias
                    for i in idx
                ]
            )
            ix = np.asarray(idx)
            groups.append((family, ix, k[:, None], load[ix, None], bias[:, None]))
        if len(groups) == 1:  # one family: no scatter into a fresh buffer
            family, _, k1, load1, bias1 = groups[0]

            def one(alloc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                out = mu(family, k1 * np.asarray(alloc, dtype=float) / load1, bias1)
                return out, out, out

            return one

        def query(alloc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            alloc = np.asarray(alloc, dtype=float)
            out = np.empty_like(alloc)
            for family, ix, kf, ld, bias in groups:
                out[ix] = mu(family, kf * alloc[ix] / ld, bias)
            return out, out, out

        return query

    def sample(
        self,
        alloc: np.ndarray,
        load: np.ndarray | float,
        requests: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Observed reward: the fraction of ``requests`` that succeed (binomial), plus noise if any."""
        p = self.mean(alloc, load)
        n = np.maximum(np.asarray(requests, dtype=np.int64), 1)
        r = rng.binomial(n, np.clip(p, 0.0, 1.0)) / n
        if self.noise > 0:
            r = np.clip(r + rng.normal(0.0, self.noise, size=np.shape(r)), 0.0, 1.0)
        return r
