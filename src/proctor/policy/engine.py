"""The Rego policy engine: compile a bundle once with regopy (rego-cpp), evaluate it per plan.

A bundle is a directory of ``*.rego`` modules and an optional ``data.json`` (read by
``proctor.policy.bundle_io``). Modules named ``*_test.rego`` are policy tests: they count
towards the bundle's version but are not compiled into the engine (``run_policy_tests``, in
``proctor.policy.policy_tests``, runs them in a child process).

Fail closed: every way the engine can fail (undefined decision, a rule conflict, a builtin
error, an exception from the bindings) raises ``PolicyEngineError``, which the gateway turns
into a deny. A bundle that does not parse or build raises ``InvalidPolicyError`` at load time.

``evaluate`` goes through rego-cpp's C API (``proctor.policy.native``, which also notes the
regopy pitfalls of building the input and reading the output). regopy pitfalls this module
works around (regopy 1.5.2):

- A rule conflict does not raise: the output prints as ``<error>`` and its ok flag is false.
  Some errors (recursion, a missing function) come back marked ok with an error text that is
  not JSON; ``_decision_from_json`` reports that text.
- Errors are printed to stdout unless the interpreter's log level is ``NONE``.
- Builtin errors become undefined (and silently fall through an ``else`` chain) unless strict
  builtin errors are on; they are on here.

Thread safety: an interpreter must not be used by two threads at once, so ``evaluate`` holds a
lock around setting the input and querying. Converting the input and parsing the output
happen outside it.

``bundle_version``, ``default_bundle_path``, ``PolicyTestResult`` and ``run_policy_tests``
are re-exported from their modules so that ``proctor.policy.engine`` keeps offering them.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import orjson
import regopy

from proctor.core.canonical import canonical
from proctor.errors import InvalidPolicyError, InvalidRequestError, PolicyEngineError
from proctor.policy.bundle_io import (
    DATA_FILE,
    _check_data,
    _invalid_policy,
    _read_sources,
    _summarise,
    _version,
    bundle_version,
    default_bundle_path,
)
from proctor.policy.native import _escaped_copy, _native
from proctor.policy.policy_tests import PolicyTestResult, run_policy_tests

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

_TEST_SUFFIX = "_test.rego"


# --- the engine ------------------------------------------------------------------------------


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
        src = _read_sources(path)
        return cls(src.modules, src.data, version=_version(src.files.items()), origin=src.origin)

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
