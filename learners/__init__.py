"""Online performance models with confidence bounds, and load forecasters (pure).

``make_learner(name, **options)`` builds a learner by registry name:
"interval" (the default: monotone interval tree over alloc/load, like Cilantro),
"gp_ucb" (Gaussian process, multi-dimensional allocations) and "ernest"
(parametric scaling curve). Forecasters: ``learners.forecast.make_forecaster``.
"""

from learners.bank import LearnerBank, LearnerFactory
from learners.base import Learner, as_alloc_matrix, validate_arrays
from learners.ernest import ErnestLearner
from learners.forecast import FORECASTERS, Forecaster, make_forecaster
from learners.gp import GPUCBLearner
from learners.interval import IntervalLearner
from learners.knob_profile import KnobProfileLearner, KnobProfileModel

LEARNERS: dict[str, type[Learner]] = {
    "interval": IntervalLearner,
    "gp_ucb": GPUCBLearner,
    "ernest": ErnestLearner,
}
DEFAULT_LEARNER = "interval"
#: Learners a job kind gets whatever the run's learner is (name -> class by kind). They start
#: from per-job measured data (an inference job's knob profiles), so the runtime builds them
#: (cluster_mgr/sim/inference.py, actors/inference/control.py), never ``make_learner``.
KIND_LEARNERS: dict[str, tuple[str, type[Learner]]] = {
    "inference": ("knob_profile", KnobProfileModel),
}


def make_learner(name: str = DEFAULT_LEARNER, **options: object) -> Learner:
    """A learner by registry name; unknown names raise ValueError listing the known ones."""
    try:
        cls = LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; known: {sorted(LEARNERS)}") from None
    return cls(**options)  # type: ignore[arg-type]


def learner_factory(name: str = DEFAULT_LEARNER, **options: object) -> LearnerFactory:
    """A picklable job -> learner factory for ``LearnerBank`` (validates name and options now)."""
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; known: {sorted(LEARNERS)}")
    return LearnerFactory(LEARNERS[name], **options)


__all__ = [
    "DEFAULT_LEARNER",
    "FORECASTERS",
    "LEARNERS",
    "ErnestLearner",
    "Forecaster",
    "GPUCBLearner",
    "IntervalLearner",
    "KIND_LEARNERS",
    "KnobProfileLearner",
    "KnobProfileModel",
    "Learner",
    "LearnerBank",
    "LearnerFactory",
    "learner_factory",
    "as_alloc_matrix",
    "make_forecaster",
    "make_learner",
    "validate_arrays",
]
