"""Translation between the control-plane dataclasses and the admin.proto messages.

Both directions live here so a round trip is one module to read and test. The
messages module is passed in (compiled at import time by cluster_mgr.protos);
nothing here touches the network.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

from cluster_mgr.control.api import Explanation, JobStatus, NodeStatus, PolicyInfo, Status
from cluster_mgr.model import SLO, JobSpec, ModelError, ResourceVector, UtilitySpec

ADMIN_PROTO = "cluster_mgr/admin/admin.proto"


def messages() -> ModuleType:
    """The generated admin messages module (compiled once per process)."""
    from cluster_mgr import protos

    return protos.load(ADMIN_PROTO)[0]


# --------------------------------------------------------------------------- status


def status_to_msg(pb: ModuleType, s: Status) -> Any:
    return pb.StatusReply(
        policy=s.policy,
        shadow=s.shadow,
        round=s.round,
        epoch=s.epoch,
        time=s.time,
        next_round_in_s=s.next_round_in_s,
        jobs=[_job_status_to_msg(pb, j) for j in s.jobs],
        nodes=[
            pb.NodeStatus(
                node_id=n.node_id,
                alive=n.alive,
                draining=n.draining,
                capacity=n.capacity,
                used=n.used,
                agent_ok=n.agent_ok,
            )
            for n in s.nodes
        ],
        telemetry_windows=s.telemetry_windows,
        lost_windows=s.lost_windows,
        log_uri=s.log_uri,
    )


def _job_status_to_msg(pb: ModuleType, j: JobStatus) -> Any:
    msg = pb.JobStatus(
        name=j.name,
        kind=j.kind,
        weight=j.weight,
        priority=j.priority,
        allocation=j.allocation,
        replicas=j.replicas,
        nodes=list(j.nodes),
        load_rps=j.load_rps,
        p99_ms=j.p99_ms,
        reward=j.reward,
        utility=j.utility,
    )
    # proto3 'optional': leaving a field unset is how None crosses the wire.
    if j.slo_target is not None:
        msg.slo_target = j.slo_target
    if j.slo_met is not None:
        msg.slo_met = j.slo_met
    return msg


def status_from_msg(m: Any) -> Status:
    return Status(
        policy=m.policy,
        shadow=m.shadow,
        round=m.round,
        epoch=m.epoch,
        time=m.time,
        next_round_in_s=m.next_round_in_s,
        jobs=tuple(
            JobStatus(
                name=j.name,
                kind=j.kind,
                weight=j.weight,
                priority=j.priority,
                allocation=dict(j.allocation),
                replicas=j.replicas,
                nodes=tuple(j.nodes),
                load_rps=j.load_rps,
                p99_ms=j.p99_ms,
                reward=j.reward,
                utility=j.utility,
                slo_target=j.slo_target if j.HasField("slo_target") else None,
                slo_met=j.slo_met if j.HasField("slo_met") else None,
            )
            for j in m.jobs
        ),
        nodes=tuple(
            NodeStatus(
                node_id=n.node_id,
                alive=n.alive,
                draining=n.draining,
                capacity=dict(n.capacity),
                used=dict(n.used),
                agent_ok=n.agent_ok,
            )
            for n in m.nodes
        ),
        telemetry_windows=m.telemetry_windows,
        lost_windows=m.lost_windows,
        log_uri=m.log_uri,
    )


# --------------------------------------------------------------------------- job specs


def job_to_msg(pb: ModuleType, spec: JobSpec) -> Any:
    msg = pb.JobSpec(
        name=spec.name,
        kind=spec.kind.value,
        utility_scaling=spec.utility.scaling,
        weight=spec.weight,
        priority=spec.priority,
        minimum=spec.minimum.as_dict(nonzero=True),
        maximum=spec.maximum.as_dict() if spec.maximum is not None else {},
        has_maximum=spec.maximum is not None,
        pins=list(spec.pins),
        replica_cpus=spec.replica_cpus,
        workload_json=json.dumps(dict(spec.workload), sort_keys=True),
    )
    if spec.utility.objective is not None:
        msg.utility_objective = spec.utility.objective
    if spec.slo is not None:
        msg.slo.CopyFrom(
            pb.SLO(metric=spec.slo.metric, target=spec.slo.target, percentile=spec.slo.percentile)
        )
        if spec.slo.threshold is not None:
            msg.slo.threshold = spec.slo.threshold
    return msg


def job_from_msg(m: Any) -> JobSpec:
    """A JobSpec from a message; ValueError (with the field) when a value is malformed."""
    try:
        workload = json.loads(m.workload_json) if m.workload_json else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"job.workload_json: not valid JSON ({exc.msg})") from None
    if not isinstance(workload, dict):
        raise ValueError("job.workload_json: expected a JSON object")
    try:
        slo = None
        if m.HasField("slo"):
            slo = SLO(
                metric=m.slo.metric,
                target=m.slo.target,
                percentile=m.slo.percentile if m.slo.HasField("percentile") else 99.0,
                threshold=m.slo.threshold if m.slo.HasField("threshold") else None,
            )
        return JobSpec(
            name=m.name,
            kind=m.kind or "latency_critical",
            slo=slo,
            utility=UtilitySpec(
                scaling=m.utility_scaling or "linear",
                objective=m.utility_objective if m.HasField("utility_objective") else None,
            ),
            weight=m.weight if m.HasField("weight") else 1.0,
            priority=m.priority,
            minimum=ResourceVector.from_dict(dict(m.minimum)),
            maximum=ResourceVector.from_dict(dict(m.maximum)) if m.has_maximum else None,
            pins=tuple(m.pins),
            replica_cpus=m.replica_cpus if m.HasField("replica_cpus") else 1.0,
            workload=workload,
        )
    except ModelError as exc:
        raise ValueError(f"job: {exc}") from None


# --------------------------------------------------------------------------- explain, policies


def explanation_to_msg(pb: ModuleType, e: Explanation) -> Any:
    return pb.ExplainReply(
        job=e.job,
        allocation=e.allocation,
        bounds=e.bounds,
        load_rps=e.load_rps,
        share_of_objective=e.share_of_objective,
        binding=list(e.binding),
        misspecified=e.misspecified,
        notes=list(e.notes),
    )


def explanation_from_msg(m: Any) -> Explanation:
    return Explanation(
        job=m.job,
        allocation=dict(m.allocation),
        bounds=dict(m.bounds),
        load_rps=m.load_rps,
        share_of_objective=m.share_of_objective,
        binding=tuple(m.binding),
        misspecified=m.misspecified,
        notes=tuple(m.notes),
    )


def policies_to_msg(pb: ModuleType, infos: tuple[PolicyInfo, ...]) -> Any:
    return pb.PoliciesReply(
        policies=[
            pb.PolicyInfo(name=p.name, kind=p.kind, description=p.description, source=p.source)
            for p in infos
        ]
    )


def policies_from_msg(m: Any) -> tuple[PolicyInfo, ...]:
    return tuple(PolicyInfo(p.name, p.kind, p.description, p.source) for p in m.policies)
