"""The learner interface: online models of performance with confidence bounds.

Pure: imports numpy/scipy and ``cluster_mgr.model`` only (no Ray, gRPC, clock or files).
A learner maps (allocation, load) to a performance value, river-style:
``learn_one`` / ``learn_many`` update it, ``bounds`` queries it vectorized,
``demand`` inverts it. Plug-in authors subclass ``Learner`` and run
``learners.testing`` (the conformance kit) on their class.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from cluster_mgr.model import Observation

Side = Literal["lower", "mean", "upper"]
Monotone = Literal["increasing", "decreasing"] | None


class Learner(ABC):
    """Base class of every learner.

    Subclasses set ``name`` and ``monotone`` (the direction the value moves as
    the allocation grows, if the learner assumes one) and implement
    ``_learn_batch`` and ``bounds``. Invalid input raises ValueError and leaves
    the model unchanged (validation happens before any state changes).
    """

    name: ClassVar[str] = "learner"
    monotone: ClassVar[Monotone] = None

    def __init__(self, *, delta: float = 0.05, seed: int = 0, dim: int = 1) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.delta = float(delta)
        self.seed = int(seed)
        self.dim = int(dim)
        self.n_observations = 0
        self.misspecified = False
        self.misspecification_reason = ""

    # -- updates ---------------------------------------------------------------------
    def learn_one(self, obs: Observation) -> None:
        self.learn_many([obs])

    def learn_many(self, batch: Sequence[Observation]) -> None:
        if not batch:
            return
        alloc, load, value, sigma = self._validate(batch)
        self._learn_batch(alloc, load, value, sigma)
        self.n_observations += len(batch)

    def _validate(
        self, batch: Sequence[Observation]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        for obs in batch:
            if not isinstance(obs, Observation):
                raise ValueError(f"{self.name}: expected Observation, got {type(obs).__name__}")
            if len(obs.alloc) != self.dim:
                raise ValueError(
                    f"{self.name}: observation of job {obs.job!r} has {len(obs.alloc)}-dimensional "
                    f"allocation, learner expects {self.dim}"
                )
        alloc = np.array([o.alloc for o in batch], dtype=float)
        load = np.array([o.load for o in batch], dtype=float)
        value = np.array([o.value for o in batch], dtype=float)
        sigma = np.array([o.sigma for o in batch], dtype=float)
        return alloc, load, value, sigma

    @abstractmethod
    def _learn_batch(
        self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray
    ) -> None:
        """Update from validated arrays: alloc (n, dim), load (n,), value (n,), sigma (n,)."""

    # -- queries ---------------------------------------------------------------------
    @abstractmethod
    def bounds(
        self, alloc: np.ndarray, load: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lcb, mean, ucb), each shape (m,), for allocations of shape (m,) or (m, dim)."""

    def demand(
        self, goal: float, load: float, side: Side = "lower", *, hi: float = 1e4, tol: float = 1e-3
    ) -> float:
        """Smallest scalar allocation whose ``side`` estimate reaches ``goal`` (inf if none up to ``hi``).

        For a value that falls with allocation (``monotone == 'decreasing'``, such as
        latency) "reaches" means "is at most", and the conservative side is then
        ``"upper"``; for rewards it is ``"lower"``. Only defined for ``dim == 1``.
        """
        if self.dim != 1:
            raise ValueError(f"{self.name}: demand is defined for one-dimensional allocations only")
        idx = {"lower": 0, "mean": 1, "upper": 2}[side]
        sign = -1.0 if self.monotone == "decreasing" else 1.0
        grid = np.geomspace(max(tol, 1e-6), hi, 512)
        vals = self.bounds(grid, np.full(grid.shape, load))[idx]
        ok = sign * vals >= sign * goal
        if not ok.any():
            return float("inf")
        first = int(np.argmax(ok))
        lo_x = grid[first - 1] if first > 0 else 0.0
        hi_x = grid[first]
        for _ in range(40):  # bisection on the bracket [lo_x, hi_x]
            mid = 0.5 * (lo_x + hi_x)
            v = self.bounds(np.array([mid]), np.array([load]))[idx][0]
            if sign * v >= sign * goal:
                hi_x = mid
            else:
                lo_x = mid
            if hi_x - lo_x <= tol:
                break
        return float(hi_x)

    def clone(self) -> Learner:
        return copy.deepcopy(self)

    def _flag(self, reason: str) -> None:
        """Raise the misspecification flag (sticky; the first reason is kept)."""
        if not self.misspecified:
            self.misspecified = True
            self.misspecification_reason = reason


def as_alloc_matrix(alloc: np.ndarray | Sequence[float], dim: int) -> np.ndarray:
    """(m,) or (m, dim) -> (m, dim), with clear errors for wrong shapes or bad values."""
    a = np.asarray(alloc, dtype=float)
    if a.ndim == 1 and dim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"allocation must have shape (m,) or (m, {dim}), got {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("allocation must be finite and non-negative")
    return a
