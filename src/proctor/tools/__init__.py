"""Tool adapters: how catalog handlers (import paths) become calls."""

from proctor.tools.python import PythonTools

__all__ = ["PythonTools"]
