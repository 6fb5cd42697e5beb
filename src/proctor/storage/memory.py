"""The in-memory store: the same contract as SQLite, kept in dictionaries.

For tests, benchmarks and throwaway instances (``proctor demo``). A write transaction
buffers its writes and applies them only on commit, so a failure mid-way leaves nothing
half-written, as in the durable stores.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import orjson

# _evolve: the records' fast ``dataclasses.replace`` (half its cost; a test keeps it valid).
from proctor.core.approvals import user_key
from proctor.core.lifecycle import PlanRecord, PlanStatus, _evolve
from proctor.core.notifications import Delivery, DeliveryStatus
from proctor.core.ports import AuditHead, CheckpointRow, EventRow
from proctor.core.principals import TokenRecord
from proctor.errors import StorageError

__all__ = ["MemoryStore"]

_GENESIS = "sha256:" + "0" * 64
_WORKING = (PlanStatus.RUNNING, PlanStatus.COMPENSATING)


def _leaf(body: bytes) -> bytes:
    """RFC 9162 leaf hash of an event's bytes (as ``proctor.audit.merkle.leaf_hash``)."""
    return hashlib.sha256(b"\x00" + body).digest()


def _copy(value: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(value))  # JSON already (the gateway checked): fast
    except (TypeError, ValueError):
        return copy.deepcopy(value)


def _detached(record: PlanRecord, prev: PlanRecord | None) -> PlanRecord:
    """``record`` sharing no mutable data with the manifest its caller submitted.

    The durable stores serialise; without this, a caller that changes a list it passed as a
    param after the decision (while the plan waits for approval, or before an undo) would
    change what runs. A plan's manifest and params do not change once it exists, so a record
    derived from the submitted one (not from the stored one) takes the stored copies
    (``prev``'s) instead of being copied again.
    """
    if prev is not None and prev.digest == record.digest:  # the same plan: same manifest
        steps = tuple(
            s if s.params is p.params else _evolve(s, {"params": p.params})
            for s, p in zip(record.steps, prev.steps, strict=True)
        )
        return _evolve(record, {"manifest": prev.manifest, "steps": steps})
    steps = tuple(_evolve(s, {"params": _copy(s.params)}) for s in record.steps)
    return _evolve(record, {"manifest": _copy(record.manifest), "steps": steps})


class _Tx:
    __slots__ = (
        "_checkpoints",
        "_counters",
        "_deliveries",
        "_events",
        "_meta",
        "_plans",
        "_state",
        "_store",
        "_tokens",
    )

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._plans: dict[str, PlanRecord] = {}
        self._events: list[EventRow] = []
        self._meta: dict[str, str] = {}
        self._checkpoints: list[CheckpointRow] = []
        self._tokens: dict[str, TokenRecord] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._state: dict[tuple[str, str], Any] = {}
        self._counters: dict[str, dict[str, tuple[int, int]]] = {}  # name → bucket → (n, sum)

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        return self._plans.get(plan_id) or self._store._plans.get(plan_id)

    def save_plan(self, record: PlanRecord) -> None:
        prev = self.get_plan(record.plan_id)
        if prev is None or record.manifest is not prev.manifest:
            record = _detached(record, prev)
        self._plans[record.plan_id] = record

    def lease_of(self, plan_id: str) -> tuple[str | None, str] | None:
        p = self.get_plan(plan_id)
        return (p.lease_owner, p.status.value) if p is not None else None

    def audit_head(self) -> AuditHead:
        events = self._events or self._store._events
        if not events:
            return AuditHead(size=0, last_hash=_GENESIS)
        last = events[-1]
        return AuditHead(size=last.seq + 1, last_hash=last.hash, last_body=last.body)

    def append_events(self, rows: Sequence[EventRow]) -> None:
        expected = self.audit_head().size
        for r in rows:
            if r.seq != expected:
                raise StorageError(f"event seq {r.seq} does not continue the log at {expected}")
            self._events.append(r)
            expected += 1

    def instance_events(self, type_: str) -> list[EventRow]:
        return [
            e
            for e in (*self._store._events, *self._events)
            if e.plan_id is None and e.type == type_
        ]

    def put_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def add_checkpoint(self, row: CheckpointRow) -> None:
        if any(c.size == row.size for c in (*self._store._checkpoints, *self._checkpoints)):
            raise StorageError(f"a checkpoint of size {row.size} exists")
        self._checkpoints.append(row)

    def latest_checkpoint(self) -> CheckpointRow | None:
        rows = [*self._store._checkpoints, *self._checkpoints]
        return max(rows, key=lambda c: c.size) if rows else None

    def node(self, level: int, index: int) -> bytes | None:
        done = self._store._events
        if level != 0 or index < 0:
            return None
        if index < len(done):
            return _leaf(done[index].body)
        index -= len(done)
        return _leaf(self._events[index].body) if index < len(self._events) else None

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        # The transaction's own events count, as in ``node``.
        first = start.get(0, 0)
        end = None if limit is None else first + limit
        done = self._store._events
        n = len(done)
        mine = self._events[max(first - n, 0) : None if end is None else max(end - n, 0)]
        events = done[first:end] + mine
        return {0: [_leaf(e.body) for e in events]} if events else {}

    def save_token(self, token: TokenRecord) -> None:
        self._tokens[token.token_id] = token

    def enqueue(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._deliveries[d.delivery_id] = d

    def save_delivery(self, delivery: Delivery) -> None:
        self._deliveries[delivery.delivery_id] = delivery

    def get_state(self, kind: str, key: str) -> Any:
        k = (kind, key)
        value = self._state[k] if k in self._state else self._store._state.get(k)
        return copy.deepcopy(value)

    def get_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        out = {}
        for kind, key in keys:
            value = self.get_state(kind, key)
            if value is not None:
                out[(kind, key)] = value
        return out

    def put_state(self, kind: str, key: str, value: Any, *, at: datetime) -> None:
        self._state[(kind, key)] = copy.deepcopy(value)

    def bump(self, name: str, bucket: str, *, count: int = 1, amount: int = 0) -> tuple[int, int]:
        mine = self._counters.setdefault(name, {})
        c, a = mine.get(bucket) or self._store._counters.get(name, {}).get(bucket, (0, 0))
        mine[bucket] = (c + count, a + amount)
        return mine[bucket]

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        merged = {**self._store._counters.get(name, {}), **self._counters.get(name, {})}
        return _sum(merged, since)

    def counter_sums(self, names: Sequence[str], since: str) -> dict[str, tuple[int, int]]:
        return {name: self.counter_sum(name, since) for name in names}

    def lock_counters(self, names: Sequence[str]) -> None:
        pass  # the store's lock is held for the whole transaction


def _sum(buckets: Mapping[str, tuple[int, int]], since: str) -> tuple[int, int]:
    """Sum one counter's buckets ``>= since`` (its own buckets only: not every counter's)."""
    count = amount = 0
    for bucket, (c, a) in buckets.items():
        if bucket >= since:
            count += c
            amount += a
    return count, amount


class MemoryStore:
    """Plans and events in process memory; lost when the process ends."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._plans: dict[str, PlanRecord] = {}
        self._order: list[str] = []
        self._events: list[EventRow] = []
        self._meta: dict[str, str] = {}
        self._checkpoints: list[CheckpointRow] = []
        self._tokens: dict[str, TokenRecord] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._state: dict[tuple[str, str], Any] = {}
        self._counters: dict[str, dict[str, tuple[int, int]]] = {}  # name → bucket → (n, sum)

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[_Tx]:
        """Open a write transaction; its writes apply only if the block succeeds."""
        with self._lock:
            tx = _Tx(self)
            yield tx
            for pid, rec in tx._plans.items():
                if pid not in self._plans:
                    self._order.append(pid)
                self._plans[pid] = rec
            self._events.extend(tx._events)
            self._meta.update(tx._meta)
            self._checkpoints.extend(tx._checkpoints)
            self._checkpoints.sort(key=lambda c: c.size)
            self._tokens.update(tx._tokens)
            self._deliveries.update(tx._deliveries)
            for k, v in tx._state.items():
                if v is None:
                    self._state.pop(k, None)
                else:
                    self._state[k] = v
            for name, buckets in tx._counters.items():
                self._counters.setdefault(name, {}).update(buckets)

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        """Return a plan or None."""
        return self._plans.get(plan_id)

    def list_plans(
        self,
        *,
        status: str | None = None,
        statuses: Sequence[str] | None = None,
        agent_id: str | None = None,
        on_behalf_of: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[PlanRecord]:
        """Return plans newest first, filtered; ``before`` is ``created_at|plan_id``."""
        with self._lock:
            plans = sorted(
                self._plans.values(), key=lambda p: (p.created_at.isoformat(), p.plan_id)
            )
        wanted = None if statuses is None else set(statuses)
        out = []
        for p in reversed(plans):
            if status and p.status.value != status:
                continue
            if wanted is not None and p.status.value not in wanted:
                continue
            if agent_id and p.agent_id != agent_id:
                continue
            if on_behalf_of and user_key(p.on_behalf_of) != user_key(on_behalf_of):
                continue
            if before and (p.created_at.isoformat(), p.plan_id) >= tuple(before.split("|", 1)):
                continue
            out.append(p)
            if len(out) >= limit:
                break
        return out

    def waiting_plans(
        self,
        status: str,
        *,
        on_behalf_of: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[PlanRecord]:
        """Return the plans in ``status``, soonest deadline first; ``after`` is a cursor."""

        # As the SQL stores order them: by deadline then id, plans without a deadline last.
        def key(p: PlanRecord) -> tuple[bool, str, str]:
            at = p.expires_at.isoformat() if p.expires_at else ""
            return (not at, at, p.plan_id)

        with self._lock:
            plans = [
                p
                for p in self._plans.values()
                if p.status.value == status
                and (not on_behalf_of or user_key(p.on_behalf_of) == user_key(on_behalf_of))
            ]
        plans.sort(key=key)
        if after:
            at, _, pid = after.partition("|")
            mark = (not at, at, pid)
            plans = [p for p in plans if key(p) > mark]
        return plans[:limit]

    def count_plans(self, statuses: Sequence[str]) -> dict[str, tuple[int, datetime]]:
        """Return, per status that has plans, their number and oldest ``created_at``."""
        wanted = set(statuses)
        out: dict[str, tuple[int, datetime]] = {}
        with self._lock:
            for p in self._plans.values():
                status = p.status.value
                if status not in wanted:
                    continue
                n, oldest = out.get(status, (0, p.created_at))
                out[status] = (n + 1, min(oldest, p.created_at))
        return out

    def due_plans(self, now: datetime, *, limit: int = 500) -> list[PlanRecord]:
        """Return plans whose next timer (expiry, rollback TTL) is at or before ``now``."""
        with self._lock:
            due = [p for p in self._plans.values() if p.timer_at is not None and p.timer_at <= now]
        due.sort(key=lambda p: p.timer_at or now)
        return due[:limit]

    def read_events(
        self, *, after: int = -1, limit: int = 1000, plan_id: str | None = None
    ) -> list[EventRow]:
        """Return events with ``seq > after``, in order."""
        with self._lock:
            rows = self._events[after + 1 :]
        if plan_id is not None:
            rows = [r for r in rows if r.plan_id == plan_id]
        return rows[:limit]

    def iter_events(self, *, batch: int = 5000) -> Iterator[EventRow]:
        """Yield every event in order."""
        with self._lock:
            rows = list(self._events)
        yield from rows

    def event_count(self) -> int:
        """Return the number of events."""
        return len(self._events)

    def get_meta(self, key: str) -> str | None:
        """Return a metadata value."""
        return self._meta.get(key)

    def checkpoints(self) -> list[CheckpointRow]:
        """Return every checkpoint, smallest first."""
        return list(self._checkpoints)

    def latest_checkpoint(self) -> CheckpointRow | None:
        """Return the largest checkpoint."""
        return self._checkpoints[-1] if self._checkpoints else None

    def load_nodes(
        self, start: Mapping[int, int], *, limit: int | None = None
    ) -> dict[int, list[bytes]]:
        """Return the Merkle leaves (level 0, the only one stored) from ``start[0]`` on."""
        first = start.get(0, 0)
        with self._lock:
            events = self._events[first : None if limit is None else first + limit]
        return {0: [_leaf(e.body) for e in events]} if events else {}

    def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash."""
        return next((t for t in self._tokens.values() if t.token_hash == token_hash), None)

    def list_tokens(self) -> list[TokenRecord]:
        """Return every token, oldest first."""
        return sorted(self._tokens.values(), key=lambda t: (t.created_at, t.token_id))

    def due_deliveries(self, now: datetime, *, limit: int = 100) -> list[Delivery]:
        """Return pending deliveries that are due, oldest first."""
        with self._lock:
            due = [
                d
                for d in self._deliveries.values()
                if d.status is DeliveryStatus.PENDING and d.next_at <= now
            ]
        return sorted(due, key=lambda d: d.next_at)[:limit]

    def deliveries(self, *, status: str, limit: int = 100) -> list[Delivery]:
        """Return deliveries in ``status``, newest first."""
        with self._lock:
            found = [d for d in self._deliveries.values() if d.status.value == status]
        return sorted(found, key=lambda d: d.created_at, reverse=True)[:limit]

    def count_deliveries(self, statuses: Sequence[str]) -> dict[str, int]:
        """Return the number of deliveries per status of ``statuses``."""
        wanted = set(statuses)
        out: dict[str, int] = {}
        with self._lock:
            for d in self._deliveries.values():
                if d.status.value in wanted:
                    out[d.status.value] = out.get(d.status.value, 0) + 1
        return out

    def claimable_plans(self, now: datetime, *, limit: int = 100) -> list[PlanRecord]:
        """Return running or compensating plans with no live lease, oldest first."""
        with self._lock:
            found = [
                p
                for p in self._plans.values()
                if p.status in _WORKING and (p.lease_until is None or p.lease_until <= now)
            ]
        return sorted(found, key=lambda p: p.updated_at)[:limit]

    def list_state(self, kind: str) -> dict[str, Any]:
        """Return every guard state value of ``kind``, by key."""
        with self._lock:
            return {k: copy.deepcopy(v) for (kd, k), v in self._state.items() if kd == kind}

    def read_state(self, kind: str, key: str) -> Any:
        """Return one state value (None if absent), outside any write transaction."""
        with self._lock:
            return copy.deepcopy(self._state.get((kind, key)))

    def counter_sum(self, name: str, since: str) -> tuple[int, int]:
        """Return (count, amount) summed over the counter's buckets ``>= since``."""
        with self._lock:
            return _sum(self._counters.get(name, {}), since)

    def close(self) -> None:
        """Nothing to release."""
