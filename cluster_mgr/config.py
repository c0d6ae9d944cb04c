"""Load the manager's configuration and job specs from TOML (the format is in docs/config.md).

Every problem is a ``ConfigError`` whose message names the file, the key path
(``jobs[2].slo.target``) and what was expected, so ``cluster-mgr`` can refuse a
bad file in one line before anything starts. Unknown keys are errors too (with
a did-you-mean): a misspelt key that is silently ignored is worse than none.
Validation of values is the data model's (``ModelError`` from the frozen
dataclasses); this module adds the where.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from cluster_mgr.model import (
    RESOURCE_KINDS,
    SLO,
    JobKind,
    JobSpec,
    ModelError,
    ResourceVector,
    UtilitySpec,
)
from cluster_mgr.settings import (
    DPU_PRESETS,
    LOCAL_CONTROLLERS,
    PIM_PRESETS,
    DeviceOptions,
    ManagerConfig,
)

TOKEN_ENV = "CLUSTER_MGR_TOKEN"


class ConfigError(ValueError):
    """A config or job file is malformed: ``str(e)`` is '<file>: <key path>: <what was expected>'."""

    def __init__(self, where: str, key: str, message: str) -> None:
        self.where = where
        self.key = key
        self.detail = message
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


# --------------------------------------------------------------------------- helpers

_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "true or false",
    int: "an integer",
    float: "a number",
    dict: "a table",
    list: "an array",
}


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {value!r}".replace("True", "true").replace("False", "false")
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class _Table:
    """A TOML table being read: typed getters that know their file and key path."""

    def __init__(self, data: Mapping[str, Any], where: str, path: str) -> None:
        self.data = dict(data)
        self.where = where
        self.path = path
        self._seen: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.where, _join(self.path, key), message)

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, expected: type | tuple[type, ...], required: bool) -> Any:
        self._seen.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "missing required key")
            return None
        value = self.data[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        # TOML booleans are Python ints: never accept one where a number is expected.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            want = (
                "a number"
                if set(types) == {int, float}
                else " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            )
            raise self.error(key, f"expected {want}, got {_type_name(value)}")
        return value

    def get_str(
        self, key: str, default: str | None = None, *, required: bool = False
    ) -> str | None:
        value = self._get(key, str, required)
        return default if value is None else value

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._get(key, bool, False)
        return default if value is None else value

    def get_int(
        self, key: str, default: int | None = None, *, minimum: int | None = None
    ) -> int | None:
        value = self._get(key, int, False)
        if value is None:
            return default
        if minimum is not None and value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(
        self, key: str, default: float | None = None, *, positive: bool = False
    ) -> float | None:
        value = self._get(key, (int, float), False)
        if value is None:
            return default
        value = float(value)
        if not math.isfinite(value):
            raise self.error(key, f"expected a finite number, got {value}")
        if positive and value <= 0:
            raise self.error(key, f"expected a number > 0, got {value:g}")
        return value

    def table(self, key: str) -> _Table | None:
        value = self._get(key, dict, False)
        return None if value is None else _Table(value, self.where, _join(self.path, key))

    def raw_dict(self, key: str) -> dict[str, Any]:
        value = self._get(key, dict, False)
        return {} if value is None else dict(value)

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, list, False)
        if value is None:
            return ()
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {_type_name(item)}")
        return tuple(value)

    def check_unknown(self, allowed: Mapping[str, str] | set[str] | tuple[str, ...]) -> None:
        """Refuse keys that are not in ``allowed`` (a did-you-mean when one is close)."""
        allowed_names = list(allowed)
        for key in self.data:
            if key in allowed_names:
                continue
            close = difflib.get_close_matches(key, allowed_names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(
                key, f"unknown key (expected one of: {', '.join(sorted(allowed_names))}){hint}"
            )


def _model_call(where: str, path: str, build: Callable[[], Any]) -> Any:
    """Run a dataclass constructor; a ModelError becomes a ConfigError at ``path``.

    ModelError messages start with the field they are about ('slo.target: must
    be > 0'); when they do, that field is folded into the key path so the user
    sees ``jobs[1].slo.target`` rather than ``jobs[1]``.
    """
    try:
        return build()
    except ModelError as exc:
        message = str(exc)
        head, sep, rest = message.partition(": ")
        if sep and " " not in head:
            leaf = head.split(".")[-1]
            return_path = _join(path, leaf)
            raise ConfigError(where, return_path, rest) from None
        raise ConfigError(where, path, message) from None


# --------------------------------------------------------------------------- jobs

JOB_KEYS = (
    "name",
    "kind",
    "weight",
    "priority",
    "replica_cpus",
    "pins",
    "slo",
    "utility",
    "minimum",
    "maximum",
    "workload",
)
JOB_KINDS = tuple(k.value for k in JobKind)
SLO_KEYS = tuple(f.name for f in fields(SLO))
UTILITY_KEYS = tuple(f.name for f in fields(UtilitySpec))
RESOURCE_KEYS = (*RESOURCE_KINDS, "custom")


def _resources(t: _Table) -> ResourceVector:
    t.check_unknown(RESOURCE_KEYS)
    amounts: dict[str, float] = {}
    for kind in RESOURCE_KINDS:
        value = t.number(kind)
        if value is not None:
            if value < 0:
                raise t.error(kind, f"expected an amount >= 0, got {value:g}")
            amounts[kind] = value
    custom = t.table("custom")
    if custom is not None:
        for name in custom.data:
            value = custom.number(name)
            if value is not None and value < 0:
                raise custom.error(name, f"expected an amount >= 0, got {value:g}")
            if name in RESOURCE_KINDS:
                raise custom.error(name, f"{name!r} is a built-in kind; set it outside 'custom'")
            amounts[name] = float(value or 0.0)
    return _model_call(t.where, t.path, lambda: ResourceVector.from_dict(amounts))


def _slo(t: _Table) -> SLO:
    t.check_unknown(SLO_KEYS)
    metric = t.get_str("metric", "latency")
    if metric not in ("latency", "throughput"):
        raise t.error("metric", f"expected 'latency' or 'throughput', got {metric!r}")
    target = t.number("target")
    if target is None:
        raise t.error("target", "missing required key (ms for latency, requests/s for throughput)")
    kwargs: dict[str, Any] = {"metric": metric, "target": target}
    for key in ("percentile", "threshold"):
        value = t.number(key)
        if value is not None:
            kwargs[key] = value
    return _model_call(t.where, t.path, lambda: SLO(**kwargs))


def _utility(t: _Table) -> UtilitySpec:
    t.check_unknown(UTILITY_KEYS)
    kwargs: dict[str, Any] = {"scaling": t.get_str("scaling", "linear")}
    objective = t.get_str("objective")
    if objective is not None:
        kwargs["objective"] = objective
    return _model_call(t.where, t.path, lambda: UtilitySpec(**kwargs))


def parse_job(table: Mapping[str, Any], where: str, path: str = "") -> JobSpec:
    """A JobSpec from one TOML table. ``where`` names the file (or '<submit>'), ``path``
    the table's key path in it ('' for a job file, 'jobs[2]' inside a config)."""
    t = _Table(table, where, path)
    t.check_unknown(JOB_KEYS)
    name = t.get_str("name", required=True)
    kwargs: dict[str, Any] = {"name": name}
    kind = t.get_str("kind")
    if kind is not None:
        if kind not in JOB_KINDS:
            raise t.error("kind", f"expected one of {', '.join(JOB_KINDS)}, got {kind!r}")
        kwargs["kind"] = kind
    for key in ("weight", "replica_cpus"):
        value = t.number(key, positive=True)
        if value is not None:
            kwargs[key] = value
    priority = t.get_int("priority")
    if priority is not None:
        kwargs["priority"] = priority
    kwargs["pins"] = t.str_list("pins")
    for key, build in (("slo", _slo), ("utility", _utility)):
        sub = t.table(key)
        if sub is not None:
            kwargs[key] = build(sub)
    for key in ("minimum", "maximum"):
        sub = t.table(key)
        if sub is not None:
            kwargs[key] = _resources(sub)
    # The workload is the emulation's business (opaque here); keep it as plain data.
    kwargs["workload"] = t.raw_dict("workload")
    return _model_call(where, path, lambda: JobSpec(**kwargs))


def parse_job_text(text: str, where: str = "<job>") -> JobSpec:
    """A JobSpec from TOML text (a job file's contents, or what ``submit`` sends)."""
    return parse_job(_parse_toml(text, where), where)


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read one job file: the job's keys at the top level (see docs/config.md)."""
    where = str(path)
    return parse_job(_read_toml(where), where)


# --------------------------------------------------------------------------- manager config

MANAGER_KEYS = (
    "address",
    "namespace",
    "policy",
    "policy_options",
    "learner",
    "learner_options",
    "round_s",
    "telemetry_window_s",
    "fast_window_s",
    "shadow",
    "log_uri",
    "admin_bind",
    "admin_token",
    "admin_token_file",
    "metrics_bind",
    "seed",
    "object_store_mb",
    "num_cpus",
    "local_controller",
    "local_options",
)
TOP_KEYS = ("manager", "jobs", "devices")
DEVICE_KEYS = (
    "envoy", "dpu_preset", "mesh_address", "mesh_token",
    "pim_preset", "pim_address", "pim_token", "pim_apps",
)  # fmt: skip
PIM_APP_KEYS = ("profile", "load_rps", "big_cores")


def _choice(t: _Table, key: str, default: str | None, choices: tuple[str, ...]) -> str | None:
    value = t.get_str(key, default)
    if value is not None and value not in choices:
        raise t.error(key, _with_hint(f"expected one of {list(choices)}, got {value!r}", value,
                                      list(choices)))  # fmt: skip
    return value


def _check_pim_profile(j: _Table, prof: str | dict[str, Any]) -> None:
    from pim_agent.presets import AppProfile
    from pim_agent.workloads import STREAM, TAILBENCH

    known = sorted({*TAILBENCH, STREAM.name})
    if isinstance(prof, str):
        if prof not in known:
            raise j.error("profile", _with_hint(f"unknown PIM profile {prof!r} (known: {known})",
                                                prof, known))  # fmt: skip
        return
    try:
        AppProfile(**{"name": "x", **prof})
    except (TypeError, ValueError) as exc:
        raise j.error("profile", f"not a PIM app profile: {exc}") from None


def _parse_devices(top: _Table) -> dict[str, DeviceOptions]:
    """``[devices.<node id or "default">]`` tables -> DeviceOptions per node."""
    t = top.table("devices")
    if t is None:
        return {}
    out: dict[str, DeviceOptions] = {}
    d = DeviceOptions()
    for node in list(t.data):
        n = t.table(node)
        assert n is not None
        n.check_unknown(DEVICE_KEYS)
        opts: dict[str, Any] = {
            "envoy": n.get_bool("envoy", d.envoy),
            "dpu_preset": _choice(n, "dpu_preset", d.dpu_preset, DPU_PRESETS),
            "pim_preset": _choice(n, "pim_preset", d.pim_preset, PIM_PRESETS),
        }
        for kind in ("mesh", "pim"):
            addr = n.get_str(f"{kind}_address")
            tok = n.get_str(f"{kind}_token")
            if addr is not None:
                check_bind(n.where, _join(n.path, f"{kind}_address"), addr)
                if not tok:
                    raise n.error(f"{kind}_token", f"required with {kind}_address (the agent's token)")
            elif tok is not None:
                raise n.error(f"{kind}_token", f"only meaningful with {kind}_address")
            opts[f"{kind}_address"], opts[f"{kind}_token"] = addr, tok
        apps: dict[str, dict[str, Any]] = {}
        a = n.table("pim_apps")
        if a is not None:
            if not (opts["pim_preset"] or opts["pim_address"]):
                raise n.error("pim_apps", "needs pim_preset or pim_address")
            for job in list(a.data):
                j = a.table(job)
                assert j is not None
                j.check_unknown(PIM_APP_KEYS)
                prof = j._get("profile", (str, dict), False)
                _check_pim_profile(j, job if prof is None else prof)
                apps[job] = {
                    "profile": job if prof is None else prof,
                    "load_rps": j.number("load_rps", 0.0),
                    "big_cores": j.get_int("big_cores", 0, minimum=0),
                }
                if apps[job]["load_rps"] < 0:
                    raise j.error("load_rps", f"expected a number >= 0, got {apps[job]['load_rps']:g}")
        opts["pim_apps"] = apps
        out[node] = DeviceOptions(**opts)
    return out


def check_bind(where: str, key: str, value: str) -> str:
    """'host:port' with a port in 0..65535 (0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            where, key, f"expected 'host:port' (e.g. '127.0.0.1:50151'), got {value!r}"
        )
    return value


def _token(t: _Table, base_dir: Path) -> str:
    token = t.get_str("admin_token")
    token_file = t.get_str("admin_token_file")
    if token is not None and token_file is not None:
        raise t.error("admin_token_file", "set admin_token or admin_token_file, not both")
    if token_file is not None:
        path = Path(os.path.expanduser(token_file))
        path = path if path.is_absolute() else base_dir / path
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise t.error("admin_token_file", f"cannot read {path}: {exc.strerror}") from None
        if not token:
            raise t.error("admin_token_file", f"{path} is empty; expected a token")
    if token is None:
        # The environment is the last resort, so a token need not sit in a config file.
        token = os.environ.get(TOKEN_ENV, "")
    return token


def parse_config(
    data: Mapping[str, Any], where: str, base_dir: Path | None = None
) -> ManagerConfig:
    """A ManagerConfig from a parsed TOML document (a [manager] table and [[jobs]] tables)."""
    base_dir = base_dir or Path.cwd()
    top = _Table(data, where, "")
    top.check_unknown(TOP_KEYS)
    m = top.table("manager") or _Table({}, where, "manager")
    m.check_unknown(MANAGER_KEYS)
    d = ManagerConfig()
    kwargs: dict[str, Any] = {
        "address": m.get_str("address", d.address),
        "namespace": m.get_str("namespace", d.namespace),
        "policy": m.get_str("policy", d.policy),
        "policy_options": m.raw_dict("policy_options"),
        "learner": m.get_str("learner", d.learner),
        "learner_options": m.raw_dict("learner_options"),
        "round_s": m.number("round_s", d.round_s, positive=True),
        "telemetry_window_s": m.number("telemetry_window_s", d.telemetry_window_s, positive=True),
        "fast_window_s": m.number("fast_window_s", d.fast_window_s, positive=True),
        "shadow": m.get_bool("shadow", d.shadow),
        "log_uri": m.get_str("log_uri", d.log_uri),
        "admin_bind": check_bind(
            where, "manager.admin_bind", m.get_str("admin_bind", d.admin_bind)
        ),
        "admin_token": _token(m, base_dir),
        "seed": m.get_int("seed", d.seed, minimum=0),
        "object_store_mb": m.get_int("object_store_mb", d.object_store_mb, minimum=1),
        "num_cpus": m.get_int("num_cpus", d.num_cpus, minimum=1),
        "local_controller": _choice(m, "local_controller", d.local_controller, LOCAL_CONTROLLERS),
        "local_options": m.raw_dict("local_options"),
    }
    if m.has("metrics_bind"):
        # An empty string turns the exporter off (TOML has no null).
        value = m.get_str("metrics_bind")
        kwargs["metrics_bind"] = check_bind(where, "manager.metrics_bind", value) if value else None
    if kwargs["round_s"] < kwargs["telemetry_window_s"]:
        raise m.error(
            "round_s",
            f"expected at least telemetry_window_s ({kwargs['telemetry_window_s']:g} s), "
            f"got {kwargs['round_s']:g}",
        )
    jobs_raw = top._get("jobs", list, False) or []
    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(jobs_raw):
        path = f"jobs[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, path, f"expected a table ([[jobs]]), got {_type_name(item)}")
        job = parse_job(item, where, path)
        if job.name in seen:
            raise ConfigError(
                where,
                f"{path}.name",
                f"duplicate job name {job.name!r} (also jobs[{seen[job.name]}])",
            )
        seen[job.name] = i
        jobs.append(job)
    kwargs["jobs"] = tuple(jobs)
    kwargs["devices"] = _parse_devices(top)
    config = ManagerConfig(**kwargs)
    _check_policy_and_learner(where, config)
    return config


def _check_policy_and_learner(where: str, config: ManagerConfig) -> None:
    """Refuse an unknown policy or learner (or bad options) now, not after Ray started.

    Both registries are pure (no Ray), so building the policy and the learner
    factory here costs little and checks exactly what the controller will do.
    """
    from allocators import registry
    from learners import LEARNERS, learner_factory

    try:
        registry.policy_class(config.policy)
    except ValueError as exc:
        known = [p.name for p in registry.list_policies()]
        hint = _with_hint(str(exc), config.policy, known)
        raise ConfigError(where, "manager.policy", hint) from None
    try:
        registry.get_policy(config.policy, **config.policy_options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, "manager.policy_options", str(exc)) from None
    if config.learner not in LEARNERS:
        raise ConfigError(
            where,
            "manager.learner",
            _with_hint(
                f"unknown learner {config.learner!r}; known: {', '.join(sorted(LEARNERS))}",
                config.learner,
                list(LEARNERS),
            ),
        )
    try:
        learner_factory(config.learner, **config.learner_options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(where, "manager.learner_options", str(exc)) from None


def _with_hint(message: str, got: str, known: list[str]) -> str:
    close = difflib.get_close_matches(got, known, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def load_config(path: str | os.PathLike[str]) -> ManagerConfig:
    """Read a manager config file; relative token files resolve against the file's folder."""
    where = str(path)
    return parse_config(_read_toml(where), where, Path(where).resolve().parent)


# --------------------------------------------------------------------------- TOML


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says where ('... (at line 3, column 9)'); keep it, it is the key path here.
        raise ConfigError(where, "", f"invalid TOML: {exc}") from None


def _read_toml(where: str) -> dict[str, Any]:
    try:
        with open(where, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(where, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(where, "", "is a folder; expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(where, "", "not UTF-8 text; expected a TOML file") from None
    return _parse_toml(text, where)


def job_to_toml(spec: JobSpec) -> str:
    """A job file for ``spec`` (round-trips through ``parse_job_text``); used by the CLI and tests."""
    lines = [f"name = {_toml_value(spec.name)}", f"kind = {_toml_value(spec.kind.value)}"]
    lines += [
        f"weight = {_toml_value(spec.weight)}",
        f"priority = {spec.priority}",
        f"replica_cpus = {_toml_value(spec.replica_cpus)}",
    ]
    if spec.pins:
        lines.append(f"pins = {_toml_value(list(spec.pins))}")
    if spec.slo is not None:
        slo = {
            "metric": spec.slo.metric,
            "target": spec.slo.target,
            "percentile": spec.slo.percentile,
        }
        if spec.slo.threshold is not None:
            slo["threshold"] = spec.slo.threshold
        lines += ["", "[slo]", *(f"{k} = {_toml_value(v)}" for k, v in slo.items())]
    util = {"scaling": spec.utility.scaling}
    if spec.utility.objective is not None:
        util["objective"] = spec.utility.objective
    lines += ["", "[utility]", *(f"{k} = {_toml_value(v)}" for k, v in util.items())]
    for key, vec in (("minimum", spec.minimum), ("maximum", spec.maximum)):
        if vec is None:
            continue
        builtin = {k: vec.get(k) for k in RESOURCE_KINDS if vec.get(k) != 0.0}
        lines += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in builtin.items())]
        if vec.custom:
            lines.append(f"custom = {_toml_value(dict(vec.custom))}")
    if spec.workload:
        lines += ["", "[workload]", *(f"{k} = {_toml_value(v)}" for k, v in spec.workload.items())]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)
