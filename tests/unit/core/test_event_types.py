"""The event types docs/audit.md lists are the ones Proctor writes."""

from __future__ import annotations

import re
from pathlib import Path

from proctor.core.events import EventType

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src" / "proctor"
# Documented types no code writes (``instance.created`` and ``plan.started`` were two).
NOT_YET_WRITTEN: set[str] = set()


def _documented() -> set[str]:
    row = next(
        line for line in (ROOT / "docs/audit.md").read_text().splitlines() if "| `type` |" in line
    )
    return set(re.findall(r"`([a-z_]+\.[a-z_]+)`", row))


def _written(value: str) -> bool:
    names = [n for n, v in vars(EventType).items() if v == value]
    for path in SRC.rglob("*.py"):
        if path == SRC / "core" / "events.py":
            continue
        text = path.read_text()
        if f'"{value}"' in text or any(re.search(rf"\.{n}\b", text) for n in names):
            return True
    return False


class TestDocumentedEventTypes:
    def test_every_documented_type_is_written_somewhere(self):
        """A type the docs promise (``instance.created`` was one) is written by some code."""
        missing = {t for t in _documented() - NOT_YET_WRITTEN if not _written(t)}

        assert not missing
