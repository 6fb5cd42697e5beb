"""Administration of the guards, each operation in its own transaction (docs/guards.md).

``GuardsAdmin`` is a mixin of ``proctor.app.guards.Guards`` holding what people (the CLI,
the HTTP API, the console) do to the guards rather than what the gateway's hooks do for
every plan: ``kill``, ``unkill``, ``open_breaker``, ``reset_breaker``, ``set_whitelist``,
``set_autonomy``, ``answer_promotion``, ``mark_review`` and ``complain`` write through
their own transaction with their audit event (and refresh this process's snapshot), while
``status``, ``suggestions`` and ``review_queue`` only read. It is separate because none of
it runs on a plan's path.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from proctor.app.guards_budgets import Emit
from proctor.core.approvals import person_key
from proctor.core.canonical import MAX_SAFE_INT
from proctor.core.catalog import Catalog
from proctor.core.events import EventType as E
from proctor.core.guards import (
    AutonomyLevel,
    BreakerState,
    Budget,
    GuardSettings,
    RateLimit,
    agent_key,
    breaker_counters,
    breaker_view,
    minute,
    period_bucket,
    user_action_keys,
    window_start,
)
from proctor.core.lifecycle import PlanRecord
from proctor.core.plans import AGENT_ID, ID_RULE
from proctor.core.ports import Clock, Store, Transaction
from proctor.errors import ConflictError, InvalidRequestError, NotFoundError

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["GuardsAdmin"]

_VERDICTS = ("fine", "wrong")
_RECENT_PLANS = 200  # the latest plans whose agents an unknown agent's name is compared with

# The actions an MCP proxy adds to its own catalog at run time (``mcp.<server>.<tool>``, or
# ``mcp.<server>.<tool>-<8 hex>`` for clashing names; ``proctor.mcp.governance.action_name``):
# the catalog of the process engaging a switch need not know them, so a name of that shape
# is accepted as it stands. Its parts are lower-case slugs, so ``mcp.FS.write`` (which no
# tool is ever named) is refused like any other unknown name.
_MCP_ACTION = re.compile(r"mcp\.[a-z0-9_]+\.[a-z0-9_]+(-[0-9a-f]{8})?")


class GuardsAdmin:
    """Administrative operations of ``Guards``: switches, breakers, settings, reviews, status."""

    settings: GuardSettings
    store: Store
    clock: Clock
    catalog: Catalog
    _gw: Gateway | None
    _invalidate: Callable[[], None]

    # ------------------------------------------------------------------ administration

    def _admin(self, fn: Callable[[Transaction, Emit, Any], Any]) -> Any:
        if self._gw is None:
            raise ConflictError("the guards are not attached to a gateway")
        with self.store.transaction() as tx:
            j = self._gw._journal(tx)

            def emit(type_: str, **kw: Any) -> None:
                kw.setdefault("actor", {"type": "human", "name": kw.get("user_id") or "admin"})
                j.emit(type_, **kw)

            out = fn(tx, emit, self.clock.now())
            j.flush()
        self._invalidate()
        return out

    @staticmethod
    def _switch(scope: str, key: str | None) -> str:
        """The stored key of a kill switch: ``global``, ``agent:<agent_key>``, ``action:X``.

        An agent's name is stored as its ``agent_key`` (``OPS-BOT`` is ``agent:ops-bot``),
        which is how the hooks look it up for every spelling of the agent's id.
        """
        if scope not in ("global", "agent", "action"):
            raise InvalidRequestError(
                f"a kill switch is global, an agent's or an action's, not {scope!r}",
                field="scope",
            )
        if scope == "global":
            # A name with the global scope is a mistake either way (the agent or action scope
            # was meant, or the name is stray): say so rather than stop everything silently.
            if key:
                raise InvalidRequestError(
                    f"the global kill switch takes no name, not {key!r}: for an agent or an "
                    "action, give that scope",
                    field="key",
                )
            return "global"
        if not key:
            raise InvalidRequestError(f"an {scope}'s kill switch needs its name", field="key")
        return f"agent:{agent_key(key)}" if scope == "agent" else f"action:{key}"

    def _spellings(self, kind: str, key: str) -> list[str]:
        """The stored keys of ``kind`` that are the agent's ``key``, however spelt.

        ``key`` is ``agent:<agent_key>`` (a whitelist's: the agent key). The result is the key
        itself, then rows an earlier version stored as typed (``agent:OPS-BOT``). Read
        outside the transaction: no process of this version writes such a row.
        """
        prefix = "agent:" if kind != "whitelist" else ""
        folded = key[len(prefix) :]
        found = [
            k
            for k in self.store.list_state(kind)
            if k != key and k.startswith(prefix) and agent_key(k[len(prefix) :]) == folded
        ]
        return [key, *sorted(found)]

    def kill(
        self,
        scope: str,
        key: str | None,
        *,
        by: str,
        reason: str = "",
        allow_unknown: bool = False,
    ) -> str:
        """Engage a kill switch (``global``, ``agent`` NAME or ``action`` NAME); its key.

        ``engage``, returning the switch's key only (``agent:bot``).
        """
        switch: str = self.engage(scope, key, by=by, reason=reason, allow_unknown=allow_unknown)[
            "switch"
        ]
        return switch

    def engage(
        self,
        scope: str,
        key: str | None,
        *,
        by: str,
        reason: str = "",
        allow_unknown: bool = False,
    ) -> dict[str, Any]:
        """Engage a kill switch (``global``, ``agent`` NAME or ``action`` NAME).

        The name must be known here (``_check_known``): an action of the catalog or an MCP
        tool's (``mcp.<server>.<tool>``); an agent that a plan, an API token or a guard has
        used. ``allow_unknown`` engages it all the same (an action only another process
        declares, an agent that has not acted yet); an agent's name must still be an agent
        id (``AGENT_ID``).

        A switch already engaged (an agent's in any spelling) is left as it is: who engaged it,
        when and why stay those of the first engagement, and no event is written, since
        nothing changed (the log's ``kill.engaged`` is that engagement). The answer says so.

        Returns:
            ``{"switch", "engaged": True, "already"}``: ``already`` is None, or the engaged
            switch's ``{"switch", "by", "reason", "at"}`` when it was engaged before.

        Raises:
            InvalidRequestError: ``scope`` or ``key`` is missing, unknown, or a name given to
                the global switch; nothing written.
        """
        switch = self._switch(scope, key)
        if key is not None and scope != "global":
            self._check_known(scope, key, "kill switch", allow_unknown=allow_unknown)
        switches = self._spellings("kill", switch) if scope == "agent" else [switch]

        def op(tx: Transaction, emit: Emit, now: Any) -> dict[str, Any]:
            for one in switches:
                held = tx.get_state("kill", one)
                if held is not None:
                    first = held if isinstance(held, dict) else {}
                    already = {k: first.get(k) for k in ("by", "reason", "at")}
                    return {"switch": switch, "engaged": True, "already": {"switch": one} | already}
            tx.put_state(
                "kill", switch, {"by": by, "reason": reason, "at": now.isoformat()}, at=now
            )
            emit(E.KILL_ENGAGED, user_id=by, data={"switch": switch, "by": by, "reason": reason})
            return {"switch": switch, "engaged": True, "already": None}

        result: dict[str, Any] = self._admin(op)
        return result

    def _check_known(self, scope: str, name: str, what: str, *, allow_unknown: bool) -> None:
        """Refuse a kill switch or a forced breaker (``what``) on a name nothing here knows.

        A typo (``payments.refnd``, ``opsbot``) would otherwise be engaged, reported, and stop
        nothing, while the operator believes the action or the agent stopped (fail closed:
        say so instead). ``allow_unknown`` skips the look-up, for an action only another
        process declares or an agent that has not acted yet; an agent's name that is no
        agent id (``AGENT_ID``: ASCII, no spaces or ``@``) is refused all the same, since no
        plan can ever come from it.

        Raises:
            InvalidRequestError: on ``key``, with close matches; nothing is written.
        """
        if scope == "agent" and not AGENT_ID.match(name):
            raise InvalidRequestError(
                f"{name!r} is no agent id ({ID_RULE}), so no plan comes from it and its "
                f"{what} would apply to nothing",
                field="key",
                hint="Give the agent's id as its plans' actor.agent_id (an API token's name).",
            )
        if allow_unknown:
            return
        wanted = name
        if scope == "action":
            if name in self.catalog or _MCP_ACTION.fullmatch(name):
                return
            names = [s.name for s in self.catalog]
            where = "it is not in the catalog"
            hint = (
                "Name an action of the catalog, an MCP tool's mcp.<server>.<tool>, or pass "
                "--allow-unknown (allow_unknown) for an action only another process declares."
            )
        else:
            seen = self._agents_seen(name)
            if seen is None:
                return
            names = seen
            wanted = agent_key(name)
            where = "no plan, API token or guard here has named that agent"
            hint = (
                "Check the name (proctor plans --agent, proctor tokens list), or pass "
                "--allow-unknown (allow_unknown) for an agent that has not acted yet."
            )
        close = difflib.get_close_matches(wanted, sorted(set(names)), n=3, cutoff=0.6)
        found = f"; close matches: {', '.join(close)}" if close else ""
        effect = "stop nothing" if what == "kill switch" else "hold nothing"
        raise InvalidRequestError(
            f"unknown {scope} {name!r}: {where}, so its {what} would {effect}{found}",
            field="key",
            hint=hint,
        )

    def _agents_seen(self, name: str) -> list[str] | None:
        """None when the agent ``name`` is known here; otherwise agents that are (folded).

        Known: an agent a plan was admitted for (its ``activity`` counter, kept by
        ``agent_key``, or as spelt before keys were folded), an API token's name, an agent
        named by a guard's state (kill switch, whitelist, breaker, anomaly) or by a
        configured rate limit or budget, compared by ``agent_key``. An agent authenticating
        by JWT, or one in another process, is known once it submitted a plan. The agents of
        the latest plans join the list (counters cannot be listed) for the close matches.
        Only an administrative operation asks (a few reads, none on a plan's path).
        """
        key = agent_key(name)
        for spelt in dict.fromkeys((key, name)):
            if any(self.store.counter_sum(f"activity:agent:{spelt}", "")):
                return None
        names = [t.name for t in self.store.list_tokens()]
        names += [p.agent_id for p in self.store.list_plans(limit=_RECENT_PLANS)]
        for kind in ("kill", "breaker"):
            names += [k[6:] for k in self.store.list_state(kind) if k.startswith("agent:")]
        for kind in ("whitelist", "anomaly"):
            names += list(self.store.list_state(kind))
        limits: list[RateLimit | Budget] = [*self.settings.rate_limits, *self.settings.budgets]
        names += [x.key for x in limits if x.scope == "agent" and x.key != "*"]
        folded = [agent_key(n) for n in names]
        return None if key in folded else folded

    def unkill(self, scope: str, key: str | None, *, by: str) -> bool:
        """Release a kill switch; False if it was not engaged.

        Any name is accepted, known to the catalog or not: a switch engaged by mistake (or
        on an action since removed) must be removable.
        """
        switch = self._switch(scope, key)
        # An agent's switch under every spelling: a row an earlier version stored as typed
        # (agent:OPS-BOT) stops ops-bot now too, so it is released with it.
        switches = self._spellings("kill", switch) if scope == "agent" else [switch]

        def op(tx: Transaction, emit: Emit, now: Any) -> bool:
            released = False
            for one in switches:
                if tx.get_state("kill", one) is None:
                    continue
                tx.put_state("kill", one, None, at=now)
                emit(E.KILL_RELEASED, user_id=by, data={"switch": one, "by": by})
                released = True
            return released

        result: bool = self._admin(op)
        return result

    @staticmethod
    def _breaker_key(scope: str, key: str | None) -> str:
        """A breaker's key: ``action:X``, or ``agent:<agent_key>``.

        A forced one is stored under the agent's key and holds every spelling of its id
        (``Guards._breaker_keys``).
        """
        if scope not in ("agent", "action") or not key:
            raise InvalidRequestError(
                "a circuit breaker is an agent's or an action's: give its scope and name",
                field="scope" if scope not in ("agent", "action") else "key",
            )
        return f"agent:{agent_key(key)}" if scope == "agent" else f"action:{key}"

    def open_breaker(
        self,
        scope: str,
        key: str | None,
        *,
        by: str,
        reason: str = "",
        allow_unknown: bool = False,
    ) -> str:
        """Force a breaker open until ``reset_breaker``; its key (``force_open``)."""
        breaker: str = self.force_open(
            scope, key, by=by, reason=reason, allow_unknown=allow_unknown
        )["breaker"]
        return breaker

    def force_open(
        self,
        scope: str,
        key: str | None,
        *,
        by: str,
        reason: str = "",
        allow_unknown: bool = False,
    ) -> dict[str, Any]:
        """Force a breaker open (``agent`` NAME or ``action`` NAME) until ``reset_breaker``.

        While open, agentic execution it covers needs an approver, and plans their user only
        confirmed wait (as for a tripped breaker). A forced breaker is ``held``: it does not
        turn half-open by itself (an admin opened it, an admin closes it), and its
        ``opened_at`` says since when it is open (kept from a breaker already open). Audited as
        ``breaker.opened`` with ``manual: true``. The name must be known here, as a kill
        switch's (``_check_known``), unless ``allow_unknown``. A breaker already held open is
        left as it is, with who forced it, and nothing is recorded.

        Returns:
            ``{"breaker", "state": "open", "already"}``: ``already`` is None, or who held it
            open before (``{"by", "reason", "at"}``).

        Raises:
            InvalidRequestError: ``scope`` or ``key`` is missing or unknown; nothing written.
        """
        breaker = self._breaker_key(scope, key)
        assert key is not None  # _breaker_key refuses a missing name
        self._check_known(scope, key, "breaker", allow_unknown=allow_unknown)
        why = f"forced open by {by}" + (f": {reason}" if reason else "")

        def op(tx: Transaction, emit: Emit, now: Any) -> dict[str, Any]:
            stored = tx.get_state("breaker", breaker)
            before = BreakerState.from_value(stored)
            if before.held:
                forced = stored.get("forced") if isinstance(stored, dict) else None
                first = forced if isinstance(forced, dict) else {}
                already = {k: first.get(k) for k in ("by", "reason", "at")}
                return {"breaker": breaker, "state": "open", "already": already}
            # Open since it opened, if it already was (tripped, or half-open since then).
            since = before.opened_at if before.state != "closed" else None
            state = BreakerState(
                state="open", opened_at=since or now.isoformat(), reason=why, held=True
            )
            forced = {"by": by, "at": now.isoformat(), "reason": reason}
            tx.put_state("breaker", breaker, {**state.value(), "forced": forced}, at=now)
            emit(
                E.BREAKER_OPENED,
                user_id=by,
                data={
                    "breaker": breaker,
                    "reason": why,
                    "severity": "high",
                    "by": by,
                    "manual": True,
                },
            )
            return {"breaker": breaker, "state": "open", "already": None}

        result: dict[str, Any] = self._admin(op)
        return result

    def reset_breaker(self, scope: str, key: str | None, *, by: str, reason: str = "") -> bool:
        """Close an open or half-open breaker (``agent`` NAME or ``action`` NAME).

        Only calls after the reset count towards opening it again. Audited as
        ``breaker.closed`` with ``manual: true``.

        An agent's breakers under every spelling of its name are reset: the one its plans
        feed is keyed as they spell the agent's id (``agent:Ops-Bot``), a forced one by its
        key (``agent:ops-bot``), and the admin means the agent.

        Returns:
            False (and nothing is recorded) if no such breaker was open or half-open.
        """
        breaker = self._breaker_key(scope, key)
        breakers = self._spellings("breaker", breaker) if scope == "agent" else [breaker]

        def op(tx: Transaction, emit: Emit, now: Any) -> bool:
            done = False
            for one in breakers:
                done = self._reset_one(tx, emit, one, now, by, reason) or done
            return done

        result: bool = self._admin(op)
        return result

    def _reset_one(
        self, tx: Transaction, emit: Emit, breaker: str, now: Any, by: str, reason: str
    ) -> bool:
        """Close one breaker if it is open or half-open (``reset_breaker``)."""
        stored = tx.get_state("breaker", breaker)
        before = BreakerState.from_value(stored)
        if stored is None or before.state == "closed":
            return False
        bucket = minute(now)
        sums = tx.counter_sums(breaker_counters(breaker), bucket)
        calls, cost = sums[f"calls:{breaker}"]
        held = {
            "calls": calls,
            "cost": cost,
            "errors": sums[f"errors:{breaker}"][0],
            "rollbacks": sums[f"rollbacks:{breaker}"][0],
        }
        value = {
            **BreakerState().value(),
            "reset": {"by": by, "at": now.isoformat(), "since": bucket, "held": held},
        }
        tx.put_state("breaker", breaker, value, at=now)
        emit(
            E.BREAKER_CLOSED,
            user_id=by,
            data={
                "breaker": breaker,
                "reason": reason,
                "was": breaker_view(before, now, self.settings.breaker),
                "by": by,
                "manual": True,
            },
        )
        return True

    def set_whitelist(self, agent: str, actions: Sequence[str] | None, *, by: str) -> None:
        """Limit ``agent`` to ``actions`` (None removes the limit).

        Stored under the agent's ``agent_key``, so it applies however the agent spells its
        id; a whitelist an earlier version stored under another spelling of the name is
        replaced (removed) with it: the agent has one whitelist, the one set last.
        """
        unknown = [a for a in actions or () if a not in self.catalog]
        if unknown:
            raise InvalidRequestError(f"unknown action {unknown[0]!r}", field="actions")
        if not agent:
            raise InvalidRequestError("name the agent", field="agent")
        key = agent_key(agent)
        older = self._spellings("whitelist", key)[1:]

        def op(tx: Transaction, emit: Emit, now: Any) -> None:
            value = None if actions is None else {"actions": sorted(set(actions))}
            tx.put_state("whitelist", key, value, at=now)
            for old in older:
                tx.put_state("whitelist", old, None, at=now)
            data: dict[str, Any] = {
                "agent": key,
                "actions": None if value is None else value["actions"],
            }
            if older:
                data["replaced"] = older
            emit(E.WHITELIST_CHANGED, user_id=by, data=data)

        self._admin(op)

    def set_autonomy(
        self, user: str, action: str, level: str, *, below: int | None = None, by: str
    ) -> None:
        """Set a user's autonomy level (and tolerance) for one action."""
        if action not in self.catalog:
            raise InvalidRequestError(f"unknown action {action!r}", field="action")
        try:
            lvl = AutonomyLevel(level)
        except ValueError:
            raise InvalidRequestError(
                "level must be propose, confirm or auto", field="level"
            ) from None
        # Bounded like every integer input: it is stored and audited as exact JSON (and a
        # store's integer column is 64-bit).
        if below is not None and (type(below) is not int or not 0 <= below <= MAX_SAFE_INT):
            raise InvalidRequestError(
                f"below must be a whole amount from 0 to {MAX_SAFE_INT}", field="below"
            )

        key = user_action_keys(user, action)[0]
        # Rows from before keys were folded (``Alice|x``, any spelling): replaced by this one.
        older = [
            k
            for kind in ("autonomy", "promotion")
            for k in self.store.list_state(kind)
            if "|" in k and k != key and user_action_keys(*k.rsplit("|", 1))[0] == key
        ]

        def op(tx: Transaction, emit: Emit, now: Any) -> None:
            tx.put_state("autonomy", key, {"level": lvl.value, "below": below, "by": by}, at=now)
            tx.put_state("promotion", key, None, at=now)
            _count_afresh(tx, key)
            for old in dict.fromkeys(older):
                _count_afresh(tx, old)
                tx.put_state("autonomy", old, None, at=now)
                tx.put_state("promotion", old, None, at=now)
            emit(
                E.AUTONOMY_CHANGED,
                user_id=user,
                data={"user": user, "action": action, "level": lvl.value, "below": below, "by": by},
            )

        self._admin(op)

    def answer_promotion(self, user: str, action: str, *, accept: bool) -> str:
        """The user opts in (the level goes up one) or out of a suggested promotion."""
        keys = user_action_keys(user, action)

        def op(tx: Transaction, emit: Emit, now: Any) -> str:
            key = keys[0]
            pending = tx.get_state("promotion", key)
            if pending is None and len(keys) > 1:  # suggested before keys were folded
                key = keys[1]
                pending = tx.get_state("promotion", key)
            if not isinstance(pending, dict) or pending.get("status") != "suggested":
                raise NotFoundError(
                    f"no promotion is suggested for {user} on {action}", field="action"
                )
            setting = tx.get_state("autonomy", key) or tx.get_state("autonomy", keys[-1]) or {}
            level = pending["to"] if accept else pending["from"]
            if accept:
                tx.put_state("autonomy", key, {**setting, "level": level, "by": user}, at=now)
                tx.put_state("promotion", key, None, at=now)
                _count_afresh(tx, key)  # the new level earns its own record
            else:
                tx.put_state("promotion", key, {**pending, "status": "declined"}, at=now)
            emit(
                E.AUTONOMY_CHANGED,
                user_id=user,
                data={
                    "user": user,
                    "action": action,
                    "level": level,
                    "promotion": "accepted" if accept else "declined",
                    "by": user,
                },
            )
            return str(level)

        result: str = self._admin(op)
        return result

    def suggestions(self, user: str) -> list[dict[str, Any]]:
        """The promotions Proctor suggests to ``user`` and that await an answer, by action.

        Each is ``{"user", "action", "from", "to", "accepted", "total"}``; answer with
        ``answer_promotion``.
        """
        out = []
        for key, v in sorted(self.store.list_state("promotion").items()):
            who, _, action = key.partition("|")
            if person_key(who) != person_key(user):
                continue
            if not isinstance(v, dict) or v.get("status") != "suggested":
                continue
            out.append(
                {
                    "user": who,
                    "action": action,
                    "from": v.get("from"),
                    "to": v.get("to"),
                    "accepted": v.get("accepted"),
                    "total": v.get("total"),
                }
            )
        return out

    def mark_review(self, plan_id: str, verdict: str, *, reviewer: str, note: str = "") -> None:
        """Mark a sampled plan fine or wrong (a wrong one is a false action in the KPIs)."""
        if verdict not in _VERDICTS:
            raise InvalidRequestError("verdict must be fine or wrong", field="verdict")

        def op(tx: Transaction, emit: Emit, now: Any) -> None:
            rec = tx.get_plan(plan_id)
            if rec is None:
                raise NotFoundError(f"no plan {plan_id!r}", field="plan_id")
            if not rec.review:
                raise ConflictError(f"plan {plan_id} was not sampled for review", field="plan_id")
            tx.save_plan(dataclasses.replace(rec, review_verdict=verdict))
            emit(
                E.REVIEW_MARKED,
                plan=rec,
                user_id=reviewer,
                data={"verdict": verdict, "reviewer": reviewer, "note": note[:2000]},
            )

        self._admin(op)

    def complain(self, plan_id: str, *, by: str, reason: str) -> None:
        """A user says an action was wrong (a false action in the KPIs)."""
        if not reason.strip():
            raise InvalidRequestError("say what was wrong", field="reason")

        def op(tx: Transaction, emit: Emit, now: Any) -> None:
            rec = tx.get_plan(plan_id)
            if rec is None:
                raise NotFoundError(f"no plan {plan_id!r}", field="plan_id")
            emit(E.COMPLAINT_FILED, plan=rec, user_id=by, data={"by": by, "reason": reason[:2000]})

        self._admin(op)

    def review_queue(self, limit: int = 100) -> list[PlanRecord]:
        """Sampled plans that no reviewer has marked yet, newest first."""
        out: list[PlanRecord] = []
        before = None
        while len(out) < limit:
            page = self.store.list_plans(limit=500, before=before)
            if not page:
                break
            out.extend(p for p in page if p.review and p.review_verdict is None)
            last = page[-1]
            before = f"{last.created_at.isoformat()}|{last.plan_id}"
        return out[:limit]

    def status(self) -> dict[str, Any]:
        """Kill switches, breakers, whitelists, autonomy settings, promotions, budget use."""
        now = self.clock.now()
        budgets = []
        for b in self.settings.budgets:
            bucket = period_bucket(now, b.period)
            one = b.scope == "global" or b.key != "*"
            used = None
            if one:
                used = sum(
                    self.store.counter_sum(b.counter(who), bucket)[1]
                    for who in _spelt(b.scope, b.key)
                )
            budgets.append(
                {
                    "scope": b.scope,
                    "key": b.key,
                    "period": bucket,
                    "limit": b.limit,
                    "used": used,
                    "on_exceed": b.on_exceed,
                }
            )
        breakers = {}
        for key, v in self.store.list_state("breaker").items():
            st = BreakerState.from_value(v)
            breakers[key] = {
                **st.value(),
                "view": breaker_view(st, now, self.settings.breaker),
                # Who forced it open (it then stays open until reset), or None.
                "forced": v.get("forced") if isinstance(v, dict) and st.state == "open" else None,
            }
        rate_limits = []
        for r in self.settings.rate_limits:
            used = None
            if r.key != "*":
                since = window_start(now, r.per_seconds)
                used = sum(
                    self.store.counter_sum(f"rate:{r.scope}:{who}", since)[0]
                    for who in _spelt(r.scope, r.key)
                )
            rate_limits.append({**dataclasses.asdict(r), "used": used})
        return {
            "kill": self.store.list_state("kill"),
            "breakers": breakers,
            "whitelists": self.store.list_state("whitelist"),
            "autonomy": self.store.list_state("autonomy"),
            "promotions": self.store.list_state("promotion"),
            "budgets": budgets,
            "rate_limits": rate_limits,
        }


def _spelt(scope: str, key: str) -> list[str]:
    """The names a configured limit's counters are kept under, for ``status``.

    A user's counters are keyed by ``person_key``. An agent's are keyed as its plans spell its
    id, while a limit applies to every spelling (``RateLimit.applies``): its use is shown
    summed over the spelling configured and the agent's key (``OPS-BOT`` and ``ops-bot``),
    the one an agent authenticating over HTTP (its token's name) nearly always has.
    """
    if scope == "user":
        return [person_key(key)]
    if scope == "agent":
        return list(dict.fromkeys((key, agent_key(key))))
    return [key]


def _count_afresh(tx: Transaction, key: str) -> None:
    """Zero a user's proposal counts for one action (``proposals:{key}``, all-time bucket).

    A level set anew, or a promotion accepted, starts counting afresh: the proposals
    accepted at the old level must not suggest the next promotion at once.
    """
    total, accepted = tx.counter_sum(f"proposals:{key}", "all")
    if total or accepted:
        tx.bump(f"proposals:{key}", "all", count=-total, amount=-accepted)
