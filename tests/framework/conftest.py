"""Fixtures for the core's tests: fresh plugin systems, spec files, throwaway distributions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import torch

import mfm_framework.plugins as plugins_module
from mfm_framework import hookimpl
from mfm_framework.interfaces import Interpolant
from mfm_framework.plugins import PluginSystem

REPO = Path(__file__).resolve().parents[2]


@attrs.frozen(kw_only=True)
class ShiftOptions:
    """Options of the test interpolant."""

    scale: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    steps: int = 4
    mode: str = "a"
    weights: tuple[float, ...] = (1.0, 2.0)
    flag: bool = False


class ScaledLinear(Interpolant):
    """A linear schedule with options, for spec tests (alpha = 1 - t, beta = t)."""

    name = "scaled-linear"
    Options = ShiftOptions

    def alpha(self, t):
        return 1 - t

    def beta(self, t):
        return t

    def dalpha(self, t):
        return -torch.ones_like(t)

    def dbeta(self, t):
        return torch.ones_like(t)

    def time_from_snr(self, snr):
        return 1 / (1 + 1 / snr.sqrt())


class OptionsPlugin:
    """An in-process plugin registering :class:`ScaledLinear`."""

    @hookimpl
    def mfm_interpolants(self):
        return [ScaledLinear]


@pytest.fixture
def system() -> PluginSystem:
    """A fresh plugin system: the installed plugins plus the in-process test plugin."""
    fresh = PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)
    fresh.register(OptionsPlugin(), name="test-options", distribution="test-dist", version="9.9")
    return fresh


@pytest.fixture
def use_system(monkeypatch: pytest.MonkeyPatch, system: PluginSystem) -> PluginSystem:
    """Make ``system`` the process-wide plugin system the CLI uses."""
    monkeypatch.setattr(plugins_module, "_DEFAULT", system)
    return system


@pytest.fixture
def write(tmp_path: Path):
    """``write("name.toml", text)`` writes a dedented file under tmp_path and returns its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def make_distribution(site: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """Write a throwaway installed distribution (module files + dist-info with entry points) into ``site``.

    ``importlib.metadata`` finds it like any pip-installed package once ``site`` is on the path.
    """
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[mfm]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def run_cli(*args: str, cwd: Path, pythonpath: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m mfm_framework ARGS`` in a subprocess (a fresh interpreter: real discovery)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MFM_")}
    if pythonpath is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mfm_framework", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )
