"""One storage suite, run against every backend (memory, SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from proctor.audit.events import GENESIS, seal
from proctor.audit.keys import LocalSigner
from proctor.core.lifecycle import ApprovalRecord, PlanRecord, PlanStatus, StepRecord, StepStatus
from proctor.errors import StorageError
from proctor.storage import open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SIGNER = LocalSigner(b"\x03" * 32)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    elif request.param == "memory":
        url = "memory://"
    else:
        url = f"sqlite:///{tmp_path / 'p.db'}"
    s = open_store(url)
    yield s
    s.close()


def _plan(pid="p1", status=PlanStatus.AWAITING_APPROVAL, at=T0, agent="bot"):
    return PlanRecord(
        plan_id=pid,
        digest="sha256:" + "a" * 64,
        status=status,
        agent_id=agent,
        on_behalf_of="alice",
        manifest={"intent": "x", "steps": []},
        created_at=at,
        updated_at=at,
        assessment={"total": 12},
        decision={"outcome": "approve"},
        policy_version="v1",
        outcome="approve",
        steps=(
            StepRecord(
                step_id="s1",
                index=0,
                action="a.b",
                params={"n": 1},
                status=StepStatus.PENDING,
                undo_until=at + timedelta(minutes=5),
            ),
        ),
        approvals=(
            ApprovalRecord(
                principal="fiona",
                kind="approve",
                roles=("finance",),
                digest="sha256:d",
                policy_version="v1",
                comment="ok",
                created_at=at,
            ),
        ),
        expires_at=at + timedelta(hours=1),
    )


def _event(tx, type_="t.e"):
    head = tx.audit_head()
    body = {"type": type_, "timestamp": T0.isoformat(), "plan_id": None, "step_id": None}
    row = seal(body, seq=head.size, prev_hash=head.last_hash, signer=SIGNER)
    tx.append_events([row])
    return row


class TestPlans:
    def test_missing_plan(self, store):
        """An unknown plan id reads as None."""
        assert store.get_plan("nope") is None

    def test_round_trip(self, store):
        """A saved plan reads back equal, steps and approvals included."""
        with store.transaction() as tx:
            tx.save_plan(_plan())
        assert store.get_plan("p1") == _plan()

    def test_replace(self, store):
        """Saving again replaces the plan."""
        with store.transaction() as tx:
            tx.save_plan(_plan())
        with store.transaction() as tx:
            tx.save_plan(dataclasses.replace(_plan(), status=PlanStatus.RUNNING))
        assert store.get_plan("p1").status is PlanStatus.RUNNING

    def test_reads_inside_transaction_see_writes(self, store):
        """A transaction reads its own writes."""
        with store.transaction() as tx:
            tx.save_plan(_plan())
            assert tx.get_plan("p1") is not None

    def test_rollback_on_error(self, store):
        """An exception inside a transaction leaves nothing written."""

        def crash():
            with store.transaction() as tx:
                tx.save_plan(_plan())
                _event(tx)
                raise RuntimeError("crash mid-way")

        with pytest.raises(RuntimeError):
            crash()
        assert store.get_plan("p1") is None
        assert store.event_count() == 0

    def test_list_filters_and_cursor(self, store):
        """Listing filters by status and agent, newest first, and pages with a cursor."""
        with store.transaction() as tx:
            for i in range(5):
                tx.save_plan(
                    _plan(
                        f"p{i}",
                        at=T0 + timedelta(seconds=i),
                        status=PlanStatus.SUCCEEDED if i % 2 else PlanStatus.DENIED,
                        agent="a" if i < 3 else "b",
                    )
                )
        assert [p.plan_id for p in store.list_plans()] == ["p4", "p3", "p2", "p1", "p0"]
        assert [p.plan_id for p in store.list_plans(status="succeeded")] == ["p3", "p1"]
        assert [p.plan_id for p in store.list_plans(agent_id="b")] == ["p4", "p3"]
        first = store.list_plans(limit=2)
        cursor = f"{first[-1].created_at.isoformat()}|{first[-1].plan_id}"
        assert [p.plan_id for p in store.list_plans(limit=2, before=cursor)] == ["p2", "p1"]


class TestEvents:
    def test_empty_head(self, store):
        """An empty log's head is size 0 with the genesis hash."""
        with store.transaction() as tx:
            head = tx.audit_head()
        assert (head.size, head.last_hash) == (0, GENESIS)

    def test_append_and_read(self, store):
        """Events append in order and read back byte-identical."""
        with store.transaction() as tx:
            rows = [_event(tx) for _ in range(3)]
        assert store.event_count() == 3
        assert store.read_events() == rows
        assert store.read_events(after=0, limit=1) == rows[1:2]
        assert list(store.iter_events(batch=2)) == rows

    def test_gap_is_refused(self, store):
        """An event that does not continue the log is refused and nothing is written."""
        with store.transaction() as tx:
            _event(tx)
        head_row = store.read_events()[0]
        bad = dataclasses.replace(head_row, seq=5)
        with pytest.raises(StorageError), store.transaction() as tx:
            tx.append_events([bad])
        assert store.event_count() == 1

    def test_filter_by_plan(self, store):
        """Events can be read per plan."""
        with store.transaction() as tx:
            head = tx.audit_head()
            body = {"type": "x", "timestamp": T0.isoformat(), "plan_id": "p9", "step_id": "s1"}
            tx.append_events([seal(body, seq=head.size, prev_hash=head.last_hash, signer=SIGNER)])
            _event(tx)
        assert [e.plan_id for e in store.read_events(plan_id="p9")] == ["p9"]

    def test_meta(self, store):
        """Metadata values persist."""
        with store.transaction() as tx:
            tx.put_meta("k", "v")
        assert store.get_meta("k") == "v"
        assert store.get_meta("missing") is None


class TestTokensAndOutbox:
    def test_tokens(self, store):
        """Tokens are found by hash and listed; revocation persists."""
        from proctor.core.principals import TokenRecord

        t = TokenRecord(
            token_id="t1",
            name="bot",
            roles=("agent",),
            groups=(),
            token_hash="sha256:h",
            created_at=T0,
        )
        with store.transaction() as tx:
            tx.save_token(t)
        assert store.find_token("sha256:h") == t
        assert store.find_token("sha256:other") is None
        with store.transaction() as tx:
            tx.save_token(dataclasses.replace(t, revoked_at=T0 + timedelta(hours=1)))
        assert store.list_tokens()[0].revoked_at is not None

    def test_outbox(self, store):
        """Deliveries come due in order and leave the due list once delivered or dead."""
        from proctor.core.notifications import Delivery, DeliveryStatus

        a = Delivery(
            delivery_id="a",
            event="plan.decided",
            target="hook",
            payload=b"{}",
            created_at=T0,
            next_at=T0,
        )
        b = dataclasses.replace(a, delivery_id="b", next_at=T0 + timedelta(minutes=5))
        with store.transaction() as tx:
            tx.enqueue([a, b])
        assert [d.delivery_id for d in store.due_deliveries(T0)] == ["a"]
        assert [d.delivery_id for d in store.due_deliveries(T0 + timedelta(minutes=6))] == [
            "a",
            "b",
        ]
        with store.transaction() as tx:
            tx.save_delivery(dataclasses.replace(a, status=DeliveryStatus.DEAD, attempts=8))
        assert [d.delivery_id for d in store.deliveries(status="dead")] == ["a"]
        assert store.due_deliveries(T0) == []


class TestTimers:
    def test_due_plans(self, store):
        """Only plans whose expiry or rollback TTL has come are due."""
        waiting = _plan("wait", status=PlanStatus.AWAITING_APPROVAL)  # expires at T0 + 1 h
        done = dataclasses.replace(_plan("done", status=PlanStatus.SUCCEEDED), expires_at=None)
        step = dataclasses.replace(
            done.steps[0], status=StepStatus.SUCCEEDED, rollback_at=T0 + timedelta(minutes=30)
        )
        done = done.with_step(step)
        quiet = dataclasses.replace(_plan("quiet", status=PlanStatus.DENIED), expires_at=None)
        with store.transaction() as tx:
            for p in (waiting, done, quiet):
                tx.save_plan(p)
        assert store.due_plans(T0) == []
        assert [p.plan_id for p in store.due_plans(T0 + timedelta(minutes=31))] == ["done"]
        assert [p.plan_id for p in store.due_plans(T0 + timedelta(hours=2))] == ["done", "wait"]


class TestLeasesAndGuardState:
    def test_lease_fields_round_trip_and_claimable(self, store):
        running = dataclasses.replace(_plan("r1", status=PlanStatus.RUNNING), updated_at=T0)
        held = running.leased("host:1:2", T0 + timedelta(seconds=30))
        lapsed = dataclasses.replace(running, plan_id="r2").leased("dead", T0 - timedelta(1))
        free = dataclasses.replace(running, plan_id="r3")
        waiting = _plan("w1")
        with store.transaction() as tx:
            for p in (held, lapsed, free, waiting):
                tx.save_plan(p)
        got = store.get_plan("r1")
        assert got.lease_owner == "host:1:2"
        with store.transaction() as tx:
            assert tx.lease_of("r1") == ("host:1:2", "running")
            assert tx.lease_of("r3") == (None, "running")
            assert tx.lease_of("nope") is None
        assert got.lease_until == T0 + timedelta(seconds=30)
        ids = {p.plan_id for p in store.claimable_plans(T0)}
        assert ids == {"r2", "r3"}
        # Once the lease lapses, the held plan is claimable too.
        later = {p.plan_id for p in store.claimable_plans(T0 + timedelta(seconds=31))}
        assert later == {"r1", "r2", "r3"}

    def test_new_plan_fields_round_trip(self, store):
        p = dataclasses.replace(
            _plan(status=PlanStatus.COMPENSATING),
            review_verdict="wrong",
            deadline=T0 + timedelta(minutes=15),
            compensation={"reason": "undo", "final": "undone"},
        )
        p = p.with_step(dataclasses.replace(p.steps[0], canary={"ok": True}, drift={"n": 1}))
        with store.transaction() as tx:
            tx.save_plan(p)
        got = store.get_plan(p.plan_id)
        assert got == p

    def test_guard_state_set_read_delete(self, store):
        with store.transaction() as tx:
            assert tx.get_state("kill", "global") is None
            tx.put_state("kill", "global", {"on": True, "by": "ops"}, at=T0)
            tx.put_state("kill", "agent:bot", {"on": True}, at=T0)
            # Reads inside the transaction see its own writes.
            assert tx.get_state("kill", "global") == {"on": True, "by": "ops"}
        assert store.list_state("kill") == {
            "global": {"on": True, "by": "ops"},
            "agent:bot": {"on": True},
        }
        with store.transaction() as tx:
            tx.put_state("kill", "global", None, at=T0)
        assert store.list_state("kill") == {"agent:bot": {"on": True}}
        assert store.list_state("breaker") == {}

    def test_state_write_rolls_back_with_its_transaction(self, store):
        def fail():
            with store.transaction() as tx:
                tx.put_state("kill", "global", {"on": True}, at=T0)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail()
        assert store.list_state("kill") == {}

    def test_counters_bump_and_sum_over_buckets(self, store):
        with store.transaction() as tx:
            assert tx.bump("rate:agent:bot", "2026-01-01T00:00") == (1, 0)
            assert tx.bump("rate:agent:bot", "2026-01-01T00:00", amount=250) == (2, 250)
            tx.bump("rate:agent:bot", "2026-01-01T00:01", count=3, amount=5)
            tx.bump("rate:agent:other", "2026-01-01T00:01")
            assert tx.counter_sum("rate:agent:bot", "2026-01-01T00:00") == (5, 255)
        assert store.counter_sum("rate:agent:bot", "2026-01-01T00:01") == (3, 5)
        assert store.counter_sum("rate:agent:bot", "2026-01-01T00:02") == (0, 0)
        assert store.counter_sum("nothing", "") == (0, 0)

        def fail():
            with store.transaction() as tx:
                tx.bump("rate:agent:bot", "2026-01-01T00:01", count=100)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail()
        assert store.counter_sum("rate:agent:bot", "") == (5, 255)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request, tmp_path):
    """A database several store instances (replicas, processes) open at once."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _in_threads(fn, n):
    import threading

    errors = []

    def run(i):
        try:
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


class TestSeveralWriters:
    """What replicas rely on: one store instance each, one database."""

    def test_concurrent_appenders_make_one_linear_chain(self, shared_url):
        from proctor.audit.events import KeyInfo, verify_events

        stores = [open_store(shared_url) for _ in range(4)]
        try:

            def append(i):
                for _ in range(25):
                    with stores[i].transaction() as tx:
                        _event(tx, f"writer.{i}")

            _in_threads(append, 4)
            rows = list(stores[0].iter_events())
            assert [r.seq for r in rows] == list(range(100))
            keys = {k: KeyInfo(v) for k, v in SIGNER.public_keys().items()}
            assert verify_events(rows, keys).ok  # no fork, no gap: every prev_hash links
        finally:
            for s in stores:
                s.close()

    def test_one_claimer_wins_a_plan(self, shared_url):
        stores = [open_store(shared_url) for _ in range(4)]
        try:
            with stores[0].transaction() as tx:
                tx.save_plan(_plan("c1", status=PlanStatus.RUNNING))
            won = []

            def claim(i):
                with stores[i].transaction() as tx:
                    p = tx.get_plan("c1")
                    if p.lease_owner is None:
                        tx.save_plan(p.leased(f"w{i}", T0 + timedelta(seconds=30)))
                        won.append(i)

            _in_threads(claim, 4)
            assert len(won) == 1
            assert stores[0].get_plan("c1").lease_owner == f"w{won[0]}"
        finally:
            for s in stores:
                s.close()

    def test_concurrent_bumps_are_exact(self, shared_url):
        stores = [open_store(shared_url) for _ in range(4)]
        try:

            def bump(i):
                for _ in range(50):
                    with stores[i].transaction() as tx:
                        tx.bump("budget:global:*", "2026-11", count=1, amount=7)

            _in_threads(bump, 4)
            assert stores[0].counter_sum("budget:global:*", "2026-11") == (200, 1400)
        finally:
            for s in stores:
                s.close()
