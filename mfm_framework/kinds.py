"""The component kinds of mfm: their names, registration hooks and interfaces.

This table is data, not code that names components: it says which hook registers each kind and
which abstract class its components implement. It imports nothing heavy, so the CLI can use it to
parse ``mfm ls KIND`` before torch is imported.
"""

from __future__ import annotations

import difflib
import importlib

import attrs

__all__ = ["Kind", "KINDS", "kind_by_name", "UnknownKindError"]


@attrs.frozen
class Kind:
    """One kind of component.

    Attributes:
        name: singular id used in messages, e.g. ``"value-estimator"``.
        plural: id used on the command line (``mfm ls value-estimators``).
        hook: name of the pluggy registration hook, e.g. ``"mfm_value_estimators"``.
        interface: dotted path of the abstract base class its components subclass.
    """

    name: str
    plural: str
    hook: str
    interface: str

    @property
    def title(self) -> str:
        """Human-readable singular, e.g. ``"value estimator"``."""
        return self.name.replace("-", " ")

    @property
    def a_title(self) -> str:
        """The title with its article, e.g. ``"an interpolant"``."""
        return ("an " if self.title[0] in "aeiou" else "a ") + self.title

    def interface_class(self) -> type:
        """Import and return the abstract base class (imports torch)."""
        module, _, qualname = self.interface.rpartition(".")
        return getattr(importlib.import_module(module), qualname)


def _kind(name: str, plural: str, cls: str) -> Kind:
    return Kind(
        name=name,
        plural=plural,
        hook="mfm_" + plural.replace("-", "_"),
        interface=f"mfm_framework.interfaces.{cls}",
    )


KINDS: tuple[Kind, ...] = (
    _kind("interpolant", "interpolants", "Interpolant"),
    _kind("backbone", "backbones", "Backbone"),
    _kind("diagonal-target", "diagonal-targets", "DiagonalTarget"),
    _kind("consistency-loss", "consistency-losses", "ConsistencyLoss"),
    _kind("value-estimator", "value-estimators", "ValueEstimator"),
    _kind("reward", "rewards", "Reward"),
    _kind("integrator", "integrators", "Integrator"),
    _kind("data-source", "data-sources", "DataSource"),
    _kind("metric", "metrics", "Metric"),
)


class UnknownKindError(LookupError):
    """A kind name that is not one of :data:`KINDS`."""


def kind_by_name(name: str) -> Kind:
    """Look a kind up by singular or plural name, with ``-`` or ``_`` separators.

    Raises:
        UnknownKindError: with the closest valid names in the message.
    """
    key = name.strip().lower().replace("_", "-")
    for kind in KINDS:
        if key in (kind.name, kind.plural):
            return kind
    names = [k.plural for k in KINDS]
    close = difflib.get_close_matches(key, names + [k.name for k in KINDS], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownKindError(f"unknown component kind {name!r}{hint} (kinds: {', '.join(names)})")
