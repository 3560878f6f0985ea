"""Spec problems: every one names the source, the key path and what is wrong."""

from __future__ import annotations

import attrs

from mfm_framework.errors import MfmUserError

__all__ = ["SpecProblem", "SpecError", "describe_value"]


@attrs.frozen(kw_only=True)
class SpecProblem:
    """One problem in a run spec.

    Attributes:
        source: the spec file, or the ``--set`` argument the offending value came from.
        path: the key path, e.g. ``$.steer.estimator.particles`` (``$`` is the whole spec).
        message: what is wrong (expected type and value found, or the closest valid names).
        location: ``line:column`` for TOML syntax errors, else empty.
    """

    source: str
    path: str
    message: str
    location: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.location}" if self.location else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(MfmUserError):
    """A spec failed validation; ``problems`` lists every problem found, all at once."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        n = len(self.problems)
        head = "invalid run spec: 1 problem" if n == 1 else f"invalid run spec: {n} problems"
        return head + "\n" + "\n".join(f"  {p}" for p in self.problems)


def describe_value(value: object) -> str:
    """``'abc' (str)``-style description of a value found in a spec."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    tname = {dict: "table", list: "array"}.get(type(value), type(value).__name__)
    return f"{text} ({tname})"
