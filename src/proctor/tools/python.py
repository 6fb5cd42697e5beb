"""Handlers that are Python callables, found by import path or registered in code.

A handler is called as ``handler(params, call)`` where ``params`` is a dict of the step's
literal params and ``call`` a ``ToolCall`` carrying the idempotency key (the same on every
retry: tools use it to deduplicate), the plan and step ids, and for compensations the
result of the step being undone. Whatever it returns is the step's result.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from proctor.core.ports import ToolCall
from proctor.errors import ConfigError

__all__ = ["Handler", "PythonTools"]

Handler = Callable[[dict[str, Any], ToolCall], Any]


class PythonTools:
    """Resolves ``package.module:function`` paths (cached) and code-registered handlers."""

    def __init__(self) -> None:
        self._registered: dict[str, Handler] = {}
        self._cache: dict[str, Handler] = {}
        self._lock = threading.Lock()

    def register(self, path: str, fn: Handler) -> None:
        """Bind ``path`` to ``fn`` (used by the ``@proctor.action`` decorator)."""
        with self._lock:
            self._registered[path] = fn
            self._cache.pop(path, None)

    def resolve(self, path: str) -> Handler:
        """Return the callable for ``path``.

        Raises:
            ConfigError: if the module or attribute cannot be imported, or is not callable.
        """
        fn = self._cache.get(path) or self._registered.get(path)
        if fn is not None:
            return fn
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
            found = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import handler {path!r}: {exc}",
                field="handler",
                hint="Check the import path and that the module is installed.",
            ) from exc
        if not callable(found):
            raise ConfigError(f"handler {path!r} is not callable", field="handler")
        with self._lock:
            self._cache[path] = found
        return found  # type: ignore[no-any-return]

    def run(self, path: str, params: Mapping[str, Any], call: ToolCall) -> Any:
        """Call the handler with a deep copy of the params.

        A handler that mutates its params (nested values included) must not change what the
        plan records as approved; a JSON round trip is the cheapest deep copy of JSON data.
        """
        return self.resolve(path)(orjson.loads(orjson.dumps(params)), call)
