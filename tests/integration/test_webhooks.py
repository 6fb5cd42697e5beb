"""Webhooks end to end: the outbox listener, the dispatcher and a real HTTP receiver.

Every delivery here crosses a real socket to an ``http.server`` on 127.0.0.1; time is a
``FrozenClock`` stepped by the tests, so backoff and dead-lettering take no wall time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from proctor import Proctor
from proctor.app.dispatch import Dispatcher, RetryPolicy, sign, verify_signature
from proctor.app.journal import Journal
from proctor.app.notify import Notifier
from proctor.bootstrap import init_home, open_instance, start_dispatcher
from proctor.config import WEBHOOK_EVENTS, WebhookSettings, load
from proctor.core.catalog import Catalog
from proctor.core.lifecycle import PlanStatus
from proctor.core.notifications import DeliveryStatus
from proctor.errors import ConfigError, StorageError
from proctor.storage.sqlite import SqliteStore
from proctor.testing import FrozenClock, RecordingTool, free_port, make_plan

SECRET = b"whsec-test-0123456789abcdef"
LOW = {"risk": 1, "auditability": 1, "ux": 1, "recovery": 1, "cost": 1}


# ---------------------------------------------------------------------- a real receiver


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers ``status``."""

    def __init__(self, port: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/hook"

    def events(self) -> list[str]:
        return [r["headers"]["Proctor-Event"] for r in self.requests]

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.requests) >= n, f"received {len(self.requests)} of {n}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


# ---------------------------------------------------------------------- instances


class ScriptedPolicy:
    """A policy engine answering each step with the outcome of its action (a fake)."""

    version = "sha256:scripted-webhooks"

    def __init__(self, outcomes: Mapping[str, Any]) -> None:
        self.outcomes = outcomes

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        steps = {}
        for s in input["steps"]:
            o = self.outcomes.get(s["action"], "execute")
            d: dict[str, Any] = {"outcome": o, "reasons": [f"{s['action']} -> {o}"]}
            if o == "approve":
                d |= {"approvals": 1, "approver_roles": ["finance"]}
            if s["action"] == "shop.order":
                d["undo_window"] = 600
            steps[s["id"]] = d
        return {"steps": steps, "plan": {"deny": [], "adjustments": []}}


OUTCOMES = {"shop.pay": "approve", "shop.book": "confirm", "shop.order": "execute"}


def hook(url: str, **kw: Any) -> WebhookSettings:
    return WebhookSettings(url=url, secret=SECRET, **kw)


def make(
    clock: FrozenClock,
    hooks: list[WebhookSettings],
    *,
    database_url: str = "memory://",
) -> Proctor:
    p = Proctor.in_memory(
        catalog=Catalog(),
        policy=ScriptedPolicy(OUTCOMES),
        clock=clock,
        webhooks=hooks,
        console_url="https://console.example.test",
        database_url=database_url,
    )
    for name in ("shop.order", "shop.pay", "shop.book", "shop.fail"):
        tool = RecordingTool(fail_with=RuntimeError("boom") if name == "shop.fail" else None)
        p.action(
            name,
            category="general",
            baselines=LOW,
            reversible=name == "shop.order",
            compensate=RecordingTool() if name == "shop.order" else None,
        )(tool)
    return p


def pending(p: Proctor) -> list[Any]:
    return p.gateway.store.deliveries(status="pending", limit=1000)


# ---------------------------------------------------------------------- delivery


class TestDelivery:
    def test_nothing_configured_nothing_queued(self, clock):
        """Without webhooks no listener is wired and the outbox stays empty."""
        p = make(clock, [])
        p.submit(make_plan([("shop.pay", {})]))

        assert p.gateway.listeners == []
        assert pending(p) == []

    def test_approval_needed_is_signed_and_shaped(self, clock, receiver):
        """A plan waiting for approval reaches the receiver signed, with the documented body."""
        p = make(clock, [hook(receiver.url, events=("approval.needed",))])
        rec = p.submit(make_plan([("shop.pay", {})], plan_id="p-pay"))
        with p.dispatcher() as d:
            sent = d.run_once()

        assert rec.status is PlanStatus.AWAITING_APPROVAL
        assert sent == 1
        assert receiver.events() == ["approval.needed"]
        req = receiver.requests[0]
        h, body = req["headers"], req["body"]
        assert req["path"] == "/hook"
        assert h["Content-Type"] == "application/json"
        ts = h["Proctor-Timestamp"]
        assert int(ts) == int(clock.now().timestamp())
        assert verify_signature(SECRET, ts, body, h["Proctor-Signature"], now=clock.now())
        independent = hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert h["Proctor-Signature"] == f"v1={independent}"
        payload = json.loads(body)
        assert set(payload) == {
            "id",
            "event",
            "occurred_at",
            "plan_id",
            "status",
            "summary",
            "links",
            "audit",
        }
        assert payload["id"] == h["Proctor-Delivery"]
        assert payload["event"] == "approval.needed"
        assert payload["plan_id"] == "p-pay"
        assert payload["status"] == "awaiting_approval"
        assert "finance" in payload["summary"] and "p-pay" in payload["summary"]
        assert payload["links"] == {"plan": "https://console.example.test/plans/p-pay"}
        routed = next(e for e in p.events() if e.type == "plan.routed")
        assert payload["audit"] == {"seq": routed.seq, "hash": routed.hash}
        assert payload["occurred_at"] == routed.timestamp
        assert pending(p) == []
        [done] = p.gateway.store.deliveries(status="delivered")
        assert done.attempts == 1 and done.last_error is None

    def test_event_mapping_over_a_plan_life(self, clock, receiver):
        """Decided, executed, failed, undone and confirmation-needed map as documented."""
        p = make(clock, [hook(receiver.url)])
        ok = p.submit(make_plan([("shop.order", {})], plan_id="p-ok"))
        p.submit(make_plan([("shop.order", {}), ("shop.fail", {})], plan_id="p-comp"))
        p.submit(make_plan([("shop.fail", {})], plan_id="p-fail"))
        p.undo(ok.plan_id, "alice")
        p.submit(make_plan([("shop.book", {})], plan_id="p-book"))
        with p.dispatcher() as d:
            d.run_once()

        got = {(x["plan_id"], x["event"]): x["status"] for x in receiver.payloads()}
        assert got == {
            ("p-ok", "plan.decided"): "running",
            ("p-ok", "plan.executed"): "succeeded",
            ("p-ok", "plan.undone"): "undone",
            ("p-comp", "plan.decided"): "running",
            ("p-comp", "plan.failed"): "compensated",
            ("p-fail", "plan.decided"): "running",
            ("p-fail", "plan.failed"): "failed",
            ("p-book", "plan.decided"): "awaiting_confirmation",
            ("p-book", "approval.needed"): "awaiting_confirmation",
        }
        assert len(receiver.requests) == 9
        assert len({r["headers"]["Proctor-Delivery"] for r in receiver.requests}) == 9

    def test_approvers_hear_of_a_plan_once_its_user_confirmed(self, clock, receiver):
        """Her confirmation routes the plan on to approvers: a second approval.needed says so."""
        p = make(clock, [hook(receiver.url, events=("approval.needed",))])
        p.submit(make_plan([("shop.book", {}), ("shop.pay", {})], plan_id="p-both"))
        p.confirm("p-both", "alice")
        with p.dispatcher() as d:
            d.run_once()

        got = [(x["status"], x["summary"]) for x in receiver.payloads()]
        assert [status for status, _ in got] == ["awaiting_confirmation", "awaiting_approval"]
        assert "needs 1 approval(s) from finance" in got[1][1]
        assert "confirmed by alice" in got[1][1]

    def test_subscription_filters_events(self, clock, receiver):
        """A webhook gets only the events it subscribed to."""
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        p.submit(make_plan([("shop.pay", {})]))
        with p.dispatcher() as d:
            d.run_once()

        assert receiver.events() == ["plan.executed"]

    def test_one_delivery_per_target(self, clock, receiver):
        """Two targets subscribed to one event each get their own delivery and id."""
        p = make(
            clock,
            [
                hook(receiver.url, events=("plan.executed",), name="a"),
                hook(receiver.url + "/b", events=("plan.executed",), name="b"),
            ],
        )
        p.submit(make_plan([("shop.order", {})]))
        with p.dispatcher() as d:
            d.run_once()

        assert sorted(r["path"] for r in receiver.requests) == ["/hook", "/hook/b"]
        ids = {r["headers"]["Proctor-Delivery"] for r in receiver.requests}
        assert len(ids) == 2

    def test_slack_format(self, clock, receiver):
        """format = slack posts incoming-webhook JSON: text plus a section and a link button."""
        p = make(clock, [hook(receiver.url, events=("approval.needed",), format="slack")])
        p.submit(make_plan([("shop.pay", {})], plan_id="p-slack"))
        with p.dispatcher() as d:
            d.run_once()

        [req] = receiver.requests
        body = json.loads(req["body"])
        assert set(body) == {"text", "blocks"}
        assert body["text"].startswith("[approval.needed] Plan p-slack needs 1 approval(s)")
        section, actions = body["blocks"]
        assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
        assert "*approval.needed*" in section["text"]["text"]
        [button] = actions["elements"]
        assert button["type"] == "button"
        assert button["url"] == "https://console.example.test/plans/p-slack"
        h = req["headers"]
        assert verify_signature(
            SECRET, h["Proctor-Timestamp"], req["body"], h["Proctor-Signature"], now=clock.now()
        )

    def test_escalations_pass_through_to_tickets(self, clock, receiver):
        """anomaly / breaker.opened events go to [[tickets]]-style targets unchanged in name."""
        ticket = hook(receiver.url, events=("anomaly", "breaker.opened"), name="ticket")
        p = make(clock, [ticket])
        with p.gateway.store.transaction() as tx:
            j = Journal(tx, p.gateway.signer, clock, listeners=p.gateway.listeners)
            j.emit("anomaly", data={"summary": "agent travel-bot: 40 plans in 1 minute"})
            j.emit("breaker.opened", data={"reason": "error rate 60%", "status": "open"})
            j.emit("step.started", data={})
            j.flush()
        with p.dispatcher() as d:
            d.run_once()

        by_event = {x["event"]: x for x in receiver.payloads()}
        assert set(by_event) == {"anomaly", "breaker.opened"}
        assert by_event["anomaly"]["summary"] == "agent travel-bot: 40 plans in 1 minute"
        assert by_event["anomaly"]["plan_id"] is None
        assert by_event["anomaly"]["links"] == {"plan": None}
        assert by_event["breaker.opened"]["status"] == "open"


# ---------------------------------------------------------------------- retries


class TestRetries:
    def test_receiver_down_then_up(self, clock):
        """A refused connection is retried after backoff and delivered once the receiver is up."""
        port = free_port()
        p = make(clock, [hook(f"http://127.0.0.1:{port}/hook", events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        late = Receiver(port)
        with p.dispatcher(rng=random.Random(1)) as d:
            assert d.run_once() == 1
            [waiting] = pending(p)
            assert waiting.attempts == 1
            assert "ConnectError" in (waiting.last_error or "")
            delay = waiting.next_at - clock.now()
            assert timedelta(seconds=0.5) <= delay <= timedelta(seconds=1)
            assert d.run_once() == 0  # not due yet
            late.start()
            try:
                clock.advance(delay)
                assert d.run_once() == 1
            finally:
                late.stop()

        assert late.events() == ["plan.executed"]
        [done] = p.gateway.store.deliveries(status="delivered")
        assert done.attempts == 2 and done.last_error is None

    def test_backoff_doubles_with_jitter_and_caps(self):
        """Delays double from 1 s, jittered within the upper half, never above the cap."""
        policy = RetryPolicy()
        rng = random.Random(3)

        for attempt, step in [(1, 1), (2, 2), (3, 4), (8, 128)]:
            for _ in range(20):
                s = policy.delay(attempt, rng).total_seconds()
                assert step / 2 <= s <= step
        assert policy.delay(30, rng) <= timedelta(minutes=10)
        assert policy.delay(30, rng) >= timedelta(minutes=5)

    def test_dead_letter_after_eight_failures(self, clock, receiver):
        """A receiver that keeps answering 500 gets 8 attempts, then the delivery is dead."""
        receiver.status = 500
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        with p.dispatcher() as d:
            for _ in range(12):
                d.run_once()
                clock.advance(timedelta(minutes=10))

        assert len(receiver.requests) == 8
        assert pending(p) == []
        [dead] = p.gateway.store.deliveries(status="dead")
        assert dead.status is DeliveryStatus.DEAD
        assert dead.attempts == 8
        assert dead.last_error is not None and dead.last_error.startswith("HTTP 500")
        # The same delivery every time: receivers can deduplicate on it.
        assert len({r["headers"]["Proctor-Delivery"] for r in receiver.requests}) == 1

    def test_non_2xx_is_a_failure(self, clock, receiver):
        """A redirect or client error is not a delivery: it is retried."""
        receiver.status = 302
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        with p.dispatcher() as d:
            d.run_once()

        [waiting] = pending(p)
        assert waiting.attempts == 1 and waiting.last_error.startswith("HTTP 302")

    def test_unknown_target_fails_then_dead_letters(self, clock, receiver):
        """A delivery for a target this dispatcher does not know fails, retries, then is dead."""
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        other = Dispatcher(p.gateway.store, [], clock=clock)
        try:
            other.run_once()
            [waiting] = pending(p)
            assert waiting.attempts == 1
            for _ in range(10):
                clock.advance(timedelta(minutes=10))
                other.run_once()
        finally:
            other.close()

        assert receiver.requests == []
        [dead] = p.gateway.store.deliveries(status="dead")
        assert dead.attempts == 8
        assert "no webhook named" in (dead.last_error or "")


# ---------------------------------------------------------------------- signatures


class TestSignatures:
    def test_valid_signature(self, clock):
        """A fresh, correctly signed body verifies."""
        now = clock.now()
        ts = str(int(now.timestamp()))

        assert verify_signature(SECRET, ts, b"{}", sign(SECRET, ts, b"{}"), now=now)
        assert verify_signature(SECRET.decode(), int(ts), b"{}", sign(SECRET, ts, b"{}"), now=now)

    def test_replay_of_old_timestamp_rejected(self, clock):
        """A correctly signed request older than the tolerance is a replay and is rejected."""
        ts = str(int(clock.now().timestamp()))
        header = sign(SECRET, ts, b"{}")

        clock.advance(299)
        assert verify_signature(SECRET, ts, b"{}", header, now=clock.now())
        clock.advance(2)
        assert not verify_signature(SECRET, ts, b"{}", header, now=clock.now())
        assert verify_signature(
            SECRET, ts, b"{}", header, now=clock.now(), tolerance=timedelta(minutes=10)
        )

    def test_future_timestamp_rejected(self, clock):
        """A timestamp far in the future is rejected too."""
        ts = str(int(clock.now().timestamp()) + 3600)

        assert not verify_signature(SECRET, ts, b"{}", sign(SECRET, ts, b"{}"), now=clock.now())

    def test_tampering_rejected(self, clock):
        """Another body, another timestamp, another secret or garbage never verify."""
        now = clock.now()
        ts = str(int(now.timestamp()))
        header = sign(SECRET, ts, b'{"a":1}')

        assert not verify_signature(SECRET, ts, b'{"a":2}', header, now=now)
        assert not verify_signature(SECRET, str(int(ts) - 1), b'{"a":1}', header, now=now)
        assert not verify_signature(b"other", ts, b'{"a":1}', header, now=now)
        assert not verify_signature(SECRET, "soon", b'{"a":1}', header, now=now)
        assert not verify_signature(SECRET, ts, b'{"a":1}', "v1=00", now=now)
        assert not verify_signature(SECRET, ts, b'{"a":1}', "", now=now)

    def test_rotation_accepts_any_listed_signature(self, clock):
        """A header with two v1= values verifies when one of them matches."""
        now = clock.now()
        ts = str(int(now.timestamp()))
        header = f"{sign(b'old', ts, b'x')}, {sign(SECRET, ts, b'x')}"

        assert verify_signature(SECRET, ts, b"x", header, now=now)


# ---------------------------------------------------------------------- the outbox


class Boom:
    """A listener that fails the transaction after the notifier has queued its deliveries."""

    def on_events(self, tx, rows):
        raise StorageError("disk full")


@pytest.fixture(params=["memory", "sqlite"])
def database_url(request, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'p.db'}"


class TestOutbox:
    def test_rolled_back_event_leaves_no_delivery(self, clock, database_url):
        """A failing transaction leaves neither the audit events nor their outbox rows."""
        p = make(clock, [hook("http://127.0.0.1:9/hook")], database_url=database_url)
        p.gateway.listeners.append(Boom())

        with pytest.raises(StorageError):
            p.submit(make_plan([("shop.pay", {})], plan_id="p-doomed"))

        assert p.events() == []
        assert pending(p) == []
        assert p.gateway.store.get_plan("p-doomed") is None
        p.close()

    def test_committed_event_has_its_delivery(self, clock, database_url):
        """When the transaction commits, its events and their deliveries are both there."""
        p = make(clock, [hook("http://127.0.0.1:9/hook")], database_url=database_url)
        p.submit(make_plan([("shop.pay", {})], plan_id="p-kept"))

        events = {e.type for e in p.events()}
        queued = sorted(d.event for d in pending(p))
        assert {"policy.decided", "plan.routed"} <= events
        assert queued == ["approval.needed", "plan.decided"]
        p.close()

    def test_durable_across_reopen(self, clock, tmp_path, receiver):
        """Deliveries queued in SQLite survive a restart and are sent by the next process."""
        url = f"sqlite:///{tmp_path / 'p.db'}"
        p = make(clock, [hook(receiver.url, events=("plan.executed",))], database_url=url)
        p.submit(make_plan([("shop.order", {})]))
        p.close()
        store = SqliteStore(str(tmp_path / "p.db"))
        try:
            with Dispatcher(store, [hook(receiver.url)], clock=clock) as d:
                assert d.run_once() == 1
        finally:
            store.close()

        assert receiver.events() == ["plan.executed"]


# ---------------------------------------------------------------------- concurrency


class TestConcurrentDispatchers:
    def test_stale_listing_is_not_claimed(self, clock, receiver):
        """A dispatcher whose listing is stale skips what another one already attempted."""
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        p.submit(make_plan([("shop.order", {})]))
        a, b = p.dispatcher(), p.dispatcher()
        try:
            [listed] = p.gateway.store.due_deliveries(clock.now())
            assert b.run_once() == 1
            assert a.claim(listed, clock.now()) is None
            assert a.run_once() == 0
        finally:
            a.close()
            b.close()

        assert len(receiver.requests) == 1

    def test_two_processes_deliver_each_once(self, clock, tmp_path, receiver):
        """Two dispatchers on two connections to one SQLite file never send a delivery twice."""
        url = f"sqlite:///{tmp_path / 'p.db'}"
        p = make(
            clock, [hook(receiver.url, events=("plan.executed", "plan.decided"))], database_url=url
        )
        for i in range(15):
            p.submit(make_plan([("shop.order", {})], plan_id=f"p-{i}"))
        stores = [SqliteStore(str(tmp_path / "p.db")) for _ in range(2)]
        dispatchers = [Dispatcher(s, [hook(receiver.url)], clock=clock) for s in stores]
        barrier = threading.Barrier(2)
        counts: list[int] = []

        def run(d: Dispatcher) -> None:
            barrier.wait()
            counts.append(d.run_once())

        threads = [threading.Thread(target=run, args=(d,)) for d in dispatchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for d, s in zip(dispatchers, stores, strict=True):
            d.close()
            s.close()
        p.close()

        ids = [r["headers"]["Proctor-Delivery"] for r in receiver.requests]
        assert len(ids) == 30
        assert len(set(ids)) == 30
        assert sum(counts) == 30


# ---------------------------------------------------------------------- background thread


class TestBackground:
    def test_thread_sends_new_deliveries(self, clock, receiver):
        """A started dispatcher sends deliveries shortly after they are queued; stop() ends it."""
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        d = p.dispatcher(interval=30.0)  # only the wake-up can make this test fast
        d.start()
        try:
            p.submit(make_plan([("shop.order", {})]))
            receiver.wait_for(1)
        finally:
            d.stop()

        assert receiver.events() == ["plan.executed"]
        assert not d.running

    def test_restart_after_stop(self, clock, receiver):
        """A stopped dispatcher can be started again and sends what was queued meanwhile."""
        p = make(clock, [hook(receiver.url, events=("plan.executed",))])
        d = p.dispatcher(interval=30.0)
        d.start()
        d.stop()
        p.submit(make_plan([("shop.order", {})]))
        d.start()
        try:
            assert d.running
            receiver.wait_for(1)
        finally:
            d.stop()

        assert receiver.events() == ["plan.executed"]


# ---------------------------------------------------------------------- configuration


def write_config(home: Path, extra: str) -> None:
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text() + "\n" + extra)


@pytest.fixture
def home(tmp_path, clock) -> Path:
    h = tmp_path / "home"
    init_home(h, clock=clock)
    return h


class TestConfig:
    def test_no_webhooks_by_default(self, home):
        """A fresh instance has no notification targets."""
        s = load(home, env={})

        assert s.webhooks == () and s.tickets == ()
        assert s.console_url == "http://127.0.0.1:8700"

    def test_webhooks_and_tickets_parsed(self, home):
        """[[webhooks]] and [[tickets]] become targets with secrets from the environment."""
        write_config(
            home,
            """
[console]
url = "https://proctor.example.com/"

[[webhooks]]
url = "https://hooks.example.com/a"
events = ["approval.needed", "plan.decided"]
secret_env = "HOOK_A"

[[webhooks]]
name = "chat"
url = "https://hooks.example.com/slack"
secret_env = "HOOK_B"
format = "slack"

[[tickets]]
url = "https://hooks.example.com/a"
secret_env = "HOOK_A"
""",
        )
        s = load(home, env={"HOOK_A": "aaa", "HOOK_B": "bbb"})

        a, chat = s.webhooks
        assert a.events == ("approval.needed", "plan.decided")
        assert a.secret == b"aaa" and a.target == "https://hooks.example.com/a"
        assert chat.format == "slack" and chat.events == WEBHOOK_EVENTS and chat.target == "chat"
        [ticket] = s.tickets
        assert ticket.events == ("anomaly", "breaker.opened")
        assert ticket.target == "ticket:https://hooks.example.com/a"
        assert s.console_url == "https://proctor.example.com"
        assert "aaa" not in repr(s)

    def test_missing_secret_variable_named(self, home):
        """A secret_env naming an unset variable is a ConfigError that names it."""
        write_config(
            home, '[[webhooks]]\nurl = "https://h.example/x"\nsecret_env = "NOPE_SECRET"\n'
        )

        with pytest.raises(ConfigError) as ei:
            load(home, env={})
        assert "NOPE_SECRET" in ei.value.message
        assert ei.value.field == "NOPE_SECRET"

    @pytest.mark.parametrize(
        ("table", "needle"),
        [
            (
                'url = "https://h.example/x"\nsecret_env = "S"\nevents = ["plan.eaten"]',
                "plan.eaten",
            ),
            ('url = "https://h.example/x"\nsecret_env = "S"\nformat = "xml"', "xml"),
            ('url = "ftp://h.example/x"\nsecret_env = "S"', "ftp://"),
            ('url = "https://h.example/x"', "secret_env"),
            ('url = "https://h.example/x"\nsecret_env = "S"\nretries = 3', "retries"),
            ('url = "https://h.example/x"\nsecret_env = "EMPTY"', "empty secret"),
        ],
    )
    def test_invalid_webhook_rejected(self, home, table, needle):
        """Unknown events or keys, a bad format or URL, or no secret are ConfigErrors."""
        write_config(home, f"[[webhooks]]\n{table}\n")

        with pytest.raises(ConfigError) as ei:
            load(home, env={"S": "s", "EMPTY": ""})
        assert needle in ei.value.message

    def test_duplicate_names_rejected(self, home):
        """Two targets with one name would share deliveries: refused."""
        t = '[[webhooks]]\nurl = "https://h.example/x"\nsecret_env = "S"\n'
        write_config(home, t + t)

        with pytest.raises(ConfigError) as ei:
            load(home, env={"S": "s"})
        assert "named" in ei.value.message

    def test_bootstrap_wires_listener_and_dispatcher(self, home, clock, receiver, monkeypatch):
        """An instance opened from config queues deliveries; start_dispatcher sends them."""
        monkeypatch.setenv("HOOK_SECRET_FOR_TEST", SECRET.decode())
        write_config(
            home,
            f'[[webhooks]]\nurl = "{receiver.url}"\nevents = ["plan.decided"]\n'
            'secret_env = "HOOK_SECRET_FOR_TEST"\n',
        )
        inst = open_instance(load(home), clock=clock)
        try:
            assert any(isinstance(x, Notifier) for x in inst.gateway.listeners)
            d = start_dispatcher(inst.gateway, interval=30.0)
            try:
                inst.gateway.submit(
                    make_plan([("travel.search", {"destination": "Lisbon", "date": "2026-02-01"})])
                )
                receiver.wait_for(1)
            finally:
                d.stop()
        finally:
            inst.gateway.store.close()

        [req] = receiver.requests
        h = req["headers"]
        assert h["Proctor-Event"] == "plan.decided"
        assert verify_signature(
            SECRET, h["Proctor-Timestamp"], req["body"], h["Proctor-Signature"], now=clock.now()
        )
