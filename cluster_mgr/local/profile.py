"""Per-service profiles and the model look-ups controllers make with them.

A profile is what an operator measures once per service (SurgeGuard profiles
execution time and time-from-start at nominal load): processing time at
nominal frequency, its variability, how service rate scales with frequency,
and the graph's call structure. Controllers use it to predict a service's own
latency at another core count or frequency; the queueing math is
``cluster_mgr.workloads.mmc`` (nothing here re-derives it). Controllers never
read the emulator's ground truth; the profile is a separate object, built from
the same graph in the benchmark as an operator's offline profile would be.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster_mgr.workloads import RHO_MAX, GraphParams, QueueState, mmc, quantile_from_cdf

#: Tail quantile every per-service target is stated at.
TAIL_Q = 0.99


@dataclass(frozen=True)
class ServiceProfile:
    """Arrays of shape (S,) plus the call structure as boolean matrices.

    ``ancestors[s, a]``: a lies on some call path from a root to s;
    ``path_len[s]``: services on the longest call path from s down to a leaf
    (s included), over which an upstream delay can be made up.
    ``exec_p99_ms`` / ``upstream_ms``: the profiled values SurgeGuard's targets
    are multiples of.
    """

    services: tuple[str, ...]
    service_ms: np.ndarray
    cv: np.ndarray
    freq_exponent: np.ndarray
    ancestors: np.ndarray
    path_len: np.ndarray
    exec_p99_ms: np.ndarray
    upstream_ms: np.ndarray

    @property
    def n(self) -> int:
        return len(self.services)

    def queue(self, lam_rps: np.ndarray, cores: np.ndarray, freq: np.ndarray) -> QueueState:
        """M/M/c state per (node, service), flattened to rows (QueueState.sf wants 1-D rows)."""
        lam = np.asarray(lam_rps, dtype=float)
        shape = np.broadcast_shapes(lam.shape, np.shape(cores), np.shape(freq))
        b = lambda x: np.broadcast_to(np.asarray(x, dtype=float), shape).ravel()  # noqa: E731
        svc = np.broadcast_to(self.service_ms, shape).ravel()
        return mmc(
            b(lam),
            svc,
            b(cores),
            frequency=b(freq),
            freq_exponent=np.broadcast_to(self.freq_exponent, shape).ravel(),
            cv=np.broadcast_to(self.cv, shape).ravel(),
        )

    def capacity_rps(self, cores: np.ndarray, freq: np.ndarray) -> np.ndarray:
        return np.asarray(cores) * np.asarray(freq) ** self.freq_exponent / self.service_ms * 1000.0

    def exec_sf(
        self, lam_rps: np.ndarray, cores: np.ndarray, freq: np.ndarray, t_ms: np.ndarray
    ) -> np.ndarray:
        """P(a service's own time > t); 1 where the queue would be overloaded."""
        lam = np.asarray(lam_rps, dtype=float)
        shape = np.broadcast_shapes(lam.shape, np.shape(cores), np.shape(freq), np.shape(t_ms))
        q = self.queue(np.broadcast_to(lam, shape), np.broadcast_to(cores, shape),
                       np.broadcast_to(freq, shape))  # fmt: skip
        sf = q.sf(np.broadcast_to(np.asarray(t_ms, dtype=float), shape).ravel()).reshape(shape)
        over = lam >= RHO_MAX * self.capacity_rps(cores, freq)
        return np.where(over, 1.0, sf)

    def exec_p99(self, lam_rps: np.ndarray, cores: np.ndarray, freq: np.ndarray) -> np.ndarray:
        """Predicted P99 of a service's own time (ms); overload gives the upper search bound."""
        lam = np.asarray(lam_rps, dtype=float)
        shape = np.broadcast_shapes(lam.shape, np.shape(cores), np.shape(freq))
        hi = np.broadcast_to(self.service_ms * 200.0, shape)

        def cdf(t: np.ndarray) -> np.ndarray:
            return 1.0 - self.exec_sf(lam, cores, freq, t)

        return quantile_from_cdf(cdf, TAIL_Q, np.broadcast_to(self.service_ms * 0.01, shape), hi,
                                 iters=30)  # fmt: skip

    def exec_mean(self, lam_rps: np.ndarray, cores: np.ndarray, freq: np.ndarray) -> np.ndarray:
        lam = np.asarray(lam_rps, dtype=float)
        shape = np.broadcast_shapes(lam.shape, np.shape(cores), np.shape(freq))
        m = self.queue(lam, cores, freq).mean().reshape(shape)
        over = lam >= RHO_MAX * self.capacity_rps(cores, freq)
        return np.where(over, np.inf, m)

    def cores_for(
        self,
        lam_rps: np.ndarray,
        freq: np.ndarray,
        target_ms: np.ndarray,
        hi: np.ndarray | float,
        iters: int = 16,
    ) -> np.ndarray:
        """Fewest cores with predicted P(own time > target) <= 1%, by bisection (``hi`` caps it).

        One bisection over cores on the survival function at the target (no inner
        quantile search), so sizing a whole node's services costs ~16 mmc calls.
        """
        lam = np.asarray(lam_rps, dtype=float)
        shape = np.broadcast_shapes(lam.shape, np.shape(freq), np.shape(target_ms))
        lo = np.full(shape, 1e-3)
        hi_arr = np.broadcast_to(np.asarray(hi, dtype=float), shape).copy()
        ok_hi = self.exec_sf(lam, hi_arr, freq, target_ms) <= 1.0 - TAIL_Q
        for _ in range(iters):
            mid = 0.5 * (lo + hi_arr)
            ok = self.exec_sf(lam, mid, freq, target_ms) <= 1.0 - TAIL_Q
            hi_arr = np.where(ok, mid, hi_arr)
            lo = np.where(ok, lo, mid)
        return np.where(ok_hi, hi_arr, np.broadcast_to(np.asarray(hi, dtype=float), shape))


def cores_gain_cap(
    profile: ServiceProfile,
    lam_rps: np.ndarray,
    freq: np.ndarray,
    hi: np.ndarray | float,
    gain: float = 0.02,
    step: float = 1.0,
    iters: int = 14,
) -> np.ndarray:
    """Fewest cores past which one more ``step`` of cores cuts mean own time by less than ``gain``.

    The marginal gain falls as cores grow (queueing vanishes), so bisection finds it.
    """
    lam = np.asarray(lam_rps, dtype=float)
    shape = np.broadcast_shapes(lam.shape, np.shape(freq))
    lo = np.full(shape, 1e-3)
    hi_arr = np.broadcast_to(np.asarray(hi, dtype=float), shape).copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi_arr)
        m0, m1 = profile.exec_mean(lam, np.stack([mid, mid + step]), freq)  # one look-up for both
        with np.errstate(invalid="ignore"):
            small = np.nan_to_num((m0 - m1) / m0, nan=1.0) < gain
        hi_arr = np.where(small, mid, hi_arr)
        lo = np.where(small, lo, mid)
    return hi_arr


def graph_structure(graph: GraphParams) -> tuple[np.ndarray, np.ndarray]:
    """(ancestors (S, S) bool, longest path length to a leaf (S,)) from the call edges."""
    s = len(graph.services)
    children: dict[int, set[int]] = {i: set() for i in range(s)}
    for edges in graph.type_edges:
        for p, c, _ in edges:
            children[p].add(c)
    anc = np.zeros((s, s), dtype=bool)
    for p in graph.topo:  # parents first: a child's ancestors are its parents' plus the parents
        for c in children[p]:
            anc[c] |= anc[p]
            anc[c, p] = True
    path = np.ones(s, dtype=np.int64)
    for p in reversed(graph.topo):
        if children[p]:
            path[p] = 1 + max(path[c] for c in children[p])
    return anc, path


def upstream_delay(
    graph: GraphParams,
    wait_ms: np.ndarray,
    service_ms: np.ndarray,
    edge_extra_ms: dict[tuple[int, int], np.ndarray | float],
) -> np.ndarray:
    """Mean time from request start to a service's arrival (SurgeGuard's time-from-start).

    Small pure helper (workloads.py has end-to-end moments, not per-hop arrival
    times). It follows the same call model as ``GraphParams.e2e_moments``: a
    parent's calls go out one after another, so call k starts once the earlier
    calls' subtrees have returned. A parent issues its first call after its wait
    and half of its processing (the profile cannot see finer). Averaged over
    request types by visits. Arrays (N, S) in, (N, S) out.
    """
    n_rows = wait_ms.shape[0]
    total = np.zeros_like(wait_ms)
    weight = np.zeros(wait_ms.shape[1])
    own = wait_ms + service_ms

    def extra(p: int, c: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(edge_extra_ms.get((p, c), 0.0), float), (n_rows,))

    for t, edges in enumerate(graph.type_edges):
        sub = {s: own[:, s].copy() for s in graph.topo}  # subtree mean, bottom-up
        for p, c, calls in reversed(edges):
            sub[p] = sub[p] + calls * (extra(p, c) + sub[c])
        arr = np.zeros_like(wait_ms)
        done: dict[int, np.ndarray] = {}  # time spent so far in a parent's earlier calls
        for p, c, calls in edges:  # parents first (build_graph sorts by topological rank)
            before = done.get(p, np.zeros(n_rows))
            arr[:, c] = arr[:, p] + wait_ms[:, p] + 0.5 * service_ms[:, p] + before + extra(p, c)
            done[p] = before + calls * (extra(p, c) + sub[c])
        w = graph.mix[t] * graph.visits[t]
        total += arr * w
        weight += w
    return total / np.maximum(weight, 1e-12)
