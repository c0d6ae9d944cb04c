"""Test doubles for the CLI / admin tests: an in-memory ControlPlane with real behaviour
(admission against capacity, unknown names, draining) and consoles that capture output.

A uniquely named module (not conftest) so that test folders never shadow each other."""

from __future__ import annotations

import io
import math
import threading

from rich.console import Console

from cluster_mgr.control.api import Explanation, JobStatus, NodeStatus, PolicyInfo, Status
from cluster_mgr.model import SLO, JobSpec, ResourceVector

TOKEN = "test-token-0123456789"


class FakeControlPlane:
    """A small control plane over one dict of jobs: CPUs divided by weight within capacity."""

    def __init__(self, capacity_cpu: float = 4.0) -> None:
        self.capacity_cpu = capacity_cpu
        self.jobs: dict[str, JobSpec] = {}
        self.draining: set[str] = set()
        self.node_ids = ("node-a", "node-b")
        self.calls: list[str] = []
        self.round = 3
        self.windows = 120
        self.lost = 2
        self._lock = threading.Lock()
        for spec in (
            JobSpec(
                "web",
                slo=SLO(target=50.0),
                weight=2.0,
                minimum=ResourceVector(cpu=0.5),
                workload={"service_ms": 6.0},
            ),
            JobSpec("batch", kind="batch", weight=1.0),
        ):
            self.jobs[spec.name] = spec

    def _shares(self) -> dict[str, float]:
        total_w = sum(j.weight for j in self.jobs.values()) or 1.0
        return {n: round(self.capacity_cpu * j.weight / total_w, 1) for n, j in self.jobs.items()}

    def status(self) -> Status:
        with self._lock:
            self.calls.append("status")
            shares = self._shares()
            jobs = []
            for name, spec in sorted(self.jobs.items()):
                has_slo = spec.slo is not None
                p99 = 12.5 if has_slo else math.nan  # the batch job has no latency
                jobs.append(
                    JobStatus(
                        name=name,
                        kind=spec.kind.value,
                        weight=spec.weight,
                        priority=spec.priority,
                        allocation={"cpu": shares[name]},
                        replicas=max(1, int(shares[name] / spec.replica_cpus)),
                        nodes=("node-a",),
                        load_rps=100.0,
                        p99_ms=p99,
                        reward=0.995 if has_slo else 1.0,
                        utility=1.0,
                        slo_target=spec.slo.target if has_slo else None,
                        slo_met=(p99 <= spec.slo.target) if has_slo else None,
                    )
                )
            nodes = tuple(
                NodeStatus(
                    node_id=n,
                    alive=True,
                    draining=n in self.draining,
                    capacity={"cpu": self.capacity_cpu / 2},
                    used={"cpu": 1.0},
                    agent_ok=True,
                )
                for n in self.node_ids
            )
            return Status(
                policy="fair_share",
                shadow=False,
                round=self.round,
                epoch=1,
                time=1234.5,
                next_round_in_s=7.5,
                jobs=tuple(jobs),
                nodes=nodes,
                telemetry_windows=self.windows,
                lost_windows=self.lost,
                log_uri="/tmp/fake-log",
            )

    def submit(self, spec: JobSpec) -> None:
        with self._lock:
            self.calls.append("submit")
            others = sum(j.minimum.cpu for n, j in self.jobs.items() if n != spec.name)
            if others + spec.minimum.cpu > self.capacity_cpu:
                raise ValueError(
                    f"job {spec.name}: minimum cpu {spec.minimum.cpu:g} does not fit: "
                    f"{self.capacity_cpu - others:g} CPUs left"
                )
            self.jobs[spec.name] = spec

    def remove(self, name: str) -> None:
        with self._lock:
            self.calls.append("remove")
            if name not in self.jobs:
                raise KeyError(f"job {name!r}")
            del self.jobs[name]

    def drain(self, node_id: str) -> None:
        with self._lock:
            self.calls.append("drain")
            if node_id not in self.node_ids:
                raise KeyError(f"node {node_id!r}")
            self.draining.add(node_id)

    def explain(self, job: str) -> Explanation:
        with self._lock:
            self.calls.append("explain")
            if job not in self.jobs:
                raise KeyError(f"job {job!r}")
            spec = self.jobs[job]
            share = self._shares()[job]
            total_w = sum(j.weight for j in self.jobs.values())
            binding = ("minimum cpu",) if share <= spec.minimum.cpu else ("capacity",)
            return Explanation(
                job=job,
                allocation={"cpu": share},
                bounds={"lcb": 0.9, "mean": 0.95, "ucb": 0.99},
                load_rps=100.0,
                share_of_objective=spec.weight / total_w,
                binding=binding,
                notes=(f"weight {spec.weight:g} of {total_w:g}",),
            )

    def policies(self) -> tuple[PolicyInfo, ...]:
        self.calls.append("policies")
        return (
            PolicyInfo("fair_share", "baseline", "Proportional fair share by weight", "built-in"),
            PolicyInfo("welfare", "ours", "Utilitarian welfare on upper bounds", "built-in"),
        )


class Captured:
    def __init__(self) -> None:
        self.out_file = io.StringIO()
        self.err_file = io.StringIO()
        self.out = Console(file=self.out_file, width=200, color_system=None)
        self.err = Console(file=self.err_file, width=200, color_system=None)

    @property
    def stdout(self) -> str:
        return self.out_file.getvalue()

    @property
    def stderr(self) -> str:
        return self.err_file.getvalue()
