"""The monotone interval tree: validity, monotone projection, flags, demand, domain growth."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cluster_mgr.model import Observation
from learners import IntervalLearner, make_learner
from learners.interval_store import GRID


def _tanh_data(n: int, seed: int, sigma: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 6, n)
    return a, np.tanh(0.75 * a) + rng.normal(0, sigma, n)


def test_registry_default_and_unknown_name() -> None:
    assert isinstance(make_learner(), IntervalLearner)
    with pytest.raises(ValueError, match="ernest"):
        make_learner("no-such-learner")


def test_cold_bounds_are_the_prior_and_demand_is_infinite() -> None:
    m = IntervalLearner()
    lcb, mean, ucb = m.bounds(np.array([1.0, 5.0]), 10.0)
    assert np.all(lcb == 0) and np.all(ucb == 1) and m.cold
    assert m.demand(0.5, 10.0, "lower") == float("inf")


def test_bounds_cover_truth_and_shrink_with_data() -> None:
    g = np.linspace(0.1, 5.9, 100)
    truth = np.tanh(0.75 * g)
    widths = []
    for n in (200, 2000):
        m = IntervalLearner()
        a, y = _tanh_data(n, seed=n)
        m.learn_arrays(a, 1000.0, y, 0.05)
        lcb, _, ucb = m.bounds(g, 1000.0)
        assert np.all((truth >= lcb) & (truth <= ucb))
        assert np.all(np.diff(lcb) >= 0) and np.all(np.diff(ucb) >= 0)
        widths.append(np.mean(ucb - lcb))
    assert widths[1] < 0.7 * widths[0]


def test_discrete_design_gets_parametric_rate_at_design_points() -> None:
    """Many observations at the same allocation: the node holding only them bounds f there
    from both sides, so the width is 2 beta sigma / sqrt(count), with no bias term."""
    m = IntervalLearner()
    rng = np.random.default_rng(3)
    a = np.repeat([1.0, 2.0, 4.0], 400)
    m.learn_arrays(a, 1.0, np.tanh(a) + rng.normal(0, 0.05, len(a)), 0.05)
    lcb, _, ucb = m.bounds(np.array([2.0]), 1.0)
    beta = m._store.beta[m._row]
    assert ucb[0] - lcb[0] == pytest.approx(2 * beta * 0.05 / np.sqrt(400), rel=1e-6)


def test_exact_demand_matches_the_bound() -> None:
    m = IntervalLearner()
    a, y = _tanh_data(3000, seed=4)
    m.learn_arrays(a, 1000.0, y, 0.05)
    d = m.demand(0.8, 1000.0, "lower")
    assert np.isfinite(d)
    assert m.bounds(np.array([d]), 1000.0)[0][0] >= 0.8
    assert m.bounds(np.array([d * (1 - 1e-6)]), 1000.0)[0][0] < 0.8
    assert d >= np.arctanh(0.8) / 0.75  # conservative: not below the true demand
    assert m.demand(0.8, 2000.0, "lower") == pytest.approx(2 * d)  # x = alloc / load


def test_domain_grows_without_losing_data() -> None:
    m = IntervalLearner()
    m.learn_arrays(np.array([0.5, 0.6]), 1.0, np.array([0.3, 0.35]), 0.01)
    before = m.bounds(np.array([0.7]), 1.0)[0][0]
    m.learn_arrays(np.array([50.0]), 1.0, np.array([0.99]), 0.01)  # 64x beyond the domain
    assert m.explain()["x_max"] >= 64
    # the old tree became the leftmost subtree: its data are all still there (the deepest
    # level merged into its parent), so the bound at 0.7 still rests on both points
    after = m.bounds(np.array([0.7]), 1.0)[0][0]
    assert 0.25 < after <= before
    assert m._store.cnt[m._row, 0] == 3 and m.n_observations == 3


@pytest.mark.parametrize("seed", range(12))
def test_demand_is_the_first_allocation_whose_lcb_reaches_the_goal(seed: int) -> None:
    """On the log2 axis the lcb steps at a leaf's largest x, at a leaf's smallest x (its
    bottom atom) and at the start of an empty leaf: demand lands on the step, not an ulp
    short of it after the division by load, and not after it."""
    rng = np.random.default_rng(seed)
    m = IntervalLearner(depth=int(rng.choice([3, 6, 9])))
    k = rng.uniform(0.2, 2.0)
    x = np.concatenate([rng.uniform(0, 6, rng.integers(5, 300)), np.repeat(rng.uniform(0, 6, 3), rng.integers(1, 40))])
    rng.shuffle(x)
    ld = float(rng.uniform(0.3, 3.0))
    for part in np.array_split(x, 5):
        m.learn_arrays(part * ld, ld, np.tanh(k * part) + rng.normal(0, 0.05, len(part)), 0.05)
    for goal in np.linspace(0.05, 0.95, 19):
        load = float(rng.uniform(0.3, 3.0))
        d = m.demand(goal, load, "lower")
        if np.isfinite(d):
            assert m.bounds(np.array([d]), load)[0][0] >= goal
            assert d == 0 or m.bounds(np.array([d * (1 - 1e-9)]), load)[0][0] < goal


def test_zero_load_is_ignored_not_an_error() -> None:
    m = IntervalLearner()
    m.learn_one(Observation("j", 0.0, (2.0,), 0.0, 0.5, 0.1))
    assert m.n_observations == 0 and m.n_ignored == 1


def test_bump_raises_the_monotonicity_flag_and_widens() -> None:
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 6, 3000)
    f = np.tanh(0.75 * a) - 0.5 * np.exp(-(((a - 3) / 0.2) ** 2))
    m = IntervalLearner()
    m.learn_arrays(a, 1.0, f + rng.normal(0, 0.05, len(a)), 0.05)
    assert m.misspecified and "monoton" in m.misspecification_reason
    assert m.explain()["monotone_projection_in_force"] is False
    lcb, _, ucb = m.bounds(np.array([3.0]), 1.0)
    truth = np.tanh(2.25) - 0.5
    assert lcb[0] <= truth <= ucb[0]


def test_lipschitz_constant_tightens_and_a_step_breaks_it() -> None:
    a, y = _tanh_data(3000, seed=6)
    plain, lip = IntervalLearner(), IntervalLearner(lipschitz=1.0)  # true slope <= 0.75 per unit x
    for m in (plain, lip):
        m.learn_arrays(a, 1.0, y, 0.05)
    g = np.linspace(0.2, 5.8, 50)
    w_plain = np.mean(np.subtract(*plain.bounds(g, 1.0)[::-2]))
    w_lip = np.mean(np.subtract(*lip.bounds(g, 1.0)[::-2]))
    assert not lip.misspecified and w_lip <= w_plain
    step = IntervalLearner(lipschitz=1.0)
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 6, 3000)
    step.learn_arrays(x, 1.0, 0.2 + 0.6 * (x > 3) + rng.normal(0, 0.02, 3000), 0.02)
    assert step.misspecified
    assert step.explain()["lipschitz_in_force"] is False or "noise" in step.misspecification_reason


def test_understated_noise_is_flagged_and_inflated() -> None:
    a, y = _tanh_data(3000, seed=8, sigma=0.15)
    m = IntervalLearner()
    m.learn_arrays(a, 1.0, y, 0.05)  # told a third of the real noise
    assert m.misspecified and "noise" in m.misspecification_reason
    assert m.explain()["noise_scale"] == pytest.approx(3.0, rel=0.15)


def test_pickle_and_clone_round_trip() -> None:
    a, y = _tanh_data(500, seed=9)
    m = IntervalLearner(delta=0.1, seed=3)
    m.learn_arrays(a, 1.0, y, 0.05)
    g = np.linspace(0, 6, 20)
    for copy_ in (pickle.loads(pickle.dumps(m)), m.clone()):
        for u, v in zip(m.bounds(g, 1.0), copy_.bounds(g, 1.0), strict=True):
            assert np.array_equal(u, v)


def test_bad_options_raise() -> None:
    for bad in ({"dim": 2}, {"lipschitz": -1.0}, {"value_range": (1.0, 0.0)}, {"depth": 0}, {"delta": 1.0}):
        with pytest.raises(ValueError):
            IntervalLearner(**bad)  # type: ignore[arg-type]


def _brute_tables(m: IntervalLearner, x: np.ndarray, y: np.ndarray, sigma: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The bound tables from the event family's definition, window by window and atom by
    atom (the atoms from the raw data), in the store's interleaved layout."""
    st, r = m._store, m._row
    st.refresh(np.array([r]))
    nl, d = st.n_leaves, st.depth
    w, wy = st.w[r, nl - 1:], st.wy[r, nl - 1:]
    c = st.beta[r] * st.noise_scale[r]

    def val(a: int, b: int, sign: float) -> float:
        sw = w[a:b].sum()
        return sign * np.inf if sw == 0 else wy[a:b].sum() / sw + sign * c / np.sqrt(sw)

    lo, hi = np.full(nl + 1, -np.inf), np.full(nl + 1, np.inf)
    for h in range(d + 1):
        wl = 1 << (d - h)
        q = max(wl >> GRID, 1)
        for e in range(wl, nl + 1, q):
            lo[e] = max(lo[e], val((e // wl - 1) * wl, e, -1.0))
        for s in range(0, nl - wl + 1, q):
            hi[s] = min(hi[s], val(s, -(-(s + wl) // wl) * wl, 1.0))
    leaf = st.leaf_of(x / st.x_max[r])
    wt = 1.0 / sigma**2
    top, bot = np.full(nl, np.inf), np.full(nl, -np.inf)
    for j in np.unique(leaf):
        at = leaf == j
        for k, sign, out in ((x == x[at].max(), 1.0, top), (x == x[at].min(), -1.0, bot)):
            sel = at & k
            out[j] = (wt[sel] * y[sel]).sum() / wt[sel].sum() + sign * c / np.sqrt(wt[sel].sum())
    lo[1:] = np.maximum(lo[1:], bot)
    hi[:-1] = np.minimum(hi[:-1], top)
    lo, hi = np.maximum.accumulate(lo), np.minimum.accumulate(hi[::-1])[::-1]
    full = np.isin(np.arange(nl), leaf)
    lo_tab, hi_tab = np.empty(2 * nl + 1), np.empty(2 * nl + 1)
    lo_tab[0::2], hi_tab[0::2] = lo, hi
    lo_tab[1::2] = np.where(full, np.maximum(lo[:-1], bot), lo[1:])
    hi_tab[1::2] = np.where(full, np.minimum(hi[1:], top), hi[:-1])
    return lo_tab, hi_tab


@pytest.mark.parametrize("depth", [3, 6])
def test_bound_tables_match_the_window_family(depth: int) -> None:
    """The blocked, padded table build equals the family's definition window by window
    (clustered data leave empty leaves and a domain far wider than the data; repeated
    allocations give atoms of several observations)."""
    rng = np.random.default_rng(depth)
    m = IntervalLearner(depth=depth)
    a = np.concatenate([rng.uniform(0.1, 0.4, 300), rng.uniform(1.5, 2.0, 100), np.repeat([0.25, 1.75], 20)])
    y = np.tanh(a) + rng.normal(0, 0.05, len(a))
    sigma = rng.uniform(0.03, 0.08, len(a))
    m.learn_arrays(a, 1.0, y, sigma)
    lo, hi = _brute_tables(m, a, y, sigma)
    st, r = m._store, m._row
    assert np.allclose(st.lo_tab[r], lo, rtol=1e-9, atol=1e-12)
    assert np.allclose(st.hi_tab[r], hi, rtol=1e-9, atol=1e-12)
    for tab in (st.lo_tab[r], st.hi_tab[r]):  # non-decreasing step functions (+-inf included)
        assert np.array_equal(tab, np.maximum.accumulate(tab))


def test_scalar_fast_path_equals_the_array_path() -> None:
    a, y = _tanh_data(300, seed=11)
    fast, slow = IntervalLearner(), IntervalLearner()
    for i in range(len(a)):
        fast.learn_arrays(a[i: i + 1], 2.0, y[i: i + 1], 0.05)  # one window at a time
        fast.learn_one(Observation("j", float(i), (float(a[i]),), 2.0, float(y[i]), 0.05))
    slow.learn_arrays(np.repeat(a, 2), 2.0, np.repeat(y, 2), 0.05)
    g = np.linspace(0, 6, 40)
    assert fast.n_observations == slow.n_observations == 600
    for u, v in zip(fast.bounds(g, 2.0), slow.bounds(g, 2.0), strict=True):
        assert np.allclose(u, v, rtol=1e-12, atol=1e-12)
    before = fast.bounds(g, 2.0)
    for bad in ((np.nan, 1.0, 0.5, 0.1), (-1.0, 1.0, 0.5, 0.1), (1.0, -1.0, 0.5, 0.1), (1.0, 1.0, 0.5, 0.0),
                (1.0, 1.0, np.inf, 0.1)):
        with pytest.raises(ValueError):
            fast.learn_arrays(*bad)
    assert fast.n_observations == 600
    assert all(np.array_equal(u, v) for u, v in zip(before, fast.bounds(g, 2.0), strict=True))
    fast.learn_arrays(1.0, 0.0, 0.5, 0.1)  # zero load: ignored, as on the array path
    assert fast.n_ignored == 1 and fast.n_observations == 600


def test_bounds_batch_equals_per_model_bounds() -> None:
    from learners import LearnerBank, learner_factory

    rng = np.random.default_rng(12)
    bank = LearnerBank(learner_factory("interval"))
    jobs = [f"j{i}" for i in range(6)]
    for w in range(50):
        bank.learn(jobs, rng.uniform(0, 6, 6), np.full(6, 2.0), rng.uniform(0, 1, 6), np.full(6, 0.1), float(w))
    solo = IntervalLearner()
    a, y = _tanh_data(200, seed=13)
    solo.learn_arrays(a, 1.0, y, 0.05)
    models = [bank.model(j) for j in jobs] + [solo, IntervalLearner()]
    X = rng.uniform(0, 8, (len(models), 7))
    load = np.array([2.0] * 6 + [1.0, 3.0])
    lcb, mean, ucb = IntervalLearner.bounds_batch(models, X, load)
    assert lcb.shape == (len(models), 7)
    for i, mod in enumerate(models):
        for got, want in zip((lcb[i], mean[i], ucb[i]), mod.bounds(X[i], load[i]), strict=True):
            assert np.array_equal(got, want)
    with pytest.raises(ValueError):
        IntervalLearner.bounds_batch(models, -X, load)


def test_store_pickled_with_the_linear_axis_is_refused_clearly() -> None:
    """A store pickled before the log2 axis (no ``layout``) cannot be mapped onto log leaves:
    unpickling names the problem instead of answering from misplaced statistics."""
    from learners.interval_store import IntervalStore

    a, y = _tanh_data(300, seed=14)
    m = IntervalLearner(delta=0.1)
    m.learn_arrays(a, 1.0, y, 0.05)
    m._store.flush()
    old = {k: v for k, v in m._store.__dict__.items() if k not in ("layout", "tw", "twy", "bw", "bwy")}
    st = IntervalStore.__new__(IntervalStore)
    with pytest.raises(ValueError, match="uniform in x"):
        st.__setstate__(old)


def test_held_allocation_next_to_an_earlier_one_gets_a_ucb() -> None:
    """docs/learners.md's repro: one observation at 3.89 CPUs, then 20 of reward 0 at 3.9
    (load 0.868) in the same leaf. The earlier point excludes the leaf's windows from the
    ucb at 3.9; the leaf's top atom (the 20 observations at 3.9) bounds it instead."""
    m = IntervalLearner()
    m.learn_arrays(np.array([3.89]), 0.868, np.array([0.0]), 0.05)
    for _ in range(20):
        m.learn_arrays(np.array([3.9]), 0.868, np.array([0.0]), 0.05)
    lcb, _, ucb = m.bounds(np.array([3.9, 3.895, 3.9 * (1 + 1e-9)]), 0.868)
    beta = m._store.beta[m._row]
    assert ucb[0] == pytest.approx(beta * 0.05 / np.sqrt(20), rel=1e-9)  # the atom alone: 0.048
    assert ucb[1] == ucb[0]  # between the two points: the atom (at 3.9 >= x) still counts
    assert ucb[2] == 1.0  # right of every observation: nothing bounds f from above
    assert np.all(lcb == 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_job_held_at_a_small_allocation_learns_its_value_there(seed: int) -> None:
    """Warm-up data at x up to 16 put x_max at 16-32; a job then held at 0.1 CPU (loads
    jittered 5%): on the log2 axis its observations spread over several 2.2%-wide leaves,
    those right of 0.1 bound f(0.1) from above, and the bounds still contain the truth."""
    rng = np.random.default_rng(seed)
    m = IntervalLearner()
    f = lambda x: np.tanh(0.3 * x)  # noqa: E731
    sigma = 0.05
    warm = rng.uniform(0.0, 16.0, 40)
    ld = np.exp(rng.normal(0.0, 0.05, 40))
    m.learn_arrays(warm, ld, f(warm / ld) + rng.normal(0, sigma, 40), sigma)
    for _ in range(50):
        ld1 = float(np.exp(rng.normal(0.0, 0.05)))
        m.learn_arrays(np.array([0.1]), ld1, f(0.1 / ld1) + rng.normal(0, sigma, 1), sigma)
    lcb, _, ucb = m.bounds(np.array([0.1]), 1.0)
    truth = float(f(0.1))  # 0.030
    assert m.explain()["x_max"] >= 16
    assert lcb[0] <= truth <= ucb[0]
    assert ucb[0] - truth < 2 * sigma  # was 0.6-0.8 (the warm-up data right of the leaf) on the linear axis


@pytest.mark.parametrize("jumps", [(3000.0, 2.0**22 + 1.0), (2.0**20,)])
def test_domain_growth_shifts_leaves_and_keeps_every_observation(jumps: tuple[float, ...]) -> None:
    """Doubling x_max shifts the log2 leaves by 32 per doubling and merges what falls off
    into leaf 0 (a jump of 18 doublings merges the whole old tree): the grown tree equals,
    statistic by statistic, a tree that saw the same data with the final x_max from the
    start, and no count or weight is lost."""
    from learners.interval_store import IntervalStore

    rng = np.random.default_rng(15)
    batches = [np.concatenate([[0.0, 0.0], rng.uniform(0.0, 2.0, 200), np.repeat([1e-5, 0.5], 5)])]
    batches += [np.concatenate([rng.uniform(0.0, j, 20), [j]]) for j in jumps]
    m = IntervalLearner()
    st, r = m._store, m._row
    ys = []
    for x in batches:
        y = np.tanh(x) + rng.normal(0, 0.05, len(x))
        m.learn_arrays(x, 1.0, y, 0.05)
        ys.append(y)
        st.flush()
    x, y = np.concatenate(batches), np.concatenate(ys)
    assert st.x_max[r] > max(jumps) >= st.x_max[r] / 2
    assert st.cnt[r, 0] == len(x) == m.n_observations
    assert st.w[r, 0] == pytest.approx(len(x) / 0.05**2)
    assert st.wy[r, 0] == pytest.approx(y.sum() / 0.05**2)
    ref = IntervalStore(depth=st.depth)
    rr = ref.add_row(m._params)
    ref.x_max[rr] = st.x_max[r]
    ref.accumulate(np.full(len(x), rr), x, y, np.full(len(x), 1 / 0.05**2))
    for name in ("w", "wy", "wyy", "cnt", "xmin", "xmax", "tw", "twy", "bw", "bwy"):
        assert np.allclose(getattr(st, name)[r], getattr(ref, name)[rr], rtol=1e-12, atol=1e-9), name
    below = np.sum(x < st.leaf_start(1, float(st.x_max[r])))  # leaf 0: everything below the axis
    assert st.cnt[r, st.n_leaves - 1] == below >= 212
