"""PIMCloud's rule (HPCA '22), as a 100 ms closed-loop controller.

Latency-critical apps first, ranked by their profiled R_i (PIM cores worth one
big core): the apps that need big cores most get big cores, the lowest-ranked
get PIM cores, and only the middle-ranked app gets a mix (with two apps, the
top one). A PIM app's hot pages migrate to its stack. Every interval, once the
last change has settled, the app closest to (or over) its target gets one more
core of its type, from the free pool or from the app with the most slack; with
best-effort apps present an app with large slack gives a core back to the pool.
A change after which the donor violates is reverted, and that donor is locked
out of giving for a while.
"""

from __future__ import annotations

from allocators.pim.base import PimPolicy, PimState
from allocators.pim.common import current_pages, finish, follow_cores
from allocators.pim.snapshot import PimPlan, PimSnapshot

UP_RATIO = 0.9
DONOR_RATIO = 0.7
RELEASE_RATIO = 0.5
LOCK_INTERVALS = 20
MIN_HOLD = 2


class PimCloudRule(PimPolicy):
    name = "pimcloud"
    description = "R_i-ranked core types, one mixed app, one-core feedback steps, revert"
    source = "PIMCloud (HPCA '22)"

    def _roles(self, snap: PimSnapshot) -> tuple[dict[str, str], dict[str, int]]:
        lc = sorted(snap.lc, key=lambda a: -(a.r_profiled or 1.0))
        m = (len(lc) - 1) // 2
        roles, home = {}, {}
        next_stack = 0
        for i, a in enumerate(lc):
            roles[a.name] = "cpu" if i < m else "mix" if i == m else "pim"
        for a in reversed(lc):  # PIM apps take stacks first; the mixed app the next one
            if roles[a.name] != "cpu":
                home[a.name] = next_stack % snap.capacity.n_stacks
                next_stack += 1
        return roles, home

    def _initial(self, snap: PimSnapshot, roles: dict[str, str], home: dict[str, int]) -> dict:
        cap = snap.capacity
        cpu_apps = [n for n, r in roles.items() if r in ("cpu", "mix")]
        counts = {n: [0] + [0] * cap.n_stacks for n in roles}
        for i in range(cap.cpu_cores):
            if cpu_apps:
                counts[cpu_apps[i % len(cpu_apps)]][0] += 1
        for s in range(cap.n_stacks):
            # Only PIM-role apps start on PIM cores; the mixed app spills into them by feedback.
            homed = [n for n, h in home.items() if h == s and roles[n] == "pim"]
            for i in range(cap.pim_cores_per_stack):
                if homed:
                    counts[homed[i % len(homed)]][1 + s] += 1
        return counts

    def decide(self, snap: PimSnapshot, state: PimState) -> tuple[PimPlan | None, PimState]:
        if "counts" not in state:
            roles, home = self._roles(snap)
            counts = self._initial(snap, roles, home)
            state = {"roles": roles, "home": home, "counts": counts, "hold": MIN_HOLD,
                     "last": None, "lock": {}}  # fmt: skip
            return self._plan(snap, state), state
        state = {**state, "counts": {k: list(v) for k, v in state["counts"].items()},
                 "lock": {k: v - 1 for k, v in state["lock"].items() if v > 1}}  # fmt: skip
        if state["hold"] > 0 or not all(snap.settled(n) for n in state["counts"]):
            state["hold"] = max(state["hold"] - 1, 0)
            return None, state
        ratio = {a.name: self._ratio(snap, a.name) for a in snap.lc}
        last = state["last"]
        worse = last is not None and ratio.get(last["receiver"], 0.0) >= 0.98 * last["ratio"]
        if last is not None and (ratio.get(last["donor"], 0.0) > 1.0 or worse):
            # Revert-on-violation: taking the core broke the donor.
            state["counts"] = last["before"]
            # Lock the donor out of giving, or the receiver out of that core kind.
            lock = last["donor"] if not worse else f"{last['receiver']}/{last['kind']}"
            state["lock"][lock] = LOCK_INTERVALS
            state["last"], state["hold"] = None, MIN_HOLD
            return self._plan(snap, state), state
        state["last"] = None
        worst = max(ratio, key=ratio.get) if ratio else None
        if worst is not None and ratio[worst] > UP_RATIO and self._grow(snap, state, worst, ratio):
            state["hold"] = MIN_HOLD
            return self._plan(snap, state), state
        if snap.be:
            calm = [
                n for n, r in ratio.items() if r < RELEASE_RATIO and sum(state["counts"][n]) > 1
            ]
            if calm:
                n = min(calm, key=ratio.get)
                c = state["counts"][n]
                k = max(range(len(c)), key=lambda i: c[i])
                c[k] -= 1
                state["hold"] = MIN_HOLD
                return self._plan(snap, state), state
        return None, state

    def _slots(self, snap: PimSnapshot, state: PimState, name: str) -> list[int]:
        """Core kinds (0 = big, 1+s = PIM on stack s) the app may grow into, in order."""
        role, cap = state["roles"][name], snap.capacity
        home = state["home"].get(name, 0)
        pim = [1 + home] + [1 + s for s in range(cap.n_stacks) if s != home]
        return {"cpu": [0], "pim": pim, "mix": [0] + pim}[role]

    def _grow(self, snap: PimSnapshot, state: PimState, name: str, ratio: dict) -> bool:
        cap = snap.capacity
        counts = state["counts"]
        before = {k: list(v) for k, v in counts.items()}
        slots = [k for k in self._slots(snap, state, name) if f"{name}/{k}" not in state["lock"]]
        for kind in slots:
            limit = cap.cpu_cores if kind == 0 else cap.pim_cores_per_stack
            if sum(c[kind] for c in counts.values()) < limit:
                counts[name][kind] += 1
                state["last"] = {"donor": "", "before": before, "receiver": name,
                                 "kind": kind, "ratio": ratio[name]}  # fmt: skip
                return True
        for kind in slots:
            donors = [
                n for n, c in counts.items()
                if n != name and c[kind] > 0 and sum(c) > 1 and ratio.get(n, 0.0) < DONOR_RATIO
                and n not in state["lock"]
            ]  # fmt: skip
            if donors:
                d = min(donors, key=lambda n: ratio.get(n, 0.0))
                counts[d][kind] -= 1
                counts[name][kind] += 1
                state["last"] = {"donor": d, "before": before, "receiver": name,
                                 "kind": kind, "ratio": ratio[name]}  # fmt: skip
                return True
        return False

    def _plan(self, snap: PimSnapshot, state: PimState) -> PimPlan:
        plans = {
            n: follow_cores(c[0], tuple(c[1:]), current_pages(snap, n))
            for n, c in state["counts"].items()
        }
        return finish(snap, plans)

    @staticmethod
    def _ratio(snap: PimSnapshot, name: str) -> float:
        m, slo = snap.measures.get(name), snap.app(name).slo_p99_ms
        if m is None or slo is None or m.p99_ms != m.p99_ms:
            return 0.0
        return m.p99_ms / slo
