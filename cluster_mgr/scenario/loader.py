"""Read a scenario TOML file into a validated ``Scenario``, or refuse it with file, key path and reason.

Job tables reuse the manager's own job parser (``cluster_mgr.config``), so a
job in a scenario means exactly what it means in a job file; the keys only a
scenario has (load, arrival, ground-truth workload, cluster and graphs) are
read here. Every problem raises ``ScenarioError`` ('<file>: <key path>:
<reason>'), unknown keys included, before anything runs.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

from cluster_mgr.config import (
    JOB_KEYS,
    ConfigError,
    _resources,
    _slo,
    _Table,
    _utility,
    parse_job,
)
from cluster_mgr.curves import CILANTRO_FAMILIES
from cluster_mgr.model import JobKind, ModelError, ResourceVector, UtilitySpec
from cluster_mgr.scenario.inference import bound_changes, check_inference_job, inference_workload
from cluster_mgr.scenario.loads import SHAPES, LoadSpec, TraceError, read_trace
from cluster_mgr.scenario.presets import (
    DPU_FIELDS,
    DPU_PRESETS,
    PIM_FIELDS,
    PIM_PRESETS,
    DpuDevice,
    PimDevice,
)
from cluster_mgr.scenario.schema import (
    OBJECTIVES,
    WORKLOAD_MODELS,
    GraphEntry,
    JobEntry,
    LatencySurge,
    NodeEvent,
    NodeSpec,
    Scenario,
)
from cluster_mgr.workloads import build_graph


class ScenarioError(ConfigError):
    """A scenario file is malformed: ``str(e)`` is '<file>: <key path>: <reason>'."""


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    p = Path(path)
    where = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(where, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(where, "", f"not valid TOML: {exc}") from None
    try:
        return parse_scenario(data, where, p.resolve().parent)
    except ScenarioError:
        raise
    except ConfigError as exc:  # from the shared job parser: same where/key/reason, our type
        raise ScenarioError(exc.where, exc.key, exc.detail) from None


# --------------------------------------------------------------------------- top level

TOP_KEYS = ("scenario", "cluster", "jobs", "graphs", "surges", "control")
CONTROL_KEYS = ("local_controller",)
SCENARIO_KEYS = (
    "name",
    "description",
    "duration_s",
    "round_s",
    "warmup_s",
    "seed",
    "learner",
    "objective",
)


def parse_scenario(data: dict[str, Any], where: str, base_dir: Path) -> Scenario:
    top = _Table(data, where, "")
    top.check_unknown(TOP_KEYS)
    meta = top.table("scenario") or _Table({}, where, "scenario")
    meta.check_unknown(SCENARIO_KEYS)
    duration = meta.number("duration_s", 3600.0, positive=True)
    round_s = meta.number("round_s", 30.0, positive=True)
    warmup = meta.number("warmup_s", min(300.0, duration / 4))
    if warmup < 0 or warmup >= duration:
        raise meta.error(
            "warmup_s", f"expected 0 <= warmup_s < duration_s ({duration:g}), got {warmup:g}"
        )
    seed = meta.get_int("seed", 0)
    objective = meta.get_str("objective", "utilitarian")
    if objective not in OBJECTIVES:
        raise meta.error("objective", f"expected one of {', '.join(OBJECTIVES)}, got {objective!r}")
    cluster = top.table("cluster")
    if cluster is None:
        raise top.error("cluster", "missing required table")
    nodes, events = _cluster(cluster)
    jobs: list[JobEntry] = []
    for jt in _array(top, "jobs"):
        jobs.extend(_jobs(jt, base_dir, seed))
    graphs: list[GraphEntry] = []
    for gt in _array(top, "graphs"):
        g, service_jobs = _graph(gt, base_dir, seed)
        graphs.append(g)
        jobs.extend(service_jobs)
    if not jobs:
        raise top.error("jobs", "a scenario needs at least one job or graph")
    seen: dict[str, int] = {}
    for k, j in enumerate(jobs):
        if j.name in seen:
            raise ScenarioError(where, f"jobs[{k}].name", f"duplicate job name {j.name!r}")
        seen[j.name] = k
    node_ids = {n.node_id for n in nodes}
    for k, j in enumerate(jobs):
        bad = [p for p in j.spec.pins if p not in node_ids]
        if bad:
            raise ScenarioError(where, f"jobs[{k}].pins", f"unknown node(s) {bad}")
    surges = [_surge(st, graphs) for st in _array(top, "surges")]
    local_controller = _control(top)
    _check_minimums(where, nodes, jobs)
    return Scenario(
        name=meta.get_str("name", Path(where).stem) or Path(where).stem,
        path=Path(where),
        description=meta.get_str("description", "") or "",
        duration_s=duration,
        round_s=round_s,
        warmup_s=warmup,
        seed=seed,
        learner=meta.get_str("learner", "interval") or "interval",
        objective=objective,
        nodes=tuple(nodes),
        events=tuple(events),
        jobs=tuple(jobs),
        graphs=tuple(graphs),
        surges=tuple(surges),
        local_controller=local_controller,
    )


def _control(top: _Table) -> str:
    """``[control] local_controller``: the fast per-node controller the sim runs (default none)."""
    from cluster_mgr.local.registry import LOCAL_CONTROLLERS

    ct = top.table("control")
    if ct is None:
        return "none"
    ct.check_unknown(CONTROL_KEYS)
    name = ct.get_str("local_controller", "none") or "none"
    if name not in LOCAL_CONTROLLERS:
        raise ct.error("local_controller",
                       f"expected one of {', '.join(LOCAL_CONTROLLERS)}, got {name!r}")  # fmt: skip
    return name


def _array(t: _Table, key: str) -> list[_Table]:
    value = t._get(key, list, False) or []
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise t.error(f"{key}[{i}]", "expected a table")
        out.append(_Table(item, t.where, f"{t.path + '.' if t.path else ''}{key}[{i}]"))
    return out


def _check_minimums(where: str, nodes: list[NodeSpec], jobs: list[JobEntry]) -> None:
    cap = ResourceVector.total(n.capacity for n in nodes)
    need = ResourceVector.total(j.spec.minimum for j in jobs)
    over = need.over(cap)
    if over:
        detail = ", ".join(f"{k} by {v:.3g}" for k, v in sorted(over.items()))
        raise ScenarioError(where, "jobs", f"job minimums exceed cluster capacity ({detail})")


# --------------------------------------------------------------------------- cluster

CLUSTER_KEYS = ("count", "resources", "pim", "dpu", "nodes", "events", "prefix")
NODE_KEYS = ("id", "count", "resources", "pim", "dpu")
EVENT_KEYS = ("time_s", "node", "action")


def _cluster(t: _Table) -> tuple[list[NodeSpec], list[NodeEvent]]:
    t.check_unknown(CLUSTER_KEYS)
    nodes: list[NodeSpec] = []
    prefix = t.get_str("prefix", "node") or "node"
    anon = 0  # unnamed nodes of a list are numbered across the list
    if t.has("nodes"):
        if t.has("count"):
            raise t.error(
                "count", "give either 'count' (identical nodes) or a 'nodes' list, not both"
            )
        for nt in _array(t, "nodes"):
            nt.check_unknown(NODE_KEYS)
            count = nt.get_int("count", 1, minimum=1)
            node_id = nt.get_str("id")
            res, pim, dpu = _node_kit(nt, t)
            for i in range(count):
                if node_id:
                    nid = node_id if count == 1 else f"{node_id}-{i}"
                else:
                    nid, anon = f"{prefix}-{anon}", anon + 1
                nodes.append(_node(nid, res, pim, dpu))
    else:
        count = t.get_int("count", None, minimum=1)
        if count is None:
            raise t.error("count", "missing: give the node count or a 'nodes' list")
        res, pim, dpu = _node_kit(t, None)
        width = max(1, len(str(count - 1)))
        nodes = [_node(f"{prefix}-{i:0{width}d}", res, pim, dpu) for i in range(count)]
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise t.error("nodes", f"duplicate node ids {dup[:5]}")
    known = set(ids)
    events = []
    for et in _array(t, "events"):
        et.check_unknown(EVENT_KEYS)
        time_s = et.number("time_s")
        if time_s is None or time_s < 0:
            raise et.error("time_s", "expected a time >= 0 (s)")
        node = et.get_str("node", required=True)
        if node not in known:
            raise et.error("node", f"unknown node {node!r}")
        action = et.get_str("action", required=True)
        if action not in ("fail", "return"):
            raise et.error("action", f"expected 'fail' or 'return', got {action!r}")
        events.append(NodeEvent(time_s, node, action))  # type: ignore[arg-type]
    events.sort(key=lambda e: e.time_s)
    return nodes, events


def _node_kit(
    t: _Table, parent: _Table | None
) -> tuple[ResourceVector, PimDevice | None, DpuDevice | None]:
    src = t if t.has("resources") or parent is None else parent
    rt = src.table("resources")
    if rt is None:
        raise t.error("resources", "missing: per-node resources such as {cpu = 32, memory = 128}")
    res = _resources(rt)
    if res.cpu <= 0:
        raise rt.error("cpu", f"a node needs cpu > 0, got {res.cpu:g}")
    pim_src = t if t.has("pim") or parent is None else parent
    dpu_src = t if t.has("dpu") or parent is None else parent
    pim = _device(pim_src, "pim", PIM_PRESETS, PIM_FIELDS, PimDevice)
    dpu = _device(dpu_src, "dpu", DPU_PRESETS, DPU_FIELDS, DpuDevice)
    return res, pim, dpu


def _device(t: _Table, key: str, presets: dict, names: tuple[str, ...], cls: type) -> Any:
    if not t.has(key):
        return None
    raw = t.data[key]
    if isinstance(raw, str):
        t._get(key, str, False)
        if raw not in presets:
            raise t.error(
                key, f"unknown {key} preset {raw!r}; expected one of {sorted(presets)} or a table"
            )
        return cls(preset=raw, **presets[raw])
    dt = t.table(key)
    assert dt is not None
    dt.check_unknown(("preset", *names))
    preset = dt.get_str("preset")
    params: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise dt.error(
                "preset", f"unknown {key} preset {preset!r}; expected one of {sorted(presets)}"
            )
        params.update(presets[preset])
    for name in names:
        value = dt.number(name, positive=True)
        if value is not None:
            params[name] = (
                int(value) if name in ("stacks", "cores_per_stack", "arm_cores") else value
            )
    missing = [n for n in names if n not in params]
    if missing:
        raise dt.error(
            missing[0],
            f"missing (no preset given, so every parameter is needed: {', '.join(missing)})",
        )
    return cls(preset=preset or "custom", **params)


def _node(
    node_id: str, res: ResourceVector, pim: PimDevice | None, dpu: DpuDevice | None
) -> NodeSpec:
    cap = res
    if pim is not None:
        cap = cap.with_amount("pim_cores", cap.pim_cores + pim.cores)
    if dpu is not None:
        cap = cap.with_amount("mesh", cap.mesh + dpu.mesh_rps)
    return NodeSpec(node_id, cap, pim, dpu)


# --------------------------------------------------------------------------- loads

LOAD_KEYS = (
    "shape", "rate", "amplitude", "period_s", "phase", "to", "start_s", "end_s", "factor", "at_s",
    "until_s", "burst_factor", "on_s", "off_s", "seed", "trace", "step_s", "scale", "mirror",
    "offset_s", "stagger_s",
)  # fmt: skip


def _resolve(base_dir: Path, rel: str) -> Path:
    """A data path: relative to the scenario file, else relative to the repository holding it.

    Examples name the shared data as ``../shared/data/...`` relative to the repo
    (the data folder sits beside the repo, on CI too); a scenario written next to
    its data works as well.
    """
    first = (base_dir / rel).resolve()
    if first.exists():
        return first
    for parent in (base_dir, *base_dir.parents):
        if (parent / "pyproject.toml").exists() or (parent / ".git").exists():
            candidate = (parent / rel).resolve()
            if candidate.exists():
                return candidate
            break
    return first  # missing: read_trace reports this path


def _load(t: _Table, base_dir: Path, seed: int, copy: int = 0) -> LoadSpec:
    t.check_unknown(LOAD_KEYS)
    shape = t.get_str("shape", "trace" if t.has("trace") else "constant")
    if shape not in SHAPES:
        raise t.error("shape", f"expected one of {', '.join(SHAPES)}, got {shape!r}")
    kw: dict[str, Any] = {"shape": shape, "seed": t.get_int("seed", seed) + copy}
    for key in ("rate", "amplitude", "period_s", "phase", "to", "start_s", "end_s", "factor",
                "at_s", "until_s", "burst_factor", "on_s", "off_s", "step_s", "scale", "offset_s"):  # fmt: skip
        v = t.number(key)
        if v is not None:
            if v < 0 and key not in ("phase", "amplitude"):
                raise t.error(key, f"expected a value >= 0, got {v:g}")
            kw[key] = v
    for key in ("period_s", "step_s", "on_s", "off_s"):
        if key in kw and kw[key] <= 0:
            raise t.error(key, f"expected a value > 0, got {kw[key]:g}")
    if shape == "diurnal" and abs(kw.get("amplitude", 0.5)) > 1:
        raise t.error("amplitude", "a diurnal amplitude above 1 would ask for negative load")
    stagger = t.number("stagger_s", 0.0)
    kw["offset_s"] = kw.get("offset_s", 0.0) + stagger * copy
    kw["mirror"] = t.get_bool("mirror", False)
    trace = t.get_str("trace")
    if shape == "trace":
        if trace is None:
            raise t.error("trace", "missing: the trace file (relative to the scenario file)")
        path = _resolve(base_dir, trace)
        try:
            kw["trace"] = read_trace(path)
        except TraceError as exc:
            raise t.error("trace", str(exc)) from None
        kw["trace_path"] = str(path)
        kw.setdefault("rate", 0.0)  # 0: use the trace's own values times 'scale'
    elif trace is not None:
        raise t.error("trace", f"a trace file is only read by shape = 'trace' (shape is {shape!r})")
    return LoadSpec(**kw)


# --------------------------------------------------------------------------- jobs

SCENARIO_JOB_KEYS = ("load", "arrival_s", "departure_s", "count", "timeout_ms", "bounds")
CURVE_KEYS = ("model", "family", "coeff", "bias", "noise", "scale")
QUEUE_KEYS = ("model", "service_ms", "cv", "freq_exponent", "pim_speedup", "memory_intensity",
              "mesh_ms", "mesh_cpu_ms", "mesh_dpu_ms")  # fmt: skip


def _jobs(t: _Table, base_dir: Path, seed: int) -> list[JobEntry]:
    t.check_unknown((*JOB_KEYS, *SCENARIO_JOB_KEYS))
    count = t.get_int("count", 1, minimum=1)
    arrival = t.number("arrival_s", 0.0)
    departure = t.number("departure_s", math.inf) if t.has("departure_s") else math.inf
    if arrival < 0 or departure <= arrival:
        raise t.error(
            "departure_s",
            f"expected 0 <= arrival_s < departure_s, got {arrival:g} and {departure:g}",
        )
    lt = t.table("load")
    if lt is None:
        raise t.error(
            "load", "missing: the job's offered load, e.g. {shape = 'constant', rate = 100}"
        )
    wt = t.table("workload")
    if wt is None:
        raise t.error(
            "workload", "missing: the ground-truth model, e.g. {model = 'curve', family = 'tanh'}"
        )
    workload = _workload(wt)
    changes = bound_changes(t, workload)  # inference jobs: bounds changed at run time
    if changes:
        workload["bound_changes"] = changes
    base = {k: v for k, v in t.data.items() if k not in SCENARIO_JOB_KEYS}
    out = []
    for i in range(count):
        d = dict(base)
        if count > 1:
            d["name"] = f"{base.get('name')}-{i:0{len(str(count - 1))}d}"
        spec = parse_job(d, t.where, t.path)
        if spec.kind == JobKind.INFERENCE or workload["model"] == "inference":
            spec = check_inference_job(t, spec, workload)
        slo = spec.slo
        if workload["model"] == "queue" and slo is None and spec.kind != JobKind.BEST_EFFORT:
            raise t.error("slo", "a queue-model job needs an SLO (or kind = 'best_effort')")
        default_timeout = (
            10.0 * slo.target if slo is not None and slo.metric == "latency" else 10_000.0
        )
        timeout = t.number("timeout_ms", default_timeout, positive=True)
        out.append(
            JobEntry(
                spec=spec,
                model=str(workload["model"]),
                workload=workload,
                load=_load(_Table(lt.data, lt.where, lt.path), base_dir, seed, i),
                arrival_s=arrival,
                departure_s=departure,
                timeout_ms=timeout,
            )
        )
    return out


def _workload(t: _Table) -> dict[str, Any]:
    model = t.get_str("model", "curve")
    if model == "inference":
        return inference_workload(t)
    if model not in WORKLOAD_MODELS:
        raise t.error("model", f"expected one of {', '.join(WORKLOAD_MODELS)}, got {model!r}")
    out: dict[str, Any] = {"model": model}
    if model == "curve":
        t.check_unknown(CURVE_KEYS)
        family = t.get_str("family", "tanh")
        if family not in CILANTRO_FAMILIES:
            raise t.error(
                "family", f"unknown curve {family!r}; expected one of {sorted(CILANTRO_FAMILIES)}"
            )
        out["family"] = family
        for key, positive in (("coeff", True), ("scale", True), ("bias", False), ("noise", False)):
            v = t.number(key, positive=positive)
            if v is not None:
                if key == "noise" and v < 0:
                    raise t.error(key, f"expected noise >= 0, got {v:g}")
                out[key] = v
        return out
    t.check_unknown(QUEUE_KEYS)
    service = t.number("service_ms", positive=True)
    if service is None:
        raise t.error("service_ms", "missing: mean service time of one request on one core (ms)")
    out["service_ms"] = service
    for key, default in (("cv", 1.0), ("freq_exponent", 1.0), ("pim_speedup", 0.0),
                         ("memory_intensity", 0.0), ("mesh_ms", 0.0), ("mesh_cpu_ms", 0.0),
                         ("mesh_dpu_ms", 0.0)):  # fmt: skip
        v = t.number(key, default)
        if v < 0:
            raise t.error(key, f"expected a value >= 0, got {v:g}")
        out[key] = v
    if out["memory_intensity"] > 1:
        raise t.error("memory_intensity", "a fraction of service time: expected <= 1")
    return out


# --------------------------------------------------------------------------- graphs

GRAPH_KEYS = ("name", "weight", "slo", "utility", "load", "services", "edges", "requests",
              "base_ms", "base_sd_ms", "network_ms", "timeout_ms", "arrival_s", "departure_s",
              "slo_factor", "pins")  # fmt: skip
SERVICE_KEYS = ("name", "service_ms", "cv", "freq_exponent", "minimum", "maximum", "replica_cpus",
                "weight", "target_ms")  # fmt: skip
EDGE_KEYS = ("from", "to", "calls", "requests")
REQUEST_KEYS = ("name", "weight", "entry")


def _graph(t: _Table, base_dir: Path, seed: int) -> tuple[GraphEntry, list[JobEntry]]:
    t.check_unknown(GRAPH_KEYS)
    name = t.get_str("name", required=True)
    st = t.table("slo")
    if st is None:
        raise t.error("slo", "missing: the end-to-end SLO, e.g. {target = 200, percentile = 99}")
    slo = _slo(st)
    ut = t.table("utility")
    utility = _utility(ut) if ut is not None else UtilitySpec()
    weight = t.number("weight", 1.0, positive=True)
    lt = t.table("load")
    if lt is None:
        raise t.error("load", "missing: the graph's offered load at its entry")
    load = _load(lt, base_dir, seed)
    services = _array(t, "services")
    if not services:
        raise t.error("services", "a graph needs at least one service")
    svc_dicts = []
    for s in services:
        s.check_unknown(SERVICE_KEYS)
        svc = {
            "name": s.get_str("name", required=True),
            "service_ms": s.number("service_ms", positive=True),
        }
        if svc["service_ms"] is None:
            raise s.error("service_ms", "missing: mean service time per visit on one core (ms)")
        for key in ("cv", "freq_exponent"):
            v = s.number(key, 1.0)
            if v < 0:
                raise s.error(key, f"expected a value >= 0, got {v:g}")
            svc[key] = v
        svc_dicts.append(svc)
    names = [s["name"] for s in svc_dicts]
    if len(set(names)) != len(names):
        raise t.error(
            "services",
            f"duplicate service names {sorted({n for n in names if names.count(n) > 1})}",
        )
    edges = []
    for e in _array(t, "edges"):
        e.check_unknown(EDGE_KEYS)
        src, dst = e.get_str("from", required=True), e.get_str("to", required=True)
        for key, v in (("from", src), ("to", dst)):
            if v not in names:
                raise e.error(key, f"unknown service {v!r}")
        if src == dst:
            raise e.error("to", f"service {src!r} calls itself: the call graph must be acyclic")
        calls = e.number("calls", 1.0, positive=True)
        edges.append(
            {"from": src, "to": dst, "calls": calls, "requests": list(e.str_list("requests"))}
        )
    requests = []
    for r in _array(t, "requests"):
        r.check_unknown(REQUEST_KEYS)
        rname = r.get_str("name", required=True)
        entry = r.get_str("entry", names[0])
        if entry not in names:
            raise r.error("entry", f"unknown service {entry!r}")
        w = r.number("weight", 1.0)
        if w < 0:
            raise r.error("weight", f"expected a weight >= 0, got {w:g}")
        requests.append({"name": rname, "weight": w, "entry": entry})
    if not requests:
        requests = [{"name": "default", "weight": 1.0, "entry": names[0]}]
    rnames = {r["name"] for r in requests}
    for i, e in enumerate(edges):
        bad = [x for x in e["requests"] if x not in rnames]
        if bad:
            raise ScenarioError(
                t.where, f"{t.path}.edges[{i}].requests", f"unknown request type(s) {bad}"
            )
    try:
        params = build_graph(svc_dicts, edges, requests)
    except ModelError as exc:
        raise t.error("edges", str(exc)) from None
    timeout = t.number("timeout_ms", 10.0 * slo.target, positive=True)
    arrival = t.number("arrival_s", 0.0)
    departure = t.number("departure_s", math.inf) if t.has("departure_s") else math.inf
    slo_factor = t.number("slo_factor", 2.0, positive=True)
    network_ms = t.number("network_ms", 0.0)
    jobs = []
    for s, svc in zip(services, svc_dicts, strict=True):
        # Per-service SLO, SurgeGuard-style: a multiple of the profiled time per visit, taken at the
        # graph's percentile (an exponential service time's P99 is ln(100) x its mean), so an
        # uncongested service meets it and a queue that builds up does not.
        tail = math.log(100.0 / (100.0 - slo.percentile))
        target = s.number(
            "target_ms", slo_factor * (tail * svc["service_ms"] + network_ms), positive=True
        )
        spec_d: dict[str, Any] = {
            "name": f"{name}.{svc['name']}",
            "kind": "microservice",
            "weight": s.number("weight", weight, positive=True),
            "slo": {"metric": "latency", "target": target, "percentile": slo.percentile},
            "workload": {"model": "service", "graph": name, "service": svc["name"]},
        }
        for key in ("minimum", "maximum"):
            if s.has(key):
                spec_d[key] = s.data[key]
        if s.has("replica_cpus"):
            spec_d["replica_cpus"] = s.data["replica_cpus"]
        if t.has("pins"):  # a graph pinned to nodes: every service's replicas stay on them
            spec_d["pins"] = t.data["pins"]
        spec = parse_job(spec_d, s.where, s.path)
        jobs.append(
            JobEntry(
                spec=spec,
                model="service",
                workload=dict(svc),
                load=None,
                arrival_s=arrival,
                departure_s=departure,
                graph=name,
                service=svc["name"],
                timeout_ms=timeout,
            )  # fmt: skip
        )
    graph = GraphEntry(
        name=name,
        params=params,
        jobs=tuple(j.name for j in jobs),
        slo=slo,
        utility=utility,
        weight=weight,
        load=load,
        base_ms=_nonneg(t, "base_ms"),
        base_sd_ms=_nonneg(t, "base_sd_ms"),
        network_ms=network_ms,
        timeout_ms=timeout,
        arrival_s=arrival,
        departure_s=departure,
    )
    return graph, jobs


def _nonneg(t: _Table, key: str) -> float:
    v = t.number(key, 0.0)
    if v < 0:
        raise t.error(key, f"expected a value >= 0, got {v:g}")
    return v


SURGE_KEYS = ("graph", "from", "to", "start_s", "end_s", "extra_ms")


def _surge(t: _Table, graphs: list[GraphEntry]) -> LatencySurge:
    t.check_unknown(SURGE_KEYS)
    gname = t.get_str("graph", required=True)
    graph = next((g for g in graphs if g.name == gname), None)
    if graph is None:
        raise t.error("graph", f"unknown graph {gname!r}")
    src, dst = t.get_str("from", required=True), t.get_str("to", required=True)
    idx = {s: i for i, s in enumerate(graph.params.services)}
    for key, v in (("from", src), ("to", dst)):
        if v not in idx:
            raise t.error(key, f"unknown service {v!r} of graph {gname!r}")
    if not any((idx[src], idx[dst]) == (p, c) for te in graph.params.type_edges for p, c, _ in te):
        raise t.error("to", f"graph {gname!r} has no call edge {src} -> {dst}")
    start = t.number("start_s", 0.0)
    end = t.number("end_s", math.inf) if t.has("end_s") else math.inf
    if start < 0 or end <= start:
        raise t.error("end_s", f"expected 0 <= start_s < end_s, got {start:g} and {end:g}")
    extra = t.number("extra_ms", positive=True)
    if extra is None:
        raise t.error("extra_ms", "missing: the added latency per call on the edge (ms)")
    return LatencySurge(gname, src, dst, start, end, extra)
