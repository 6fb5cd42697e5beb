"""The Rego policy engine: compile a bundle once with regopy (rego-cpp), evaluate it per plan.

A bundle is a directory of ``*.rego`` modules and an optional ``data.json`` (the base
document: ``{"proctor": {"settings": {...}}}`` appears as ``data.proctor.settings``). Only the
directory's top level is read; subdirectories are ignored. Modules named ``*_test.rego`` are
policy tests: they count towards the bundle's version but are not compiled into the engine
(``run_policy_tests`` runs them).

Fail closed: every way the engine can fail (undefined decision, a rule conflict, a builtin
error, an exception from the bindings) raises ``PolicyEngineError``, which the gateway turns
into a deny. A bundle that does not parse or build raises ``InvalidPolicyError`` at load time.

regopy pitfalls this module works around (regopy 1.5.2):

- ``Output.binding()`` aborts the process, and ``Output`` fetches and parses its text twice;
  ``evaluate`` calls rego-cpp's C API directly (``_Native``: cffi when available, else
  regopy's ctypes handles), reads the output's JSON text once and parses it with orjson.
- A rule conflict does not raise: the output prints as ``<error>`` and its ok flag is false.
  Some errors (recursion, a missing function) come back marked ok with an error text that is
  not JSON; ``_decision_from_json`` reports that text.
- rego-cpp keeps strings in their JSON-escaped form, but ``regopy.Input`` hands it raw Python
  strings: a quote, backslash or newline in the input then breaks comparisons and the output
  JSON. ``_encode`` escapes strings the way a JSON parser would see them. The input is built
  with one C call per value, key and member (``_make_builder``), so its size is the largest
  fixed cost of an evaluation: pass in ``input`` only what changes per plan.
- Errors are printed to stdout unless the interpreter's log level is ``NONE``.
- Builtin errors become undefined (and silently fall through an ``else`` chain) unless strict
  builtin errors are on; they are on here.
- ``with input as {...}`` on a rule that refers to other rules crashes rego-cpp (SIGSEGV or
  SIGABRT) while compiling, which is why tests are kept out of the engine and run in a child
  process.

Thread safety: an interpreter must not be used by two threads at once, so ``evaluate`` holds a
lock around setting the input and querying. Converting the input and parsing the output
happen outside it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import regopy

from proctor.core.canonical import canonical
from proctor.errors import InvalidPolicyError, InvalidRequestError, PolicyEngineError

__all__ = [
    "ENTRYPOINT",
    "PolicyTestResult",
    "RegoPolicyEngine",
    "bundle_version",
    "default_bundle_path",
    "run_policy_tests",
]

ENTRYPOINT = "proctor/decision"
"""The bundle entrypoint (``data.proctor.decision``)."""

_ENTRYPOINT_BYTES = ENTRYPOINT.encode("ascii")

DATA_FILE = "data.json"
_TEST_SUFFIX = "_test.rego"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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


# --- input conversion ------------------------------------------------------------------------

_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f]').search
_ENCODED: dict[str, bytes] = {}
_ENCODED_MAX = 4096


def _encode(text: str) -> bytes:
    """Return ``text`` as rego-cpp stores a string: UTF-8, JSON-escaped, without quotes."""
    raw = _ENCODED.get(text)
    if raw is None:
        escaped = json.dumps(text, ensure_ascii=False)[1:-1] if _NEEDS_ESCAPE(text) else text
        raw = escaped.encode("utf-8")
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        _ENCODED[text] = raw
    return raw


def _escaped_copy(value: Any) -> Any:
    """Return a JSON-shaped copy of ``value`` with strings escaped (the slow path)."""
    if isinstance(value, str):
        return _encode(value).decode("utf-8")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OverflowError("integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinity are not JSON")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"object keys must be strings, got {type(key).__name__}")
            out[_encode(key).decode("utf-8")] = _escaped_copy(item)
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_escaped_copy(item) for item in value]
    raise TypeError(f"{type(value).__name__} is not JSON")


_CDEF = """
typedef void regoInput;
regoInput* regoNewInput(void);
void regoFreeInput(regoInput* input);
uint32_t regoInputInt(regoInput* input, int64_t value);
uint32_t regoInputFloat(regoInput* input, double value);
uint32_t regoInputString(regoInput* input, const char* value);
uint32_t regoInputBoolean(regoInput* input, uint8_t value);
uint32_t regoInputNull(regoInput* input);
uint32_t regoInputObjectItem(regoInput* input);
uint32_t regoInputObject(regoInput* input, uint32_t size);
uint32_t regoInputArray(regoInput* input, uint32_t size);
uint32_t regoSetInput(void* rego, regoInput* input);
void* regoBundleQueryEntrypoint(void* rego, void* bundle, const char* entrypoint);
uint8_t regoOutputOk(void* output);
uint32_t regoOutputJSONSize(void* output);
uint32_t regoOutputJSON(void* output, char* buffer, uint32_t size);
void regoFreeOutput(void* output);
"""
"""The rego-cpp C API functions on the evaluation path (rego_c.h, regopy 1.5.2)."""


class _Native:
    """rego-cpp's C functions on the evaluation path, bound once.

    Building the input is one C call per value, key and member, so the cost of a call matters:
    through cffi (a dependency of cryptography and PyNaCl) the input builds about 10 % faster
    than through ctypes. cffi opens the library regopy loaded (the same handle, so pointers are
    shared); when cffi is missing or cannot open it, regopy's own ctypes functions are used.
    ``available`` is False when regopy no longer exposes them, and ``evaluate`` then goes
    through regopy's Python API.
    """

    def __init__(self, *, use_cffi: bool = True) -> None:
        self.available = False
        self.kind = "none"
        self._ffi: Any = None
        try:
            lib = regopy.rego_shared.rego
            fns: Any = (self._open_cffi(lib) if use_cffi else None) or lib
            for name in _CDEF_NAMES:
                getattr(fns, name)
        except (AttributeError, OSError):
            return
        self.kind = "ctypes" if fns is lib else "cffi"
        self._fns = fns
        self._build = _make_builder(fns)
        self.free_input = fns.regoFreeInput
        self.available = True

    def _open_cffi(self, lib: Any) -> Any:
        """Return the library through cffi, or None (then regopy's ctypes functions serve)."""
        try:
            cffi = importlib.import_module("cffi")  # optional; no type stubs
        except ImportError:
            return None
        try:
            ffi = cffi.FFI()
            ffi.cdef(_CDEF)
            fns = ffi.dlopen(lib._name)
            for name in _CDEF_NAMES:
                getattr(fns, name)
        except Exception:  # noqa: BLE001 - any failure falls back to ctypes
            return None
        self._ffi = ffi
        return fns

    def build(self, value: Any) -> Any:
        """Return a native ``regoInput*`` for a JSON-shaped value; the caller frees it."""
        return self._build(value)

    def pointer(self, address: int) -> Any:
        """Return a pointer argument for an address held by regopy (an ``int``)."""
        return address if self._ffi is None else self._ffi.cast("void*", address)

    def address(self, pointer: Any) -> int:
        """Return the address of a native pointer, as regopy holds it."""
        if self._ffi is None:
            return int(pointer)
        return int(self._ffi.cast("uintptr_t", pointer))

    def query(self, rego: Any, bundle: Any, entrypoint: bytes, term: Any) -> tuple[int, Any]:
        """Set the input and query the entrypoint: (regoSetInput's code, the output or NULL)."""
        fns = self._fns
        code = fns.regoSetInput(rego, term)
        if code:
            return code, None
        return 0, fns.regoBundleQueryEntrypoint(rego, bundle, entrypoint)

    def output_ok(self, output: Any) -> bool:
        return bool(self._fns.regoOutputOk(output))

    def output_json(self, output: Any) -> bytes:
        """Return the output's JSON text (rego-cpp renders it once, at query time)."""
        fns = self._fns
        size = fns.regoOutputJSONSize(output)
        if self._ffi is None:
            buf: Any = ctypes.create_string_buffer(size)
            if fns.regoOutputJSON(output, buf, size):
                raise PolicyEngineError("rego-cpp could not copy the policy output")
            return bytes(buf.value)
        cbuf = self._ffi.new("char[]", size)
        if fns.regoOutputJSON(output, cbuf, size):
            raise PolicyEngineError("rego-cpp could not copy the policy output")
        return bytes(self._ffi.string(cbuf))

    def free_output(self, output: Any) -> None:
        self._fns.regoFreeOutput(output)


_CDEF_NAMES = tuple(re.findall(r"(rego\w+)\(", _CDEF))


def _make_builder(fns: Any) -> Any:
    """Return ``build(value) -> regoInput*`` over the C functions in ``fns``.

    A closure over local names: an input of a 1-step plan is about 60 C calls, and attribute
    lookups per call would cost as much as the calls themselves.
    """
    new, free = fns.regoNewInput, fns.regoFreeInput
    put_int, put_float, put_str = fns.regoInputInt, fns.regoInputFloat, fns.regoInputString
    put_bool, put_null, put_item = fns.regoInputBoolean, fns.regoInputNull, fns.regoInputObjectItem
    put_object, put_array = fns.regoInputObject, fns.regoInputArray
    encode = _encode
    lo, hi = _INT64_MIN, _INT64_MAX

    def add(p: Any, v: Any) -> None:
        t = type(v)
        if t is str:
            failed = put_str(p, encode(v))
        elif t is dict:
            for key, item in v.items():
                if type(key) is not str:
                    raise TypeError(f"object keys must be strings, got {type(key).__name__}")
                if put_str(p, encode(key)):
                    raise ValueError("rego-cpp rejected an object key")
                add(p, item)
                if put_item(p):
                    raise ValueError("rego-cpp rejected an object item")
            failed = put_object(p, len(v))
        elif t is int:
            if not lo <= v <= hi:
                raise OverflowError("integer out of the 64-bit range")
            failed = put_int(p, v)
        elif t is bool:
            failed = put_bool(p, v)
        elif t is list or t is tuple:
            for item in v:
                add(p, item)
            failed = put_array(p, len(v))
        elif v is None:
            failed = put_null(p)
        elif t is float:
            if not math.isfinite(v):
                raise ValueError("NaN and infinity are not JSON")
            failed = put_float(p, v)
        else:  # subclasses and other mappings/sequences: normalise, then convert
            add(p, _plain(v))
            return
        if failed:
            raise ValueError(f"rego-cpp rejected a {t.__name__} value")

    def build(value: Any) -> Any:
        handle = new()
        if not handle:
            raise MemoryError("rego-cpp could not allocate an input")
        try:
            add(handle, value)
        except BaseException:
            free(handle)
            raise
        return handle

    return build


def _plain(value: Any) -> Any:
    """Return ``value`` as a plain JSON type (str, int, float, dict, list) or raise TypeError."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


@functools.cache
def _native() -> _Native:
    """The C API, opened when the first engine is built.

    cffi parses its declarations in ~20 ms, which a CLI command that builds no engine need not pay.
    """
    return _Native()


# --- the engine ------------------------------------------------------------------------------


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


class RegoPolicyEngine:
    """A compiled Rego bundle answering ``data.proctor.decision`` (implements ``PolicyEngine``).

    Build it with ``from_directory`` or ``from_sources``; both compile once, and ``evaluate``
    then runs the compiled plan for each input.

    Args:
        modules: Rego sources by module name (``*_test.rego`` names are skipped).
        data_json: The base document as a JSON object text, or None.
        version: The bundle's ``sha256:`` version.
        origin: Where the bundle came from, for messages.

    Raises:
        InvalidPolicyError: when a module does not parse or the bundle does not build.
    """

    def __init__(
        self,
        modules: Mapping[str, str],
        data_json: str | None = None,
        *,
        version: str,
        origin: str = "<sources>",
    ) -> None:
        self._version = version
        self._origin = origin
        self._lock = threading.Lock()
        compiled = {n: s for n, s in modules.items() if not n.endswith(_TEST_SUFFIX)}
        if not compiled:
            raise InvalidPolicyError(
                f"policy bundle {origin} has no Rego module (only tests or nothing)",
                hint="Add at least one .rego file that defines data.proctor.decision.",
                bundle=origin,
            )
        self._interpreter, self._bundle = self._compile(compiled, data_json)
        native = _native() if _native().available else None
        self._native = native
        if native is not None:
            self._rego_ptr = native.pointer(self._interpreter._impl)
            self._bundle_ptr = native.pointer(self._bundle._impl)

    def _compile(self, modules: Mapping[str, str], data_json: str | None) -> tuple[Any, Any]:
        interpreter = regopy.Interpreter()
        interpreter.log_level = regopy.LogLevel.NONE  # errors come back to us, not to stdout
        interpreter.strict_built_in_errors = True  # a builtin error fails closed, not undefined
        for name, source in sorted(modules.items()):
            try:
                interpreter.add_module(name, source)
            except regopy.RegoError as exc:
                raise _invalid_policy(str(exc), {name: source}, self._origin) from exc
        if data_json is not None:
            _check_data(data_json, self._origin)
            try:
                interpreter.add_data_json(data_json)
            except regopy.RegoError as exc:
                raise _invalid_policy(
                    str(exc), modules, self._origin, default_file=DATA_FILE
                ) from exc
        try:
            bundle = interpreter.build(None, [ENTRYPOINT])
        except regopy.RegoError as exc:
            raise _invalid_policy(str(exc), modules, self._origin) from exc
        if not bundle.ok():
            raise _invalid_policy(_node_errors(bundle), modules, self._origin)
        return interpreter, bundle

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> RegoPolicyEngine:
        """Compile the bundle in ``path``: its ``*.rego`` modules and ``data.json`` if present.

        Raises:
            InvalidPolicyError: naming the file that does not read, parse or build.
        """
        directory, files = _read_bundle(path)
        origin = str(directory)
        modules = {
            name: _decode(name, content, origin)
            for name, content in files.items()
            if name.endswith(".rego")
        }
        data = files.get(DATA_FILE)
        data_json = None if data is None else _decode(DATA_FILE, data, origin)
        return cls(modules, data_json, version=_version(files.items()), origin=origin)

    @classmethod
    def from_sources(
        cls, modules: Mapping[str, str], data: Mapping[str, Any] | None = None
    ) -> RegoPolicyEngine:
        """Compile in-memory modules (name -> Rego source) and an optional data document.

        The version is computed as for a directory, with ``data`` written as canonical JSON
        under the name ``data.json``.

        Raises:
            InvalidPolicyError: naming the module that does not parse or build, or when
                ``data`` cannot be written as JSON.
        """
        files = [(name, source.encode("utf-8")) for name, source in modules.items()]
        data_json = None
        if data is not None:
            try:
                raw = canonical(data)
            except InvalidRequestError as exc:
                raise InvalidPolicyError(
                    f"policy data cannot be written as JSON: {exc.message}", file=DATA_FILE
                ) from exc
            files.append((DATA_FILE, raw))
            data_json = raw.decode("utf-8")
        return cls(modules, data_json, version=_version(files))

    @property
    def version(self) -> str:
        """``sha256:<hex>`` over the bundle's files (names and bytes, in name order)."""
        return self._version

    @property
    def origin(self) -> str:
        """Where the bundle was loaded from (a directory, or ``<sources>``)."""
        return self._origin

    def evaluate(self, input: Mapping[str, Any]) -> Any:
        """Return the raw value of ``data.proctor.decision`` for ``input``.

        Raises:
            PolicyEngineError: when the input is not JSON-shaped, the decision is undefined,
                or the engine reports an error (a rule conflict, a builtin error, ...).
        """
        native = self._native
        if native is None:
            return self._evaluate_with_regopy(input)
        try:
            term = native.build(input)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _not_json(exc) from exc
        except Exception as exc:  # any failure must fail closed
            raise PolicyEngineError(
                f"the policy input could not be built: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            output = None
            try:
                try:
                    code, output = native.query(
                        self._rego_ptr, self._bundle_ptr, _ENTRYPOINT_BYTES, term
                    )
                finally:
                    native.free_input(term)  # rego-cpp keeps a copy
                if code or not output:
                    raise PolicyEngineError(
                        f"the policy engine failed: {_summarise(self._last_error())}"
                    )
                if not native.output_ok(output):
                    errors = _node_errors(_OutputNodes(native.address(output)))
                    raise _policy_failed(errors)
                text = native.output_json(output)
            except PolicyEngineError:
                raise
            except Exception as exc:  # any engine failure must fail closed
                raise PolicyEngineError(
                    f"the policy engine failed: {type(exc).__name__}: {_summarise(str(exc))}"
                ) from exc
            finally:
                if output:
                    native.free_output(output)  # while holding the lock
        return _decision_from_json(text)

    def _last_error(self) -> str:
        try:
            return str(regopy.rego_shared.rego_get_error(self._interpreter._impl))
        except Exception:  # noqa: BLE001 - diagnostics only; the caller fails closed anyway
            return "no details"

    def _evaluate_with_regopy(self, input: Mapping[str, Any]) -> Any:
        """``evaluate`` through regopy's Python API (when its C handles are not reachable)."""
        try:
            term = regopy.Input(_escaped_copy(input))
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _not_json(exc) from exc
        except Exception as exc:  # any failure must fail closed
            raise PolicyEngineError(
                f"the policy input could not be built: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            output = None
            try:
                self._interpreter.set_input(term)
                output = self._interpreter.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
                return _decision_value(output)
            except PolicyEngineError:
                raise
            except json.JSONDecodeError as exc:  # an error text that regopy took for JSON
                raise _policy_failed(exc.doc) from exc
            except Exception as exc:  # any engine failure must fail closed
                raise PolicyEngineError(
                    f"the policy engine failed: {type(exc).__name__}: {_summarise(str(exc))}"
                ) from exc
            finally:
                del output  # free the native output while holding the lock


class _OutputNodes:
    """The error nodes of a native output that the engine still owns (for ``_node_errors``)."""

    def __init__(self, address: int) -> None:
        self._address = address

    def node(self) -> Any:
        return regopy.Node(regopy.rego_shared.rego_output_node(self._address))


def _not_json(exc: BaseException) -> PolicyEngineError:
    return PolicyEngineError(
        f"the policy input is not JSON-shaped: {exc}",
        hint="Pass only dicts, lists, strings, integers, finite floats, booleans, None.",
    )


def _policy_failed(errors: str) -> PolicyEngineError:
    return PolicyEngineError(
        f"the policy failed: {_summarise(errors)}",
        hint="A rule conflict (two values for one rule), a builtin error, recursion or a "
        "missing function; run `proctor policy test` and check the rules named in the error.",
    )


_LONG_NUMBER = re.compile(rb"[0-9]{20}").search


def _decision_from_json(text: bytes) -> Any:
    """Return the single value of an entrypoint query's JSON output, or raise.

    rego-cpp prints ``undefined``, one result ``{"expressions": [value]}``, or a list of
    results. Some errors (recursion, a missing function) come back marked ok with a text
    that is not JSON.
    """
    if text == b"undefined":
        raise _undefined()
    try:
        # orjson turns integers beyond 64 bits into floats: leave those texts to json.
        parsed = json.loads(text) if _LONG_NUMBER(text) else orjson.loads(text)
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
        raise _policy_failed(text.decode("utf-8", "replace")) from None
    results = parsed if isinstance(parsed, list) else [parsed]
    expressions = [r.get("expressions", []) if isinstance(r, dict) else [] for r in results]
    if len(results) == 1 and len(expressions[0]) == 1:
        return expressions[0][0]
    if len(results) == 1 and not expressions[0]:
        raise _undefined()
    raise PolicyEngineError(f"data.proctor.decision has {len(results)} results, expected 1")


def _undefined() -> PolicyEngineError:
    return PolicyEngineError(
        "data.proctor.decision is undefined for this input: fail closed",
        hint="The policy must define data.proctor.decision for every valid plan.",
    )


def _node_errors(owner: Any) -> str:
    """Return the error s-expressions of a failed bundle or output (best effort)."""
    try:
        node = owner.node()
        return "\n".join(node.at(i).json() for i in range(len(node)))
    except Exception:  # noqa: BLE001 - diagnostics only; the caller fails closed anyway
        return "no details"


def _decision_value(output: Any) -> Any:
    """Return the single value of a regopy ``Output``, or raise ``PolicyEngineError``."""
    if not output.ok():
        raise _policy_failed(_node_errors(output))
    results = output.results
    if len(results) != 1 or len(results[0].expressions) != 1:
        if len(results) == 1 and not results[0].expressions:
            raise _undefined()
        raise PolicyEngineError(f"data.proctor.decision has {len(results)} results, expected 1")
    return results[0].expressions[0]


# --- policy tests ----------------------------------------------------------------------------

_PACKAGE = re.compile(r"^package[ \t]+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", re.M)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.M)
_MARK = "#proctor-policy-test# "

# Runs in a child process so that a rego-cpp crash cannot take the caller down. It reads
# {"modules": [[name, source], ...], "data": text | null, "queries": [...], "entrypoints": [...]}
# on stdin, compiles every test once as a bundle entrypoint (a plain query would recompile
# the whole bundle per test, about 100 ms each) and writes one marked JSON line per test
# (Rego `print` output may share stdout, hence the mark).
_RUNNER = r"""
import json, sys
import regopy
MARK = "#proctor-policy-test# "
req = json.load(sys.stdin)
def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()
rego = regopy.Interpreter()
rego.log_level = regopy.LogLevel.NONE
rego.strict_built_in_errors = True
try:
    for name, source in req["modules"]:
        rego.add_module(name, source)
    if req["data"] is not None:
        rego.add_data_json(req["data"])
except Exception as exc:
    emit({"fatal": str(exc)})
    sys.exit(0)
bundle = None
try:
    built = rego.build(None, req["entrypoints"])
    if built.ok():
        bundle = built
except Exception:
    pass
for i, query in enumerate(req["queries"]):
    try:
        if bundle is not None:
            out = rego.query_bundle_entrypoint(bundle, req["entrypoints"][i])
        else:
            out = rego.query(query)
        if out.ok():
            emit({"i": i, "ok": True, "text": str(out)})
        else:
            node = out.node()
            text = "\n".join(node.at(k).json() for k in range(len(node)))
            emit({"i": i, "ok": False, "text": text})
    except json.JSONDecodeError as exc:
        emit({"i": i, "ok": False, "text": exc.doc})
    except Exception as exc:
        emit({"i": i, "ok": False, "text": "%s: %s" % (type(exc).__name__, exc)})
emit({"done": True})
"""


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """The outcome of one ``test_*`` rule of a bundle.

    Attributes:
        name: The rule name, for example ``test_payment_over_limit``.
        package: The Rego package that defines it, for example ``proctor_test``.
        passed: True only when the rule evaluated to exactly ``true``.
        error: Why it failed (undefined, false, an engine error), or None when it passed.
    """

    name: str
    package: str
    passed: bool
    error: str | None = None


def _discover_tests(modules: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return (package, rule) for every ``test_*`` rule, in file order, without duplicates.

    Found with regular expressions, not a Rego parser: the package must be a plain dotted
    name (``package a.b``, not ``package a["b"]``) on a line of its own, and a test rule's
    name must start its line (as ``opa fmt`` writes it). A line starting with ``test_`` inside
    a multi-line raw string would be mistaken for a rule.
    """
    found: dict[tuple[str, str], None] = {}
    for _, source in sorted(modules.items()):
        package = _PACKAGE.search(source)
        if package is None:
            continue
        for rule in _TEST_RULE.finditer(source):
            found[(package.group(1), rule.group(1))] = None
    return list(found)


def _test_verdict(ok: bool, text: str) -> str | None:
    """Return None when a test query printed exactly true, else why it failed."""
    if not ok:
        return f"error: {_summarise(text)}"
    if text == "undefined":
        return "undefined (a condition of the test is not met)"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return f"error: {_summarise(text)}"
    if isinstance(parsed, dict) and parsed.get("expressions") == [True]:
        return None
    values = parsed.get("expressions") if isinstance(parsed, dict) else parsed
    return f"expected true, got {json.dumps(values)[:200]}"


def _crash_reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            what = f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"signal {-returncode}"
    else:
        what = f"exit code {returncode}"
    tail = stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
    return (
        f"rego-cpp crashed ({what}{': ' + tail if tail else ''}); a known trigger is "
        "`with input as {...}` replacing the whole input of a rule that refers to other "
        "rules: replace single fields instead (`with input.steps as [...]`)"
    )


def run_policy_tests(
    directory: str | os.PathLike[str], *, timeout: float = 120.0
) -> list[PolicyTestResult]:
    """Run every ``test_*`` rule of the bundle in ``directory`` and report each.

    All modules (tests included) and ``data.json`` are loaded into one interpreter in a child
    process, and each rule is queried as ``data.<package>.<rule>``; it passes only when the
    result is exactly ``true``. See ``_discover_tests`` for the limits of test discovery.

    Args:
        directory: The bundle directory.
        timeout: Seconds the whole run may take before the remaining tests fail.

    Returns:
        One result per test rule, in file and source order; empty when there is none.

    Raises:
        InvalidPolicyError: when the bundle cannot be read.
    """
    path, files = _read_bundle(directory)
    origin = str(path)
    modules = {
        name: _decode(name, content, origin)
        for name, content in files.items()
        if name.endswith(".rego")
    }
    tests = _discover_tests(modules)
    if not tests:
        return []
    data = files.get(DATA_FILE)
    request = {
        "modules": sorted(modules.items()),
        "data": None if data is None else _decode(DATA_FILE, data, origin),
        "queries": [f"data.{package}.{rule}" for package, rule in tests],
        "entrypoints": [f"{package.replace('.', '/')}/{rule}" for package, rule in tests],
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONIOENCODING": "utf-8",
    }
    verdicts: dict[int, str | None] = {}
    fallback: str | None = None
    try:
        proc = subprocess.run(  # noqa: S603 - our own interpreter running a constant script
            [sys.executable, "-c", _RUNNER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fallback = f"the policy tests did not finish within {timeout:g} s"
    else:
        done = False
        for line in proc.stdout.splitlines():
            if not line.startswith(_MARK):
                continue
            message = json.loads(line[len(_MARK) :])
            if "fatal" in message:
                fallback = f"the bundle does not load: {_summarise(message['fatal'])}"
            elif "done" in message:
                done = True
            else:
                verdicts[message["i"]] = _test_verdict(message["ok"], message["text"])
        if not done and fallback is None:
            fallback = _crash_reason(proc.returncode, proc.stderr)
    results = []
    for i, (package, rule) in enumerate(tests):
        error = verdicts.get(i, fallback or "not run")
        results.append(PolicyTestResult(rule, package, error is None, error))
    return results
