"""PIM policies: closed-loop controllers over a PimSnapshot (pure; see snapshot.py)."""

from __future__ import annotations

from allocators.pim.base import PimPolicy
from allocators.pim.baselines import OctopusMan, OsDefault, StaticPartition
from allocators.pim.learned import LearnedPim
from allocators.pim.pimcloud import PimCloudRule

POLICIES: dict[str, type[PimPolicy]] = {
    p.name: p for p in (OsDefault, StaticPartition, OctopusMan, PimCloudRule, LearnedPim)
}

__all__ = [
    "POLICIES",
    "LearnedPim",
    "OctopusMan",
    "OsDefault",
    "PimCloudRule",
    "PimPolicy",
    "StaticPartition",
]
