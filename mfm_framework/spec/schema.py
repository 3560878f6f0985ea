"""The run spec schema: attrs classes that a TOML run spec is structured into.

A *component table* names the component with ``kind = "<name>"``; its other keys are that
component's options, structured into its own options class. Sections and component tables with a
``fill`` default are filled in before structuring when the spec leaves them out, so the resolved
spec (``resolved.toml``) always states every choice explicitly.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import attrs

from mfm_framework.kinds import Kind, kind_by_name

__all__ = [
    "ComponentSpec",
    "InterpolantSpec",
    "BackboneSpec",
    "DiagonalTargetSpec",
    "ConsistencyLossSpec",
    "ValueEstimatorSpec",
    "RewardSpec",
    "IntegratorSpec",
    "DataSourceSpec",
    "MetricSpec",
    "RunSection",
    "ModelSection",
    "RunSpec",
    "filled",
]


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """A component chosen in a spec: its name (the TOML ``kind`` key) and its structured options.

    Attributes:
        name: the component's registered name, e.g. ``"linear"``.
        options: an instance of the component's ``Options`` class.
        component: the component class (not part of equality).
    """

    kind: ClassVar[Kind]

    name: str
    options: Any
    component: type = attrs.field(eq=False, repr=False)

    def build(self, **kwargs: Any) -> Any:
        """Instantiate the component with its options (plus constructor keywords, e.g. ``data_shape``)."""
        return self.component(self.options, **kwargs)


def _spec_class(kind_name: str, cls_name: str) -> type[ComponentSpec]:
    cls = attrs.frozen(kw_only=True)(
        type(cls_name, (ComponentSpec,), {"__doc__": f"A {kind_name.replace('-', ' ')} table in a spec."})
    )
    cls.kind = kind_by_name(kind_name)
    return cls


InterpolantSpec = _spec_class("interpolant", "InterpolantSpec")
BackboneSpec = _spec_class("backbone", "BackboneSpec")
DiagonalTargetSpec = _spec_class("diagonal-target", "DiagonalTargetSpec")
ConsistencyLossSpec = _spec_class("consistency-loss", "ConsistencyLossSpec")
ValueEstimatorSpec = _spec_class("value-estimator", "ValueEstimatorSpec")
RewardSpec = _spec_class("reward", "RewardSpec")
IntegratorSpec = _spec_class("integrator", "IntegratorSpec")
DataSourceSpec = _spec_class("data-source", "DataSourceSpec")
MetricSpec = _spec_class("metric", "MetricSpec")


def filled(raw_default: Any, **kwargs: Any) -> Any:
    """A field the loader fills with ``raw_default`` (a raw TOML value) when the spec omits it."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["fill"] = raw_default
    return attrs.field(metadata=metadata, **kwargs)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


def _matches(pattern: re.Pattern[str], what: str) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: str) -> None:
        if not pattern.match(value):
            raise ValueError(f"'{attribute.name}' must be {what}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class RunSection:
    """``[run]``: where and how the run executes.

    Attributes:
        name: the run's name and the name of its directory under ``out_dir`` (default: the spec
            file's stem).
        seed: seed of every random draw of the run.
        out_dir: parent folder of run directories.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA when available).
        dtype: floating-point precision of models and data.
    """

    name: str = attrs.field(validator=_matches(_NAME_RE, "letters, digits, '.', '_' or '-'"))
    seed: int = 0
    out_dir: str = "runs"
    device: str = attrs.field(default="cpu", validator=_matches(_DEVICE_RE, "cpu, cuda, cuda:N, mps or auto"))
    dtype: Literal["float32", "float64"] = "float32"


@attrs.frozen(kw_only=True)
class ModelSection:
    """``[model]``: the meta flow map's schedules and network.

    Attributes:
        interpolant: the outer schedule of contexts ``x_t`` (``[model.interpolant]``).
        inner_interpolant: the inner schedule from fresh noise to the posterior.
        backbone: the network; ``None`` until a backbone plugin is chosen.
    """

    interpolant: InterpolantSpec = filled({"kind": "linear"})
    inner_interpolant: InterpolantSpec = filled({"kind": "linear"})
    backbone: BackboneSpec | None = None


@attrs.frozen(kw_only=True)
class RunSpec:
    """A whole run spec (one TOML file)."""

    run: RunSection = filled({})
    model: ModelSection = filled({})

    def components(self) -> dict[str, ComponentSpec]:
        """Every component table of the spec by key path (``"model.interpolant"``, ...)."""
        found: dict[str, ComponentSpec] = {}

        def walk(obj: Any, prefix: str) -> None:
            for field in attrs.fields(type(obj)):
                value = getattr(obj, field.name)
                path = f"{prefix}.{field.name}" if prefix else field.name
                if isinstance(value, ComponentSpec):
                    found[path] = value
                elif attrs.has(type(value)):
                    walk(value, path)
                elif isinstance(value, (list, tuple)):
                    for i, item in enumerate(value):
                        if isinstance(item, ComponentSpec):
                            found[f"{path}[{i}]"] = item
                        elif attrs.has(type(item)):
                            walk(item, f"{path}[{i}]")

        walk(self, "")
        return found
