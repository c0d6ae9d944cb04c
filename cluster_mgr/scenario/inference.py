"""Scenario keys of inference jobs (kind = "inference", workload model = "inference").

An inference job runs the numpy digits MLP of ``actors.inference`` with
accuracy knobs. Its latency bound is ``slo.target`` (ms, P99) or
``workload.latency_x`` (a multiple of the measured full-model request time,
so a scenario is equally tight on any machine); its memory bound is
``maximum.memory`` (GiB) or ``workload.memory_mb``. ``bounds`` changes them
at given times (Delen's runtime bound API: the job spec is swapped). Nothing
here trains or measures: that happens when a backend starts the job.
"""

from __future__ import annotations

from typing import Any

from cluster_mgr.config import _Table
from cluster_mgr.model import SLO, JobKind, JobSpec, ResourceVector

NETWORKS = ("digits-mlp",)
KNOB_SPACES = ("full", "compact")
LOAD_UNITS = ("rps", "full_cores")
INFERENCE_KEYS = ("model", "network", "widths", "epochs", "knob_space", "profile_reps",
                  "load_unit", "latency_x", "memory_mb")  # fmt: skip
BOUND_KEYS = ("at_s", "latency_ms", "latency_x", "memory_mb")
MIB_PER_GIB = 1024.0


def inference_workload(t: _Table) -> dict[str, Any]:
    """The validated ``workload`` table of an inference job."""
    t.check_unknown(INFERENCE_KEYS)
    out: dict[str, Any] = {"model": "inference"}
    network = t.get_str("network", "digits-mlp")
    if network not in NETWORKS:
        raise t.error("network", f"expected one of {', '.join(NETWORKS)}, got {network!r}")
    out["network"] = network
    widths = t._get("widths", list, False)
    if widths is not None:
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                 for w in widths):  # fmt: skip
            raise t.error("widths", f"expected a non-empty array of integers > 0, got {widths!r}")
        if len(widths) != 3:
            raise t.error("widths", f"the network has 3 hidden layers (exits), got {len(widths)}")
        out["widths"] = [int(w) for w in widths]
    out["epochs"] = t.get_int("epochs", 30, minimum=1)
    out["profile_reps"] = t.get_int("profile_reps", 12, minimum=3)
    for key, choices, default in (("knob_space", KNOB_SPACES, "full"),
                                  ("load_unit", LOAD_UNITS, "rps")):  # fmt: skip
        v = t.get_str(key, default)
        if v not in choices:
            raise t.error(key, f"expected one of {', '.join(choices)}, got {v!r}")
        out[key] = v
    for key in ("latency_x", "memory_mb"):
        v = t.number(key, positive=True)
        if v is not None:
            out[key] = v
    return out


def check_inference_job(job: _Table, spec: JobSpec, workload: dict[str, Any]) -> JobSpec:
    """Kind and bounds of an inference job; returns the spec with the memory bound in force."""
    is_model = workload.get("model") == "inference"
    if spec.kind == JobKind.INFERENCE and not is_model:
        raise job.error("workload.model", "an inference job needs workload model = 'inference'")
    if is_model and spec.kind != JobKind.INFERENCE:
        raise job.error(
            "kind", f"workload model 'inference' needs kind = 'inference', got {spec.kind!s}"
        )
    latency = spec.slo is not None and spec.slo.metric == "latency"
    if spec.slo is not None and not latency:
        raise job.error("slo.metric", "an inference job's bound is on latency")
    if latency == ("latency_x" in workload):
        raise job.error(
            "workload.latency_x",
            "give the latency bound once: slo.target (ms) or workload.latency_x (x full-model time)",
        )
    mem_max = spec.maximum.memory if spec.maximum is not None else 0.0
    if (mem_max > 0) == ("memory_mb" in workload):
        raise job.error(
            "workload.memory_mb",
            "give the memory bound once: maximum.memory (GiB) or workload.memory_mb",
        )
    if "memory_mb" in workload:
        base = spec.maximum if spec.maximum is not None else ResourceVector(cpu=1e9)
        spec = spec.evolve(maximum=base.with_amount("memory", workload["memory_mb"] / MIB_PER_GIB))
    if spec.slo is None:  # resolved from latency_x once the model is measured; inf until then
        spec = spec.evolve(slo=SLO(metric="latency", target=1e9))
    return spec


def bound_changes(job: _Table, workload: dict[str, Any]) -> list[dict[str, float]]:
    """The job's ``bounds`` array: [{at_s, latency_ms | latency_x | memory_mb}], sorted by time."""
    raw = job._get("bounds", list, False) or []
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise job.error(f"bounds[{i}]", "expected a table")
        t = _Table(item, job.where, f"{job.path}.bounds[{i}]")
        t.check_unknown(BOUND_KEYS)
        at = t.number("at_s")
        if at is None or at < 0:
            raise t.error("at_s", "expected a time >= 0 (s)")
        change: dict[str, float] = {"at_s": at}
        for key in ("latency_ms", "latency_x", "memory_mb"):
            v = t.number(key, positive=True)
            if v is not None:
                change[key] = v
        if len(change) == 1:
            raise t.error("at_s", "a bound change needs latency_ms, latency_x or memory_mb")
        if "latency_ms" in change and "latency_x" in change:
            raise t.error("latency_x", "give latency_ms or latency_x, not both")
        out.append(change)
    if out and workload.get("model") != "inference":
        raise job.error("bounds", "bound changes apply to inference jobs only")
    return sorted(out, key=lambda c: c["at_s"])
