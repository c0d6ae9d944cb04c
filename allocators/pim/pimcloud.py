"""PIMCloud's rule (HPCA '22), as a 100 ms closed-loop controller.

R_i is the number of PIM cores worth one big core for app i, so a high R_i
means the app gains most from big cores. Latency-critical apps are ranked by
their profiled R_i, highest first, and laid out in that order along one line of
cores: the big cores first, then the PIM cores (stack by stack). Each app holds
a contiguous segment of that line, so the highest-ranked apps hold big cores,
the lowest-ranked hold PIM cores, and only the app whose segment straddles the
big/PIM boundary (the middle-ranked one) gets a mix. Where that boundary falls
follows the apps' needs, not a fixed rank: with two apps, the one that gains
least from big cores takes the big cores the other does not need.

Start: the split of the line that gives every app the same capacity in big-core
equivalents (a big core counts 1, a PIM core 1 / R_i). Then every interval,
once the last change has settled (cores 2-3 intervals, pages 3-8), the app
nearest or over its target takes one core at an end of its segment, from the
free pool or from the neighbour with slack, preferring the big-core end; with
best-effort apps present an app with large slack hands one core back to the
pool (best-effort apps share what LC apps do not hold). A PIM app's hot private
pages migrate to the stacks of its PIM cores and its shared read-only pages are
copied when it spans stacks (common.follow_cores). Revert-on-violation: a move
after which the donor violates, or the receiver got clearly worse, is undone
and the donor (or the receiver's direction) is locked out for a while.
"""

from __future__ import annotations

import itertools

from allocators.pim.base import PimPolicy, PimState
from allocators.pim.common import current_pages, finish, follow_cores, pool_tails, tail_ratio
from allocators.pim.snapshot import PimPlan, PimSnapshot

UP_RATIO = 0.9  # grow when P99 / target is above this
DONOR_RATIO = 0.7  # a neighbour gives a core only below this
RELEASE_RATIO = 0.5  # with best-effort apps, give a core back below this
WORSE = 1.15  # receiver clearly worse after its move: revert
LOCK_INTERVALS = 20
MIN_HOLD = 2


class PimCloudRule(PimPolicy):
    name = "pimcloud"
    description = "R_i-ranked core line, one mixed app at the boundary, one-core steps, revert"
    source = "PIMCloud (HPCA '22)"

    # ------------------------------------------------------------------ the core line

    @staticmethod
    def _line(snap: PimSnapshot) -> int:
        cap = snap.capacity
        return cap.cpu_cores + cap.n_stacks * cap.pim_cores_per_stack

    @staticmethod
    def _counts(snap: PimSnapshot, lo: int, hi: int) -> tuple[int, tuple[int, ...]]:
        cap = snap.capacity
        cpu = max(0, min(hi, cap.cpu_cores) - lo)
        pim = []
        for s in range(cap.n_stacks):
            a = cap.cpu_cores + s * cap.pim_cores_per_stack
            b = a + cap.pim_cores_per_stack
            pim.append(max(0, min(hi, b) - max(lo, a)))
        return cpu, tuple(pim)

    def _equiv(self, snap: PimSnapshot, name: str, lo: int, hi: int) -> float:
        cpu, pim = self._counts(snap, lo, hi)
        r = snap.app(name).r_profiled or 1.0
        return cpu + sum(pim) / max(r, 1e-9)

    def _initial(self, snap: PimSnapshot, order: list[str]) -> list[list[int]]:
        """Contiguous split of the whole line maximising the smallest big-core equivalent."""
        n, total = len(order), self._line(snap)
        best, best_cuts = -1.0, None
        for cuts in itertools.combinations(range(1, total), n - 1):
            edges = (0, *cuts, total)
            v = min(self._equiv(snap, order[i], edges[i], edges[i + 1]) for i in range(n))
            if v > best + 1e-12:
                best, best_cuts = v, edges
        edges = best_cuts or (0, total)
        return [[edges[i], edges[i + 1]] for i in range(n)]

    # ------------------------------------------------------------------ decisions

    def decide(self, snap: PimSnapshot, state: PimState) -> tuple[PimPlan | None, PimState]:
        if "seg" not in state:
            order = [a.name for a in sorted(snap.lc, key=lambda a: -(a.r_profiled or 1.0))]
            if not order:
                return (finish(snap, {}) if snap.current is None else None), {"seg": {}}
            segs = self._initial(snap, order)
            state = {"order": order, "seg": dict(zip(order, segs, strict=True)),
                     "hold": MIN_HOLD, "last": None, "lock": {}, "pool": {},
                     "pooled": 0}  # fmt: skip
            return self._plan(snap, state), state
        state = {**state, "seg": {k: list(v) for k, v in state["seg"].items()},
                 "lock": {k: v - 1 for k, v in state["lock"].items() if v > 1}}  # fmt: skip
        if not state["seg"]:
            return None, state
        if state["hold"] > 0 or not all(snap.settled(n) for n in state["seg"]):
            state["hold"] = max(state["hold"] - 1, 0)
            state["pool"] = {}
            return None, state
        # The tail is judged on the requests since the last change settled, pooled over
        # intervals until there are enough of them for a P99.
        pool, state["pooled"], ready = pool_tails(
            snap, state.get("pool", {}), int(state.get("pooled", 0))
        )
        state["pool"] = pool
        if not ready:
            return None, state
        state["pool"], state["pooled"] = {}, 0
        ratio = {a.name: tail_ratio(snap, a.name, pool.get(a.name)) for a in snap.lc}
        last = state["last"]
        if last is not None:
            donor_broke = bool(last["donor"]) and ratio.get(last["donor"], 0.0) > 1.0
            worse = ratio.get(last["receiver"], 0.0) > WORSE * max(last["ratio"], 1e-9)
            if donor_broke or worse:
                state["seg"] = {k: list(v) for k, v in last["before"].items()}
                lock = last["donor"] if donor_broke else f"{last['receiver']}/{last['side']}"
                state["lock"][lock] = LOCK_INTERVALS
                state["last"], state["hold"] = None, MIN_HOLD
                return self._plan(snap, state), state
        state["last"] = None
        worst = max(ratio, key=ratio.get) if ratio else None
        if worst is not None and ratio[worst] > UP_RATIO and self._grow(snap, state, worst, ratio):
            state["hold"] = MIN_HOLD
            return self._plan(snap, state), state
        if snap.be:
            calm = [n for n, r in ratio.items() if r < RELEASE_RATIO and self._size(state, n) > 1]
            if calm:
                n = min(calm, key=ratio.get)
                seg = state["seg"][n]
                if state["order"].index(n) == len(state["order"]) - 1:
                    seg[0] += 1  # the last app's slowest end is as good as any: keep it packed
                else:
                    seg[1] -= 1  # give back the end farthest from the big cores
                state["hold"] = MIN_HOLD
                return self._plan(snap, state), state
        return None, state

    @staticmethod
    def _size(state: PimState, name: str) -> int:
        lo, hi = state["seg"][name]
        return hi - lo

    def _grow(self, snap: PimSnapshot, state: PimState, name: str, ratio: dict) -> bool:
        order, seg = state["order"], state["seg"]
        i = order.index(name)
        before = {k: list(v) for k, v in seg.items()}
        lo, hi = seg[name]
        below = seg[order[i - 1]][1] if i > 0 else 0  # end of the segment toward the big cores
        above = seg[order[i + 1]][0] if i + 1 < len(order) else self._line(snap)
        moves = []  # (prefer, side, donor): the big-core side first
        for side, free, nb in (("down", lo > below, i - 1), ("up", hi < above, i + 1)):
            if f"{name}/{side}" in state["lock"]:
                continue
            if (side == "down" and lo == 0) or (side == "up" and hi == self._line(snap)):
                continue
            if free:
                moves.append((0, side, ""))
            elif 0 <= nb < len(order):
                d = order[nb]
                if (
                    self._size(state, d) > 1
                    and ratio.get(d, 0.0) < DONOR_RATIO
                    and d not in state["lock"]
                ):
                    moves.append((1 + ratio.get(d, 0.0), side, d))
        if not moves:
            return False
        _, side, donor = min(moves, key=lambda m: (m[0], m[1] != "down"))
        if side == "down":
            seg[name][0] -= 1
            if donor:
                seg[donor][1] -= 1
        else:
            seg[name][1] += 1
            if donor:
                seg[donor][0] += 1
        state["last"] = {"donor": donor, "before": before, "receiver": name, "side": side,
                         "ratio": ratio[name]}  # fmt: skip
        return True

    def _plan(self, snap: PimSnapshot, state: PimState) -> PimPlan:
        plans = {}
        for n, (lo, hi) in state["seg"].items():
            cpu, pim = self._counts(snap, lo, hi)
            plans[n] = follow_cores(cpu, pim, current_pages(snap, n))
        return finish(snap, plans)
