"""Remote mode: the CLI's plan and audit commands against ``proctor serve`` (``--server``).

``Remote`` wraps ``proctor.client.ProctorClient``: it fetches what a command prints, in the
shapes of the local commands (the plan JSON is the server's ``plan_json``; lists are
gathered page by page up to the command's ``--limit``), and makes the client's errors
speak to a CLI user: a server that cannot be reached names the URL to check, and an error
code with no class of its own (``unauthenticated``, ``payload_too_large``, ...) is reported
with that code. The commands in ``commands.py`` and ``audit_cmd.py`` render the answers
exactly as they render local records.

The principal is the token's: the server takes the caller's name and approver groups from
it, so ``--as`` and ``--role`` have no remote meaning.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from proctor.client import DEFAULT_TIMEOUT, ApiError, ProctorClient, error_from_response, parse_sse
from proctor.core.lifecycle import TERMINAL, PlanStatus
from proctor.errors import ProctorError, StorageError

__all__ = ["QUIET_SECONDS", "Remote", "RemoteApiError"]

QUIET_SECONDS = 1.0
"""How long a plan's event stream may stay silent before its events so far count as all.

The stream of a plan that is still waiting never ends by itself: it sends every event the
plan has at once, then only new ones. A pause this long after the burst ends the read.
"""

_PLANS_PAGE = 200  # the API's largest page of plans
_EVENTS_PAGE = 1000  # ... and of audit events


class RemoteApiError(ApiError):
    """An error response reported with the server's own ``code`` (``unauthenticated``, ...).

    ``ApiError`` stands for every code without a class in ``proctor.errors``; the CLI
    prints the code the server sent, so scripts see the same codes as HTTP clients.
    """

    def __init__(self, source: ApiError) -> None:
        super().__init__(source.message, field=source.field, hint=source.hint, **source.details)
        self.server_code = str(source.details.get("code") or ApiError.code)

    def to_dict(self) -> dict[str, Any]:
        """Return the error object, with the server's code."""
        return super().to_dict() | {"code": self.server_code}

    def diagnostics(self) -> str:
        """Return the human diagnostics, with the server's code."""
        _, sep, rest = super().diagnostics().partition("\n")
        return f"error[{self.server_code}]: {self.message}{sep}{rest}"


def _unreachable_hint(url: str) -> str:
    return f"Is `proctor serve` running and reachable at {url}? Check --server (or PROCTOR_SERVER)."


class Remote:
    """A Proctor server, as the CLI reads and acts on it.

    Args:
        url: Where ``proctor serve`` listens (``--server``).
        token: The bearer token (``--token``); None for a server run with ``--unsafe-no-auth``.
        timeout: Seconds per request.
    """

    def __init__(self, url: str, token: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._client = ProctorClient(self.url, token, timeout=timeout)

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except ApiError as exc:
            err = exc if isinstance(exc, RemoteApiError) else RemoteApiError(exc)
            if err.server_code == "unauthenticated" and not self.token and not err.hint:
                err.hint = "Give a token: --token or PROCTOR_TOKEN (`proctor tokens create`)."
            raise err from exc.__cause__
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.TransportError):
                raise StorageError(exc.message, hint=_unreachable_hint(self.url)) from cause
            raise

    # ------------------------------------------------------------------ plans

    def submit(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a manifest as the token's agent; return the plan JSON."""
        with self._errors():
            return self._client.submit(plan)

    def plans(
        self, *, status: str | None = None, agent: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` plans the token may read, newest first."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        with self._errors():
            while len(out) < limit:
                page = self._client.list(
                    status=status,
                    agent=agent,
                    limit=min(_PLANS_PAGE, limit - len(out)),
                    cursor=cursor,
                )
                out.extend(page["plans"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        return out[:limit]

    def plan(self, plan_id: str, *, events: bool = False) -> dict[str, Any]:
        """Return a plan's JSON; with ``events``, its audit events too (as ``show`` prints).

        ``events`` is left out when a plan that is still waiting sent none within
        ``QUIET_SECONDS`` (every plan has at least its submission event).
        """
        with self._errors():
            doc = self._client.get(plan_id)
        if events:
            bodies = self.plan_events(plan_id, terminal=_terminal(doc["status"]))
            if not bodies:
                print(
                    f"warning: the server sent no audit events of {plan_id} within "
                    f"{QUIET_SECONDS:g} s; they are left out",
                    file=sys.stderr,
                )
            else:
                doc["events"] = [
                    {
                        "seq": b["seq"],
                        "type": b["type"],
                        "timestamp": b["timestamp"],
                        "step_id": b.get("step_id"),
                    }
                    for b in bodies
                ]
        return doc

    def confirm(self, plan_id: str, *, comment: str = "") -> dict[str, Any]:
        """Confirm as the token's user; return the plan JSON."""
        with self._errors():
            return self._client.confirm(plan_id, comment=comment or None)

    def approve(self, plan_id: str, *, comment: str = "", otp: str | None = None) -> dict[str, Any]:
        """Approve as the token's approver (its groups are its roles); return the plan JSON."""
        with self._errors():
            return self._client.approve(plan_id, otp=otp, comment=comment or None)

    def reject(self, plan_id: str, *, comment: str = "") -> dict[str, Any]:
        """Reject as the token's principal; return the plan JSON."""
        with self._errors():
            return self._client.reject(plan_id, comment=comment or None)

    def undo(self, plan_id: str, *, comment: str = "") -> dict[str, Any]:
        """Undo as the token's user (or an admin); return the plan JSON."""
        with self._errors():
            return self._client.undo(plan_id, comment=comment or None)

    def resolve(
        self, plan_id: str, step_id: str, *, succeeded: bool, comment: str = ""
    ) -> dict[str, Any]:
        """Resolve an unknown step as the token's admin; return the plan JSON."""
        with self._errors():
            return self._client.resolve(
                plan_id, step_id, succeeded=succeeded, comment=comment or None
            )

    # ------------------------------------------------------------------ audit

    def plan_events(self, plan_id: str, *, terminal: bool, after: int = -1) -> list[dict[str, Any]]:
        """Return a plan's audit events with ``seq > after``, each exactly as signed (parsed).

        Read from the plan's event stream, which needs only read access to the plan. The
        stream of a terminal plan ends by itself; that of a waiting plan is read until it
        has been quiet for ``QUIET_SECONDS``.
        """
        headers = {"Accept": "text/event-stream", "User-Agent": "proctor-cli/1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if after >= 0:
            headers["Last-Event-ID"] = str(after)
        read = self.timeout if terminal else QUIET_SECONDS
        out: list[dict[str, Any]] = []
        with (
            self._errors(),
            httpx.Client(base_url=self.url, timeout=httpx.Timeout(self.timeout, read=read)) as http,
        ):
            try:
                with http.stream(
                    "GET", f"/v1/plans/{quote(plan_id, safe='')}/events", headers=headers
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise error_from_response(response.status_code, response.content)
                    for event in parse_sse(response.iter_lines()):
                        out.append(event.json())
            except httpx.ReadTimeout:
                if terminal:
                    raise _timed_out(self.url) from None
                # quiet: every event so far has been sent
            except httpx.TransportError as exc:
                raise StorageError(
                    f"the request to Proctor at {self.url} failed: {type(exc).__name__}: {exc}",
                    hint=_unreachable_hint(self.url),
                ) from exc
        return out

    def audit_events(
        self, *, after: int = -1, limit: int = 50, plan_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` audit events with ``seq > after`` (auditor; or a plan's)."""
        if plan_id is not None:
            with self._errors():
                status = self._client.get(plan_id)["status"]
            events = self.plan_events(plan_id, terminal=_terminal(status), after=after)
            return events[:limit]
        out: list[dict[str, Any]] = []
        with self._errors():
            cursor: int | None = after
            while cursor is not None and len(out) < limit:
                page = self._client.audit_events(
                    after=cursor, limit=min(_EVENTS_PAGE, limit - len(out))
                )
                out.extend(page["events"])
                cursor = page.get("next_after")
        return out[:limit]

    def checkpoint(self) -> dict[str, Any]:
        """Return the latest checkpoint as ``audit checkpoint --json`` prints it."""
        with self._errors():
            note = self._client.checkpoint()
        lines = note.split("\n")
        try:
            size = int(lines[1])
            root_hash = lines[2]
        except (IndexError, ValueError) as exc:
            raise ApiError(
                f"the checkpoint from {self.url} is not a checkpoint note",
                code=ApiError.code,
            ) from exc
        return {"size": size, "root_hash": root_hash, "note": note}

    def inclusion_proof(self, index: int, size: int | None = None) -> dict[str, Any]:
        """Return an inclusion proof, as ``audit prove --index`` prints it."""
        with self._errors():
            return self._client.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int) -> dict[str, Any]:
        """Return a consistency proof, as ``audit prove --from --to`` prints it."""
        with self._errors():
            return self._client.consistency_proof(old, new)

    def keys(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Return the signing keys as ``keys list --json`` rows, and the verifier keys."""
        with self._errors():
            doc = self._client.keys()
        vkeys: list[str] = list(doc["vkeys"])
        rows = [
            {
                "key_id": k["key_id"],
                "public_key": k["public_key"],
                "created_at": k["created_at"],
                "not_after": k["not_after"],
                "vkey": v,
                "current": k["current"],
            }
            for k, v in zip(doc["keys"], vkeys, strict=True)
        ]
        return rows, vkeys


def _terminal(status: str) -> bool:
    # As ``PlanRecord.terminal``: the server ends a terminal plan's event stream itself.
    try:
        return PlanStatus(status) in TERMINAL
    except ValueError:  # a status this CLI does not know: read until quiet
        return False


def _timed_out(url: str) -> ProctorError:
    return StorageError(
        f"the request to Proctor at {url} timed out while streaming events",
        hint=_unreachable_hint(url),
    )
