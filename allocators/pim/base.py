"""The PIM policy interface (closed-loop, one decision per 100 ms control interval)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from allocators.pim.snapshot import PimPlan, PimSnapshot

PimState = dict[str, Any]


class PimPolicy(ABC):
    name: ClassVar[str] = "pim-policy"
    kind: ClassVar[str] = "baseline"  # "ours" or "baseline"
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def initial_state(self) -> PimState:
        return {}

    @abstractmethod
    def decide(self, snap: PimSnapshot, state: PimState) -> tuple[PimPlan | None, PimState]:
        """The plan to enforce now (None: keep the one in force) and the state to keep."""
