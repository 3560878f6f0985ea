"""Typed interfaces of every component kind (imports torch)."""

from mfm_framework.interfaces.backbone import Backbone
from mfm_framework.interfaces.component import Component, NoOptions, describe_options
from mfm_framework.interfaces.data import DataBatch, DataSource, ExactData, Metric, SamplableData, TiltableData
from mfm_framework.interfaces.integrator import Diffusion, Drift, IntegrationResult, Integrator
from mfm_framework.interfaces.interpolant import GlassFusion, Interpolant
from mfm_framework.interfaces.model import FlowMapModel
from mfm_framework.interfaces.steering import ExpQuadraticMixture, Reward, SteeringContext, ValueEstimator
from mfm_framework.interfaces.training import ConsistencyLoss, DiagonalTarget, LossTerms, TrainingBatch

__all__ = [
    "Backbone",
    "Component",
    "ConsistencyLoss",
    "DataBatch",
    "DataSource",
    "DiagonalTarget",
    "ExactData",
    "ExpQuadraticMixture",
    "Diffusion",
    "Drift",
    "FlowMapModel",
    "GlassFusion",
    "IntegrationResult",
    "Integrator",
    "Interpolant",
    "LossTerms",
    "Metric",
    "NoOptions",
    "Reward",
    "SamplableData",
    "SteeringContext",
    "TiltableData",
    "TrainingBatch",
    "ValueEstimator",
    "describe_options",
]
