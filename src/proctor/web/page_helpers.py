"""Stateless helpers shared by the console's route modules: pure functions, no I/O.

The error of a page the principal's roles do not open, the menu a principal sees and the
template helpers that show roles and times, the check that keeps a post-sign-in redirect on
this site, and the reader of a form's text field. They live apart from ``routes.py`` (the
router and its plumbing) so that ``audit_pages.py`` can use them without importing back
from the module that imports it.
"""

from datetime import UTC, datetime
from urllib.parse import urlsplit

from starlette.datastructures import FormData

from proctor.core.principals import Principal, may_read_audit
from proctor.errors import InvalidRequestError, PermissionDeniedError


class _Forbidden(PermissionDeniedError):
    """A console page the principal's roles do not open."""


def _roles_text(p: Principal) -> str:
    groups = f" (groups: {', '.join(p.groups)})" if p.groups else ""
    return ", ".join(p.roles) + groups


def _nav(p: Principal) -> list[tuple[str, str]]:
    """The pages this principal may open, in menu order."""
    items = []
    if p.has("approver") or p.has("user"):
        items.append(("/inbox", "Inbox"))
    if p.has("user") or p.has("admin"):
        items.append(("/timeline", "Timeline"))
    if may_read_audit(p):
        items.append(("/audit", "Audit"))
        items.append(("/dashboard", "Dashboard"))
    return items


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


def _safe_next(target: str | None) -> str:
    """A same-site path to go to after sign-in (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _text(form: FormData, name: str, *, limit: int, required: bool = False) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be text", field=name)
    value = value.strip()
    if len(value) > limit:
        raise InvalidRequestError(f"{name} is longer than {limit} characters", field=name)
    if required and not value:
        raise InvalidRequestError(f"{name} is required", field=name)
    return value
