"""The ``proctor`` command.

Exit codes (DESIGN section 5): 0 success, 1 a failed check or a denied or rejected request,
2 a usage error (with ``--json``, also an error object with code ``usage_error`` on stdout).
``ProctorError`` is caught in exactly one place, ``main``, which prints its diagnostics (or,
with ``--json``, the error object) and exits 1; ``--verbose`` re-raises for a traceback.
"""

from __future__ import annotations

import json
import sys

import click
import typer

from proctor.errors import ProctorError

__all__ = ["main"]


def _usage_errors() -> tuple[type[BaseException], ...]:
    # NOTE(cli): typer >= 0.29 raises usage errors from its own bundled click
    # (``typer._click``), a different class from the installed click's; catch both.
    classes: list[type[BaseException]] = [click.exceptions.UsageError]
    try:
        from typer._click.exceptions import UsageError as TyperUsageError
    except ImportError:  # older typer: plain click
        pass
    else:
        classes.append(TyperUsageError)
    return tuple(classes)


_USAGE_ERRORS = _usage_errors()
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)


def _usage_error(exc: BaseException) -> dict[str, object]:
    """The ``--json`` form of a usage error: code, message, the option at fault, a hint."""
    ctx = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    field = None
    if param is not None:
        opts = getattr(param, "opts", None) or []
        field = opts[0] if opts else getattr(param, "name", None)
    command = getattr(ctx, "command_path", None) or "proctor"
    return {
        "code": "usage_error",
        "message": exc.format_message(),  # type: ignore[attr-defined]
        "field": field,
        "hint": f"Run `{command} --help` for the options.",
    }


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status."""
    from proctor.cli.commands import app

    args = sys.argv[1:] if argv is None else argv
    want_json = "--json" in args
    try:
        code = app(args=args, prog_name="proctor", standalone_mode=False)
    except _USAGE_ERRORS as exc:
        exc.show()  # type: ignore[attr-defined]
        if want_json:
            # A script that asked for JSON reads stdout: it gets an error object there too.
            print(json.dumps({"error": _usage_error(exc)}))
        sys.exit(2)
    except _ABORTS:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except ProctorError as exc:
        if "--verbose" in args:
            raise
        if want_json:
            print(json.dumps({"error": exc.to_dict()}))
        else:
            from proctor.cli.render import clean

            # An error's message can quote a plan, a file or a server: no control characters.
            print(clean(exc.diagnostics(), keep_lines=True), file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
