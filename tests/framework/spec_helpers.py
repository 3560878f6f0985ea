"""Helpers shared by the spec tests of the stage sections (``[steer]``, ``[finetune]``)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from mfm_framework import hookimpl
from mfm_framework.interfaces import Reward
from mfm_framework.plugins import PluginSystem
from mfm_framework.spec import SpecError, load_spec

BLACK_BOX = "test-black-box-spec"


@attrs.frozen(kw_only=True)
class BlackBoxOptions:
    """Options of the test reward."""

    scale: float = 1.0


class BlackBox(Reward):
    """A reward declared non-differentiable: ``r(x_1) = -|x_1|^2``, ``[B, D] -> [B]``."""

    name = BLACK_BOX
    Options = BlackBoxOptions
    is_differentiable = False

    def __call__(self, x_1, *, cond=None):
        return -x_1.square().sum(1)


class BlackBoxPlugin:
    @hookimpl
    def mfm_rewards(self):
        return [BlackBox]


def register_black_box(system: PluginSystem) -> PluginSystem:
    """Register :class:`BlackBox` (as reward ``test-black-box-spec``) in ``system``."""
    system.register(BlackBoxPlugin(), name="black-box", distribution="test-dist", version="1")
    return system


def problems(path: Path, system: PluginSystem, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """The problems of an invalid spec, by key path."""
    with pytest.raises(SpecError) as info:
        load_spec(path, registry=system.registry, overrides=overrides)
    return {p.path: p.message for p in info.value.problems}
