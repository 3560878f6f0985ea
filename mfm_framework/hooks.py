"""pluggy markers and the hook specifications of mfm.

Every hook is prefixed ``mfm_``. Registration hooks (one per component kind) return a list of
component classes; lifecycle hooks are broadcast to every plugin that implements them (loggers,
callbacks) and their return values are ignored.

This module must stay light: it is imported by every plugin at discovery time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from mfm_framework.run import RunContext

PROJECT = "mfm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "hookimpl", "hookspec", "RegistrationSpecs", "LifecycleSpecs"]


class RegistrationSpecs:
    """One registration hook per component kind; each returns a list of component classes."""

    @hookspec
    def mfm_interpolants(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.Interpolant` subclasses."""

    @hookspec
    def mfm_backbones(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.Backbone` subclasses."""

    @hookspec
    def mfm_diagonal_targets(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.DiagonalTarget` subclasses."""

    @hookspec
    def mfm_consistency_losses(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.ConsistencyLoss` subclasses."""

    @hookspec
    def mfm_value_estimators(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.ValueEstimator` subclasses."""

    @hookspec
    def mfm_rewards(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.Reward` subclasses."""

    @hookspec
    def mfm_integrators(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.Integrator` subclasses."""

    @hookspec
    def mfm_data_sources(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.DataSource` subclasses."""

    @hookspec
    def mfm_metrics(self) -> list[type]:
        """Return :class:`~mfm_framework.interfaces.Metric` subclasses."""


class LifecycleSpecs:
    """Lifecycle hooks: called by the engines, implemented by loggers and callbacks."""

    @hookspec
    def mfm_run_start(self, run: RunContext) -> None:
        """A run starts: its directory, ``resolved.toml`` and ``plugins.json`` exist."""

    @hookspec
    def mfm_run_end(self, run: RunContext, status: str, summary: dict[str, Any]) -> None:
        """A run ended; ``status`` is ``"complete"`` or ``"failed"``."""

    @hookspec
    def mfm_train_step_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        """A training step ended; ``metrics`` holds the logged scalars of that step."""

    @hookspec
    def mfm_checkpoint_saved(self, run: RunContext, path: str, step: int) -> None:
        """A checkpoint was written atomically to ``path``."""

    @hookspec
    def mfm_evaluation_results(self, run: RunContext, stage: str, results: dict[str, Any]) -> None:
        """An evaluation stage produced its results (the same numbers go to ``summary.json``)."""
