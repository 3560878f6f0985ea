"""Plugin discovery, registration, isolation of broken plugins, conflicts and switches."""

from __future__ import annotations

import attrs
import pytest

from mfm_framework import hookimpl
from mfm_framework.errors import PluginConflictError, UnknownComponentError
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import PluginSystem

from .conftest import ScaledLinear

INTERPOLANT = kind_by_name("interpolants")
INTEGRATOR = kind_by_name("integrator")


def _plugin(**hooks):
    """An in-process plugin object whose registration hooks return the given lists."""
    namespace = {}
    for hook_name, result in hooks.items():

        def impl(self, _result=result):
            if isinstance(_result, BaseException):
                raise _result
            return _result

        impl.__name__ = hook_name
        namespace[hook_name] = hookimpl(impl)
    return type("Plugin", (), namespace)()


def test_first_party_plugins_come_from_the_entry_point_group():
    system = PluginSystem.load(autoload=True, modules=(), blocked=(), trace=False)
    by_name = {p.name: p for p in system.plugins}
    assert {"mfm-interpolants", "mfm-integrators"} <= set(by_name)
    assert by_name["mfm-interpolants"].distribution == "mfm-framework"
    registry = system.registry
    assert set(registry.components(INTERPOLANT)) >= {"linear", "trigonometric"}
    assert set(registry.components(INTEGRATOR)) >= {"euler", "heun", "euler-maruyama"}
    assert registry.get(INTERPOLANT, "linear").plugin.name == "mfm-interpolants"
    assert by_name["mfm-interpolants"].components == {"interpolants": ["linear", "trigonometric"]}


def test_in_process_registration_takes_the_same_path(system):
    entry = system.registry.get(INTERPOLANT, "scaled-linear")
    assert entry.cls is ScaledLinear
    assert entry.distribution == "test-dist"
    assert "test-dist 9.9" in entry.plugin.label


def test_duplicate_name_is_an_error_naming_both_distributions(system):
    dup = type("Dup", (ScaledLinear,), {"__doc__": "Duplicate.", "name": "linear"})
    system.register(_plugin(mfm_interpolants=[dup]), name="dup-plugin", distribution="dup-dist", version="0.1")
    with pytest.raises(PluginConflictError) as info:
        system.registry.check()
    message = str(info.value)
    assert "interpolant 'linear' is registered twice" in message
    assert "mfm-framework" in message and "dup-dist 0.1" in message


def test_a_raising_registration_hook_is_isolated(system):
    info = system.register(
        _plugin(mfm_interpolants=RuntimeError("boom"), mfm_integrators=[]), name="broken", distribution="broken-dist"
    )
    registry = system.registry
    assert "linear" in registry.components(INTERPOLANT)  # the others still register
    assert info in registry.failures
    assert any("mfm_interpolants() raised: RuntimeError: boom" in e for e in info.errors)
    with pytest.raises(UnknownComponentError, match="broken.*failed to load.*boom"):
        registry.get(INTERPOLANT, "missing")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (int, "not a subclass"),
        (type("NoName", (ScaledLinear,), {"name": "Bad Name"}), "lower-case id"),
        (type("NoOpts", (ScaledLinear,), {"name": "no-opts", "Options": dict}), "not an attrs class"),
    ],
)
def test_invalid_components_are_rejected_with_a_reason(system, bad, reason):
    info = system.register(_plugin(mfm_interpolants=[bad]), name="bad", distribution="bad-dist")
    registry = system.registry
    assert any(reason in e for e in info.errors), info.errors
    assert "linear" in registry.components(INTERPOLANT)


def test_an_abstract_component_is_rejected(system):
    from mfm_framework.interfaces import Interpolant

    abstract = type("Half", (Interpolant,), {"name": "half", "__doc__": "Half done."})
    info = system.register(_plugin(mfm_interpolants=[abstract]), name="half", distribution="half-dist")
    system.registry  # noqa: B018 - building the registry records the errors
    assert any("abstract" in e and "alpha" in e for e in info.errors)


def test_an_unknown_hook_fails_that_plugin_only(system):
    class Typo:
        @hookimpl
        def mfm_interpolantz(self):
            return []

    info = system.register(Typo(), name="typo", distribution="typo-dist")
    assert info.status == "failed"
    assert "mfm_interpolantz" in info.errors[0]
    assert "linear" in system.registry.components(INTERPOLANT)


def test_two_plugins_with_one_name_are_reported():
    system = PluginSystem.load(autoload=False, modules=(), blocked=(), trace=False)
    system.register(_plugin(mfm_interpolants=[]), name="same", distribution="a")
    second = system.register(_plugin(mfm_interpolants=[]), name="same", distribution="b")
    assert second.status == "failed" and "already registered" in second.errors[0]


def test_block_and_autoload_switches(monkeypatch):
    monkeypatch.setenv("MFM_BLOCK_PLUGINS", "mfm-interpolants")
    system = PluginSystem.load()
    statuses = {p.name: p.status for p in system.plugins}
    assert statuses["mfm-interpolants"] == "blocked"
    assert "linear" not in system.registry.components(INTERPOLANT)
    assert "euler" in system.registry.components(INTEGRATOR)

    monkeypatch.delenv("MFM_BLOCK_PLUGINS")
    monkeypatch.setenv("MFM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("MFM_PLUGINS", "mfm_integrators")
    system = PluginSystem.load()
    assert [(p.name, p.distribution) for p in system.plugins] == [("mfm_integrators", "<module>")]
    assert not system.registry.components(INTERPOLANT)
    assert "heun" in system.registry.components(INTEGRATOR)


def test_a_module_that_fails_to_import_is_recorded():
    system = PluginSystem.load(autoload=False, modules=["mfm_no_such_module_xyz"], blocked=(), trace=False)
    (info,) = system.plugins
    assert info.status == "failed"
    assert "ModuleNotFoundError" in info.errors[0]


def test_tracing_writes_hook_calls(capsys):
    system = PluginSystem.load(autoload=False, modules=["mfm_interpolants"], blocked=(), trace=True)
    system.registry  # noqa: B018
    assert "mfm_interpolants" in capsys.readouterr().err


def test_plugins_json_is_serialisable(system):
    import json

    data = json.loads(json.dumps(system.to_json()))
    names = {p["name"] for p in data["plugins"]}
    assert {"mfm-interpolants", "test-options"} <= names
    assert data["conflicts"] == []


def test_component_checks_its_options_type():
    with pytest.raises(TypeError, match="ShiftOptions"):
        ScaledLinear(attrs.make_class("Other", {})())
    assert ScaledLinear().options.scale == 1.0
