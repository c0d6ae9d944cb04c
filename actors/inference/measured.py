"""Measured knob profiles, once per machine: train (cached), profile every setting, cache the result.

Backends that emulate or serve inference jobs need each setting's real
accuracy, latency and memory. Profiling all 342 settings takes tens of
seconds, so the measurements are cached beside the trained weights, keyed by
the weights, the knob space, the request size and repetitions, and the
machine (latency is this machine's). A process keeps what it loaded.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np

from actors.inference.data import load_split
from actors.inference.knobs import FULL, KnobSetting, KnobSpace, LayerApprox
from actors.inference.model import MLPWeights
from actors.inference.profile import REQUEST_BATCH, KnobProfile, profile_settings
from actors.inference.train import TrainConfig, cache_dir, load_or_train

PROFILE_VERSION = 1

#: "full": the 342-setting space of docs/inference.md; "compact": 52 settings, for tests and
#: small examples (exit 1-3, first layer f32 or 2-bit, others f32, 4-bit or rank 32).
KNOB_SPACES: dict[str, KnobSpace] = {
    "full": KnobSpace(),
    "compact": KnobSpace(
        first_layer=(FULL, LayerApprox(None, 2)),
        wide_layer=(FULL, LayerApprox(None, 4), LayerApprox(32, 32)),
    ),
}

_memo: dict[str, list[KnobProfile]] = {}
_weights_memo: dict[str, dict[bool, MLPWeights]] = {}


def train_config(workload: dict[str, object]) -> TrainConfig:
    """The TrainConfig an inference workload names (scenario or job keys ``widths``, ``epochs``)."""
    cfg = TrainConfig()
    widths = workload.get("widths")
    if widths is not None:
        cfg = replace(cfg, widths=tuple(int(w) for w in widths))  # type: ignore[union-attr]
    if workload.get("epochs") is not None:
        cfg = replace(cfg, epochs=int(workload["epochs"]))  # type: ignore[call-overload]
    return cfg


def weights_for(cfg: TrainConfig) -> dict[bool, MLPWeights]:
    """Standard and noise-aware weights of ``cfg`` (trained once per machine, then loaded)."""
    key = repr(cfg)
    if key not in _weights_memo:
        split = load_split(cfg.data_seed)
        _weights_memo[key] = {
            na: load_or_train(replace(cfg, noise_aware=na), split) for na in (False, True)
        }
    return _weights_memo[key]


def _key(cfg: TrainConfig, space: str, reps: int, batch: int, seed: int) -> str:
    split = load_split(cfg.data_seed)
    h = hashlib.sha256()
    for na in (False, True):
        h.update(replace(cfg, noise_aware=na).key(split).encode())
    h.update(f"{space}|{reps}|{batch}|{seed}|v{PROFILE_VERSION}".encode())
    h.update(f"{platform.machine()}|{platform.processor()}|{os.cpu_count()}".encode())
    return h.hexdigest()[:20]


def measured_profiles(
    cfg: TrainConfig,
    space: str = "full",
    *,
    reps: int = 12,
    batch: int = REQUEST_BATCH,
    seed: int = 0,
) -> list[KnobProfile]:
    """Every setting of the knob space ``space``, measured for real (or read from the cache)."""
    key = _key(cfg, space, reps, batch, seed)
    if key in _memo:
        return _memo[key]
    settings = KNOB_SPACES[space].settings()
    path = cache_dir() / f"profiles-{key}.npz"
    profiles = _read(path, settings) if path.exists() else None
    if profiles is None:
        split = load_split(cfg.data_seed)
        profiles = profile_settings(
            weights_for(cfg), settings, split, batch=batch, reps=reps, seed=seed
        )
        _write(path, profiles)
    _memo[key] = profiles
    return profiles


def _write(path: Path, profiles: list[KnobProfile]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        ids=np.array([p.knob for p in profiles]),
        correct=np.array([p.correct for p in profiles]),
        total=np.array([p.total for p in profiles]),
        latency_ms=np.array([p.latency_ms for p in profiles]),
        weight_bytes=np.array([p.weight_bytes for p in profiles]),
        activation_bytes=np.array([p.activation_bytes for p in profiles]),
        macs=np.array([p.macs_per_sample for p in profiles]),
        batch=np.array([p.batch for p in profiles]),
        masks=np.array([p.correct_mask for p in profiles]),
    )
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


def _read(path: Path, settings: list[KnobSetting]) -> list[KnobProfile] | None:
    with np.load(path) as f:
        ids = [str(x) for x in f["ids"]]
        if ids != [s.id for s in settings]:
            return None  # another space under the same key: measure again
        return [
            KnobProfile(
                setting=s,
                correct=int(f["correct"][i]),
                total=int(f["total"][i]),
                latency_ms=tuple(float(x) for x in f["latency_ms"][i]),
                weight_bytes=int(f["weight_bytes"][i]),
                activation_bytes=int(f["activation_bytes"][i]),
                macs_per_sample=int(f["macs"][i]),
                batch=int(f["batch"][i]),
                correct_mask=f["masks"][i].copy(),
            )
            for i, s in enumerate(settings)
        ]


def setting_by_id(space: str, knob: str) -> KnobSetting:
    """The KnobSetting of a knob id in ``space`` (KeyError if the space has none)."""
    for s in KNOB_SPACES[space].settings():
        if s.id == knob:
            return s
    raise KeyError(f"knob {knob!r} is not in the {space!r} knob space")
