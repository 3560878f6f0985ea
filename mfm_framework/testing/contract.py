"""The contract every component of every kind satisfies (ARCHITECTURE.md rule 3)."""

from __future__ import annotations

import inspect
import re
from typing import Any

import attrs
import attrs.exceptions
import pytest

from mfm_framework.interfaces import Backbone, describe_options
from mfm_framework.kinds import KINDS, Kind
from mfm_framework.testing._options import required_fields
from mfm_framework.testing._suite import ConformanceSuite

__all__ = ["ComponentContract", "kind_of"]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

#: Shape given to backbones built by the contract (they take ``data_shape=``).
BACKBONE_DATA_SHAPE = (2,)


def kind_of(component_cls: type) -> Kind | None:
    """The kind whose interface ``component_cls`` implements, or ``None``."""
    for kind in KINDS:
        if isinstance(component_cls, type) and issubclass(component_cls, kind.interface_class()):
            return kind
    return None


class ComponentContract(ConformanceSuite):
    """Checks every registered component of every kind against the component contract.

    A component class has a lower-case ``name``, a frozen keyword-only attrs ``Options`` class
    (constructible with no arguments when every field has a default), its own docstring, a
    non-empty :meth:`summary`, and it builds with default options (backbones with
    ``data_shape=(2,)``) unless its constructor needs other arguments.
    """

    kind = None

    def constructor_kwargs(self, component_cls: type) -> dict[str, Any]:
        """Extra constructor arguments: ``data_shape=(2,)`` for backbones, none otherwise."""
        return {"data_shape": BACKBONE_DATA_SHAPE} if issubclass(component_cls, Backbone) else {}

    def make_component(self, component_cls: type) -> Any:
        return component_cls(**self.constructor_kwargs(component_cls))

    # ------------------------------------------------------------------ checks
    def test_implements_a_kind(self, component_cls: type) -> None:
        """The class subclasses one kind's interface and is not abstract."""
        assert kind_of(component_cls) is not None, f"{component_cls!r} implements no mfm component interface"
        assert not inspect.isabstract(component_cls), (
            f"{component_cls.__qualname__} is abstract: it does not implement "
            f"{', '.join(sorted(component_cls.__abstractmethods__))}"
        )

    def test_name_is_lower_case_id(self, component_cls: type) -> None:
        """``name`` is a string like ``my-component`` (lower case, digits, ``.``, ``_``, ``-``)."""
        name = getattr(component_cls, "name", None)
        assert isinstance(name, str) and _NAME_RE.match(name), (
            f"{component_cls.__qualname__}.name must be a lower-case id like 'my-component', got {name!r}"
        )

    def test_options_is_frozen_attrs_class(self, component_cls: type) -> None:
        """``Options`` is an attrs class, frozen and keyword-only, that ``mfm ls`` can describe."""
        options_cls = component_cls.Options
        assert isinstance(options_cls, type) and attrs.has(options_cls), (
            f"{component_cls.__qualname__}.Options must be an attrs class, got {options_cls!r}"
        )
        positional = [f.name for f in attrs.fields(options_cls) if not f.kw_only]
        assert not positional, (
            f"{options_cls.__qualname__} must be keyword-only (@attrs.frozen(kw_only=True)); "
            f"positional fields: {positional}"
        )
        if not required_fields(options_cls):
            instance = options_cls()
        else:
            instance = object.__new__(options_cls)  # no defaults to build it with; frozenness is per class
        target = attrs.fields(options_cls)[0].name if attrs.fields(options_cls) else "not_a_field"
        try:
            setattr(instance, target, None)
        except attrs.exceptions.FrozenInstanceError:
            pass
        else:
            raise AssertionError(f"{options_cls.__qualname__} must be frozen (@attrs.frozen): setting {target!r} worked")
        rows = describe_options(options_cls)
        assert [row[0] for row in rows] == [f.name for f in attrs.fields(options_cls)]

    def test_options_default_constructible(self, component_cls: type) -> None:
        """``Options()`` works when every field has a default."""
        options_cls = component_cls.Options
        if required_fields(options_cls):
            pytest.skip(f"{options_cls.__qualname__} has required fields")
        try:
            options_cls()
        except Exception as exc:  # a default factory or validator that fails
            raise AssertionError(f"{options_cls.__qualname__}() failed although every field has a default: {exc!r}") from exc

    def test_has_docstring(self, component_cls: type) -> None:
        """The class has a docstring of its own (not inherited from its interface)."""
        doc = component_cls.__dict__.get("__doc__")
        assert isinstance(doc, str) and doc.strip(), (
            f"{component_cls.__qualname__} has no docstring; say what it computes, its shapes and its NFE cost"
        )

    def test_summary_is_non_empty(self, component_cls: type) -> None:
        """:meth:`summary` (shown by ``mfm ls``) is a non-empty string."""
        summary = component_cls.summary()
        assert isinstance(summary, str) and summary.strip(), f"{component_cls.__qualname__}.summary() is empty"

    def test_constructible_with_default_options(self, component_cls: type) -> None:
        """The component builds with default options (and ``data_shape=(2,)`` for a backbone)."""
        options_cls = component_cls.Options
        if required_fields(options_cls):
            pytest.skip(f"{options_cls.__qualname__} has required fields")
        extra = self.constructor_kwargs(component_cls)
        required = [
            p.name
            for p in list(inspect.signature(component_cls.__init__).parameters.values())[1:]
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            and p.name not in extra
        ]
        if required:
            pytest.skip(f"{component_cls.__qualname__} needs constructor arguments {required}")
        component = self.make_component(component_cls)
        assert isinstance(component, component_cls)
        assert component.options == options_cls(), (
            f"{component_cls.__qualname__}() must hold the default options {options_cls()!r}, got {component.options!r}"
        )
