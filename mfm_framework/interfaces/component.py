"""The base class shared by every component kind."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import attrs

__all__ = ["Component", "NoOptions", "describe_options"]


@attrs.frozen(kw_only=True)
class NoOptions:
    """The options class of a component that takes none."""


class Component:
    """Base of every component class.

    A component is one class with a unique ``name`` within its kind, an ``Options`` class (attrs,
    frozen, keyword-only) that the run spec is structured into, and a docstring that says what it
    computes, the shapes of its tensors and its cost in network evaluations (NFE).

    Attributes:
        name: the id used in run specs (``kind = "<name>"``) and on the command line.
        Options: the attrs options class; ``NoOptions`` when the component takes none.
        options: the instance's options.
    """

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__()
        if options is None:
            options = self.Options()
        elif not isinstance(options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__qualname__} options, "
                f"got {type(options).__qualname__}"
            )
        self.options = options

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring (used by ``mfm ls``)."""
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")  # its own, never an inherited one
        return doc.splitlines()[0].replace("``", "") if doc else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


def describe_options(options_cls: type) -> list[tuple[str, str, str]]:
    """List ``(name, type, default)`` for each field of an attrs options class."""
    rows = []
    for field in attrs.fields(options_cls):
        tp = field.type
        tname = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or repr(tp)
        tname = str(tname).replace("typing.", "")
        if field.default is attrs.NOTHING:
            default = "(required)"
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = repr(field.default.factory())  # type: ignore[union-attr]
        else:
            default = repr(field.default)
        rows.append((field.name, tname, default))
    return rows
