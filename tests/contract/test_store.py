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

    def test_list_filters_by_user_and_a_set_of_statuses(self, store):
        """``on_behalf_of`` keeps one user's plans, ``statuses`` any of a set (an empty set
        none), with the other filters and the cursor."""
        kinds = (PlanStatus.SUCCEEDED, PlanStatus.FAILED, PlanStatus.DENIED)
        with store.transaction() as tx:
            for i in range(6):
                rec = _plan(f"p{i}", at=T0 + timedelta(seconds=i), status=kinds[i % 3])
                tx.save_plan(dataclasses.replace(rec, on_behalf_of="bob" if i % 2 else "alice"))

        def ids(**kw):
            return [p.plan_id for p in store.list_plans(**kw)]

        assert ids(on_behalf_of="bob") == ["p5", "p3", "p1"]
        assert ids(statuses=["succeeded", "failed"]) == ["p4", "p3", "p1", "p0"]
        assert ids(statuses=["succeeded", "failed"], on_behalf_of="alice") == ["p4", "p0"]
        assert ids(statuses=[]) == []
        assert ids(status="denied", statuses=["denied", "failed"]) == ["p5", "p2"]
        cursor = f"{(T0 + timedelta(seconds=4)).isoformat()}|p4"
        assert ids(on_behalf_of="alice", before=cursor, limit=1) == ["p2"]

    def test_waiting_plans_soonest_deadline_first(self, store):
        """One status, by deadline then plan id, plans without a deadline last; the cursor
        continues exactly after the last plan read, across the plans without one."""
        deadlines = {
            "w-late": T0 + timedelta(hours=3),
            "w-soon": T0 + timedelta(hours=1),
            "w-b": T0 + timedelta(hours=2),
            "w-a": T0 + timedelta(hours=2),
            "w-none2": None,
            "w-none1": None,
        }
        with store.transaction() as tx:
            for i, (pid, until) in enumerate(deadlines.items()):
                rec = dataclasses.replace(
                    _plan(pid, at=T0 + timedelta(seconds=i)), expires_at=until
                )
                tx.save_plan(rec)
            tx.save_plan(_plan("other-status", status=PlanStatus.AWAITING_CONFIRMATION))
            tx.save_plan(dataclasses.replace(_plan("bobs"), on_behalf_of="bob"))

        # _plan's deadline is T0 + 1 h, as w-soon's: ties go by plan id.
        everything = ["bobs", "w-soon", "w-a", "w-b", "w-late", "w-none1", "w-none2"]
        assert [p.plan_id for p in store.waiting_plans("awaiting_approval", limit=3)] == [
            "bobs",
            "w-soon",
            "w-a",
        ]
        assert [p.plan_id for p in store.waiting_plans("awaiting_approval")] == everything
        read: list[str] = []
        after = None
        while True:
            page = store.waiting_plans("awaiting_approval", limit=2, after=after)
            if not page:
                break
            read += [p.plan_id for p in page]
            last = page[-1]
            after = f"{last.expires_at.isoformat() if last.expires_at else ''}|{last.plan_id}"
        assert read == everything
        assert [
            p.plan_id for p in store.waiting_plans("awaiting_approval", on_behalf_of="bob")
        ] == ["bobs"]
        assert [p.plan_id for p in store.waiting_plans("awaiting_confirmation")] == ["other-status"]

    def test_a_users_plans_among_more_than_a_thousand_others(self, store):
        """A user's oldest plans and waiting plans are found however many plans others made
        since (the console's timeline and inbox read them this way)."""
        with store.transaction() as tx:
            old = _plan("alice-old", at=T0, status=PlanStatus.SUCCEEDED)
            tx.save_plan(old)
            waiting = _plan("alice-wait", at=T0, status=PlanStatus.AWAITING_CONFIRMATION)
            tx.save_plan(waiting)
            for i in range(1_200):
                rec = _plan(
                    f"o{i:05}",
                    at=T0 + timedelta(seconds=1 + i),
                    status=(PlanStatus.SUCCEEDED, PlanStatus.AWAITING_CONFIRMATION)[i % 2],
                )
                tx.save_plan(dataclasses.replace(rec, on_behalf_of="bob"))

        mine = store.list_plans(on_behalf_of="alice", statuses=["succeeded"], limit=10)
        confirm = store.waiting_plans("awaiting_confirmation", on_behalf_of="alice")
        soonest = store.waiting_plans("awaiting_confirmation", limit=1)

        assert [p.plan_id for p in mine] == ["alice-old"]
        assert [p.plan_id for p in confirm] == ["alice-wait"]
        assert [p.plan_id for p in soonest] == ["alice-wait"]

    def test_a_users_plans_whatever_the_spelling_of_her_name(self, store):
        """``on_behalf_of`` finds a user's plans by ``user_key``: the agent wrote
        ``Bob@Example.com``, her token is ``bob@example.com``; the stored name stays as
        given. A look-alike in fullwidth letters is someone else (a grant does not fold)."""
        with store.transaction() as tx:
            for pid, status in (
                ("ran", PlanStatus.SUCCEEDED),
                ("wait", PlanStatus.AWAITING_CONFIRMATION),
            ):
                tx.save_plan(
                    dataclasses.replace(_plan(pid, status=status), on_behalf_of="Bob@Example.com")
                )
            tx.save_plan(dataclasses.replace(_plan("other"), on_behalf_of="bobby@example.com"))

        for who in ("bob@example.com", "BOB@EXAMPLE.COM"):
            ran = store.list_plans(on_behalf_of=who, statuses=["succeeded"])
            waiting = store.waiting_plans("awaiting_confirmation", on_behalf_of=who)

            assert [p.plan_id for p in ran] == ["ran"]
            assert [p.plan_id for p in waiting] == ["wait"]
            assert ran[0].on_behalf_of == "Bob@Example.com"
        assert store.list_plans(on_behalf_of="bob") == []
        assert store.list_plans(on_behalf_of="\uff42ob@example.com") == []
        assert (
            store.waiting_plans("awaiting_confirmation", on_behalf_of="\uff42ob@example.com") == []
        )


class TestCounts:
    def test_no_plans_counts_nothing(self, store):
        """An empty store has no status to report; neither does an empty status list."""
        assert store.count_plans(["awaiting_approval"]) == {}
        assert store.count_plans([]) == {}
        assert store.count_deliveries(["pending", "dead"]) == {}

    def test_plans_per_status_with_the_oldest(self, store):
        """Every plan in a status counts, with the oldest created_at; others are left out."""
        with store.transaction() as tx:
            for i in range(7):
                tx.save_plan(
                    _plan(
                        f"p{i}",
                        at=T0 + timedelta(minutes=10 - i),
                        status=(
                            PlanStatus.AWAITING_APPROVAL,
                            PlanStatus.AWAITING_CONFIRMATION,
                            PlanStatus.SUCCEEDED,
                        )[i % 3],
                    )
                )

        counts = store.count_plans(["awaiting_approval", "awaiting_confirmation", "failed"])

        assert counts == {
            "awaiting_approval": (3, T0 + timedelta(minutes=4)),
            "awaiting_confirmation": (2, T0 + timedelta(minutes=6)),
        }
        assert counts["awaiting_approval"][1].tzinfo is not None

    def test_more_plans_than_a_page(self, store):
        """The count is not capped by a listing limit (a backlog of 10,001 waiting plans)."""
        oldest = T0 - timedelta(days=1)
        with store.transaction() as tx:
            tx.save_plan(_plan("first", at=oldest))
            for i in range(10_000):
                tx.save_plan(_plan(f"p{i:05}", at=T0 + timedelta(seconds=i)))

        assert store.count_plans(["awaiting_approval"]) == {"awaiting_approval": (10_001, oldest)}

    def test_deliveries_per_status(self, store):
        """Deliveries are counted per status, every one of them."""
        from proctor.core.notifications import Delivery, DeliveryStatus

        base = Delivery(
            delivery_id="d",
            event="plan.decided",
            target="hook",
            payload=b"{}",
            created_at=T0,
            next_at=T0,
        )
        with store.transaction() as tx:
            tx.enqueue([dataclasses.replace(base, delivery_id=f"d{i}") for i in range(5)])
            for i in range(2):
                tx.save_delivery(
                    dataclasses.replace(base, delivery_id=f"d{i}", status=DeliveryStatus.DEAD)
                )

        assert store.count_deliveries(["pending", "dead"]) == {"pending": 3, "dead": 2}
        assert store.count_deliveries(["dead"]) == {"dead": 2}


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

    def test_head_names_the_key_of_the_last_event(self, store):
        """The head read at the start of a transaction, and after an append in it, carries
        the key that signed the last event (what a writer compares its own key with)."""
        other = LocalSigner(b"\x04" * 32)
        with store.transaction() as tx:
            assert tx.audit_head().key_id is None  # an empty log
            _event(tx)
            assert tx.audit_head().key_id == SIGNER.key_id
        with store.transaction() as tx:
            head = tx.audit_head()
            assert head.key_id == SIGNER.key_id
            body = {"type": "t.e", "timestamp": T0.isoformat(), "plan_id": None, "step_id": None}
            tx.append_events([seal(body, seq=head.size, prev_hash=head.last_hash, signer=other)])
            assert tx.audit_head().key_id == other.key_id
        with store.transaction() as tx:
            assert tx.audit_head().key_id == other.key_id

    def test_instance_events_of_a_type(self, store):
        """Plan-less events of one type, oldest first, this transaction's own included."""
        with store.transaction() as tx:
            first = _event(tx, "keys.rotated")
            _event(tx, "token.created")
            head = tx.audit_head()
            body = {"type": "keys.rotated", "timestamp": T0.isoformat(), "plan_id": "p1"}
            row = seal(
                body | {"step_id": None}, seq=head.size, prev_hash=head.last_hash, signer=SIGNER
            )
            tx.append_events([row])  # of a plan: not an instance event
        with store.transaction() as tx:
            second = _event(tx, "keys.rotated")
            assert tx.instance_events("keys.rotated") == [first, second]
            assert tx.instance_events("policy.loaded") == []

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

    def test_a_handed_over_plan_is_due_at_its_report_by(self, store):
        """A running plan's report-by (a call handed to a remote MCP proxy) round-trips and
        is its timer, as a queued plan's start-by is; without either it has none."""
        handed = dataclasses.replace(
            _plan("handed", status=PlanStatus.RUNNING),
            expires_at=None,
            report_by=T0 + timedelta(minutes=2),
        )
        queued = dataclasses.replace(
            _plan("queued", status=PlanStatus.RUNNING),
            expires_at=None,
            start_by=T0 + timedelta(hours=1),
        )
        untimed = dataclasses.replace(handed, plan_id="untimed", report_by=None)
        with store.transaction() as tx:
            for p in (handed, queued, untimed):
                tx.save_plan(p)

        assert store.get_plan("handed") == handed
        assert store.due_plans(T0 + timedelta(minutes=1)) == []
        assert [p.plan_id for p in store.due_plans(T0 + timedelta(minutes=2))] == ["handed"]
        due = store.due_plans(T0 + timedelta(days=1))
        assert [p.plan_id for p in due] == ["handed", "queued"]


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
        assert store.read_state("kill", "global") == {"on": True, "by": "ops"}
        with store.transaction() as tx:
            tx.put_state("kill", "global", None, at=T0)
        assert store.list_state("kill") == {"agent:bot": {"on": True}}
        assert store.list_state("breaker") == {}
        assert store.read_state("kill", "global") is None
        assert store.read_state("breaker", "agent:bot") is None  # same key, other kind

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

    def test_counter_sums_sum_several_counters_in_one_window(self, store):
        """One statement for several counters, each as ``counter_sum`` sums it alone."""
        with store.transaction() as tx:
            tx.bump("calls:k", "2026-01-01T00:00", amount=7)
            tx.bump("calls:k", "2026-01-01T00:01", count=2, amount=3)
            tx.bump("errors:k", "2026-01-01T00:01")
            tx.bump("errors:other", "2026-01-01T00:01", count=9)
        with store.transaction() as tx:
            tx.bump("calls:k", "2026-01-01T00:02")  # its own write, not yet committed
            names = ["calls:k", "errors:k", "rollbacks:k"]
            sums = tx.counter_sums(names, "2026-01-01T00:01")
            assert sums == {"calls:k": (3, 3), "errors:k": (1, 0), "rollbacks:k": (0, 0)}
            assert sums == {n: tx.counter_sum(n, "2026-01-01T00:01") for n in names}
            assert tx.counter_sums(["calls:k"], "2026-01-01T00:00") == {"calls:k": (4, 10)}


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


class TestMerkleLeavesAndCheckpoints:
    def test_leaves_are_stored_with_their_events(self, store):
        """Each event's leaf hash is readable by index, in a transaction and from the store."""
        from proctor.audit.merkle import leaf_hash

        with store.transaction() as tx:
            rows = [_event(tx) for _ in range(4)]
            # Inside the appending transaction the new leaves are already visible.
            assert tx.node(0, 3) == leaf_hash(rows[3].body)
        leaves = [leaf_hash(r.body) for r in rows]

        assert store.load_nodes({}) == {0: leaves}
        assert store.load_nodes({0: 2}) == {0: leaves[2:]}
        assert store.load_nodes({0: 4}) == {}
        with store.transaction() as tx:
            assert tx.node(0, 0) == leaves[0]
            assert tx.node(0, 4) is None
            assert tx.node(1, 0) is None  # interior nodes are never stored
            assert tx.load_nodes({0: 1}) == {0: leaves[1:]}

    def test_checkpoints(self, store):
        """Checkpoints list smallest first; the latest is the largest, in and out of a tx."""
        from proctor.core.ports import CheckpointRow

        def cp(size):
            return CheckpointRow(
                size=size, root=bytes([size]) * 32, note=f"n{size}\n", created_at=T0.isoformat()
            )

        assert store.latest_checkpoint() is None
        assert store.checkpoints() == []
        with store.transaction() as tx:
            assert tx.latest_checkpoint() is None
            tx.add_checkpoint(cp(3))
            tx.add_checkpoint(cp(1))
            assert tx.latest_checkpoint() == cp(3)  # its own writes
        assert store.checkpoints() == [cp(1), cp(3)]
        assert store.latest_checkpoint() == cp(3)

    def test_a_second_checkpoint_of_one_size_is_refused(self, store):
        """Two checkpoints of one size would be two views of one tree: refused, rolled back."""
        from proctor.core.ports import CheckpointRow

        row = CheckpointRow(size=2, root=b"\x01" * 32, note="n\n", created_at=T0.isoformat())
        with store.transaction() as tx:
            tx.add_checkpoint(row)

        def second():
            with store.transaction() as tx:
                tx.put_meta("half", "written")
                tx.add_checkpoint(dataclasses.replace(row, root=b"\x02" * 32))

        with pytest.raises(StorageError):
            second()
        assert store.checkpoints() == [row]
        assert store.get_meta("half") is None


class TestTransactions:
    def test_non_durable_transaction_commits(self, store):
        """``durable=False`` only relaxes the flush: the writes commit and are read back."""
        with store.transaction(durable=False) as tx:
            tx.save_plan(_plan("nd"))
            row = _event(tx)
        with store.transaction() as tx:
            _event(tx)
        assert store.get_plan("nd") == _plan("nd")
        assert store.read_events()[0] == row
        assert store.event_count() == 2

    def test_get_states_reads_present_values_only(self, store):
        """A batched state read returns the pairs that exist, with their values."""
        with store.transaction() as tx:
            tx.put_state("kill", "global", {"on": True}, at=T0)
            tx.put_state("breaker", "agent:bot", {"state": "open"}, at=T0)
            assert tx.get_states([]) == {}
            got = tx.get_states([("kill", "global"), ("kill", "agent:x"), ("breaker", "agent:bot")])
        assert got == {
            ("kill", "global"): {"on": True},
            ("breaker", "agent:bot"): {"state": "open"},
        }

    def test_gap_in_a_batch_is_refused(self, store):
        """A batch whose seqs skip one is refused whole: no prefix of it is written."""
        with store.transaction() as tx:
            first = _event(tx)
            second = _event(tx)

        def gapped():
            with store.transaction() as tx:
                head = tx.audit_head()
                ok = dataclasses.replace(second, seq=head.size)
                tx.append_events([ok, dataclasses.replace(first, seq=head.size + 2)])

        with pytest.raises(StorageError):
            gapped()
        assert store.event_count() == 2


class TestSchema:
    def test_reopening_is_idempotent_and_reports_the_version(self, shared_url):
        """Opening a migrated database again changes nothing and reports the current schema."""
        from proctor.storage import SCHEMA_VERSION

        s = open_store(shared_url)
        with s.transaction() as tx:
            tx.put_meta("k", "v")
        s.close()
        s = open_store(shared_url)
        try:
            assert s.schema_version() == SCHEMA_VERSION
            assert s.get_meta("k") == "v"
        finally:
            s.close()

    def test_unmigrated_database_reports_zero(self, shared_url):
        """``migrate=False`` opens an empty database as it is: schema 0, nothing created."""
        s = open_store(shared_url, migrate=False)
        try:
            assert s.schema_version() == 0
        finally:
            s.close()

    def test_newer_schema_is_refused(self, shared_url):
        """A database migrated by a newer Proctor is not opened by this one."""
        from proctor.storage import SCHEMA_VERSION

        s = open_store(shared_url)
        with s.transaction() as tx:
            tx.put_meta("schema_version", str(SCHEMA_VERSION + 1))
        s.close()

        with pytest.raises(StorageError, match="newer"):
            open_store(shared_url)

    def test_migrating_from_schema_8_keys_the_plans_already_stored(self, shared_url):
        """Plans stored before migration 9 get their ``user_key`` when it runs: their user
        finds them under any spelling of her name (none is missing from her lists)."""
        s = open_store(shared_url)
        with s.transaction() as tx:
            tx.save_plan(dataclasses.replace(_plan("old"), on_behalf_of="Bob@Example.com"))
        s.close()
        _back_to_schema_8(shared_url)

        s = open_store(shared_url)
        try:
            found = s.waiting_plans("awaiting_approval", on_behalf_of="bob@example.com")
            listed = s.list_plans(on_behalf_of="BOB@example.com")

            assert [p.plan_id for p in found] == ["old"]
            assert [p.plan_id for p in listed] == ["old"]
            assert listed[0].on_behalf_of == "Bob@Example.com"
        finally:
            s.close()

    def test_a_plan_an_old_replica_inserted_without_its_key_is_keyed_on_the_next_open(
        self, shared_url
    ):
        """During a rolling upgrade a replica still on the old code inserts plans with no
        ``user_key``; the next open of the store keys them, so none stays missing from its
        user's lists (the backfill ran only when migrating from below 9)."""
        s = open_store(shared_url)
        with s.transaction() as tx:
            tx.save_plan(dataclasses.replace(_plan("by-old"), on_behalf_of="Bob@Example.com"))
        s.close()
        _run_sql(shared_url, "UPDATE plans SET user_key = NULL")  # as the old code inserted

        s = open_store(shared_url)
        try:
            listed = s.list_plans(on_behalf_of="bob@example.com")

            assert [p.plan_id for p in listed] == ["by-old"]
        finally:
            s.close()

    def test_replicas_starting_together_migrate_once(self, shared_url):
        """Several stores opening a fresh database at once all end up on the same schema."""
        from proctor.storage import SCHEMA_VERSION

        opened = []

        def start(_):
            opened.append(open_store(shared_url))

        try:
            _in_threads(start, 4)
            assert [s.schema_version() for s in opened] == [SCHEMA_VERSION] * 4
        finally:
            for s in opened:
                s.close()


class TestGuardStateUnderConcurrency:
    def test_read_modify_write_of_a_missing_state_is_exact(self, shared_url):
        """Concurrent writers of a state that does not exist yet lose no update.

        ``get_state`` locks the value for the transaction, also when there is no row yet (on
        PostgreSQL ``FOR UPDATE`` alone locks nothing then: both would read None).
        """
        stores = [open_store(shared_url) for _ in range(4)]
        try:

            def incr(i):
                for n in range(10):
                    with stores[i].transaction() as tx:
                        key = f"k{n}"  # every round starts from a missing row
                        value = tx.get_state("trial", key) or {"n": 0}
                        tx.put_state("trial", key, {"n": value["n"] + 1}, at=T0)

            _in_threads(incr, 4)
            assert stores[0].list_state("trial") == {f"k{n}": {"n": 4} for n in range(10)}
        finally:
            for s in stores:
                s.close()

    def test_a_missing_plan_read_in_a_transaction_stays_locked_until_it_ends(self, shared_url):
        """Writers that each find a plan id free and save it: exactly one saves it first.

        ``get_plan`` in a transaction locks the id also when there is no row yet (on
        PostgreSQL ``FOR UPDATE`` alone locks nothing then: two replicas submitting one plan
        id both found it free, both saved it, and both ran it).
        """
        stores = [open_store(shared_url) for _ in range(4)]
        created: list[tuple[int, str]] = []
        try:

            def claim(i):
                for n in range(10):
                    with stores[i].transaction() as tx:
                        pid = f"race-{n}"  # every round starts from a missing row
                        if tx.get_plan(pid) is None:
                            tx.save_plan(_plan(pid, agent=f"w{i}"))
                            created.append((n, f"w{i}"))

            _in_threads(claim, 4)
            assert sorted(n for n, _ in created) == list(range(10))
            for n, who in created:
                assert stores[0].get_plan(f"race-{n}").agent_id == who
        finally:
            for s in stores:
                s.close()


_APPENDER = r"""
import sys, time
from pathlib import Path
from datetime import UTC, datetime
from proctor.audit.events import seal
from proctor.audit.keys import LocalSigner
from proctor.storage import open_store

url, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
signer = LocalSigner(b"\x03" * 32)
store = open_store(url)
while not go.exists():
    time.sleep(0.01)
for _ in range(n):
    with store.transaction() as tx:
        head = tx.audit_head()
        body = {"type": name, "timestamp": "2026-01-01T00:00:00+00:00",
                "plan_id": None, "step_id": None}
        tx.append_events([seal(body, seq=head.size, prev_hash=head.last_hash, signer=signer)])
store.close()
"""


class TestSeveralProcesses:
    def test_appending_processes_make_one_linear_chain(self, shared_url, tmp_path):
        """Three processes appending at once (as replicas do) leave one verifiable chain."""
        import subprocess
        import sys

        from proctor.audit.events import KeyInfo, verify_events

        open_store(shared_url).close()  # migrated before the writers start
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _APPENDER, shared_url, f"proc.{i}", "30", str(go)],
                stderr=subprocess.PIPE,
            )
            for i in range(3)
        ]
        go.touch()
        for p in procs:
            _, err = p.communicate(timeout=110)
            assert p.returncode == 0, err.decode()

        s = open_store(shared_url)
        try:
            rows = list(s.iter_events())
        finally:
            s.close()
        assert [r.seq for r in rows] == list(range(90))
        assert sorted({r.type for r in rows}) == ["proc.0", "proc.1", "proc.2"]
        keys = {k: KeyInfo(v) for k, v in SIGNER.public_keys().items()}
        assert verify_events(rows, keys).ok


class TestPostgresFailures:
    """What only a server database can do to a store: drop connections, deadlock, vanish."""

    def test_connections_killed_by_the_server_are_replaced(self, pg_url):
        """After the server ends every connection of the store, the next calls still work."""
        import secrets

        import psycopg

        name = "proctor_t_" + secrets.token_hex(4)
        s = open_store(f"{pg_url}&application_name={name}")
        try:
            with s.transaction() as tx:
                tx.save_plan(_plan("before"))
            with psycopg.connect(pg_url, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (name,),
                ).fetchall()
            assert killed  # the pool held at least one connection

            assert s.get_plan("before") is not None
            with s.transaction() as tx:
                tx.save_plan(_plan("after"))
            assert s.get_plan("after") is not None
        finally:
            s.close()

    def test_a_deadlock_is_a_retryable_storage_error(self, pg_url):
        """Two transactions locking plans in opposite orders: one fails, marked retryable."""
        import threading

        stores = [open_store(pg_url) for _ in range(2)]
        try:
            with stores[0].transaction() as tx:
                tx.save_plan(_plan("x"))
                tx.save_plan(_plan("y"))
            both_hold = threading.Barrier(2, timeout=30)
            outcomes = {}

            def lock(i, first, second):
                try:
                    with stores[i].transaction() as tx:
                        tx.get_plan(first)
                        both_hold.wait()
                        tx.get_plan(second)
                    outcomes[i] = "committed"
                except StorageError as exc:
                    outcomes[i] = exc

            threads = [
                threading.Thread(target=lock, args=(0, "x", "y")),
                threading.Thread(target=lock, args=(1, "y", "x")),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

            failed = [o for o in outcomes.values() if isinstance(o, StorageError)]
            assert sorted(map(str, outcomes.values())).count("committed") == 1
            assert len(failed) == 1
            assert failed[0].details["retryable"] is True
            assert "deadlock" in failed[0].message
        finally:
            for s in stores:
                s.close()

    def test_unreachable_server_is_a_storage_error_naming_the_setting(self):
        """A server that does not answer fails the open with a StorageError, not a driver one."""
        from proctor.storage.postgres import PostgresStore

        with pytest.raises(StorageError) as info:
            PostgresStore("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", timeout=1)
        assert info.value.field == "database.url"


class TestMigrationSource:
    """One list of migrations, rendered per dialect."""

    def test_both_dialects_get_every_version_in_order(self):
        """SQLite and PostgreSQL run the same versions, 1 to SCHEMA_VERSION, in order."""
        from proctor.storage.migrations import SCHEMA_VERSION, migrations_for

        for dialect in ("sqlite", "postgresql"):
            versions = [v for v, _ in migrations_for(dialect)]
            assert versions == list(range(1, SCHEMA_VERSION + 1))

    def test_postgres_rendering(self):
        """PostgreSQL gets BYTEA, BIGINT keys, byte-order text and no SQLite-only syntax."""
        import re

        from proctor.storage.migrations import migrations_for

        sql = "\n".join(st for _, sts in migrations_for("postgresql") for st in sts)
        assert "BLOB" not in sql
        assert "WITHOUT ROWID" not in sql
        assert "seq BIGINT PRIMARY KEY" in sql
        assert not re.search(r'\bTEXT\b(?! COLLATE "C")', sql)
        sqlite = "\n".join(st for _, sts in migrations_for("sqlite") for st in sts)
        assert "COLLATE" not in sqlite
        assert "WITHOUT ROWID" in sqlite

    def test_unknown_dialect(self):
        """A dialect nobody renders for is an error, not SQLite by default."""
        from proctor.storage.migrations import migrations_for

        with pytest.raises(ValueError, match="mysql"):
            migrations_for("mysql")


class TestPostgresDurability:
    def test_commits_are_durable_even_if_the_url_turns_them_off(self, pg_url):
        """``synchronous_commit=off`` from the URL is overridden; ``durable=False`` relaxes it."""
        from urllib.parse import quote

        url = pg_url.replace("options=", "options=" + quote("-csynchronous_commit=off "))
        assert "synchronous_commit" in url
        s = open_store(url)
        try:
            with s.transaction() as tx:
                durable = tx._c.execute("SHOW synchronous_commit").fetchone()
            with s.transaction(durable=False) as tx:
                relaxed = tx._c.execute("SHOW synchronous_commit").fetchone()
            with s.transaction() as tx:
                again = tx._c.execute("SHOW synchronous_commit").fetchone()
                path = tx._c.execute("SHOW search_path").fetchone()
        finally:
            s.close()
        assert durable["synchronous_commit"] == "on"
        assert relaxed["synchronous_commit"] == "off"  # SET LOCAL: this transaction only
        assert again["synchronous_commit"] == "on"
        assert path["search_path"].startswith("t_")  # the rest of the options still apply


def _run_sql(url, statement):
    """Run one statement on the database of ``url`` outside any store."""
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            conn.execute(statement)
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement)


def _back_to_schema_8(url):
    """Undo migration 9 on ``url`` (its column and index), as a database of schema 8 was."""
    for statement in (
        "DROP INDEX plans_by_user_key",
        "ALTER TABLE plans DROP COLUMN user_key",
        "CREATE INDEX plans_by_user ON plans (on_behalf_of, created_at, plan_id)",
        "UPDATE meta SET value = '8' WHERE key = 'schema_version'",
    ):
        _run_sql(url, statement)
