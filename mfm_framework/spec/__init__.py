"""Run specs: TOML files structured into attrs classes by one strict cattrs converter."""

from mfm_framework.spec.loader import LoadedSpec, dump_spec, load_spec, parse_spec, read_toml
from mfm_framework.spec.problems import SpecError, SpecProblem
from mfm_framework.spec.schema import (
    BackboneSpec,
    ComponentSpec,
    ConsistencyLossSpec,
    DataSourceSpec,
    DiagonalTargetSpec,
    EvaluateSection,
    IntegratorSpec,
    InterpolantSpec,
    MetricSpec,
    ModelSection,
    RewardSpec,
    RunSection,
    RunSpec,
    TrainSection,
    ValueEstimatorSpec,
    filled,
)

__all__ = [
    "BackboneSpec",
    "ComponentSpec",
    "ConsistencyLossSpec",
    "DataSourceSpec",
    "DiagonalTargetSpec",
    "EvaluateSection",
    "IntegratorSpec",
    "InterpolantSpec",
    "LoadedSpec",
    "MetricSpec",
    "ModelSection",
    "RewardSpec",
    "RunSection",
    "RunSpec",
    "SpecError",
    "SpecProblem",
    "TrainSection",
    "ValueEstimatorSpec",
    "dump_spec",
    "filled",
    "load_spec",
    "parse_spec",
    "read_toml",
]
