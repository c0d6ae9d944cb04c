"""Array storage for many monotone interval trees at once (one row per job).

Cilantro's interval binary tree over x = allocation / load, kept as sufficient
statistics per node so that one numpy call updates or queries every job of a
telemetry window. The axis is relative: leaves are uniform in log2(x) over the
``doublings`` (D = 16 for depth >= 4) doublings below the row's x_max, P =
n_leaves / D leaves per doubling (32 at depth 9, each about 2.2% wide in x), so
the resolution around x is a fixed fraction of x however large x_max grows.
Leaf j >= 1 covers [x_max * 2^((j - n_leaves) / P), x_max * 2^((j + 1 - n_leaves) / P));
leaf 0 also holds everything below, x = 0 included. Node (h, i) is the run of
leaves below it; nodes are stored in heap order (level h starts at 2^h - 1). Per
node we keep the precision-weighted sums (sum w, sum w*y, sum w*y^2, with
w = 1/sigma^2), the count and the smallest / largest x seen. When x_max doubles
the leaves shift left by P (what falls off merges into leaf 0) and the inner
nodes are summed again from the leaves: every statistic aggregates exactly.
Per leaf we also keep two atoms, the sums (w, w*y) of the observations at the
leaf's largest x (top atom) and at its smallest x (bottom atom).

Bounds for an increasing f (all rows, no Lipschitz constant needed) come from
a family of events, each the concentration of the weighted mean of y over a
set of observations fixed by their x (the design) alone:
  - windows, contiguous runs of leaves (``_windows``): at level h, lower windows
    end on a grid finer than the level's nodes and start at a node boundary,
    upper windows mirror them;
  - per leaf, its top atom (one upper event) and its bottom atom (one lower event).
With c = beta * s / sqrt(sum w):
  lcb(x) = max over lower windows / bottom atoms whose data all lie at or left of x of (mean - c)
  ucb(x) = min over upper windows / top atoms whose data all lie at or right of x of (mean + c)
By monotonicity the set's mean of f is below (above) f(x): the bound is valid
whenever the set's concentration holds, and a union bound over the family's
``_n_events`` one-sided events gives beta = z(delta / _n_events) (simultaneous
over all x). Monotone in log2(x) is monotone in x, so the argument does not see
the axis. The atoms resolve data piled up inside one leaf: observations held at
the query point bound f there even when another observation sits a little left
(right) of it in the same leaf, which excludes the leaf's windows.
The best bound per leaf boundary and per leaf interior, then a prefix max
(lower) and suffix min (upper), is cached per row (``lo_tab`` / ``hi_tab``,
interleaved: entry 2e for leaf boundary e, entry 2j + 1 for x inside leaf j
between its smallest and largest x): both bounds are non-decreasing step
functions by construction (Cilantro's monotone projection) and a query is two
lookups. Every tree node is a member of both window families; with a
Lipschitz constant L the nodes on x's path also contribute mean -/+ (c + L *
distance), which is the Cilantro node width.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

#: false-alarm level of the misspecification tests (per row, per refresh).
FLAG_ALPHA = 1e-3
#: smallest noise excess (ratio of standard deviations) the noise check reports
MIN_EFFECT = 1.2
#: smallest residual degrees of freedom before the noise check may speak.
MIN_NOISE_DOF = 30


@lru_cache(maxsize=64)
def _z(tail: float) -> float:
    """Upper-tail normal quantile (cached: a bank makes many rows with the same delta)."""
    return float(stats.norm.isf(tail))


#: window ends (lower side) and starts (upper side) of level h lie on the level-(h + GRID) grid
GRID = 2
#: rows per chunk when refreshing checks and bound tables (keeps the temporaries in cache)
TABLE_CHUNK = 32
#: doublings of x the leaves span below x_max (fewer when the tree has fewer leaves)
DOUBLINGS = 16
#: storage layout of a pickled store: leaves uniform in log2(x), leaf atoms, interleaved tables
LAYOUT = "log2-atoms"


@lru_cache(maxsize=16)
def _windows(depth: int) -> tuple[tuple[int, int, np.ndarray, np.ndarray, np.ndarray], ...]:
    """The window family of a depth-``depth`` tree, in leaf boundaries 0..2^depth, per level.

    Level h has node width wl = 2^(depth-h) leaves and grid step q = max(wl / 2^GRID, 1).
    Lower side: for every end e on the q-grid with e >= wl, the window [a, e) whose start
    a is the level-h node boundary with wl <= e - a < 2 wl. Upper side, mirrored: for every
    start s on the q-grid with s + wl <= 2^depth, the window [s, b) with b the level-h
    boundary, wl <= b - s < 2 wl. Every tree node is in both families (so the Lipschitz
    bounds on path nodes are covered by the same union bound). Per level: (wl, q,
    lower starts, upper ends, upper starts); lower ends are ``wl, wl + q, ..., 2^depth``.
    """
    nl = 1 << depth
    out = []
    for h in range(depth + 1):
        wl = 1 << (depth - h)
        q = max(wl >> GRID, 1)
        e = np.arange(wl, nl + 1, q)
        s_ = np.arange(0, nl - wl + 1, q)
        out.append((wl, q, (e // wl - 1) * wl, -(-(s_ + wl) // wl) * wl, s_))
    return tuple(out)


@lru_cache(maxsize=16)
def _n_events(depth: int) -> int:
    """Number of one-sided deviation events the bound is a union over: both window
    families, and per leaf its top atom (upper) and its bottom atom (lower)."""
    return int(sum(len(lo) + len(hi) for _, _, lo, hi, _ in _windows(depth))) + 2 * (1 << depth)


@dataclass
class RowParams:
    """Per-row settings of one tree (copied into the store's arrays)."""

    delta: float
    lo: float
    hi: float
    lipschitz: float | None


class IntervalStore:
    """Sufficient statistics and cached bounds of ``capacity`` trees of equal ``depth``."""

    def __init__(self, depth: int = 9, capacity: int = 1) -> None:
        if not 1 <= depth <= 16:
            raise ValueError(f"interval tree depth must be in [1, 16], got {depth}")
        self.depth = int(depth)
        self.n_leaves = 1 << self.depth
        self.n_nodes = 2 * self.n_leaves - 1
        self.doublings = min(DOUBLINGS, self.n_leaves)
        self.per_doubling = self.n_leaves // self.doublings  # leaves per doubling of x
        self.layout = LAYOUT
        self.capacity = 0
        self.free: list[int] = []
        self.in_use = np.zeros(0, dtype=bool)
        # Updates are buffered and folded in with one vectorized call when anything reads
        # the trees: a stream of single observations then costs one append each.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        self._scalars: list[tuple[int, float, float, float]] = []  # single observations, as floats
        self._alloc_arrays(max(1, capacity))

    # -- storage -------------------------------------------------------------------
    def _alloc_arrays(self, capacity: int) -> None:
        old = self.capacity
        n = self.n_nodes

        def grow(arr: np.ndarray | None, fill: float, shape: tuple[int, ...], dtype: type) -> np.ndarray:
            new = np.full(shape, fill, dtype=dtype)
            if arr is not None and old:
                new[:old] = arr[:old]
            return new

        g = self.__dict__.get
        self.w = grow(g("w"), 0.0, (capacity, n), float)
        self.wy = grow(g("wy"), 0.0, (capacity, n), float)
        self.wyy = grow(g("wyy"), 0.0, (capacity, n), float)
        self.cnt = grow(g("cnt"), 0.0, (capacity, n), float)
        self.xmin = grow(g("xmin"), np.inf, (capacity, n), float)
        self.xmax = grow(g("xmax"), -np.inf, (capacity, n), float)
        # per leaf: sum w and sum w*y of the observations at its largest x (t*) and smallest x (b*)
        nl = self.n_leaves
        self.tw = grow(g("tw"), 0.0, (capacity, nl), float)
        self.twy = grow(g("twy"), 0.0, (capacity, nl), float)
        self.bw = grow(g("bw"), 0.0, (capacity, nl), float)
        self.bwy = grow(g("bwy"), 0.0, (capacity, nl), float)
        # lo_tab[r, 2e]: lcb of any x whose left-eligible leaves end at leaf boundary e;
        # lo_tab[r, 2j + 1]: lcb of x in leaf j, at or right of its smallest x and left of its
        # largest (its bottom atom is eligible, the whole leaf not yet); prefix max over both.
        # hi_tab mirrors it: 2s for right-eligible leaves starting at boundary s, 2j + 1 for x in
        # leaf j right of its smallest x and at or left of its largest (top atom); suffix min.
        self.lo_tab = grow(g("lo_tab"), -np.inf, (capacity, 2 * nl + 1), float)
        self.hi_tab = grow(g("hi_tab"), np.inf, (capacity, 2 * nl + 1), float)
        self.x_max = grow(g("x_max"), 0.0, (capacity,), float)
        self.noise_scale = grow(g("noise_scale"), 1.0, (capacity,), float)
        self.beta = grow(g("beta"), 0.0, (capacity,), float)
        self.beta_flag = grow(g("beta_flag"), 0.0, (capacity,), float)
        self.lo = grow(g("lo"), 0.0, (capacity,), float)
        self.hi = grow(g("hi"), 1.0, (capacity,), float)
        self.lip = grow(g("lip"), np.nan, (capacity,), float)
        self.nobs = grow(g("nobs"), 0.0, (capacity,), float)
        self.nonmono = grow(g("nonmono"), False, (capacity,), bool)
        self.lip_broken = grow(g("lip_broken"), False, (capacity,), bool)
        self.flag = grow(g("flag"), False, (capacity,), bool)
        self.dirty = grow(g("dirty"), True, (capacity,), bool)
        self.in_use = grow(self.in_use, False, (capacity,), bool)
        self.reason: list[str] = list(g("reason", [])) + [""] * (capacity - old)
        self.capacity = capacity

    def __setstate__(self, state: dict[str, object]) -> None:
        """Unpickle. A store pickled with the earlier linear axis (leaves uniform in x) cannot
        be converted: a linear leaf near 0 spans many log2 leaves and its data cannot be split
        among them, and placing them in any one leaf would break the windows' "all data at or
        left / right of x" premise. Such a pickle is refused with a ValueError."""
        if state.get("layout") != LAYOUT:
            raise ValueError(
                "this IntervalStore was pickled by an older cluster-mgr with leaves uniform in x; "
                f"the current layout ({LAYOUT!r}: leaves uniform in log2 x, leaf atoms) cannot be "
                "rebuilt from its leaf statistics. Relearn the model from its observations.")
        self.__dict__.update(state)
        self.__dict__.setdefault("_scalars", [])

    def add_row(self, params: RowParams) -> int:
        """A fresh, empty row with ``params``; returns its index."""
        self.flush()
        if self.free:
            r = self.free.pop()
        else:
            if int(self.in_use.sum()) >= self.capacity:
                self._alloc_arrays(2 * self.capacity)
            r = int(np.argmin(self.in_use))
        self._reset_row(r)
        self.in_use[r] = True
        self.set_params(r, params)
        return r

    def set_params(self, r: int, params: RowParams) -> None:
        self.flush()
        self.beta[r] = _z(params.delta / _n_events(self.depth))
        self.beta_flag[r] = _z(min(params.delta, FLAG_ALPHA) / (2 * self.n_nodes))
        self.lo[r], self.hi[r] = params.lo, params.hi
        self.lip[r] = np.nan if params.lipschitz is None else params.lipschitz
        self.dirty[r] = True

    def remove_row(self, r: int) -> None:
        self.flush()
        self._reset_row(r)
        self.in_use[r] = False
        self.free.append(r)

    def _reset_row(self, r: int) -> None:
        for arr, fill in ((self.w, 0.0), (self.wy, 0.0), (self.wyy, 0.0), (self.cnt, 0.0),
                          (self.xmin, np.inf), (self.xmax, -np.inf), (self.tw, 0.0), (self.twy, 0.0),
                          (self.bw, 0.0), (self.bwy, 0.0)):
            arr[r] = fill
        self.x_max[r] = 0.0
        self.noise_scale[r] = 1.0
        self.nobs[r] = 0.0
        self.nonmono[r] = self.lip_broken[r] = self.flag[r] = False
        self.reason[r] = ""
        self.dirty[r] = True

    def copy_row(self, src: IntervalStore, rs: int, rd: int) -> None:
        """Copy row ``rs`` of ``src`` (same depth, hence the same axis) into row ``rd`` of this store."""
        if src.depth != self.depth:
            raise ValueError(f"cannot copy a depth-{src.depth} tree into a depth-{self.depth} store")
        src.flush()
        self.flush()
        for name in ("w", "wy", "wyy", "cnt", "xmin", "xmax", "tw", "twy", "bw", "bwy", "lo_tab", "hi_tab", "x_max", "noise_scale", "beta", "beta_flag", "lo", "hi", "lip",
                     "nobs", "nonmono", "lip_broken", "flag", "dirty"):
            getattr(self, name)[rd] = getattr(src, name)[rs]
        self.reason[rd] = src.reason[rs]

    # -- updates -------------------------------------------------------------------
    def _level_offsets(self) -> np.ndarray:
        return (1 << np.arange(self.depth + 1)) - 1

    @property
    def _offsets(self) -> np.ndarray:
        """Heap offset of each level, shape (1, depth + 1), for broadcasting against leaves."""
        return self._level_offsets()[None, :]

    @property
    def _shifts(self) -> np.ndarray:
        """Right shift that maps a leaf index to its ancestor at each level."""
        return (self.depth - np.arange(self.depth + 1))[None, :]

    def leaf_of(self, u: np.ndarray) -> np.ndarray:
        """Leaf index of u = x / x_max >= 0 on the log2 axis (below the axis: leaf 0; u >= 1:
        the last). With u = m 2^e (m in [1/2, 1)) the index is e P + n_leaves + floor(P log2 m):
        halving u moves it exactly P leaves down, so a domain doubling and ``_grow_domain``'s
        shift agree on every observation, boundary cases included."""
        m, e = np.frexp(u)
        with np.errstate(divide="ignore"):
            t = np.log2(m)  # -inf for u = 0
        t *= self.per_doubling
        np.floor(t, out=t)
        t += e * self.per_doubling + self.n_leaves
        np.clip(t, 0.0, self.n_leaves - 1, out=t)
        return t.astype(np.int64)

    def leaf_start(self, j: int, x_max: float) -> float:
        """The smallest x that ``leaf_of`` puts in leaf j (or later) for a row with this x_max."""
        if j <= 0:
            return 0.0
        x = x_max * 2.0 ** ((j - self.n_leaves) / self.per_doubling)
        while self.leaf_of(np.array([x / x_max]))[0] < j:  # rounding in log2: step up to the leaf
            x = float(np.nextafter(x, np.inf))
        while self.leaf_of(np.array([float(np.nextafter(x, 0.0)) / x_max]))[0] >= j:
            x = float(np.nextafter(x, 0.0))
        return x

    def _grow_domain(self, rows: np.ndarray, levels: int) -> None:
        """Double the x_max of ``rows`` (distinct) ``levels`` times. The axis is relative to
        x_max, so the leaves shift left by ``levels * per_doubling``: leaves 0..shift merge into
        the new leaf 0 (its atoms are those of the highest / lowest merged leaf with data), the
        rest move down, the top leaves start empty, and every inner node is summed again from
        its children, level by level (sums add, smallest / largest x take min / max)."""
        nl, m = self.n_leaves, len(rows)
        k = min(levels * self.per_doubling, nl - 1)  # old leaves 0..k become the new leaf 0
        full = self.cnt[rows, nl - 1: nl + k] > 0
        some = full.any(axis=1)
        ix = np.arange(m)
        for arrs, pick in (((self.tw, self.twy), k - np.argmax(full[:, ::-1], axis=1)),
                           ((self.bw, self.bwy), np.argmax(full, axis=1))):
            for arr in arrs:
                a = arr[rows]
                head = np.where(some, a[ix, pick], 0.0)
                a[:, 1: nl - k] = a[:, k + 1:]
                a[:, nl - k:] = 0.0
                a[:, 0] = head
                arr[rows] = a
        sums = np.stack([self.w[rows], self.wy[rows], self.wyy[rows], self.cnt[rows]])
        ext = np.stack([self.xmin[rows], -self.xmax[rows]])  # both reduce with minimum
        for arr, red, fill in ((sums, np.sum, 0.0), (ext, np.min, np.inf)):
            lv = arr[..., nl - 1:]
            head = red(lv[..., : k + 1], axis=-1)
            lv[..., 1: nl - k] = lv[..., k + 1:]  # numpy copies overlapping ranges safely
            lv[..., nl - k:] = fill
            lv[..., 0] = head
        offs = self._level_offsets()
        for h in range(self.depth - 1, -1, -1):
            a_, b_, n_ = offs[h], offs[h + 1], 1 << h
            np.add(sums[..., b_: b_ + 2 * n_: 2], sums[..., b_ + 1: b_ + 2 * n_: 2], out=sums[..., a_: a_ + n_])
            np.minimum(ext[..., b_: b_ + 2 * n_: 2], ext[..., b_ + 1: b_ + 2 * n_: 2], out=ext[..., a_: a_ + n_])
        self.w[rows], self.wy[rows], self.wyy[rows], self.cnt[rows] = sums
        self.xmin[rows] = ext[0]
        self.xmax[rows] = -ext[1]
        self.x_max[rows] *= 2.0**levels

    def add(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, wt: np.ndarray) -> None:
        """Queue observations (x >= 0 finite, weights 1/sigma^2) for their rows' trees."""
        self._pending.append((rows, x, y, wt))
        self._pending_n += len(x)
        if len(rows) == 1:
            self.dirty[int(rows[0])] = True
        else:
            self.dirty[rows] = True
        if self._pending_n >= 8192:  # bound the buffer's memory
            self.flush()

    def add_one(self, r: int, x: float, y: float, wt: float) -> None:
        """Queue one observation (x >= 0 finite, weight 1/sigma^2) for row r: an append."""
        sc = self._scalars
        sc.append((r, x, y, wt))
        self.dirty[r] = True
        if len(sc) >= 8192:
            self.flush()

    def flush(self) -> None:
        """Fold every queued observation into the trees."""
        sc = self.__dict__.get("_scalars")
        if sc:
            arr = np.array(sc, dtype=float)
            self._scalars = []
            self._pending.append((arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3]))
        if not self._pending:
            return
        parts = self._pending
        self._pending, self._pending_n = [], 0
        if len(parts) == 1:
            self.accumulate(*parts[0])
        else:
            self.accumulate(*(np.concatenate(c) for c in zip(*parts, strict=True)))

    def accumulate(self, rows: np.ndarray, x: np.ndarray, y: np.ndarray, wt: np.ndarray) -> None:
        """Add observations (x >= 0 finite, weights 1/sigma^2) to their rows' trees now."""
        if len(x) == 0:
            return
        single = bool(rows[0] == rows[-1]) and (len(rows) < 3 or bool(np.all(rows == rows[0])))
        if single:
            urows = rows[:1]
            xb = np.array([x.max()])
        else:  # the largest x per row, in one pass
            urows = np.unique(rows)
            top = np.full(self.capacity, -np.inf)
            np.maximum.at(top, rows, x)
            xb = top[urows]
        xm = self.x_max[urows]
        need = (xm <= 0) | (xb >= xm)
        if need.any():  # domain set-up and growth: rare per row, batched over rows
            rr, bb = urows[need], xb[need]
            new = xm[need] <= 0
            with np.errstate(divide="ignore"):
                self.x_max[rr[new]] = np.where(bb[new] > 0, 2.0 ** np.ceil(np.log2(2 * bb[new])), 1.0)
                xm2 = self.x_max[rr]
                grow = bb >= xm2
                levels = np.floor(np.log2(bb[grow] / xm2[grow])).astype(np.int64) + 1
            for lv in np.unique(levels):
                self._grow_domain(rr[grow][levels == lv], int(lv))
        leaf = self.leaf_of(x / self.x_max[rows])
        node = self._offsets + (leaf[:, None] >> self._shifts)
        k = self.depth + 1
        vals = (wt, wt * y, wt * y * y, np.ones_like(wt))
        xr = np.repeat(x, k)
        rows64 = rows.astype(np.int64)
        hkey = rows64 * self.n_nodes + (leaf + (self.n_leaves - 1))  # flat index of each leaf node
        old_lo, old_hi = self.xmin.reshape(-1)[hkey], self.xmax.reshape(-1)[hkey]
        if single:  # one tree: a dense bincount over its nodes is cheapest
            r = int(rows[0])
            flat = node.reshape(-1)
            for arr, v in zip((self.w, self.wy, self.wyy, self.cnt), vals, strict=True):
                arr[r] += np.bincount(flat, weights=np.repeat(v, k), minlength=self.n_nodes)
            np.minimum.at(self.xmin[r], flat, xr)
            np.maximum.at(self.xmax[r], flat, xr)
        else:  # many trees: sort the touched nodes once, reduce each run
            flat = (rows[:, None].astype(np.int64) * self.n_nodes + node).reshape(-1)
            order = np.argsort(flat, kind="stable")
            sf = flat[order]
            first = np.flatnonzero(np.concatenate(([True], sf[1:] != sf[:-1])))
            uniq = sf[first]
            src = order // k  # observation behind each sorted entry
            for arr, v in zip((self.w, self.wy, self.wyy, self.cnt), vals, strict=True):
                arr.reshape(-1)[uniq] += np.add.reduceat(v[src], first)
            xs = x[src]
            lo_, hi_ = self.xmin.reshape(-1), self.xmax.reshape(-1)
            lo_[uniq] = np.minimum(lo_[uniq], np.minimum.reduceat(xs, first))
            hi_[uniq] = np.maximum(hi_[uniq], np.maximum.reduceat(xs, first))
        self._fold_atoms(rows64 * self.n_leaves + leaf, hkey, x, wt, vals[1], old_lo, old_hi)
        self.dirty[urows] = True

    def _fold_atoms(self, akey: np.ndarray, hkey: np.ndarray, x: np.ndarray, wt: np.ndarray,
                    wy: np.ndarray, old_lo: np.ndarray, old_hi: np.ndarray) -> None:
        """Update the leaf atoms after a batch: a leaf whose largest (smallest) x moved restarts
        its top (bottom) atom, then every observation at its leaf's new extreme joins it.
        ``akey`` / ``hkey``: flat indices of each observation's leaf in the atom / node arrays;
        ``old_lo`` / ``old_hi``: that leaf's smallest / largest x before the batch."""
        new_lo, new_hi = self.xmin.reshape(-1)[hkey], self.xmax.reshape(-1)[hkey]
        for aw, awy, new, moved in ((self.tw, self.twy, new_hi, new_hi > old_hi),
                                    (self.bw, self.bwy, new_lo, new_lo < old_lo)):
            fw, fwy = aw.reshape(-1), awy.reshape(-1)
            fw[akey[moved]] = 0.0
            fwy[akey[moved]] = 0.0
            at = x == new
            np.add.at(fw, akey[at], wt[at])
            np.add.at(fwy, akey[at], wy[at])

    # -- refresh: misspecification checks and the sorted bound tables ----------------
    def refresh(self, rows: np.ndarray) -> None:
        self.flush()
        rows = np.unique(rows[self.dirty[rows]])
        for i in range(0, len(rows), TABLE_CHUNK):  # chunks of rows keep the temporaries in cache
            self._refresh_chunk(rows[i: i + TABLE_CHUNK])

    def _refresh_chunk(self, rows: np.ndarray) -> None:
        self._check_noise(rows)
        w = self.w[rows]
        has = w > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(has, self.wy[rows] / w, 0.0)
            se = np.where(has, self.noise_scale[rows, None] / np.sqrt(w), np.inf)
        self._check_monotone(rows, mean, se, has)
        self._check_lipschitz(rows, mean, se, has)
        self._tables_chunk(rows)
        self.dirty[rows] = False

    def _tables_chunk(self, rows: np.ndarray) -> None:
        """lo_tab / hi_tab of ``rows``: the best window bound per leaf boundary (a bottom atom
        counts at the boundary after its leaf, a top atom at the boundary before it), then the
        prefix max (lower) and suffix min (upper), the monotone projection; then the entries
        for x inside a leaf with data, where only the leaf's atom is eligible on that side.

        Window sums are differences of prefix sums over the leaves, taken block by block
        (no gathers): at level h the lower windows ending in [t wl, (t+1) wl) all start at
        (t-1) wl, and the upper windows ending at t wl start in ((t-2) wl, (t-1) wl]. The
        prefix sums are padded (zeros on the left, the total on the right) so every block
        is whole; windows reaching into the padding repeat in-range windows and are dropped.
        An empty window has weight exactly 0, gives NaN and is skipped by fmax / fmin.
        """
        nl = self.n_leaves
        k = len(rows)
        c = (self.beta[rows] * self.noise_scale[rows])[:, None, None]
        pw = np.zeros((k, 3 * nl + 1))
        pwy = np.zeros((k, 3 * nl + 1))
        for p, src in ((pw, self.w), (pwy, self.wy)):
            np.cumsum(src[rows, nl - 1:], axis=1, out=p[:, nl + 1: 2 * nl + 1])
            p[:, 2 * nl + 1:] = p[:, 2 * nl: 2 * nl + 1]
        lo_best = np.full((k, 2 * nl + 1), -np.inf)  # index e (window end)
        hi_best = np.full((k, 2 * nl + 1), np.inf)  # index nl + s (window start)
        buf = np.empty((3, k * nl))
        with np.errstate(divide="ignore", invalid="ignore"):
            for h in range(self.depth + 1):
                wl = 1 << (self.depth - h)
                q = max(wl >> GRID, 1)
                shape = (k, nl // wl, wl // q)
                sw, val, tmp = (b_[: k * (nl // q)].reshape(shape) for b_ in buf)
                o = nl  # offset of boundary 0 in the padded prefix sums
                end = slice(o + wl, o + wl + nl, q)
                start = slice(o, o + nl, wl)
                np.subtract(pw[:, end].reshape(shape), pw[:, start, None], out=sw)
                np.subtract(pwy[:, end].reshape(shape), pwy[:, start, None], out=val)
                np.sqrt(sw, out=tmp)
                tmp *= c
                val -= tmp
                val /= sw
                view = lo_best[:, wl: wl + nl: q]
                np.fmax(view, val.reshape(k, -1), out=view)
                end = slice(o + wl, o + wl + nl, wl)
                start = slice(o - wl + q, o - wl + q + nl, q)
                np.subtract(pw[:, end, None], pw[:, start].reshape(shape), out=sw)
                np.subtract(pwy[:, end, None], pwy[:, start].reshape(shape), out=val)
                np.sqrt(sw, out=tmp)
                tmp *= c
                val += tmp
                val /= sw
                view = hi_best[:, nl - wl + q: 2 * nl - wl + q: q]
                np.fmin(view, val.reshape(k, -1), out=view)
            cw = c[:, :, 0]
            tw, bw = self.tw[rows], self.bw[rows]
            top = (self.twy[rows] + cw * np.sqrt(tw)) / tw  # NaN for an empty atom
            bot = (self.bwy[rows] - cw * np.sqrt(bw)) / bw
        view = lo_best[:, 1: nl + 1]
        np.fmax(view, bot, out=view)
        view = hi_best[:, nl: 2 * nl]
        np.fmin(view, top, out=view)
        lo = np.maximum.accumulate(lo_best[:, : nl + 1], axis=1)
        hi = np.minimum.accumulate(hi_best[:, 2 * nl: nl - 1: -1], axis=1)[:, ::-1]
        empty = self.cnt[rows, nl - 1:] == 0  # x anywhere in an empty leaf: as right of it (lower) / left (upper)
        lo_in = np.where(empty, lo[:, 1:], np.fmax(lo[:, :-1], bot))
        hi_in = np.where(empty, hi[:, :-1], np.fmin(hi[:, 1:], top))
        tab = np.empty((len(rows), 2 * nl + 1))
        tab[:, 0::2], tab[:, 1::2] = lo, lo_in
        self.lo_tab[rows] = tab
        tab[:, 0::2], tab[:, 1::2] = hi, hi_in
        self.hi_tab[rows] = tab

    def _raise(self, rows: np.ndarray, hit: np.ndarray, reason: str) -> None:
        for r in rows[hit & ~self.flag[rows]]:
            self.flag[r] = True
            self.reason[r] = reason

    def _check_noise(self, rows: np.ndarray) -> None:
        """Leaf residuals against the stated sigma: a chi-square test; inflate sigma if it fails."""
        lo = self.n_leaves - 1
        w, wy, wyy, n = (a[rows, lo:] for a in (self.w, self.wy, self.wyy, self.cnt))
        with np.errstate(divide="ignore", invalid="ignore"):
            rss = np.where(w > 0, wyy - wy * wy / w, 0.0).sum(axis=1)
        dof = np.maximum(n - 1, 0).sum(axis=1)
        ok = dof >= MIN_NOISE_DOF
        p = np.where(ok, stats.chi2.sf(np.maximum(rss, 0.0), np.maximum(dof, 1)), 1.0)
        ratio = np.where(ok, rss / np.maximum(dof, 1), 1.0)
        significant = ok & (p < FLAG_ALPHA)
        bad = significant & (ratio > MIN_EFFECT**2)  # widen when significant, flag when also large
        self.noise_scale[rows] = np.where(significant, np.sqrt(np.maximum(ratio, 1.0)), 1.0)
        self._raise(rows, bad, "noise larger than the stated sigma (leaf residual chi-square test)")

    def _check_monotone(self, rows: np.ndarray, mean: np.ndarray, se: np.ndarray, has: np.ndarray) -> None:
        """Within each level nodes are ordered in x: a left node clearly above a right one is a
        contradiction of monotonicity (test at level FLAG_ALPHA, union over nodes)."""
        bf = self.beta_flag[rows, None]
        lower = np.where(has, mean - bf * se, -np.inf)
        upper = np.where(has, mean + bf * se, np.inf)
        offs = self._level_offsets()
        bad = np.zeros(len(rows), dtype=bool)
        for h in range(1, self.depth + 1):
            sl = slice(offs[h], offs[h] + (1 << h))
            left_max = np.maximum.accumulate(lower[:, sl], axis=1)[:, :-1]
            bad |= np.any(left_max > upper[:, sl][:, 1:], axis=1)
        self.nonmono[rows] |= bad
        self._raise(rows, bad, "data contradict monotonicity (a left node is clearly above a right one)")

    def _check_lipschitz(self, rows: np.ndarray, mean: np.ndarray, se: np.ndarray, has: np.ndarray) -> None:
        """Neighbouring nodes whose means differ by more than L times their span contradict L."""
        lip = self.lip[rows]
        use = np.isfinite(lip) & ~self.lip_broken[rows]
        if not use.any():
            return
        r = rows[use]
        m, s, hv = mean[use], se[use] * self.beta_flag[r, None], has[use]
        offs = self._level_offsets()
        bad = np.zeros(len(r), dtype=bool)
        for h in range(1, self.depth + 1):
            sl = slice(offs[h], offs[h] + (1 << h))
            a, b = np.arange(sl.start, sl.stop - 1), np.arange(sl.start + 1, sl.stop)
            both = hv[:, a] & hv[:, b]
            span = self.xmax[r][:, b] - self.xmin[r][:, a]
            gap = np.abs(m[:, b] - m[:, a]) - s[:, a] - s[:, b]
            with np.errstate(invalid="ignore"):
                bad |= np.any(both & (gap > lip[use, None] * span), axis=1)
        self.lip_broken[r] |= bad
        self._raise(r, bad, "data contradict the Lipschitz constant (neighbouring nodes too far apart)")

    # -- queries -------------------------------------------------------------------
    def query(self, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lcb, mean, ucb) of f at x for each (row, x) pair."""
        self.refresh(np.unique(rows))
        xm = self.x_max[rows]
        cold = xm <= 0
        u = np.where(cold, 0.0, np.minimum(x / np.where(cold, 1.0, xm), 1.0))
        leaf = self.leaf_of(u)
        lcb, ucb = self._mono_bounds(rows, u, x, leaf)
        mean, path_c, m_lo, m_hi = self._path(rows, x, leaf, cold)
        lcb = np.maximum(lcb, m_lo)
        ucb = np.minimum(ucb, m_hi)
        nm = self.nonmono[rows]
        if nm.any():  # the monotone projection is void: fall back to the hull with the leaf estimate
            lcb = np.where(nm, np.minimum(lcb, mean - 2 * path_c), lcb)
            ucb = np.where(nm, np.maximum(ucb, mean + 2 * path_c), ucb)
        lo, hi = self.lo[rows], self.hi[rows]
        lcb = np.clip(lcb, lo, hi)
        ucb = np.clip(ucb, lo, hi)
        ucb = np.maximum(ucb, lcb)  # a crossing means a failed event; keep the pair ordered
        mean = np.clip(mean, lcb, ucb)
        return lcb, mean, ucb

    def _mono_bounds(self, rows: np.ndarray, u: np.ndarray, x: np.ndarray, j: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Table lookups: the lower bound uses every leaf whose data all lie at or left of x
        (the leaves before x's leaf j, and leaf j itself when its largest x is <= x) and,
        when x is at or right of leaf j's smallest x only, leaf j's bottom atom; the upper
        bound mirrors it (leaves after j, leaf j when its smallest x is >= x, else its top
        atom when its largest x is >= x). An empty leaf has xmin = inf, xmax = -inf."""
        node = j + (self.n_leaves - 1)
        lo_x, hi_x = self.xmin[rows, node], self.xmax[rows, node]
        inside = u < 1.0
        base = 2 * j
        e = np.where(inside, base + (x >= lo_x) + (x >= hi_x), 2 * self.n_leaves)
        s_ = np.where(inside, base + (x > lo_x) + (x > hi_x), 2 * self.n_leaves)
        return self.lo_tab[rows, e], self.hi_tab[rows, s_]

    def _path(self, rows: np.ndarray, x: np.ndarray, leaf: np.ndarray, cold: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean and half-width of the deepest node on the path to x's leaf with data, and
        the Lipschitz bounds of the path nodes (-inf / inf when no L is in force; the
        distances use the nodes' own smallest / largest x)."""
        node = self._offsets + (leaf[:, None] >> self._shifts)
        r2 = rows[:, None]
        w = self.w[r2, node]
        has = (w > 0) & ~cold[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(has, self.wy[r2, node] / w, np.nan)
            se = np.where(has, self.noise_scale[rows, None] / np.sqrt(w), np.inf)
        deepest = np.where(has.any(axis=1), self.depth - np.argmax(has[:, ::-1], axis=1), 0)
        pick = np.arange(len(rows))
        m = np.where(has.any(axis=1), mean[pick, deepest], 0.5 * (self.lo[rows] + self.hi[rows]))
        path_c = np.where(has.any(axis=1), self.beta[rows] * se[pick, deepest], np.inf)
        lip = self.lip[rows]
        use = np.isfinite(lip) & ~self.lip_broken[rows]
        lo = np.full(len(rows), -np.inf)
        hi = np.full(len(rows), np.inf)
        if use.any():
            c = self.beta[rows, None] * se
            below = np.maximum(self.xmax[r2, node] - x[:, None], 0.0)
            above = np.maximum(x[:, None] - self.xmin[r2, node], 0.0)
            with np.errstate(invalid="ignore"):
                lo_l = np.where(has, mean - c - lip[:, None] * below, -np.inf).max(axis=1)
                hi_l = np.where(has, mean + c + lip[:, None] * above, np.inf).min(axis=1)
            lo = np.where(use, lo_l, lo)
            hi = np.where(use, hi_l, hi)
        return m, path_c, lo, hi
