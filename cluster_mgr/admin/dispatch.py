"""One admin call: request message -> ControlPlane call -> reply message.

The gRPC servicer and the in-memory test transport both go through
``Dispatcher.call``, so the translation and the error mapping are the same code
whichever way a request arrives. Errors: ValueError -> INVALID_ARGUMENT (the
job cannot be admitted; nothing changed), KeyError -> NOT_FOUND; anything else
is INTERNAL with its type and message (the server logs the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from cluster_mgr.admin import convert
from cluster_mgr.admin.errors import INTERNAL, INVALID_ARGUMENT, NOT_FOUND, AdminError
from cluster_mgr.control.api import ControlPlane

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("Status", "Submit", "Remove", "Drain", "Explain", "Policies")


class Dispatcher:
    def __init__(self, control_plane: ControlPlane, pb: ModuleType | None = None) -> None:
        self.cp = control_plane
        self.pb = pb or convert.messages()
        self._handlers: dict[str, Callable[[Any], Any]] = {
            "Status": self._status,
            "Submit": self._submit,
            "Remove": self._remove,
            "Drain": self._drain,
            "Explain": self._explain,
            "Policies": self._policies,
        }

    def call(self, method: str, request: Any) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            raise AdminError("UNIMPLEMENTED", f"unknown admin method {method!r}")
        try:
            return handler(request)
        except AdminError:
            raise
        except KeyError as exc:
            # str(KeyError('x')) is "'x'"; the bare argument reads better.
            what = exc.args[0] if exc.args else "unknown"
            raise AdminError(NOT_FOUND, f"{method}: not found: {what}") from None
        except ValueError as exc:
            raise AdminError(INVALID_ARGUMENT, f"{method}: {exc}") from None
        except Exception as exc:
            log.exception("admin %s failed", method)
            raise AdminError(INTERNAL, f"{method}: {type(exc).__name__}: {exc}") from None

    # ----------------------------------------------------------------- handlers

    def _status(self, request: Any) -> Any:
        return convert.status_to_msg(self.pb, self.cp.status())

    def _submit(self, request: Any) -> Any:
        which = request.WhichOneof("spec")
        if which == "toml":
            # Imported here: the TOML parser is only needed for this call.
            from cluster_mgr.config import parse_job_text

            spec = parse_job_text(request.toml, "<submitted job>")
        elif which == "job":
            spec = convert.job_from_msg(request.job)
        else:
            raise ValueError("expected a job spec (toml text or structured), got neither")
        self.cp.submit(spec)
        return self.pb.SubmitReply(name=spec.name)

    def _remove(self, request: Any) -> Any:
        if not request.name:
            raise ValueError("remove: expected a job name")
        self.cp.remove(request.name)
        return self.pb.RemoveReply()

    def _drain(self, request: Any) -> Any:
        if not request.node_id:
            raise ValueError("drain: expected a node id")
        self.cp.drain(request.node_id)
        return self.pb.DrainReply()

    def _explain(self, request: Any) -> Any:
        if not request.job:
            raise ValueError("explain: expected a job name")
        return convert.explanation_to_msg(self.pb, self.cp.explain(request.job))

    def _policies(self, request: Any) -> Any:
        return convert.policies_to_msg(self.pb, tuple(self.cp.policies()))
