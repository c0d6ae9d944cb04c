"""Policy and objective registry: built-ins by name, entry points, dotted paths.

Plug-ins register through entry points (groups ``cluster_mgr.policies`` and
``cluster_mgr.objectives``, the entry point's name being the registered name)
or are named directly by a dotted path ``"pkg.mod:Attr"`` in the config.
``list_policies`` is what ``cluster-mgr policies`` prints.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, NamedTuple

from allocators.base import Policy
from allocators.objectives import BUILTIN_OBJECTIVES, Objective

POLICY_GROUP = "cluster_mgr.policies"
OBJECTIVE_GROUP = "cluster_mgr.objectives"

#: Built-in policies: name -> "module:Class" (imported on first use).
BUILTIN_POLICIES: dict[str, str] = {
    # ours
    "utilitarian": "allocators.policies.welfare:Utilitarian",
    "nash": "allocators.policies.welfare:Nash",
    "welfare": "allocators.policies.welfare:WelfarePolicy",
    "egalitarian": "allocators.policies.fairness:Egalitarian",
    "njc": "allocators.policies.fairness:NoJustifiedComplaints",
    "slo_autoscale": "allocators.policies.slo:SloAutoscale",
    "constrained": "allocators.policies.slo:Constrained",
    "multi_resource": "allocators.policies.multi:MultiResource",
    "inference_knobs": "allocators.inference.knob_policy:KnobPolicy",
    # oracles
    "oracle_utilitarian": "allocators.policies.welfare:OracleUtilitarian",
    "oracle_nash": "allocators.policies.welfare:OracleNash",
    "oracle_welfare": "allocators.policies.welfare:OracleWelfare",
    "oracle_egalitarian": "allocators.policies.fairness:OracleEgalitarian",
    # baselines
    "fair_share": "allocators.policies.fair_share:ProportionalFairShare",
    "static_equal": "allocators.policies.static:StaticEqualShare",
    "drf": "allocators.policies.static:DominantResourceFairness",
    "cilantro": "allocators.policies.search:Cilantro",
    "evo_observed": "allocators.policies.search:EvolutionaryObserved",
    "greedy_egalitarian": "allocators.policies.search:GreedyEgalitarian",
    "miad": "allocators.policies.feedback:Miad",
    "pid": "allocators.policies.feedback:Pid",
    "hpa": "allocators.policies.feedback:KubernetesHpa",
    "ray_serve": "allocators.policies.feedback:RayServe",
    "parties": "allocators.policies.parties:Parties",
    "caladan": "allocators.policies.feedback:Caladan",
    "ernest_maxmin": "allocators.policies.demand:ErnestMaxMin",
    "quasar": "allocators.policies.demand:Quasar",
    "fixed_knob": "allocators.inference.knob_policy:FixedKnobPolicy",
    "fixed_knob_approx": "allocators.inference.knob_policy:FixedApproxKnobPolicy",
}

#: Policies that only decide for jobs of one kind (the others keep their minimums):
#: name -> that kind. Runners and the conformance kit use them where such jobs exist.
KIND_POLICIES: dict[str, str] = {
    "inference_knobs": "inference",
    "fixed_knob": "inference",
    "fixed_knob_approx": "inference",
}


class PolicyInfo(NamedTuple):
    name: str
    kind: str
    description: str
    source: str


def _load(target: str) -> Any:
    if ":" not in target:
        raise ValueError(f"dotted path {target!r} must look like 'package.module:Attribute'")
    mod, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {target!r}: {exc}") from exc
    return obj


def _entry_points(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def policy_class(name: str) -> type[Policy]:
    """The class registered as ``name`` (built-in, entry point or dotted path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy name must be a non-empty string, got {name!r}")
    if name in BUILTIN_POLICIES:
        cls = _load(BUILTIN_POLICIES[name])
    elif name in (eps := _entry_points(POLICY_GROUP)):
        cls = eps[name].load()
    elif ":" in name:
        cls = _load(name)
    else:
        known = sorted(BUILTIN_POLICIES) + sorted(_entry_points(POLICY_GROUP))
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(known)}")
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise ValueError(f"{name!r} is not a Policy subclass (got {cls!r})")
    return cls


def get_policy(name: str, **options: Any) -> Policy:
    """An instance of the policy ``name`` with ``options`` (its constructor's keyword arguments)."""
    cls = policy_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: bad options {sorted(options)}: {exc}") from exc


def list_policies() -> list[PolicyInfo]:
    out = []
    for name in BUILTIN_POLICIES:
        cls = policy_class(name)
        out.append(PolicyInfo(name, cls.kind, cls.description, cls.source))
    for name, ep in sorted(_entry_points(POLICY_GROUP).items()):
        if name in BUILTIN_POLICIES:
            continue
        try:
            cls = ep.load()
            out.append(PolicyInfo(name, "plug-in", getattr(cls, "description", ""), ep.value))
        except Exception as exc:  # a broken plug-in is listed, not fatal to the listing
            out.append(PolicyInfo(name, "plug-in", f"(failed to load: {exc})", ep.value))
    return out


def format_policies() -> str:
    """The table ``cluster-mgr policies`` prints."""
    rows = list_policies()
    width = max(len(r.name) for r in rows)
    return "\n".join(f"{r.name:<{width}}  {r.kind:<8}  {r.description}  [{r.source}]" for r in rows)


def get_objective(name: str | Objective) -> Objective:
    """A built-in objective by name, an entry point of ``cluster_mgr.objectives``, or a dotted path."""
    if isinstance(name, Objective):
        return name
    if name in BUILTIN_OBJECTIVES:
        return BUILTIN_OBJECTIVES[name]
    eps = _entry_points(OBJECTIVE_GROUP)
    if name in eps:
        obj = eps[name].load()
    elif isinstance(name, str) and ":" in name:
        obj = _load(name)
    else:
        known = sorted(BUILTIN_OBJECTIVES) + sorted(eps)
        raise ValueError(f"unknown objective {name!r}; known objectives: {', '.join(known)}")
    if not isinstance(obj, Objective):
        raise ValueError(
            f"{name!r} is not an Objective (decorate the function with allocators.objectives.objective)"
        )
    return obj


def list_objectives() -> list[Objective]:
    out = list(BUILTIN_OBJECTIVES.values())
    for name in sorted(_entry_points(OBJECTIVE_GROUP)):
        if name not in BUILTIN_OBJECTIVES:
            out.append(get_objective(name))
    return out
