"""Objectives: plain functions that declare their properties, so the solver knows what it may assume.

Two places take an objective:

- per job (``JobSpec.utility.objective``): a *separable* function ``fn(reward,
  alloc) -> utility`` applied elementwise to the job's predicted reward and its
  CPU allocation; it replaces Cilantro's built-in ``min(1, reward/threshold)``
  scaling for that job.
- per policy (the welfare a policy maximises): either *separable*,
  ``fn(u, alloc) -> value`` elementwise on job utilities, the welfare being the
  weighted mean of the values; or *non-separable*, ``fn(u, alloc, weights) ->
  welfare`` on arrays of shape (batch, jobs), returning shape (batch,).

Declared properties (checked on samples by ``allocators.testing.check_objective``):
``monotone`` (non-decreasing in utility/reward), ``concave`` (in utility/reward),
``separable`` (the per-job value depends on that job's arguments only). The
solver uses an exact method where they allow one (price bisection on concave
envelopes for separable objectives, exact when also concave) and a local search
where none holds (non-separable objectives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NASH_EPS = 1e-3  # keeps log(u) finite at u = 0, so a starved job costs a lot but not infinitely


@dataclass(frozen=True)
class Objective:
    """A declared objective. ``fn`` signature depends on ``separable`` (see module doc)."""

    name: str
    fn: Callable[..., np.ndarray]
    monotone: bool
    concave: bool
    separable: bool
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"objective {self.name!r}: fn must be callable")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("objective name must be a non-empty string")

    def values(self, u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
        """Per-job values of a separable objective (same shape as ``u``)."""
        if not self.separable:
            raise ValueError(f"objective {self.name!r} is not separable; use welfare()")
        out = np.asarray(self.fn(u, alloc), dtype=float)
        if out.shape != np.shape(u):
            raise ValueError(
                f"objective {self.name!r} returned shape {out.shape}, expected {np.shape(u)}"
            )
        return out

    def welfare(self, u: np.ndarray, alloc: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Welfare of each row of ``u`` (batch, jobs) -> (batch,)."""
        u = np.atleast_2d(np.asarray(u, dtype=float))
        alloc = np.broadcast_to(np.asarray(alloc, dtype=float), u.shape)
        w = np.asarray(weights, dtype=float)
        if u.shape[1] == 0:
            return np.zeros(u.shape[0])
        if self.separable:
            return self.values(u, alloc) @ w / w.sum()
        out = np.asarray(self.fn(u, alloc, w), dtype=float)
        if out.shape != (u.shape[0],):
            raise ValueError(
                f"objective {self.name!r} returned shape {out.shape}, expected ({u.shape[0]},)"
            )
        return out


def objective(
    name: str, *, monotone: bool, concave: bool, separable: bool, description: str = ""
) -> Callable[[Callable[..., np.ndarray]], Objective]:
    """Decorator: ``@objective("mine", monotone=True, concave=True, separable=True)``."""

    def wrap(fn: Callable[..., np.ndarray]) -> Objective:
        return Objective(name, fn, monotone, concave, separable, description or (fn.__doc__ or ""))

    return wrap


# --------------------------------------------------------------------------- built-ins


@objective("utilitarian", monotone=True, concave=True, separable=True)
def utilitarian(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """Weighted mean utility (Cilantro's utilitarian welfare)."""
    return np.asarray(u, dtype=float)


@objective("nash", monotone=True, concave=True, separable=True)
def nash(u: np.ndarray, alloc: np.ndarray) -> np.ndarray:
    """Weighted mean of log utility: the log of the weighted geometric mean (Nash welfare)."""
    return np.log(NASH_EPS + np.clip(u, 0.0, None))


@objective("egalitarian", monotone=True, concave=True, separable=False)
def egalitarian(u: np.ndarray, alloc: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Minimum utility over jobs (egalitarian welfare)."""
    return np.min(u, axis=-1)


@objective("balanced", monotone=False, concave=True, separable=False)
def balanced(u: np.ndarray, alloc: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean utility minus half its weighted standard deviation (welfare with an equity penalty)."""
    p = weights / weights.sum()
    mean = u @ p
    var = ((u - mean[:, None]) ** 2) @ p
    return mean - 0.5 * np.sqrt(var + 1e-12)


def _thresholded(scaling: str) -> Objective:
    def fn(reward: np.ndarray, alloc: np.ndarray) -> np.ndarray:
        u = np.clip(np.asarray(reward, dtype=float), 0.0, 1.0)
        return {"linear": u, "sqrt": np.sqrt(u), "quadratic": u * u}[scaling]

    return Objective(
        f"reward_{scaling}",
        fn,
        monotone=True,
        concave=scaling != "quadratic",
        separable=True,
        description=f"reward, {scaling} (per-job; thresholds are the job's own)",
    )


BUILTIN_OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (utilitarian, nash, egalitarian, balanced)
    + tuple(_thresholded(s) for s in ("linear", "sqrt", "quadratic"))
}
