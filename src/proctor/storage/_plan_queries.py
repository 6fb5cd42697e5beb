"""The plan listings SQLite and PostgreSQL share, as SQL text with bound values.

Implementation only: ``SqliteStore.list_plans`` / ``waiting_plans`` and their PostgreSQL
twins build their statements here, so the filters, orders and cursors are one code for both
(only the placeholder differs: ``?`` or ``%s``). Column names and placeholders are the only
text interpolated; every value is bound.

- ``list_plans``: newest first (``created_at DESC, plan_id DESC``), filtered by status (one
  or a set), agent and on-behalf-of user; the cursor ``before`` is ``created_at|plan_id``.
  ``on_behalf_of`` is a person, compared by ``person_key`` (``Bob@Example.com`` is
  ``bob@example.com``) through the column ``user_key``; ``plans_by_user_key (user_key,
  created_at, plan_id)`` answers a user's listing without reading anyone else's plans.
- ``waiting_plans``: the plans in one status, soonest deadline (``expires_at``) first, then
  by plan id; plans without a deadline come last (the gateway gives every waiting plan one,
  so there should be none). The cursor ``after`` is ``expires_at|plan_id`` (an empty
  ``expires_at`` for a plan without one). The partial index ``plans_by_deadline`` (``status,
  expires_at, plan_id`` where ``expires_at`` is set) walks the deadlines in order and stops
  at the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proctor.core.approvals import user_key

__all__ = ["list_plans_sql", "waiting_plan_rows", "waiting_plans_sql"]


def list_plans_sql(
    cols: str,
    mark: str,
    *,
    status: str | None,
    statuses: Sequence[str] | None,
    agent_id: str | None,
    on_behalf_of: str | None,
    limit: int,
    before: str | None,
) -> tuple[str, tuple[Any, ...]] | None:
    """The statement of ``Store.list_plans``; None when it can match nothing (no statuses)."""
    where: list[str] = []
    args: list[Any] = []
    if status:
        where.append(f"status = {mark}")
        args.append(status)
    if statuses is not None:
        if not statuses:
            return None
        where.append(f"status IN ({', '.join([mark] * len(statuses))})")
        args += list(statuses)
    if agent_id:
        where.append(f"agent_id = {mark}")
        args.append(agent_id)
    if on_behalf_of:
        where.append(f"user_key = {mark}")
        args.append(user_key(on_behalf_of))
    if before:
        at, _, pid = before.partition("|")
        where.append(f"(created_at < {mark} OR (created_at = {mark} AND plan_id < {mark}))")
        args += [at, at, pid]
    sql = f"SELECT {cols} FROM plans"  # noqa: S608 - constant columns, placeholders only
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY created_at DESC, plan_id DESC LIMIT {mark}"
    return sql, (*args, int(limit))


def waiting_plans_sql(
    cols: str,
    mark: str,
    status: str,
    *,
    on_behalf_of: str | None,
    after: str | None,
) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements of ``Store.waiting_plans``, to run in turn until the limit is reached.

    Each ends in ``LIMIT <mark>``: the caller appends how many rows it still needs.
    """
    base = [f"status = {mark}"]
    args: list[Any] = [status]
    if on_behalf_of:
        base.append(f"user_key = {mark}")
        args.append(user_key(on_behalf_of))
    at, _, pid = (after or "").partition("|")
    out: list[tuple[str, tuple[Any, ...]]] = []
    select = f"SELECT {cols} FROM plans WHERE "  # noqa: S608 - constant columns
    if not (after and not at):  # the cursor is not yet past the plans with a deadline
        where = [*base, "expires_at IS NOT NULL"]
        timed = list(args)
        if after:
            where.append(f"(expires_at > {mark} OR (expires_at = {mark} AND plan_id > {mark}))")
            timed += [at, at, pid]
        sql = select + " AND ".join(where) + f" ORDER BY expires_at, plan_id LIMIT {mark}"
        out.append((sql, tuple(timed)))
    where = [*base, "expires_at IS NULL"]
    untimed = list(args)
    if after and not at:
        where.append(f"plan_id > {mark}")
        untimed.append(pid)
    out.append((select + " AND ".join(where) + f" ORDER BY plan_id LIMIT {mark}", tuple(untimed)))
    return out


def waiting_plan_rows(
    rows: Callable[[str, tuple[Any, ...]], Sequence[Any]],
    cols: str,
    mark: str,
    status: str,
    *,
    on_behalf_of: str | None,
    limit: int,
    after: str | None,
) -> list[Any]:
    """Run ``waiting_plans_sql``'s statements with ``rows`` until ``limit`` rows are read."""
    out: list[Any] = []
    for sql, args in waiting_plans_sql(cols, mark, status, on_behalf_of=on_behalf_of, after=after):
        if len(out) >= limit:
            break
        out += rows(sql, (*args, int(limit) - len(out)))
    return out
