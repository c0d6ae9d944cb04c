"""LearnerBank: many jobs per call, same answers as standalone learners, atomic on bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from learners import IntervalLearner, LearnerBank, learner_factory


def _window(rng: np.random.Generator, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 6, len(k))
    return a, np.tanh(k * a) + rng.normal(0, 0.05, len(k))


def test_bank_matches_standalone_learners() -> None:
    rng = np.random.default_rng(0)
    jobs = [f"j{i}" for i in range(50)]
    k = rng.uniform(0.3, 1.5, len(jobs))
    bank = LearnerBank(learner_factory("interval"))
    solo = {j: IntervalLearner() for j in jobs}
    for w in range(40):
        a, v = _window(rng, k)
        bank.learn(jobs, a, np.ones(len(jobs)), v, np.full(len(jobs), 0.05), float(w))
        for i, j in enumerate(jobs):
            solo[j].learn_arrays(a[i: i + 1], 1.0, v[i: i + 1], 0.05)
    q = rng.uniform(0, 6, len(jobs))
    lcb, mean, ucb = bank.bounds_many(jobs, q, 1.0)
    for i, j in enumerate(jobs):
        sl, sm, su = solo[j].bounds(q[i: i + 1], 1.0)
        assert lcb[i] == pytest.approx(sl[0]) and ucb[i] == pytest.approx(su[0])
        assert bank.model(j).n_observations == 40
    assert bank.last_time("j0") == 39.0


def test_thousand_jobs_per_window_cover_their_curves() -> None:
    rng = np.random.default_rng(1)
    jobs = [f"j{i}" for i in range(1000)]
    k = rng.uniform(0.3, 1.5, len(jobs))
    bank = LearnerBank(learner_factory("interval"))
    for w in range(20):
        a, v = _window(rng, k)
        bank.learn(jobs, a, np.ones(len(jobs)), v, np.full(len(jobs), 0.05), float(w))
    q = rng.uniform(0, 6, len(jobs))
    lcb, _, ucb = bank.bounds_many(jobs, q, 1.0)
    truth = np.tanh(k * q)
    assert np.mean((truth >= lcb) & (truth <= ucb)) >= 0.95
    assert bank.misspecified() == {}


def test_bad_entry_refuses_the_whole_call() -> None:
    bank = LearnerBank(learner_factory("interval"))
    bank.learn(["a"], np.array([1.0]), 1.0, np.array([0.5]), 0.1, 0.0)
    before = bank.bounds_many(["a"], np.array([1.0]), 1.0)
    for alloc, value, sigma in (([1.0, np.nan], [0.5, 0.5], 0.1), ([1.0, -1.0], [0.5, 0.5], 0.1),
                                ([1.0, 1.0], [0.5, 0.5], [0.1, 0.0])):
        with pytest.raises(ValueError):
            bank.learn(["a", "b"], np.array(alloc), 1.0, np.array(value), np.array(sigma), 0.0)
    assert bank.jobs() == ["a"]
    assert all(np.array_equal(u, v) for u, v in zip(before, bank.bounds_many(["a"], np.array([1.0]), 1.0), strict=True))
    with pytest.raises(ValueError, match="no learner"):
        bank.bounds_many(["zzz"], np.array([1.0]), 1.0)


def test_learner_specific_refusal_is_atomic_too() -> None:
    bank = LearnerBank(learner_factory("gp_ucb", log_value=True))
    with pytest.raises(ValueError, match="values > 0"):
        bank.learn(["a", "b"], np.array([1.0, 2.0]), 1.0, np.array([5.0, -1.0]), 0.1, 0.0)
    assert bank.jobs() == []


def test_mixed_kinds_pickle_and_remove() -> None:
    kinds = {"svc": learner_factory("gp_ucb", dim=1), "batch": learner_factory("ernest")}

    bank = LearnerBank(learner_factory("interval"))
    rng = np.random.default_rng(2)
    jobs = ["x", "y", "z"]
    for w in range(30):
        bank.learn(jobs, rng.uniform(1, 6, 3), np.ones(3), rng.uniform(0, 1, 3), np.full(3, 0.1), float(w))
    clone = pickle.loads(pickle.dumps(bank))
    q = np.array([1.0, 2.0, 3.0])
    assert all(np.array_equal(u, v) for u, v in zip(bank.bounds_many(jobs, q, 1.0), clone.bounds_many(jobs, q, 1.0), strict=True))
    clone.learn(["x"], np.array([5.0]), 1.0, np.array([0.9]), 0.1, 99.0)  # the copy is independent
    assert bank.model("x").n_observations == 30 and clone.model("x").n_observations == 31
    bank.remove("y")
    assert bank.jobs() == ["x", "z"]
    bank.learn(["w"], np.array([1.0]), 1.0, np.array([0.5]), 0.1, 0.0)  # reuses y's row
    assert bank.model("w").n_observations == 1
    for name, f in kinds.items():
        other = LearnerBank(f)
        other.learn([name] * 12, rng.uniform(1, 6, 12), np.ones(12), rng.uniform(1, 2, 12), np.full(12, 0.1), 0.0)
        assert np.all(np.isfinite(other.bounds_many([name], np.array([3.0]), 1.0)[1]))


def test_factory_must_make_learners() -> None:
    bank = LearnerBank(lambda job: "not a learner")  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="not a Learner"):
        bank.learn(["a"], np.array([1.0]), 1.0, np.array([0.5]), 0.1, 0.0)
    with pytest.raises(ValueError):
        learner_factory("interval", depth=99)


def test_bounds_many_reuses_cached_tables_until_new_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A round's queries after the first are table lookups: no rebuild without new data."""
    from learners.interval_store import IntervalStore

    rng = np.random.default_rng(3)
    jobs = [f"j{i}" for i in range(20)]
    bank = LearnerBank(learner_factory("interval"))
    bank.learn(jobs, rng.uniform(0, 6, 20), np.ones(20), rng.uniform(0, 1, 20), np.full(20, 0.1), 0.0)
    first = bank.bounds_many(jobs, np.full(20, 3.0), 1.0)
    built: list[int] = []
    real = IntervalStore._tables_chunk
    monkeypatch.setattr(IntervalStore, "_tables_chunk", lambda self, rows: built.append(len(rows)) or real(self, rows))
    again = bank.bounds_many(jobs, np.full(20, 3.0), 1.0)
    assert built == [] and all(np.array_equal(u, v) for u, v in zip(first, again, strict=True))
    bank.learn(jobs[:1], np.array([2.0]), 1.0, np.array([0.5]), 0.1, 1.0)
    bank.bounds_many(jobs, np.full(20, 3.0), 1.0)
    assert built == [1]  # only the job with new data is rebuilt
