"""rego-cpp's C API on the evaluation path, and the conversion of a policy input for it.

regopy pitfalls this module works around (regopy 1.5.2):

- ``Output.binding()`` aborts the process, and ``Output`` fetches and parses its text twice;
  ``RegoPolicyEngine.evaluate`` calls rego-cpp's C API directly (``_Native``: cffi when
  available, else regopy's ctypes handles), reads the output's JSON text once and parses it
  with orjson.
- rego-cpp keeps strings in their JSON-escaped form, but ``regopy.Input`` hands it raw Python
  strings: a quote, backslash or newline in the input then breaks comparisons and the output
  JSON. ``_encode`` escapes strings the way a JSON parser would see them. The input is built
  with one C call per value, key and member (``_make_builder``), so its size is the largest
  fixed cost of an evaluation: pass in ``input`` only what changes per plan.

Separate from ``engine`` because it is a self-contained layer over the C library: the engine
builds an input, queries and reads the output through ``_native()``, and uses
``_escaped_copy`` when it falls back to regopy's Python API.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import regopy

from proctor.errors import PolicyEngineError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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
