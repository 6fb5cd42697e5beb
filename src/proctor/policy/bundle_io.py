"""Reading a policy bundle from disk, and turning rego-cpp's error texts into Proctor errors.

A bundle is a directory of ``*.rego`` modules and an optional ``data.json`` (the base
document: ``{"proctor": {"settings": {...}}}`` appears as ``data.proctor.settings``). Only the
directory's top level is read; subdirectories are ignored. ``bundle_version`` hashes its files
without compiling them.

rego-cpp reports errors as an s-expression: ``_parse_rego_errors`` extracts the file, offset
and message of each, ``_invalid_policy`` builds the ``InvalidPolicyError`` naming the file at
fault, and ``_summarise`` shortens an error text for a message.

Separate from ``engine`` because both the engine (``proctor.policy.engine``) and the policy
test runner (``proctor.policy.policy_tests``) read bundles and report rego-cpp's errors.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson

from proctor.errors import InvalidPolicyError

__all__ = ["DATA_FILE", "bundle_version", "default_bundle_path"]

DATA_FILE = "data.json"


def default_bundle_path() -> Path:
    """Return the directory of the default bundle shipped with Proctor."""
    return Path(__file__).resolve().parent / "bundle"


# --- errors ----------------------------------------------------------------------------------

_ERROR_START = re.compile(r"\(error\b")
_LENGTH_PREFIX = re.compile(r"(\d+):")
_SPAN = re.compile(r"\|(\d+)\|(\d+)")
_ERRORMSG = re.compile(r"\(errormsg (\d+):")


@dataclass(frozen=True, slots=True)
class _RegoError:
    file: str | None
    offset: int | None
    message: str


def _parse_rego_errors(text: str) -> list[_RegoError]:
    """Extract (file, offset, message) from rego-cpp's error s-expression.

    The text looks like ``(error 6:a.rego|30|1 (errormsg 16:this is unclosed) (errorast ...))``:
    strings are length-prefixed and a location is ``name|offset|length``. Only the file, offset
    and message are kept; the ``errorast`` part may echo the whole input and is dropped.
    """
    starts = [m.end() for m in _ERROR_START.finditer(text)]
    errors: list[_RegoError] = []
    for i, start in enumerate(starts):
        segment = text[start : starts[i + 1] if i + 1 < len(starts) else len(text)]
        file, offset = _location(segment)
        msg = _ERRORMSG.search(segment)
        if msg:
            message = segment[msg.end() : msg.end() + int(msg.group(1))]
        else:
            message = segment.strip().splitlines()[0] if segment.strip() else "unknown error"
        errors.append(_RegoError(file, offset, message))
    return errors


def _location(segment: str) -> tuple[str | None, int | None]:
    """Return the first ``N:name|offset|length`` location in an error segment."""
    for head in _LENGTH_PREFIX.finditer(segment):
        name_end = head.end() + int(head.group(1))
        span = _SPAN.match(segment, name_end)
        if span:
            return segment[head.end() : name_end], int(span.group(1))
    return None, None


def _summarise(text: str, *, limit: int = 3) -> str:
    """Return the messages of a rego-cpp error text, without the AST it may carry."""
    errors = _parse_rego_errors(text)
    if not errors:
        first = text.strip().splitlines()[0] if text.strip() else "no details"
        return first[:200]
    messages = list(dict.fromkeys(e.message for e in errors))
    more = f" (and {len(messages) - limit} more)" if len(messages) > limit else ""
    return "; ".join(messages[:limit]) + more


def _position(source: str, offset: int) -> tuple[int, int]:
    """Return the 1-based line and column of a byte offset into ``source``."""
    raw = source.encode("utf-8")[:offset]
    line = raw.count(b"\n") + 1
    column = offset - (raw.rfind(b"\n") + 1) + 1
    return line, column


def _invalid_policy(
    text: str, sources: Mapping[str, str], origin: str, *, default_file: str | None = None
) -> InvalidPolicyError:
    """Build the ``InvalidPolicyError`` for a rego-cpp build error, naming the file at fault."""
    errors = _parse_rego_errors(text)
    located = [e for e in errors if e.file is not None and e.file in sources]
    if located:
        first = located[0]
        file = first.file or "?"
        where = file
        if first.offset is not None and file in sources:
            line, column = _position(sources[file], first.offset)
            where = f"{file}:{line}:{column}"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        message = f"policy {where}: {first.message}{more}"
    elif default_file is not None:
        file = default_file
        message = f"policy {file}: {_summarise(text)}"
    else:
        file = ", ".join(sorted(sources)) or origin
        message = f"policy bundle {origin} does not build: {_summarise(text)} (files: {file})"
    return InvalidPolicyError(
        message,
        hint="Fix the Rego (Rego v1: `import rego.v1`, `if`, `contains`) and reload.",
        file=file,
        bundle=origin,
        errors=[e.message for e in errors],
    )


# --- reading a bundle ------------------------------------------------------------------------


def _version(files: Iterable[tuple[str, bytes]]) -> str:
    """Return ``sha256:<hex>`` over (name, NUL, content, NUL) for each file in name order."""
    h = hashlib.sha256()
    for name, content in sorted(files, key=lambda f: f[0]):
        h.update(name.encode("utf-8"))
        h.update(b"\0")
        h.update(content)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def bundle_version(directory: str | os.PathLike[str]) -> str:
    """The version ``from_directory`` gives the bundle in ``directory``, without compiling it.

    Raises:
        InvalidPolicyError: the directory or one of its files cannot be read.
    """
    return _version(_read_bundle(directory)[1].items())


def _read_bundle(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, bytes]]:
    """Return the bundle's files (``*.rego`` and ``data.json``, top level) by name."""
    path = Path(directory)
    if not path.is_dir():
        raise InvalidPolicyError(
            f"policy bundle {path} is not a directory",
            hint="Point the policy setting at a directory of .rego files and a data.json.",
            bundle=str(path),
        )
    files: dict[str, bytes] = {}
    for entry in sorted(path.iterdir()):
        if entry.is_file() and (entry.suffix == ".rego" or entry.name == DATA_FILE):
            try:
                files[entry.name] = entry.read_bytes()
            except OSError as exc:
                raise InvalidPolicyError(
                    f"policy {entry.name} cannot be read: {exc.strerror}",
                    file=entry.name,
                    bundle=str(path),
                ) from exc
    return path, files


class _Sources(NamedTuple):
    """A bundle read from disk: its text, and the bytes its version is computed from."""

    origin: str
    modules: dict[str, str]  # *.rego by name
    data: str | None  # data.json, if present
    files: dict[str, bytes]


def _read_sources(directory: str | os.PathLike[str]) -> _Sources:
    """Read a bundle's modules and data as UTF-8 text (the engine and the test runner).

    Raises:
        InvalidPolicyError: naming the file that does not read or decode.
    """
    path, files = _read_bundle(directory)
    origin = str(path)
    modules = {
        name: _decode(name, content, origin)
        for name, content in files.items()
        if name.endswith(".rego")
    }
    data = files.get(DATA_FILE)
    return _Sources(
        origin, modules, None if data is None else _decode(DATA_FILE, data, origin), files
    )


def _decode(name: str, content: bytes, origin: str) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPolicyError(
            f"policy {name} is not UTF-8 text", file=name, bundle=origin
        ) from exc


def _check_data(text: str, origin: str) -> None:
    """Raise ``InvalidPolicyError`` unless ``text`` is a JSON object."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidPolicyError(
            f"policy {DATA_FILE} is not valid JSON: {exc}", file=DATA_FILE, bundle=origin
        ) from exc
    if not isinstance(value, dict):
        raise InvalidPolicyError(
            f"policy {DATA_FILE} must hold a JSON object, not {type(value).__name__}",
            file=DATA_FILE,
            bundle=origin,
        )
