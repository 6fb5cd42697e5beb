"""The console's pure parts, in-process: sessions, CSRF tokens and what the pages compute."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from proctor import Proctor
from proctor.app.tokens import TokenService, hash_token
from proctor.core.lifecycle import PlanStatus
from proctor.core.principals import Principal
from proctor.testing import FrozenClock
from proctor.web.sessions import KIND, SESSION_LIFETIME, Session, SessionStore, check_csrf
from proctor.web.views import chart, diff_rows, left, plan_view, undo_deadline

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
TABLE = ("restaurant.book", {"restaurant": "Casa", "party": 2, "time": "20:00"})


def _plan(*steps, user="alice"):
    return {
        "actor": {"type": "agent", "name": "bot", "model_version": "m-1", "agent_id": "bot"},
        "on_behalf_of": user,
        "intent": "dinner",
        "steps": [{"id": f"s{i + 1}", "action": a, "params": p} for i, (a, p) in enumerate(steps)],
    }


@pytest.fixture
def world():
    clock = FrozenClock(T0)
    p = Proctor.in_memory(clock=clock)
    yield p, clock
    p.close()


class TestSessions:
    def test_an_unknown_or_empty_cookie_is_no_session(self, world):
        """Nothing, garbage, or an over-long value opens nothing."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)

        assert sessions.get(None) is None
        assert sessions.get("") is None
        assert sessions.get("x" * 500) is None
        assert sessions.get("not-a-session") is None

    def test_open_get_end(self, world):
        """A session reads back with its principal and CSRF token; ended, it is gone."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        who = Principal(name="fiona", roles=("approver",), groups=("finance",))
        sid, opened = sessions.open(who, token_hash=None)

        got = sessions.get(sid)
        sessions.end(sid)

        assert got is not None and got.principal == who and got.csrf == opened.csrf
        assert sessions.get(sid) is None

    def test_reading_a_session_waits_for_no_writer(self, tmp_path):
        """Every console request reads its session: on SQLite the read takes no write
        transaction, so a page is not queued behind another process's write."""
        import fcntl
        import os
        import threading

        from proctor.storage.sqlite import SqliteStore

        clock = FrozenClock(T0)
        path = str(tmp_path / "p.db")
        store = SqliteStore(path)
        sessions = SessionStore(store, clock)
        who = Principal(name="fiona", roles=("approver",), groups=())
        sid, _ = sessions.open(who, token_hash=None)
        probe = os.open(path + "-lock", os.O_RDWR)
        fcntl.flock(probe, fcntl.LOCK_EX)  # another process's writer holds the lock
        got: list[object] = []
        reader = threading.Thread(target=lambda: got.append(sessions.get(sid)))
        try:
            reader.start()
            reader.join(5)
            assert not reader.is_alive()
        finally:
            fcntl.flock(probe, fcntl.LOCK_UN)
            os.close(probe)
            reader.join(5)
            store.close()
        session = got[0]
        assert isinstance(session, Session) and session.principal == who

    def test_the_store_keeps_only_a_hash_of_the_session_id(self, world):
        """A leaked database holds no usable session id."""
        p, clock = world
        sid, _ = SessionStore(p.gateway.store, clock).open(
            Principal(name="a", roles=("user",)), token_hash=None
        )

        stored = p.gateway.store.list_state(KIND)

        assert list(stored) == [hashlib.sha256(sid.encode()).hexdigest()]
        assert sid not in str(stored)

    def test_sign_out_deletes_the_record(self, world):
        """Ending a session removes it from the store, not just marks it."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        keep, _ = sessions.open(Principal(name="a", roles=("user",)), token_hash=None)
        gone, _ = sessions.open(Principal(name="b", roles=("user",)), token_hash=None)

        sessions.end(gone)
        sessions.end(gone)  # twice: nothing to do
        sessions.end("never-opened")

        assert list(p.gateway.store.list_state(KIND)) == [hashlib.sha256(keep.encode()).hexdigest()]
        assert sessions.get(keep) is not None

    def test_expired_sessions_are_deleted_when_a_session_opens(self, world):
        """Opening a session deletes every expired one; live ones stay."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        who = Principal(name="a", roles=("user",))
        for _ in range(3):
            sessions.open(who, token_hash=None, not_after=T0 + timedelta(minutes=5))
        live, _ = sessions.open(who, token_hash=None)
        clock.advance(timedelta(minutes=6))
        before = len(p.gateway.store.list_state(KIND))

        new, _ = sessions.open(who, token_hash=None)

        assert before == 4
        assert sorted(p.gateway.store.list_state(KIND)) == sorted(
            hashlib.sha256(s.encode()).hexdigest() for s in (live, new)
        )
        assert sessions.get(live) is not None and sessions.get(new) is not None

    def test_an_expired_session_found_is_deleted_and_purge_sweeps_the_rest(self, world):
        """Reading an expired session deletes it; purge() deletes the others at once."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        who = Principal(name="a", roles=("user",))
        read, _ = sessions.open(who, token_hash=None)
        sessions.open(who, token_hash=None)
        sessions.open(who, token_hash=None)
        clock.advance(SESSION_LIFETIME)

        found = sessions.get(read)
        left_after_read = len(p.gateway.store.list_state(KIND))
        purged = sessions.purge()

        assert found is None
        assert left_after_read == 2
        assert purged == 2
        assert p.gateway.store.list_state(KIND) == {}
        assert sessions.purge() == 0

    def test_an_unreadable_record_is_no_session_and_is_purged(self, world):
        """A damaged record opens nothing (fail closed) and goes with the next purge."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        sid = "damaged-session-id"
        digest = hashlib.sha256(sid.encode()).hexdigest()
        with p.gateway.store.transaction() as tx:
            tx.put_state(KIND, digest, {"name": "a", "roles": ["root"]}, at=T0)

        assert sessions.get(sid) is None
        assert sessions.purge() == 1

    def test_a_session_expires(self, world):
        """After its lifetime (or a JWT's earlier expiry) a session is over."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        who = Principal(name="a", roles=("user",))
        long_sid, _ = sessions.open(who, token_hash=None)
        short_sid, _ = sessions.open(who, token_hash=None, not_after=T0 + timedelta(minutes=5))
        clock.advance(timedelta(minutes=6))
        mid = (sessions.get(long_sid), sessions.get(short_sid))
        clock.advance(SESSION_LIFETIME)

        assert mid[0] is not None and mid[1] is None
        assert sessions.get(long_sid) is None

    def test_revoking_the_token_ends_its_sessions(self, world):
        """A session opened with an API token dies when the token is revoked."""
        p, clock = world
        tokens = TokenService(p.gateway.store, clock)
        new = tokens.create(name="alice", roles=["user"])
        sessions = SessionStore(p.gateway.store, clock)
        sid, _ = sessions.open(new.record.principal(), token_hash=hash_token(new.token))
        before = sessions.get(sid)
        tokens.revoke(new.record.token_id)

        assert before is not None
        assert sessions.get(sid) is None

    def test_csrf_tokens(self, world):
        """The synchronizer token must match exactly; the sign-in token is bound to its nonce."""
        p, clock = world
        sessions = SessionStore(p.gateway.store, clock)
        _sid, s = sessions.open(Principal(name="a", roles=("user",)), token_hash=None)
        login = sessions.login_token("nonce-1")

        assert check_csrf(s, s.csrf)
        assert not check_csrf(s, None) and not check_csrf(s, "") and not check_csrf(s, "x")
        assert sessions.check_login_token("nonce-1", login)
        assert not sessions.check_login_token("nonce-2", login)
        assert not sessions.check_login_token(None, login)
        assert not sessions.check_login_token("nonce-1", None)


class TestViews:
    def test_left(self):
        """Time left in words; past or now is closed; none is empty."""
        assert left(None, T0) == ""
        assert left(T0, T0) == "closed"
        assert left(T0 + timedelta(seconds=5), T0) == "5 s"
        assert left(T0 + timedelta(seconds=905), T0) == "15 min 5 s"
        assert left(T0 + timedelta(hours=2, minutes=3), T0) == "2 h 3 min"
        assert left(T0 + timedelta(days=1, hours=1), T0) == "1 d 1 h"

    def test_diff_rows(self):
        """A simulator's diff becomes before/after rows; the rest is listed as is."""
        assert diff_rows(None) == ([], [])
        assert diff_rows({"diff": {"plan": ["basic", "pro"]}, "risk": "low"}) == (
            [("plan", "basic", "pro")],
            [("risk", "low")],
        )
        assert diff_rows({"charge": 5}) == ([], [("charge", "5")])

    def test_a_booking_can_be_undone_until_its_window_closes(self, world):
        """The undo deadline is the step's window; a plan with a step that cannot be undone
        has none."""
        p, _clock = world
        rec = p.submit(_plan(TABLE))
        search = p.submit(_plan(("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})))

        deadline = undo_deadline(rec, p.gateway.catalog)

        assert deadline == rec.steps[0].undo_until is not None and deadline > T0
        assert undo_deadline(search, p.gateway.catalog) is None

    def test_a_search_before_the_booking_does_not_hide_the_undo(self, world):
        """A read-only look-up has nothing to undo: the booking's window is the plan's.

        Regression: the page showed no undo for the README's search-then-reserve plan.
        """
        p, _clock = world
        search = ("travel.search", {"destination": "Lisbon", "date": "2027-03-12"})
        rec = p.submit(_plan(search, ("travel.reserve", {"flight": "PX101", "traveller": "a"})))

        deadline = undo_deadline(rec, p.gateway.catalog)

        assert rec.status is PlanStatus.SUCCEEDED
        assert deadline == rec.steps[1].undo_until is not None and deadline > T0

    def test_plan_view_masks_and_summarises(self, world):
        """The summary comes from the template; masked params stay masked on the page."""
        p, _ = world
        rec = p.submit(
            _plan(
                (
                    "travel.pay",
                    {"amount": 100, "currency": "EUR", "traveller": "alice", "card_last4": "4242"},
                )
            )
        )

        v = plan_view(rec, p.gateway.catalog, T0)

        assert v["summary"] == "Charge 100 EUR (minor units) to the card of alice"
        assert ("card_last4", "***") in v["steps"][0]["params"]
        assert [axis for axis, _, _ in v["scores"]] == [
            "risk",
            "auditability",
            "ux",
            "recovery",
            "cost",
        ]

    def test_plan_view_says_she_confirms_first_then_each_quorum(self, world):
        """A plan with confirm and approve steps shows her turn first, then each quorum."""
        p, _ = world
        sub = ("billing.change_subscription", {"customer": "c", "plan": "pro"})
        pay = ("travel.pay", {"amount": 640_000, "currency": "EUR", "traveller": "alice"})
        rec = p.submit(_plan(sub, pay))

        v = plan_view(rec, p.gateway.catalog, T0)
        after = plan_view(p.confirm(rec.plan_id, "alice"), p.gateway.catalog, T0)

        assert v["confirm_first"] and not after["confirm_first"]
        assert [(q["step_id"], q["approver_roles"]) for q in after["quorums"]] == [
            ("s2", ["finance"])
        ]

    def test_chart_geometry(self):
        """Bars scale to the ceiling, gaps stay empty, negatives are marked."""
        c = chart([("a", 1.0), ("b", None), ("c", 0.5), ("d", -2.0)], ceiling=1.0, height=134)

        heights = [b["h"] for b in c.bars]

        assert heights == [100.0, 0.0, 50.0, 100.0]
        assert c.bars[1]["empty"] and c.bars[3]["negative"]
        assert all(b["y"] + b["h"] == 114 for b in c.bars)


class TestContrast:
    """The stylesheet's colour pairs meet WCAG AA (4.5:1 for text)."""

    @staticmethod
    def _luminance(hex_: str) -> float:
        rgb = [int(hex_[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    def _ratio(self, a: str, b: str) -> float:
        hi, lo = sorted((self._luminance(a), self._luminance(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    def test_text_colours_on_their_backgrounds(self):
        """Text, muted text, links, badges, buttons and notices against what they sit on."""
        import re
        from pathlib import Path

        import proctor.web

        css = (Path(proctor.web.__file__).parent / "static" / "console.css").read_text()
        colour = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", css))
        white = "#ffffff"
        pairs = [
            ("fg", "bg"),
            ("fg", "card"),
            ("muted", "bg"),
            ("muted", "card"),
            ("accent", "bg"),
            ("accent", "card"),
            ("ok", "ok-bg"),
            ("no", "no-bg"),
            ("warn", "warn-bg"),
            ("ok", "bg"),
            ("no", "bg"),
            ("warn", "bg"),
        ]

        low = [(f, b, round(self._ratio(colour[f], colour[b]), 2)) for f, b in pairs]
        low += [
            (b, "white text", round(self._ratio(white, colour[b]), 2))
            for b in ("accent", "ok", "no")
        ]

        assert len(low) == 15  # every pair was found in the stylesheet
        assert [x for x in low if x[2] < 4.5] == []
