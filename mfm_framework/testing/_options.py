"""Options of the components a suite builds: example options per name, or a skip that names the component."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import pytest

__all__ = ["ExampleOptions", "required_fields"]


def required_fields(options_cls: type) -> list[str]:
    """The fields of an attrs options class that have no default (none for a non-attrs class)."""
    if not attrs.has(options_cls):
        return []
    return [field.name for field in attrs.fields(options_cls) if field.default is attrs.NOTHING]


class ExampleOptions:
    """Mixin of the suites that build components: options per component name.

    Attributes:
        example_options: keyword arguments of the component's ``Options`` per component name, for
            components whose options have required fields or that should be checked with other
            options. Extend it in a subclass, e.g. ``example_options =
            {**MetricConformance.example_options, "my-metric": {"projections": 64}}``.
    """

    example_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def describe_component(self, component_cls: type) -> str:
        """How the skip message names a component: ``component 'name' (ClassName)``; suites may override."""
        name = getattr(component_cls, "name", component_cls.__qualname__)
        return f"component {name!r} ({component_cls.__name__})"

    def component_options(self, component_cls: type, **overrides: Any) -> Any:
        """The options instance to build ``component_cls`` with.

        Its :attr:`example_options` entry if it has one, else the default options, in either case
        updated by ``overrides``; a component whose options have required fields and no example is
        skipped, with a message naming it.
        """
        options_cls = component_cls.Options
        name = getattr(component_cls, "name", component_cls.__qualname__)
        example = self.example_options.get(name)
        required = required_fields(options_cls) if example is None else []
        if required:
            pytest.skip(
                f"{self.describe_component(component_cls)} has required options {required} and no example "
                f"options: set example_options = {{{name!r}: {{...}}}} in a {type(self).__name__} subclass"
            )
        return options_cls(**{**(example or {}), **overrides})
