"""Errors a user can fix: the CLI prints them as one message and exits with code 2."""

from __future__ import annotations

__all__ = ["MfmUserError", "PluginConflictError", "UnknownComponentError"]


class MfmUserError(Exception):
    """Bad input (a spec, an argument, a missing file): reported without a traceback, exit 2."""


class PluginConflictError(MfmUserError):
    """Two plugins register the same component name in one kind."""


class UnknownComponentError(MfmUserError, LookupError):
    """A component name that no installed plugin registers for its kind."""
