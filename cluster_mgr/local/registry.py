"""Local controllers by name: the one factory both backends use.

The sim reads the name from a scenario's ``[control] local_controller``, a
NodeAgent on Ray from the manager config's ``local_controller``; the names are
``cluster_mgr.settings.LOCAL_CONTROLLERS``. "none" is the global allocator
alone (the plan's shares at nominal frequency, nothing faster).
"""

from __future__ import annotations

from cluster_mgr.local.baselines import (
    AutothrottleController,
    CaladanController,
    GlobalOnly,
    PartiesController,
    SurgeGuardController,
)
from cluster_mgr.local.controller import LocalController, SlackController
from cluster_mgr.local.profile import ServiceProfile
from cluster_mgr.settings import LOCAL_CONTROLLERS

__all__ = ["LOCAL_CONTROLLERS", "make_controller"]



def make_controller(name: str, profile: ServiceProfile, seed: int = 0) -> LocalController:
    """A fresh controller ``name`` sizing with ``profile`` (ValueError for an unknown name)."""
    if name == "none":
        return GlobalOnly()
    if name == "ours":
        return SlackController(profile)
    if name == "parties":
        return PartiesController(profile, seed=seed)
    if name == "caladan":
        return CaladanController(profile)
    if name == "surgeguard":
        return SurgeGuardController(profile)
    if name == "autothrottle":
        return AutothrottleController(seed=seed)
    raise ValueError(
        f"unknown local controller {name!r}; expected one of {', '.join(LOCAL_CONTROLLERS)}"
    )
