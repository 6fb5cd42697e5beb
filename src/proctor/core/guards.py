"""Guard rules: rate limits, budgets, breakers, kill switches, whitelists, anomalies, autonomy.

Pure functions and value types: no I/O, no clock (time is passed in). ``proctor.app.guards``
keeps their state in the store and applies them around routing and execution.

Counters are keyed by a name and a *bucket*, a sortable string: the UTC minute
(``2026-11-24T03:41``) for sliding windows, the day (``2026-11-24``) or the month
(``2026-11``) for budget periods. A sliding window of ``s`` seconds sums the minute buckets
from ``window_start(now, s)`` on: the bucket holding ``now - s`` and every later one, so the
window covers at least the last ``s`` seconds (minute granularity: up to 59 s more, never less).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from proctor.core.approvals import person_key, user_key
from proctor.errors import ConfigError

__all__ = [
    "AnomalySettings",
    "AutonomyLevel",
    "AutonomySettings",
    "BreakerSettings",
    "BreakerState",
    "Budget",
    "GuardSettings",
    "RateLimit",
    "agent_key",
    "agent_names",
    "anomalies",
    "autonomy_outcome",
    "breaker_after",
    "breaker_before",
    "breaker_view",
    "budget_refuses",
    "kill_keys",
    "minute",
    "next_level",
    "outside_whitelist",
    "over_budget",
    "period_bucket",
    "promotion_due",
    "user_action_keys",
    "window_start",
]

SCOPES = ("agent", "action", "user", "global")


def agent_key(name: str) -> str:
    """The key an agent's guard state is kept and matched under: its id case-folded.

    An operator who stops ``OPS-BOT`` means the agent whose plans say ``ops-bot``, and an
    agent running in process writes its own ``actor.agent_id``: were kill switches and
    whitelists matched as spelt, it would escape one by changing the case of its id. The
    same key as a user's grants (``proctor.core.approvals.user_key``): an ASCII name
    lower-cased, any other as given. Every plan's agent id is ASCII (``Plan``'s id grammar),
    so for them this is ``str.lower`` (about 0.1 µs a plan); ``person_key`` folds ASCII the
    same but costs two NFKC passes, and compatibility forms cannot occur in an agent id.
    A non-ASCII name (only an operator can type one) stays as given and matches no agent:
    the administrative operations refuse such a name before it is stored.
    """
    return user_key(name)


_NO_ALIASES: Mapping[str, Sequence[str]] = {}


def agent_names(agent: str, aliases: Mapping[str, Sequence[str]] = _NO_ALIASES) -> tuple[str, ...]:
    """The names an agent's kill switches and whitelist may be stored under, its key first.

    Its key (``agent_key``: everything written now), its own spelling when that differs (a
    row another process of an earlier version wrote for exactly this spelling), and the
    spellings in ``aliases[key]``: rows of earlier versions, which stored the name as typed
    (``agent:OPS-BOT``), found by a scan of the stored rows. Each such row stops the agent
    however it spells its id, as a row written now does (fail closed).
    """
    key = agent_key(agent)
    names: tuple[str, ...] = (key,) if key == agent else (key, agent)
    if aliases:
        more = aliases.get(key)
        if more:
            names += tuple(n for n in more if n not in names)
    return names


def minute(now: datetime) -> str:
    """The minute bucket of ``now`` (UTC), as ``strftime("%Y-%m-%dT%H:%M")`` writes it.

    Formatted by hand: several guards ask for it on every plan, and ``strftime`` costs
    several times as much.
    """
    return f"{now.year:04d}-{now.month:02d}-{now.day:02d}T{now.hour:02d}:{now.minute:02d}"


def breaker_counters(key: str) -> tuple[str, str, str]:
    """The counters a breaker's window sums: its calls (and their cost), errors, rollbacks."""
    return (f"calls:{key}", f"errors:{key}", f"rollbacks:{key}")


def window_start(now: datetime, seconds: int) -> str:
    """The first minute bucket of a sliding window of ``seconds`` ending at ``now``.

    The bucket of ``now - seconds``: whatever happened in the last ``seconds`` is in a bucket
    from this one on (a limit of 5 per 60 s at 09:01:00 still counts 09:00:58). The window
    is up to a minute longer than asked, which errs on the strict side.
    """
    return minute(now - timedelta(seconds=seconds))


def period_bucket(now: datetime, period: str) -> str:
    """The bucket of a budget period: ``day`` or ``month``."""
    return now.strftime("%Y-%m-%d") if period == "day" else now.strftime("%Y-%m")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most ``limit`` plans (agent, user) or steps (action) per ``per_seconds``.

    ``key`` is one agent/action/user name, or ``*`` for each one separately.
    """

    scope: str
    key: str
    limit: int
    per_seconds: int = 60

    def __post_init__(self) -> None:
        _check_scope(self.scope, self.key, "guards.rate_limits", allow_global=False)
        _check_whole(self.limit, "guards.rate_limits.limit", low=1, what="calls")
        _check_whole(self.per_seconds, "guards.rate_limits.per_seconds", low=60, what="seconds")

    def applies(self, value: str) -> bool:
        """Whether this limit counts ``value`` (an agent, action or user name).

        A user is compared by ``person_key`` (``Alice`` is ``alice``), as everywhere else, and
        an agent by ``agent_key`` (``key = "OPS-BOT"`` limits ``ops-bot``).
        """
        return _named(self.scope, self.key, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """At most ``limit`` minor units spent per ``period`` by a scope (or ``global``).

    Spend is reserved when a plan is decided, settled when its step runs, released when it
    does not. A plan that would exceed it routes to ``on_exceed``: ``approve`` or ``deny``.
    """

    scope: str
    key: str
    limit: int
    period: str = "day"
    on_exceed: str = "approve"

    def __post_init__(self) -> None:
        _check_scope(self.scope, self.key, "guards.budgets", allow_global=True)
        _check_whole(self.limit, "guards.budgets.limit", low=0, what="minor units (cents)")
        if self.period not in ("day", "month"):
            raise ConfigError(
                f"budget period must be day or month, not {self.period!r}",
                field="guards.budgets.period",
            )
        if self.on_exceed not in ("approve", "deny"):
            raise ConfigError(
                "budget on_exceed must be approve or deny", field="guards.budgets.on_exceed"
            )

    def applies(self, value: str) -> bool:
        """Whether this budget counts ``value`` (users and agents by key, as limits do)."""
        return self.scope == "global" or _named(self.scope, self.key, value)

    def counter(self, value: str) -> str:
        """The counter this budget keeps for ``value``."""
        who = "*" if self.scope == "global" else value
        return f"budget:{self.scope}:{who}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerSettings:
    """When a breaker (per action and per agent) opens, and how it closes again."""

    window_seconds: int = 300
    min_calls: int = 10
    error_rate: float = 0.5
    rollback_rate: float = 0.5
    cost_spike: float = 10.0  # a step costing this many times the window's average
    open_seconds: int = 60
    trials: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalySettings:
    """What counts as an anomaly for an agent."""

    rate_factor: float = 5.0  # actions in the last minute above k x its hourly baseline
    min_rate: int = 20  # ... and above this many per minute
    denials: int = 5  # denials within ten minutes
    cost_factor: float = 10.0  # a plan costing k x the agent's hourly average


@dataclass(frozen=True, slots=True, kw_only=True)
class AutonomySettings:
    """When Proctor suggests promoting a user's autonomy for an action."""

    min_accepted: int = 20
    min_rate: float = 0.9


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardSettings:
    """Every guard's configuration (``[guards]`` in config.toml)."""

    rate_limits: tuple[RateLimit, ...] = ()
    budgets: tuple[Budget, ...] = ()
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    anomaly: AnomalySettings = field(default_factory=AnomalySettings)
    autonomy: AutonomySettings = field(default_factory=AutonomySettings)
    review_sample_rate: float = 0.0
    """The least fraction of auto-executed plans sampled for post-hoc review, whatever the
    policy's ``review_sample_rate`` (the larger applies); default 0: the policy's alone."""

    def __post_init__(self) -> None:
        # Typed float, but read from TOML as it comes: check the type as well as the range.
        rate: object = self.review_sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigError(
                "review_sample_rate must be a number from 0 to 1",
                field="guards.review_sample_rate",
            )


def _named(scope: str, key: str, value: str) -> bool:
    """Whether a rate limit's or budget's ``key`` names ``value`` (``*`` names every one).

    A user and an agent are matched as their state is kept (``person_key``, ``agent_key``): a
    limit configured for ``OPS-BOT`` must not silently apply to nobody while the agent's
    plans say ``ops-bot``. The folding runs only for a named key that is not the exact
    spelling. The counters stay keyed by the plan's spelling (docs/guards.md).
    """
    if key in ("*", value):
        return True
    if scope == "agent":
        return agent_key(key) == agent_key(value)
    return scope == "user" and person_key(key) == person_key(value)


def _check_whole(value: object, where: str, *, low: int, what: str) -> None:
    """Refuse a limit that is not a whole number of ``what``, at least ``low``.

    A float would be compared as it stands (a limit of 2.5 calls lets 2 through, a budget
    of 10.5 allows 10) while the audit records 10.5: say what was meant instead. type() and
    not isinstance(): True is an int to Python, and no limit to anyone.
    """
    if type(value) is not int or value < low:
        name = where.rpartition(".")[2]
        raise ConfigError(
            f"{name} must be a whole number of {what} >= {low}, not {value!r}",
            field=where,
            hint="Write an integer, without quotes or a decimal point.",
        )


def _check_scope(scope: str, key: object, where: str, *, allow_global: bool) -> None:
    allowed = SCOPES if allow_global else SCOPES[:3]
    if scope not in allowed:
        raise ConfigError(
            f"scope must be one of {', '.join(allowed)}, not {scope!r}", field=f"{where}.scope"
        )
    # A key that is no name (key = 5) would match nothing, and the limit would apply to no one.
    if not isinstance(key, str) or not key:
        raise ConfigError(
            f"key must be a name or *, not {key!r}",
            field=f"{where}.key",
            hint='Write key = "*" for each one separately, or key = "name", with quotes.',
        )


# --------------------------------------------------------------------------- breakers


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerState:
    """A circuit breaker: ``closed`` → ``open`` → ``half_open`` → ``closed`` (or open)."""

    state: str = "closed"
    opened_at: str | None = None
    trials: int = 0  # trial calls let through while half-open
    reason: str = ""
    trial_at: str | None = None  # when the last trial call was let through
    held: bool = False
    """Forced open by an admin: it stays open, whatever ``open_seconds`` say, until reset."""

    @classmethod
    def from_value(cls, value: Any) -> BreakerState:
        """Read a stored value (None: closed).

        A breaker forced open by an earlier version has a ``forced`` record and no ``held``
        (nor an ``opened_at``, which is what kept it open then): it is held all the same.
        """
        if not isinstance(value, Mapping):
            return cls()
        state = str(value.get("state", "closed"))
        return cls(
            state=state,
            opened_at=value.get("opened_at"),
            trials=int(value.get("trials", 0)),
            reason=str(value.get("reason", "")),
            trial_at=value.get("trial_at"),
            held=state == "open" and bool(value.get("held") or value.get("forced")),
        )

    def value(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "state": self.state,
            "opened_at": self.opened_at,
            "trials": self.trials,
            "reason": self.reason,
            "trial_at": self.trial_at,
            "held": self.held,
        }


def breaker_before(
    state: BreakerState, now: datetime, settings: BreakerSettings
) -> tuple[BreakerState, bool]:
    """Before an agentic execution: the state to keep, and whether it may run agentically.

    An open breaker turns half-open after ``open_seconds``; half-open lets ``trials`` calls
    through; everything else must be approved by a human. A trial let through may never
    report back (its plan was escalated after all, or never ran): when all trials are out
    and ``open_seconds`` pass without a verdict, a new round of trials starts, so a breaker
    cannot stay half-open for good.
    """
    if state.state == "open" and breaker_view(state, now, settings) == "half_open":
        state = BreakerState(state="half_open", opened_at=state.opened_at, reason=state.reason)
    if state.state == "closed":
        return state, True
    if state.state != "half_open":
        return state, False
    trials = state.trials
    if trials >= settings.trials and state.trial_at is not None:
        last = datetime.fromisoformat(state.trial_at)
        if now >= last + timedelta(seconds=settings.open_seconds):
            trials = 0
    if trials < settings.trials:
        return BreakerState(
            state="half_open",
            opened_at=state.opened_at,
            trials=trials + 1,
            reason=state.reason,
            trial_at=now.isoformat(),
        ), True
    return state, False


def breaker_view(state: BreakerState, now: datetime, settings: BreakerSettings) -> str:
    """The state a reader (the policy, a status page) should see, without consuming a trial.

    A breaker stored ``open`` whose ``open_seconds`` have passed is effectively half-open: the
    next agentic call turns it so and is let through as a trial. A policy that escalated a
    half-open breaker too would starve it of trials and keep it from ever closing, so readers
    must tell the two apart. A breaker an admin holds open (``held``) stays open.
    """
    if state.state == "open" and state.opened_at is not None and not state.held:
        opened = datetime.fromisoformat(state.opened_at)
        if now >= opened + timedelta(seconds=settings.open_seconds):
            return "half_open"
    return state.state


def breaker_after(
    state: BreakerState,
    *,
    ok: bool,
    calls: int,
    errors: int,
    rollbacks: int,
    cost: int,
    window_cost: int,
    now: datetime,
    settings: BreakerSettings,
) -> BreakerState:
    """After a step (or a rollback): the breaker's next state.

    ``calls``, ``errors``, ``rollbacks`` and ``window_cost`` are the window's totals,
    including this outcome; ``cost`` is this step's.
    """
    if state.state == "half_open":
        if not ok:
            return BreakerState(
                state="open", opened_at=now.isoformat(), reason="a trial call failed"
            )
        if state.trials >= settings.trials:
            return BreakerState()
        return state
    if state.state == "open":
        return state
    reason = ""
    if calls >= settings.min_calls:
        if errors / calls >= settings.error_rate:
            reason = f"error rate {errors}/{calls} over {settings.window_seconds} s"
        elif rollbacks / calls >= settings.rollback_rate:
            reason = f"rollback rate {rollbacks}/{calls} over {settings.window_seconds} s"
        elif cost and calls > 1 and window_cost > cost:
            # Against the average of the window's other calls (this one included would dilute
            # the very spike it is).
            others = (window_cost - cost) / (calls - 1)
            if cost >= settings.cost_spike * others:
                reason = f"cost spike: {cost} against an average of {others:.0f}"
    if reason:
        return BreakerState(state="open", opened_at=now.isoformat(), reason=reason)
    return state


# --------------------------------------------------------------------------- anomalies


def anomalies(
    *,
    last_minute: int,
    last_hour: int,
    denials: int,
    plan_cost: int,
    hour_cost: int,
    hour_plans: int,
    settings: AnomalySettings,
) -> list[str]:
    """Return why an agent's activity looks anomalous (empty: it does not)."""
    found = []
    baseline = last_hour / 60
    if last_minute >= settings.min_rate and last_minute > settings.rate_factor * max(baseline, 1):
        found.append(
            f"{last_minute} actions in the last minute, {settings.rate_factor:g}x above its "
            f"hourly baseline of {baseline:.1f}/min"
        )
    if denials >= settings.denials:
        found.append(f"{denials} denials in ten minutes")
    if hour_plans >= 5 and plan_cost and hour_cost:
        average = hour_cost / hour_plans
        if plan_cost > settings.cost_factor * average:
            found.append(f"a plan costing {plan_cost} against an hourly average of {average:.0f}")
    return found


# --------------------------------------------------------------------------- autonomy


class AutonomyLevel(StrEnum):
    """How much a user lets an agent do alone for one action."""

    PROPOSE = "propose"  # the agent proposes; the user accepts each one
    CONFIRM = "confirm"  # the user confirms each one with a click
    AUTO = "auto"  # the policy's outcome stands (within the tolerance, if any)


_NEXT = {AutonomyLevel.PROPOSE: AutonomyLevel.CONFIRM, AutonomyLevel.CONFIRM: AutonomyLevel.AUTO}


def next_level(level: AutonomyLevel) -> AutonomyLevel | None:
    """The level a promotion moves to, or None at the top."""
    return _NEXT.get(level)


def autonomy_outcome(level: AutonomyLevel, below: int | None, amount: int) -> str | None:
    """The least outcome a user's autonomy setting requires for one step, or None.

    ``propose`` and ``confirm`` need the user's confirmation; ``auto`` needs nothing, except
    at or above its tolerance (``below``), where it needs a confirmation too.
    """
    if level is AutonomyLevel.AUTO:
        return "confirm" if below is not None and amount >= below else None
    return "confirm"


def user_action_keys(user: str, action: str) -> list[str]:
    """The keys of a user's autonomy state for one action, the one to use first.

    Per-user guard state is keyed by ``person_key(user)``: ``ALICE`` and ``alice`` are one
    person to separation of duties, and must be one to their autonomy setting, rate limits
    and budgets too. A row written before keys were folded (``Alice|x``) is still read, as
    the second key, until the level is set again.
    """
    folded = f"{person_key(user)}|{action}"
    raw = f"{user}|{action}"
    return [folded] if raw == folded else [folded, raw]


def promotion_due(accepted: int, declined: int, settings: AutonomySettings) -> bool:
    """Whether a user's record on an action earns a promotion suggestion."""
    total = accepted + declined
    return accepted >= settings.min_accepted and total > 0 and accepted / total >= settings.min_rate


def outside_whitelist(allowed: Any, actions: Sequence[str]) -> list[str]:
    """The actions of a plan outside an agent's whitelist (``allowed``: its stored value).

    No whitelist (None) allows everything; a whitelist value that is not the stored shape
    allows nothing (fail closed: a damaged row must not open the agent up).
    """
    if allowed is None:
        return []
    names = allowed.get("actions") if isinstance(allowed, Mapping) else None
    if not isinstance(names, (list, tuple)):
        return list(dict.fromkeys(actions))
    return list(dict.fromkeys(a for a in actions if a not in names))


def over_budget(spent: int, amount: int, limit: int) -> bool:
    """Whether spending ``amount`` more on top of ``spent`` goes past ``limit``.

    Reaching the limit exactly is within it. A negative amount never exceeds (and the
    service counts it as 0: it never lowers the spend either).
    """
    return amount > 0 and spent + amount > limit


def budget_refuses(spent: int, amount: int, limit: int) -> bool:
    """Whether a budget refuses a plan's portion of ``amount`` on top of ``spent``.

    A portion with an amount is refused when it would go past the limit (``over_budget``).
    A portion of 0 (steps the budget covers whose action has no amount, or an amount of 0)
    is refused once nothing is left (``spent >= limit``): its tool may still report a cost
    after it ran (``{"cost": n}``), and with the budget spent any cost goes past it. Without
    this, a tool reporting costs could drive the spend past the limit and every plan with no
    amount would still pass (fail closed).
    """
    if amount > 0:
        return spent + amount > limit
    return spent >= limit


def kill_keys(
    agent: str, actions: Sequence[str], aliases: Mapping[str, Sequence[str]] = _NO_ALIASES
) -> list[str]:
    """The kill-switch keys that can stop a plan: global, its agent's, each action's.

    The agent's under each of its names (``agent_names``).
    """
    return [
        "global",
        *(f"agent:{n}" for n in agent_names(agent, aliases)),
        *(f"action:{a}" for a in dict.fromkeys(actions)),
    ]
