"""Run specs: every kind of problem is reported, all at once, with its source and key path."""

from __future__ import annotations

import pytest

from mfm_framework.errors import PluginConflictError
from mfm_framework.spec import SpecError, dump_spec, load_spec, parse_spec, read_toml

from .conftest import ScaledLinear

OK = """
[run]
name = "ok"
seed = 3

[model.interpolant]
kind = "scaled-linear"
scale = 2.5
weights = [0.5, 1]
"""


def problems(path, system, overrides=()):
    with pytest.raises(SpecError) as info:
        load_spec(path, registry=system.registry, overrides=overrides)
    return info.value.problems


def test_a_valid_spec_is_structured_into_component_options(write, system):
    loaded = load_spec(write("ok.toml", OK), registry=system.registry)
    spec = loaded.spec
    assert spec.run.seed == 3 and spec.run.name == "ok"
    interp = spec.model.interpolant
    assert interp.name == "scaled-linear" and interp.component is ScaledLinear
    assert interp.options.scale == 2.5 and interp.options.weights == (0.5, 1.0)
    assert isinstance(interp.build(), ScaledLinear)
    # defaults are filled in explicitly
    assert spec.model.inner_interpolant.name == "linear"
    assert loaded.resolved["model"]["inner_interpolant"] == {"kind": "linear"}
    assert loaded.resolved["model"]["interpolant"]["kind"] == "scaled-linear"


def test_the_run_name_defaults_to_the_file_stem(write, system):
    loaded = load_spec(write("my spec.toml", "[run]\nseed = 1\n"), registry=system.registry)
    assert loaded.spec.run.name == "my-spec"


def test_resolved_spec_round_trips(write, system, tmp_path):
    loaded = load_spec(write("ok.toml", OK), registry=system.registry)
    again = load_spec(write("resolved.toml", dump_spec(loaded.resolved)), registry=system.registry)
    assert again.spec == loaded.spec
    assert again.resolved == loaded.resolved


def test_toml_syntax_error_has_line_and_column(write, system):
    path = write("bad.toml", '[run]\nseed = 1\nname = "x\n')
    (problem,) = problems(path, system)
    assert problem.location.startswith("3:")
    assert "TOML syntax error" in problem.message
    assert str(problem).startswith(f"{path}:3:")


@pytest.mark.parametrize(
    ("text", "path", "needle"),
    [
        ("[runn]\n", "$.runn", "unknown section 'runn'; did you mean 'run'?"),
        ("[run]\nsed = 1\n", "$.run.sed", "unknown key 'sed'; did you mean 'seed'?"),
        ("[run]\nseed = 1.5\n", "$.run.seed", "expected integer, found 1.5 (float)"),
        ("[run]\nseed = true\n", "$.run.seed", "expected integer, found True (bool)"),
        ('[run]\nseed = "3"\n', "$.run.seed", "expected integer, found '3' (str)"),
        ("[run]\nname = 3\n", "$.run.name", "expected string, found 3 (int)"),
        ('[run]\ndtype = "float16"\n', "$.run.dtype", "expected one of 'float32', 'float64', found 'float16'"),
        ('[run]\nthreads = -1\n', "$.run.threads", "-1"),
        ("run = 3\n", "$.run", "expected a table, found 3 (int)"),
        ('[model.interpolant]\nkind = "linaer"\n', "$.model.interpolant.kind", "did you mean 'linear'"),
        ("[model.interpolant]\nkind = 3\n", "$.model.interpolant.kind", "expected an interpolant name (string)"),
        ("[model.interpolant]\nscale = 1.0\n", "$.model.interpolant.kind", "missing: which interpolant?"),
        ("[model]\ninterpolant = 4\n", "$.model.interpolant", "expected an interpolant table with a 'kind' key"),
        ('[model.interpolant]\nkind = "scaled-linear"\nscale = "big"\n', "$.model.interpolant.scale", "expected number, found 'big'"),
        ('[model.interpolant]\nkind = "scaled-linear"\nscale = -1.0\n', "$.model.interpolant.scale", "must be > 0: -1.0"),
        ('[model.interpolant]\nkind = "scaled-linear"\nweights = "1,2"\n', "$.model.interpolant.weights", "expected array of number"),
        ('[model.interpolant]\nkind = "scaled-linear"\nweights = [1, "x"]\n', "$.model.interpolant.weights[1]", "expected number"),
        ('[model.interpolant]\nkind = "scaled-linear"\nflag = 1\n', "$.model.interpolant.flag", "expected boolean"),
        ('[model.interpolant]\nkind = "scaled-linear"\nscael = 1.0\n', "$.model.interpolant.scael", "did you mean 'scale'?"),
        ('[model.interpolant]\nkind = "linear"\nscale = 1.0\n', "$.model.interpolant.scale", "this table takes no keys"),
        ('[run]\nname = "a/b"\n', "$.run.name", "must be letters"),
        ('[run]\ndevice = "gpu"\n', "$.run.device", "must be cpu, cuda"),
    ],
)
def test_each_kind_of_problem_names_its_key_path(write, system, text, path, needle):
    spec = write("spec.toml", text)
    found = problems(spec, system)
    assert [p.path for p in found] == [path], found
    assert needle in found[0].message
    assert found[0].source == str(spec)


def test_unknown_kind_lists_installed_providers(write, system):
    (problem,) = problems(write("s.toml", '[model.interpolant]\nkind = "cosine"\n'), system)
    assert "installed:" in problem.message
    assert "linear, trigonometric from plugin 'mfm-interpolants' (distribution mfm-framework" in problem.message
    assert "scaled-linear from plugin 'test-options' (distribution test-dist 9.9)" in problem.message


def test_all_problems_are_reported_at_once(write, system):
    text = """
    [run]
    seed = "x"
    nme = "a"
    device = "gpu"
    [model.interpolant]
    kind = "nope"
    [model.inner_interpolant]
    kind = "scaled-linear"
    scale = 0.0
    steps = 2.5
    [extra]
    """
    found = problems(write("many.toml", text), system)
    assert sorted(p.path for p in found) == sorted(
        [
            "$.run.seed",
            "$.run.nme",
            "$.model.interpolant.kind",
            "$.model.inner_interpolant.steps",
            "$.extra",
        ]
    )
    # validators run once types are right: fix the types, and every validator problem shows
    text2 = '[run]\nname = "a b"\ndevice = "gpu"\n[model.interpolant]\nkind = "scaled-linear"\nscale = 0.0\n'
    found2 = problems(write("validators.toml", text2), system)
    assert sorted(p.path for p in found2) == ["$.model.interpolant.scale", "$.run.device", "$.run.name"]


def test_file_problems(tmp_path, system):
    assert "no such file" in problems(tmp_path / "missing.toml", system)[0].message
    assert "is a directory" in problems(tmp_path, system)[0].message
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in problems(binary, system)[0].message


class TestOverrides:
    def test_values_are_typed_by_the_schema(self, write, system):
        path = write("ok.toml", OK)
        loaded = load_spec(
            path,
            registry=system.registry,
            overrides=[
                "run.seed=7",
                "run.name=123",  # a string field keeps the text as a string
                "model.interpolant.scale=0.25",
                "model.interpolant.flag=true",
                "model.interpolant.weights=[1, 2, 3]",
                'model.interpolant.mode="quoted"',
                "model.inner_interpolant=trigonometric",  # component shorthand
            ],
        )
        spec = loaded.spec
        assert spec.run.seed == 7 and spec.run.name == "123"
        opts = spec.model.interpolant.options
        assert (opts.scale, opts.flag, opts.weights, opts.mode) == (0.25, True, (1.0, 2.0, 3.0), "quoted")
        assert spec.model.inner_interpolant.name == "trigonometric"

    def test_switching_kind_then_setting_its_options(self, write, system):
        loaded = load_spec(
            write("s.toml", "[run]\n"),
            registry=system.registry,
            overrides=["model.interpolant.kind=scaled-linear", "model.interpolant.steps=9"],
        )
        assert loaded.spec.model.interpolant.options.steps == 9

    @pytest.mark.parametrize(
        ("arg", "needle"),
        [
            ("run.seed", "expected KEY.PATH=VALUE"),
            ("=3", "expected KEY.PATH=VALUE"),
            ("run..seed=3", "expected KEY.PATH=VALUE"),
            ("run.sed=3", "unknown key 'sed' in $.run; did you mean 'seed'?"),
            ("nope.x=3", "unknown key 'nope' in the spec"),
            ("run.seed=abc", "cannot parse 'abc' as integer"),
            ("run.seed.x=1", "$.run.seed is integer, it has no key 'x'"),
            ("model.interpolant.bogus=1", "unknown key 'bogus' in $.model.interpolant"),
            ("model.interpolant.kind=zzz", "unknown interpolant 'zzz'"),
        ],
    )
    def test_bad_overrides(self, write, system, arg, needle):
        (problem,) = problems(write("ok.toml", OK), system, overrides=[arg])
        assert problem.source == f"--set {arg}"
        assert needle in problem.message

    def test_a_mistyped_override_is_attributed_to_the_override(self, write, system):
        path = write("ok.toml", OK)
        found = problems(path, system, overrides=["run.seed=1.5", "model.interpolant.scale=-2"])
        assert [(p.source, p.path) for p in found] == [
            ("--set run.seed=1.5", "$.run.seed"),
            ("--set model.interpolant.scale=-2", "$.model.interpolant.scale"),
        ]


def test_conflicting_plugins_stop_validation(write, system):
    from mfm_framework import hookimpl

    class Dup:
        @hookimpl
        def mfm_interpolants(self):
            return [type("Dup", (ScaledLinear,), {"name": "linear", "__doc__": "d"})]

    system.register(Dup(), name="dup", distribution="dup-dist")
    with pytest.raises(PluginConflictError, match="dup-dist"):
        parse_spec({}, source="x", registry=system.registry)


def test_read_toml_returns_plain_data(write):
    assert read_toml(write("x.toml", "a = 1\n[b]\nc = [1, 2]\n")) == {"a": 1, "b": {"c": [1, 2]}}
