"""Plan participants for the two-phase apply tests; the NodeAgent constructs them in its own
process (``NodeAgent.register_participant({"factory": "tests.ray.plan_participants:...", ...})``).

Each appends what it was asked (``prepare <epoch>``, ``commit <epoch>``, ``abort <epoch>``) to a
file, so a test can see from outside what happened inside the agent."""

from __future__ import annotations

import threading
from typing import Any


class Recorder:
    """Votes yes and records every call."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path

    def _note(self, what: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(what + "\n")

    def prepare(self, plan: Any, node_id: str) -> str | None:
        self._note(f"prepare {plan.epoch}")
        return None

    def commit(self, epoch: int) -> None:
        self._note(f"commit {epoch}")

    def abort(self, epoch: int) -> None:
        self._note(f"abort {epoch}")

    def telemetry(self, now: float) -> list[Any]:
        return []

    def close(self) -> None:
        self._note("close")


class Nack(Recorder):
    """Votes no, with a reason."""

    def __init__(self, name: str, path: str, reason: str) -> None:
        super().__init__(name, path)
        self.reason = reason

    def prepare(self, plan: Any, node_id: str) -> str | None:
        self._note(f"prepare {plan.epoch}")
        return self.reason


class Hang(Recorder):
    """Does not answer prepare until closed (a device agent that stopped responding)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name, path)
        self.released = threading.Event()

    def prepare(self, plan: Any, node_id: str) -> str | None:
        self._note(f"prepare {plan.epoch}")
        self.released.wait(120.0)  # the test double hangs; close() releases it
        return None

    def close(self) -> None:
        self.released.set()
        super().close()
