"""The learner interface: online models of performance with confidence bounds.

Pure: imports numpy/scipy and ``cluster_mgr.model`` only (no Ray, gRPC, clock or files).
A learner maps (allocation, load) to a performance value, river-style:
``learn_one`` / ``learn_many`` update it, ``bounds`` queries it vectorized,
``demand`` inverts it. Plug-in authors subclass ``Learner`` and run
``learners.testing`` (the conformance kit) on their class.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from scipy import stats

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
        self.check_batch(alloc, load, value, sigma)
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

    def check_batch(self, alloc: np.ndarray, load: np.ndarray, value: np.ndarray, sigma: np.ndarray) -> None:
        """Learner-specific checks of validated arrays; raise ValueError, change nothing.

        Called before ``_learn_batch`` (and by ``LearnerBank`` for every job before it
        updates any), so a batch is either taken whole or refused whole.
        """
        return None

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
        idx = side_index(side)
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

    def learn_arrays(
        self,
        alloc: np.ndarray | Sequence[float],
        load: np.ndarray | Sequence[float] | float,
        value: np.ndarray | Sequence[float],
        sigma: np.ndarray | Sequence[float] | float,
    ) -> None:
        """Array form of ``learn_many`` (no Observation objects): same checks, same effect."""
        a, ld, v, s = validate_arrays(alloc, load, value, sigma, self.dim, self.name)
        if len(v) == 0:
            return
        self.check_batch(a, ld, v, s)
        self._learn_batch(a, ld, v, s)
        self.n_observations += len(v)

    @property
    def cold(self) -> bool:
        """True while the learner has no data: its bounds are then the wide prior."""
        return self.n_observations == 0

    def explain(self) -> dict[str, object]:
        """What the learner assumes and how sure it is, for ``cluster-mgr explain`` and logs."""
        return {
            "learner": self.name,
            "observations": self.n_observations,
            "delta": self.delta,
            "cold": self.cold,
            "monotone": self.monotone,
            "misspecified": self.misspecified,
            "misspecification_reason": self.misspecification_reason,
        }

    def predictive_bounds(
        self, alloc: np.ndarray, load: np.ndarray | float, sigma: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Interval for a new *measurement* (the function plus noise of std ``sigma``).

        Each side is widened by z_(1 - delta/2) * sigma: the confidence bound on f and
        the noise band, combined conservatively. Learners that estimate the noise
        themselves may override this to use their own estimate.
        """
        s = np.asarray(sigma, dtype=float)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("sigma must be finite and > 0")
        lcb, mean, ucb = self.bounds(alloc, load)
        z = float(stats.norm.isf(self.delta / 2))
        return lcb - z * s, mean, ucb + z * s

    def clone(self) -> Learner:
        return copy.deepcopy(self)

    # The flag is a property so that learners which fit lazily can bring it up to date
    # (``_sync``) before anyone reads it; plain assignment still works as before.
    @property
    def misspecified(self) -> bool:
        self._sync()
        return self._misspecified

    @misspecified.setter
    def misspecified(self, value: bool) -> None:
        self._misspecified = bool(value)

    @property
    def misspecification_reason(self) -> str:
        self._sync()
        return self._misspecification_reason

    @misspecification_reason.setter
    def misspecification_reason(self, value: str) -> None:
        self._misspecification_reason = str(value)

    def _sync(self) -> None:
        """Hook: fold in pending work that can change the flag (no-op by default)."""
        return None

    def _flag(self, reason: str) -> None:
        """Raise the misspecification flag (sticky; the first reason is kept)."""
        if not self._misspecified:
            self._misspecified = True
            self._misspecification_reason = reason


def side_index(side: str) -> int:
    """Position of ``side`` in the (lcb, mean, ucb) triple, or a ValueError naming the choices."""
    try:
        return {"lower": 0, "mean": 1, "upper": 2}[side]
    except KeyError:
        raise ValueError(f"side must be 'lower', 'mean' or 'upper', got {side!r}") from None


def _scalar(x: object) -> float:
    """A float from a Python number or a one-element array (TypeError otherwise)."""
    if isinstance(x, float | int):
        return float(x)
    if isinstance(x, np.ndarray) and x.size == 1:
        return float(x.reshape(-1)[0])
    raise TypeError


def _validate_one(
    alloc: object, load: object, value: object, sigma: object, dim: int, who: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Scalar fast path of ``validate_arrays`` for one observation (None: use the general path)."""
    try:
        ld, v, s = _scalar(load), _scalar(value), _scalar(sigma)
        if isinstance(alloc, np.ndarray) and alloc.size == dim and alloc.ndim <= 2:
            a = alloc.reshape(-1).astype(float).tolist()
        elif dim == 1:
            a = [_scalar(alloc)]
        else:
            return None
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(ld) and math.isfinite(v) and math.isfinite(s) and all(map(math.isfinite, a))):
        return None  # the general path names the culprit
    if min(a) < 0 or ld < 0 or s <= 0:
        return None
    return np.array([a]), np.array([ld]), np.array([v]), np.array([s])


def validate_arrays(
    alloc: np.ndarray | Sequence[float],
    load: np.ndarray | Sequence[float] | float,
    value: np.ndarray | Sequence[float],
    sigma: np.ndarray | Sequence[float] | float,
    dim: int,
    who: str = "learner",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check a batch given as arrays; returns alloc (n, dim), load, value, sigma (n,) as floats.

    Raises ValueError naming the first problem (NaN or inf, negative allocation or
    load, sigma <= 0, wrong shape). Nothing is modified, so callers stay unchanged.
    """
    if isinstance(value, float | int) or (isinstance(value, np.ndarray) and value.shape == (1,)):
        fast = _validate_one(alloc, load, value, sigma, dim, who)
        if fast is not None:
            return fast
    v = np.atleast_1d(np.asarray(value, dtype=float))
    if v.ndim != 1:
        raise ValueError(f"{who}: value must be one-dimensional, got shape {v.shape}")
    n = len(v)
    a = np.asarray(alloc, dtype=float)
    if a.ndim == 1 and dim == 1 and len(a) == n:
        a = a.reshape(n, 1)
    if a.ndim != 2 or a.shape != (n, dim):
        raise ValueError(f"{who}: allocation must have shape ({n}, {dim}), got {a.shape}")
    ld = np.asarray(load, dtype=float)
    ld = np.full(n, float(ld)) if ld.ndim == 0 else ld
    s = np.asarray(sigma, dtype=float)
    s = np.full(n, float(s)) if s.ndim == 0 else s
    if ld.shape != (n,) or s.shape != (n,):
        raise ValueError(f"{who}: load and sigma must be scalars or have shape ({n},)")
    # One cheap pass for the common case; name the culprit only when something is wrong.
    if not (np.isfinite(a).all() and np.isfinite(ld).all() and np.isfinite(v).all() and np.isfinite(s).all()):
        bad = next(nm for nm, arr in (("allocation", a), ("load", ld), ("value", v), ("sigma", s))
                   if not np.isfinite(arr).all())
        raise ValueError(f"{who}: {bad} must be finite (got NaN or inf)")
    if (a < 0).any():
        raise ValueError(f"{who}: allocation must be >= 0")
    if (ld < 0).any():
        raise ValueError(f"{who}: load must be >= 0")
    if (s <= 0).any():
        raise ValueError(f"{who}: sigma must be > 0")
    return a, ld, v, s


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
