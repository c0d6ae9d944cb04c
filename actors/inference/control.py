"""Knob profiles for the Ray backend's controller: measured once per job, learned online, shared
by bank and policy.

An inference job's ``KnobProfileModel`` (the knob_profile learner) starts from
the measured profiles of its model (``actors.inference.measured``: cached
per machine, measured on first use). The controller's learner bank holds it,
and the knob policies read it through ``profiles`` before the job's first
telemetry window exists (the first round places the job, so it needs them).
Then ``KnobModels.learn`` feeds it every replica window: execution times,
memory and labelled accuracy of the knob in force; the controller calls it on
each telemetry flush (rows it receives) and, in agent-log mode, on the parts
the agents wrote (``read_logged``, from ``ControllerCore.ingest_partials``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from cluster_mgr.model import JobKind, JobSpec
from cluster_mgr.store import RunLog
from learners.base import Learner
from learners.knob_profile import KnobPrior, KnobProfileLearner, KnobProfileModel, workers_for


def knob_model(spec: JobSpec) -> KnobProfileModel:
    """The knob_profile model of an inference job, seeded with its model's measured profiles."""
    from actors.inference.knobs import full_setting
    from actors.inference.measured import measured_profiles, train_config

    w = dict(spec.workload)
    cfg = train_config(w)
    profs = measured_profiles(cfg, str(w.get("knob_space", "full")),
                              reps=int(w.get("profile_reps", 12)))  # fmt: skip
    priors = [
        KnobPrior(p.knob, p.latency_ms, p.weight_bytes, p.activation_bytes, p.correct, p.total)
        for p in profs
    ]
    bound = spec.slo.target if spec.slo is not None and spec.slo.metric == "latency" else 1e9
    learner = KnobProfileLearner(priors, reference=full_setting(len(cfg.widths)).id)
    return KnobProfileModel(learner, latency_bound_ms=float(bound))


class KnobModels(Mapping[str, KnobProfileModel]):
    """Job -> knob model, built on first request for an inference job the allocator knows."""

    def __init__(self, jobs: Callable[[], Mapping[str, JobSpec]]) -> None:
        self._jobs = jobs
        self._models: dict[str, KnobProfileModel] = {}

    def _spec(self, job: str) -> JobSpec | None:
        spec = self._jobs().get(job)
        return spec if spec is not None and spec.kind == JobKind.INFERENCE else None

    def __getitem__(self, job: str) -> KnobProfileModel:
        if job not in self._models:
            spec = self._spec(job)
            if spec is None:
                raise KeyError(job)
            self._models[job] = knob_model(spec)
        return self._models[job]

    def __contains__(self, job: object) -> bool:
        return isinstance(job, str) and (job in self._models or self._spec(job) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def learn(self, table: pa.Table) -> int:
        """Knob-level feedback from replica telemetry rows (``InferenceWork.window_extras``):
        per replica window, the knob in force, its cpu and load, memory, labelled counts and
        the execution times of its forward passes (``exec_samples``) -> ``learn_window``.

        Latency is learned from execution times, what the model describes: one core's time
        for one request, the queueing on top being the model's own. They are times at full
        speed: Ray does not throttle a replica's worker thread to a fractional quota (each of
        the ceil(quota) workers runs on a core of its own), while the learner scales
        ``service_ms`` by the quota's worker speed (quota / ceil(quota)), so they are handed
        over divided by that speed (pooled with the profiled full-core times, in one frame).

        Not the window's P99, as calibration: on Ray it also holds the actor's event loop,
        the executor hand-off and the slot wait, which the model does not describe, and with a
        few requests per window one interference outlier moves a P99 residual far (a P99-fed
        demo reshuffled CPUs 1/1/1/1 -> 1/0.9/2/0.1 -> back). The learner's fit may leave out
        the slowest window's execution times (see ``KnobProfileLearner``), so one slow window
        does not move the allocation either. Returns rows learned."""
        if not self._models or table is None or not table.num_rows:
            return 0
        jobs = table.column("job").to_pylist()
        keep = [i for i, j in enumerate(jobs) if j in self._models]
        if not keep:
            return 0
        from actors.inference.serving import exec_samples  # lazily, as the measured profiles

        rows = table.take(pa.array(keep)).to_pylist()
        n = 0
        for r in rows:
            extras = dict(r["extras"] or [])
            model = self._models[r["job"]]
            spec = self._spec(r["job"])
            if "inference_knob" not in extras or spec is None or not r["cpu_quota"]:
                continue
            space = str(dict(spec.workload).get("knob_space", "full"))
            knob = _knob_ids(space)[int(extras["inference_knob"])]
            span = max(float(r["end"]) - float(r["start"]), 1e-9)
            cpu = float(r["cpu_quota"])
            speed = float(workers_for(cpu)[1])
            try:
                model.learn_window(
                    knob, cpu, float(r["offered"]) / span,
                    service_ms=[t / speed for t in exec_samples(extras)],
                    memory_bytes=float(extras.get("inference_memory_mb", 0.0)) * 2**20 or None,
                    correct=int(extras.get("inference_correct", 0)),
                    labelled=int(extras.get("inference_labelled", 0)),
                )  # fmt: skip
            except ValueError:  # a malformed window teaches nothing; telemetry goes on
                continue
            n += 1
        return n

    def learns_any(self, jobs: Iterable[str]) -> bool:
        """Whether any of ``jobs`` has a knob model to feed (the cheap test before a part is
        read back from the log: parts of other jobs are never read)."""
        return bool(self._models) and not self._models.keys().isdisjoint(jobs)

    def read_logged(self, log: RunLog, parts: Sequence[str]) -> list[pa.Table]:
        """The telemetry ``parts`` (base names, as ``ControllerCore.ingest_partials`` receives
        them) read back from the run log. Names that are no parquet part (an agent's ``nolog``
        entries) and parts that cannot be read are skipped: telemetry goes on. Kept apart from
        ``learn`` so the controller reads files outside the lock a round holds."""
        out = []
        for name in parts:  # one by one: a missing part must not hide the others
            if not name.endswith(".parquet"):
                continue
            try:
                out.append(log.read("telemetry", [f"{log.root}/telemetry/{name}"]))
            except (OSError, pa.ArrowException):
                continue
        return out

    def learn_logged(self, log: RunLog, parts: Sequence[str]) -> int:
        """Agent-log mode: the agents logged their windows themselves and sent the controller
        partial sums (no extras), so learn the inference rows of the telemetry ``parts`` read
        back from the run log (``read_logged``). Returns rows learned."""
        if not self._models:
            return 0
        return sum(self.learn(t) for t in self.read_logged(log, parts))


_ids: dict[str, list[str]] = {}


def _knob_ids(space: str) -> list[str]:
    if space not in _ids:
        from actors.inference.measured import KNOB_SPACES

        _ids[space] = [s.id for s in KNOB_SPACES[space].settings()]
    return _ids[space]


def attach_knob_models(
    policy: Any,
    factory: Callable[[JobSpec], Learner] | None,
    jobs: Callable[[], Mapping[str, JobSpec]],
) -> tuple[Callable[[JobSpec], Learner] | None, KnobModels]:
    """Give a knob policy its profiles; inference jobs' learners become their knob models.

    ``jobs`` is read lazily (the allocator it names may not exist yet). Returns the learner
    factory and the models (``KnobModels.learn`` feeds them replica telemetry)."""
    models = KnobModels(jobs)
    if isinstance(getattr(policy, "profiles", None), dict):
        policy.profiles = models
    if factory is None:  # no learning at all: the policy still reads the measured profiles
        return None, models
    base = factory

    def make(spec: JobSpec) -> Learner:
        if spec.name in models:
            return models[spec.name]
        return base(spec)

    return make, models
