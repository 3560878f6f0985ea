"""Building models and components from spec sections."""

from __future__ import annotations

from typing import Any

from mfm_framework.model import MetaFlowMap

__all__ = ["build_model", "build_model_from_table"]


def build_model(model_section: Any, *, data_shape: tuple[int, ...], num_classes: int | None) -> MetaFlowMap:
    """A :class:`MetaFlowMap` from a structured ``[model]`` section."""
    if model_section.backbone is None:
        raise ValueError("the [model] section has no backbone")
    backbone = model_section.backbone.build(data_shape=tuple(data_shape), num_classes=num_classes)
    return MetaFlowMap(backbone, model_section.interpolant.build(), model_section.inner_interpolant.build())


def build_model_from_table(
    table: dict[str, Any], *, data_shape: tuple[int, ...], num_classes: int | None, registry: Any = None, source: str = "model file"
) -> MetaFlowMap:
    """A :class:`MetaFlowMap` from a raw ``[model]`` table (as stored in a model file).

    Raises:
        SpecError: the table names components that are not installed (or has bad options).
    """
    from mfm_framework.plugins import default_plugin_system
    from mfm_framework.spec import SpecError, SpecProblem
    from mfm_framework.spec.converter import iter_problems, make_converter
    from mfm_framework.spec.schema import ModelSection

    registry = registry if registry is not None else default_plugin_system().registry
    try:
        section = make_converter(registry).structure(table, ModelSection)
    except Exception as exc:
        raise SpecError([SpecProblem(source=source, path=p.replace("$", "$.model", 1), message=m) for p, m in iter_problems(exc)]) from None
    return build_model(section, data_shape=data_shape, num_classes=num_classes)
