"""The pure domain of Proctor: plans, catalog, assessment, decisions, approvals, lifecycle.

Nothing here performs I/O, reads the clock or the environment, or imports a framework; an
import-linter contract in ``pyproject.toml`` keeps it so. Time comes in through the
``Clock`` port and state through the ``Store`` port (``core/ports.py``).
"""
