"""The protocols the core and the app need from the outside world.

Adapters implement them (``storage/``, ``policy/``, ``audit/keys.py``, ``tools/``) and meet in
``bootstrap.py``. ``proctor.testing`` ships in-memory stand-ins.

NOTE(design): the ports are synchronous. SQLite, the default store, is synchronous, and the
governed hot path (one plan through validate → decide → execute → audit) is measured in
hundreds of microseconds, where an event-loop hop per call is a visible cost. The HTTP
service runs the gateway in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proctor.core.notifications import Delivery
    from proctor.core.principals import TokenRecord

__all__ = [
    "HANDLER_RESULT_KEYS",
    "AuditHead",
    "CheckpointRow",
    "Clock",
    "EventListener",
    "EventRow",
    "PolicyEngine",
    "Signer",
    "StepUp",
    "StepUpCheck",
    "Store",
    "ToolCall",
    "Tools",
    "Transaction",
    "event_key_id",
]


class Clock(Protocol):
    """Where time comes from. Always timezone-aware UTC."""

    def now(self) -> datetime:
        """Return the current time (UTC)."""
        ...


class Signer(Protocol):
    """Signs audit events and checkpoints; a KMS can hold the private key."""

    @property
    def key_id(self) -> str:
        """The id of the key that signs now."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the Ed25519 signature of ``data``."""
        ...

    def public_keys(self) -> Mapping[str, bytes]:
        """Return every public key that may verify this log's events, by key id."""
        ...


class PolicyEngine(Protocol):
    """Answers one policy query per plan (see docs/policy.md for the contract)."""

    @property
    def version(self) -> str:
        """``sha256:<hex>`` of the loaded bundle."""
        ...

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        """Return the raw value of ``data.proctor.decision`` for ``input``.

        Raises:
            PolicyEngineError: when the result is undefined or the engine reports an error.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """What a handler receives besides its params."""

    plan_id: str
    step_id: str
    idempotency_key: str
    on_behalf_of: str
    agent_id: str
    result: Any = None  # for compensations: the result of the step being undone


class StepUpCheck(Enum):
    """What checking a step-up code found: accepted (and now used), wrong, or used already.

    ``REUSED`` is kept apart from ``WRONG`` so that a genuine code presented twice (a
    double-click, one code for several approvals in its 30 s) is refused without counting as
    a guess towards the approver's lockout.
    """

    ACCEPTED = "accepted"
    WRONG = "wrong"
    REUSED = "reused"


class StepUp(Protocol):
    """Checks a second factor (a TOTP code) presented by an approver."""

    def check(self, principal: str, code: str | None) -> StepUpCheck:
        """Check ``code`` for ``principal`` and use it up when it is accepted.

        Returns ``REUSED`` only for a code that was valid for ``principal`` and can no longer
        be accepted because it (or a later one) was; anything else that is not accepted is
        ``WRONG``.
        """
        ...


HANDLER_RESULT_KEYS: frozenset[str] = frozenset({"cost", "compensation_params"})
"""The keys of a step's result that Proctor acts on, not just records.

``cost`` is what the step really cost (budgets settle it, breakers count it);
``compensation_params`` are the params its compensation runs with. A handler that runs in
Proctor's own process is trusted to say them. A result reported by the agent's own proxy
(``POST /v1/mcp/plans/{id}/outcome``) is not: it would let the agent zero its budget spend or
choose what a server-side compensation does, so such a report is refused.
"""


class Tools(Protocol):
    """Runs the handlers bound to catalog actions."""

    def run(self, path: str, params: Mapping[str, Any], call: ToolCall) -> Any:
        """Call the handler at import path ``path``; exceptions propagate."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    """One stored audit event: its index, canonical bytes and hash."""

    seq: int
    type: str
    plan_id: str | None
    step_id: str | None
    timestamp: str
    body: bytes  # the canonical JCS form, signature included: the Merkle leaf bytes
    hash: str  # sha256:<hex> of body; the next event's prev_hash


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRow:
    """A signed checkpoint as stored: tree size, root and the signed note text."""

    size: int
    root: bytes
    note: str
    created_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditHead:
    """The end of the log as seen inside a write transaction."""

    size: int  # number of events; the next event's seq
    last_hash: str  # hash of the last event, or the genesis value for an empty log
    last_body: bytes | None = None  # the last event's canonical bytes (None: an empty log)

    @property
    def key_id(self) -> str | None:
        """The key that signed the last event, None for an empty log.

        A writer whose key differs records the change first (``proctor.app.journal``). Read
        from the bytes when asked: a writer that appended the head itself knows its key
        (``AuditLog.head_key``), so the common append does not pay for it.
        """
        return None if self.last_body is None else event_key_id(self.last_body)


_KEY_ID = b'"key_id":"'


def event_key_id(body: bytes) -> str | None:
    """Return the ``key_id`` member of an event's canonical bytes, or None if there is none.

    Read without parsing JSON, for the log head of a write transaction: in RFC 8785 order
    the top-level ``key_id`` follows ``data`` (the only member that may nest one), and every
    later member is a string, a number, null or ``plan`` (``digest`` and ``summary``), in
    none of which ``"key_id":"`` can occur (a quote inside a string is escaped), so the last
    one in the bytes is the event's.
    """
    at = body.rfind(_KEY_ID)
    if at < 0:
        return None
    start = at + len(_KEY_ID)
    end = body.find(b'"', start)
    return body[start:end].decode("utf-8", "replace") if end > 0 else None


class Transaction(Protocol):
    """A write transaction: everything in it commits together or not at all."""

    def get_plan(self, plan_id: str) -> Any:
        """Return the ``PlanRecord`` or None, locked until the transaction ends.

        Reads see this transaction's writes. The lock makes read-check-write sequences (a
        lease claim, consuming an approval) atomic across processes and replicas.
        """
        ...

    def save_plan(self, record: Any) -> None:
        """Insert or replace a ``PlanRecord`` and its steps."""
        ...

    def lease_of(self, plan_id: str) -> tuple[str | None, str] | None:
        """Return the plan's ``(lease_owner, status)`` (locked, as ``get_plan``), or None.

        The executor's fencing check on every commit: cheaper than loading the plan.
        """
        ...

    def audit_head(self) -> AuditHead:
        """Return the log's head, locked for this transaction."""
        ...

    def append_events(self, rows: Sequence[EventRow]) -> None:
        """Append events; their seqs must continue the head without a gap."""
        ...

    def instance_events(self, type_: str) -> list[EventRow]:
        """Return the events of type ``type_`` that concern no plan, oldest first.

        This transaction's own appends included. For rare look-ups only (the ``keys.rotated``
        events, when a writer's signing key is not the head's): it reads the plan-less
        events, which the ``(plan_id, seq)`` index keeps together.
        """
        ...

    def put_meta(self, key: str, value: str) -> None:
        """Set an instance metadata value."""
        ...

    def add_checkpoint(self, row: CheckpointRow) -> None:
        """Store a signed checkpoint."""
        ...

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the largest checkpoint (reads see this transaction's writes)."""
        ...

    def node(self, level: int, index: int) -> bytes | None:
        """Return a stored Merkle node: only leaves (level 0) are stored, with their events."""
        ...

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        """Return stored nodes per level from index ``start[level]`` (default 0) on.

        At most ``limit`` per level when given (the tree reads a block of leaves at a time).
        """
        ...

    def save_token(self, token: TokenRecord) -> None:
        """Insert or replace an API token record."""
        ...

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        """Add webhook deliveries to the outbox (same transaction as their event)."""
        ...

    def save_delivery(self, delivery: Delivery) -> None:
        """Replace a delivery (after an attempt)."""
        ...

    def get_state(self, kind: str, key: str) -> Any:
        """Return a guard state value (a JSON value) or None; locked for this transaction."""
        ...

    def get_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """Return the values present among ``(kind, key)`` pairs, in one read (not locked)."""
        ...

    def put_state(self, kind: str, key: str, value: Any, *, at: datetime) -> None:
        """Set a guard state value (a JSON value); None deletes it."""
        ...

    def bump(self, name: str, bucket: str, *, count: int = 1, amount: int = 0) -> tuple[int, int]:
        """Add to a counter's bucket atomically; return the bucket's new (count, amount)."""
        ...

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        """Return (count, amount) summed over the counter's buckets ``>= since``."""
        ...

    def counter_sums(self, names: Sequence[str], since: str) -> dict[str, tuple[int, int]]:
        """``counter_sum`` of several counters over one window, in one statement.

        Every name is in the result ((0, 0) when it has no bucket in the window).
        """
        ...

    def lock_counters(self, names: Sequence[str]) -> None:
        """Lock counters by name until the transaction ends, before reading and bumping them.

        A check-then-bump (a rate limit, a budget) is exact only when no other transaction
        bumps the counter between the read and the write. Stores whose write transactions
        already run one at a time (SQLite, memory) need nothing; PostgreSQL takes a
        transaction-scoped advisory lock per name, in sorted order (no deadlock between two
        transactions locking overlapping sets).
        """
        ...


class EventListener(Protocol):
    """Called inside the transaction that appends events (for example, the webhook outbox).

    Whatever it writes through ``tx`` commits or rolls back with the events themselves.
    """

    def on_events(self, tx: Transaction, rows: Sequence[EventRow]) -> None:
        """React to freshly sealed events."""
        ...


class Store(Protocol):
    """Durable state: plans, steps, approvals and the audit log."""

    def transaction(self, *, durable: bool = True) -> AbstractContextManager[Transaction]:
        """Open a write transaction; it commits when the block exits without an exception.

        ``durable=False`` may skip the fsync: the commit survives a process crash but not
        necessarily a power loss. Use it only for records that no client has been told of,
        and whose loss cannot make an effect happen twice (the start of a step whose action
        is not idempotent is durable).
        """
        ...

    def get_plan(self, plan_id: str) -> Any:
        """Return the ``PlanRecord`` or None."""
        ...

    def list_plans(
        self,
        *,
        status: str | None = None,
        statuses: Sequence[str] | None = None,
        agent_id: str | None = None,
        on_behalf_of: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Any]:
        """Return plans, newest first; ``before`` is a cursor (a plan's ``created_at|id``).

        Every filter given must hold: ``status`` one status, ``statuses`` any of a set (an
        empty set matches nothing), ``agent_id`` the agent, ``on_behalf_of`` the user (the
        same person by ``person_key``: ``Bob`` lists the plans made for ``bob``).
        """
        ...

    def waiting_plans(
        self,
        status: str,
        *,
        on_behalf_of: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[Any]:
        """Return the plans in ``status``, the soonest deadline (``expires_at``) first.

        Ties and plans without a deadline (listed last) go by plan id. ``after`` is a cursor,
        the last plan's ``expires_at|plan_id`` (``expires_at`` in ``isoformat``, empty when
        the plan has none); ``on_behalf_of`` keeps one user's plans (names compared by
        ``person_key``, as ``list_plans`` does).
        """
        ...

    def count_plans(self, statuses: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Return, per status among ``statuses`` with plans, their number and oldest ``created_at``.

        Every plan in the status counts (no page limit): the backlog gauges read it at each
        scrape, and a backlog is when they matter. Statuses without plans are absent.
        """
        ...

    def read_events(
        self, *, after: int = -1, limit: int = 1000, plan_id: str | None = None
    ) -> list[EventRow]:
        """Return events with ``seq > after`` in order."""
        ...

    def due_plans(self, now: datetime, *, limit: int = 500) -> list[Any]:
        """Return ``PlanRecord``s whose next timer (expiry, rollback TTL) is due."""
        ...

    def claimable_plans(self, now: datetime, *, limit: int = 100) -> list[Any]:
        """Return running or compensating ``PlanRecord``s whose lease is absent or lapsed."""
        ...

    def iter_events(self, *, batch: int = 5000) -> Iterator[EventRow]:
        """Yield every event in order."""
        ...

    def event_count(self) -> int:
        """Return the number of events."""
        ...

    def get_meta(self, key: str) -> str | None:
        """Return an instance metadata value."""
        ...

    def checkpoints(self) -> list[CheckpointRow]:
        """Return every signed checkpoint, smallest first."""
        ...

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the largest checkpoint."""
        ...

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        """Return stored Merkle nodes per level from index ``start[level]`` on.

        At most ``limit`` per level when given.
        """
        ...

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash, revoked or not."""
        ...

    def list_tokens(self) -> list[TokenRecord]:
        """Return every token, oldest first."""
        ...

    def due_deliveries(self, now: datetime, *, limit: int = 100) -> list[Delivery]:
        """Return pending deliveries whose ``next_at`` has come, oldest first."""
        ...

    def deliveries(self, *, status: str, limit: int = 100) -> list[Delivery]:
        """Return deliveries in ``status``, newest first."""
        ...

    def count_deliveries(self, statuses: Sequence[str]) -> dict[str, int]:
        """Return the number of deliveries per status of ``statuses`` (absent: none)."""
        ...

    def list_state(self, kind: str) -> dict[str, Any]:
        """Return every guard state value of ``kind``, by key."""
        ...

    def read_state(self, kind: str, key: str) -> Any:
        """Return one state value (None if absent), outside any write transaction."""
        ...

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        """Return (count, amount) summed over the counter's buckets ``>= since``."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...
