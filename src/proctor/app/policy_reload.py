"""Hot reload of the policy bundle in a running process, audited.

A background thread fingerprints the bundle directory every few seconds. When it changes,
the new bundle is compiled first; only a bundle that compiles replaces the one in force
(``policy.loaded``, with the new and previous versions, in the audit log). One that does not
compile is refused (``policy.rejected``, with the reason) and the previous policy stays: a
typo in a deploy must not switch enforcement off. Plans waiting for a human under the old
version expire when approved (the gateway re-checks the version before running).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from proctor.core.ports import PolicyEngine
from proctor.errors import ProctorError

if TYPE_CHECKING:
    from proctor.app.gateway import Gateway

__all__ = ["PolicyReloader", "fingerprint"]

log = logging.getLogger("proctor.policy")


def fingerprint(directory: Path) -> str:
    """A digest of the bundle's files (names and contents), cheap enough to poll."""
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.suffix in (".rego", ".json"):
            h.update(str(path.relative_to(directory)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


class PolicyReloader:
    """Swaps the gateway's policy when its bundle changes (see the module docstring)."""

    def __init__(
        self,
        gateway: Gateway,
        directory: Path,
        load: Callable[[Path], PolicyEngine],
        *,
        interval: float = 2.0,
    ) -> None:
        self.gateway = gateway
        self.directory = directory
        self.load = load
        self.interval = interval
        self._seen = fingerprint(directory)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctor-policy", daemon=True)

    def check(self) -> str | None:
        """Reload if the bundle changed; return the new version, or None."""
        seen = fingerprint(self.directory)
        if seen == self._seen:
            return None
        self._seen = seen
        previous = self.gateway.policy.version if self.gateway.policy is not None else None
        try:
            engine = self.load(self.directory)
        except ProctorError as exc:
            log.error("policy bundle refused, the previous one stays: %s", exc.message)
            self.gateway.record(
                "policy.rejected",
                {"reason": exc.message[:500], "kept": previous, "bundle": str(self.directory)},
            )
            return None
        if engine.version == previous:
            return None
        self.gateway.policy = engine
        self.gateway.record(
            "policy.loaded",
            {"version": engine.version, "previous": previous, "bundle": str(self.directory)},
        )
        log.info("policy %s loaded (was %s)", engine.version, previous)
        return engine.version

    def start(self) -> None:
        """Poll in a daemon thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # logged; the next poll tries again
                log.exception("policy reload failed")

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
