"""Co-allocation of accuracy knobs and CPUs for inference jobs (BlinkNet / Delen / AxTrain).

``KnobPolicy`` (ours) picks per job and round the knob setting and CPU that
meet the job's latency and memory bounds on the conservative side of the
learned profile with the least accuracy loss; ``FixedKnobPolicy`` is the
baseline that runs one fixed setting (full accuracy or most approximate) and
optimises CPU only. ``bounds`` holds the runtime bound API.
"""

from allocators.inference.bounds import JobBounds, job_bounds, set_bounds
from allocators.inference.knob_policy import FixedApproxKnobPolicy, FixedKnobPolicy, KnobPolicy

__all__ = [
    "FixedApproxKnobPolicy",
    "FixedKnobPolicy",
    "JobBounds",
    "KnobPolicy",
    "job_bounds",
    "set_bounds",
]
