"""The ``[steer]`` section: reward terms with weights, methods and baselines, diagnostics; defaults
made explicit, every problem reported with its key path, and where the stage and ``[train]`` run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mfm_framework.run import stages_for, trains
from mfm_framework.spec import dump_spec, load_spec
from mfm_framework.spec.loader import steer_method_labels
from tests.framework.spec_helpers import BLACK_BOX, problems, register_black_box

REPO = Path(__file__).resolve().parents[2]

BASE = """
[run]
name = "st"

[data]
kind = "gmm"

[train]
steps = 10

[steer]
samples = 100

[[steer.rewards]]
kind = "gaussian-likelihood"
sigma = 0.3
weight = 2.0

[[steer.rewards]]
kind = "quadratic"
center = [0.0, 1.0]

[[steer.methods]]
estimator = {kind = "mfm-g", particles = 8}
steps = [5, 10]
particles = [4, 16]
"""


@pytest.fixture
def box(system):
    return register_black_box(system)


def test_the_section_is_structured_and_round_trips(write, system):
    loaded = load_spec(write("st.toml", BASE), registry=system.registry)
    steer = loaded.spec.steer
    first, second = steer.rewards
    assert first.reward.name == "gaussian-likelihood" and first.reward.options.sigma == 0.3 and first.weight == 2.0
    assert second.weight == 1.0 and second.label is None and second.reward.options.center == (0.0, 1.0)
    method = steer.methods[0]
    assert method.estimator.name == "mfm-g" and method.steps == (5, 10) and method.particles == (4, 16)
    assert method.integrator.name == "euler" and method.baseline is None and method.g_max is None
    assert [m.name for m in steer.metrics] == ["sw2", "mmd", "energy"] and steer.diagnostics is None
    # the weight sits next to the reward's own options in the resolved spec, as in the file
    resolved = loaded.resolved["steer"]
    assert resolved["rewards"][0] == {"kind": "gaussian-likelihood", "A": [[1.2, -0.8]], "y": [-1.0], "sigma": 0.3, "scale": 1.0, "weight": 2.0}
    assert resolved["methods"][0]["integrator"] == {"kind": "euler"}
    again = load_spec(write("resolved.toml", dump_spec(loaded.resolved)), registry=system.registry)
    assert again.spec == loaded.spec and again.resolved == loaded.resolved
    assert [name for name, _ in stages_for(loaded.spec)] == ["components", "train", "steer"]
    assert trains(loaded.spec)


def test_the_example_validates(system):
    loaded = load_spec(REPO / "examples" / "gmm2d_steer.toml", registry=system.registry)
    steer = loaded.spec.steer
    labels = steer_method_labels(steer)
    assert labels == [
        "mfm-g", "mfm-gf", "dps", "glass-mc", "exact", "exact-clamped",
        "best-of-n", "sir", "best-of-n-kernel", "sir-kernel", "smc", "mfm-search",
    ]
    assert steer.headline_method == "mfm-g" and steer.diagnostics.reference.name == "exact"
    assert [m.baseline for m in steer.methods][6:] == ["best-of-n", "sir", "best-of-n", "sir", "smc", "mfm-search"]
    # the example steers the model of examples/gmm2d.toml: the same [model] and [train]
    base = load_spec(REPO / "examples" / "gmm2d.toml", registry=system.registry)
    assert loaded.resolved["model"] == base.resolved["model"] and loaded.resolved["train"] == base.resolved["train"]


def test_steer_model_skips_training_unless_another_stage_needs_it(write, system):
    path = write("st.toml", BASE)
    loaded = load_spec(path, registry=system.registry, overrides=["steer.model=runs/gmm2d/model.pt"])
    assert loaded.spec.steer.model == "runs/gmm2d/model.pt" and not trains(loaded.spec)
    assert [name for name, _ in stages_for(loaded.spec)] == ["components", "train", "steer"]  # "train" reports the skip
    both = load_spec(write("ev.toml", BASE + "\n[evaluate]\nsamples = 10\n"), registry=system.registry, overrides=["steer.model=m.pt"])
    assert trains(both.spec)  # [evaluate] evaluates the trained model


def test_a_bad_weight_is_reported_at_its_key_path(write, system):
    path = write("st.toml", BASE.replace("weight = 2.0", 'weight = "two"'))
    assert problems(path, system) == {"$.steer.rewards[0].weight": "expected number, found 'two' (str)"}
    path = write("inf.toml", BASE.replace("weight = 2.0", "weight = inf"))
    assert "finite" in problems(path, system)["$.steer.rewards[0].weight"]


def test_reward_options_are_checked_at_the_reward_tables_own_level(write, system):
    path = write("st.toml", BASE.replace("sigma = 0.3", "sigma = -1.0\nsgma = 2"))
    found = problems(path, system)
    assert "$.steer.rewards[0].sgma" in found and "unknown key" in found["$.steer.rewards[0].sgma"]
    path = write("kind.toml", BASE.replace('kind = "quadratic"\n', ""))
    found = problems(path, system)
    assert list(found) == ["$.steer.rewards[1].kind"] and "which reward" in found["$.steer.rewards[1].kind"]


def test_a_non_differentiable_reward_with_a_gradient_estimator_is_a_validation_error(write, box):
    spec = BASE + f'\n[[steer.rewards]]\nkind = "{BLACK_BOX}"\n'
    found = problems(write("st.toml", spec), box)
    assert list(found) == ["$.steer.methods[0].estimator.kind"]
    assert "not differentiable" in found["$.steer.methods[0].estimator.kind"] and "'mfm-g'" in found["$.steer.methods[0].estimator.kind"]
    # gradient-free estimators, and SMC (values only), are fine with it
    ok = spec.replace('kind = "mfm-g"', 'kind = "mfm-gf"') + (
        '\n[[steer.methods]]\nbaseline = "smc"\nestimator = {kind = "mfm-g"}\nintegrator = "euler-maruyama"\nparticles = [4]\n'
    )
    load_spec(write("ok.toml", ok), registry=box.registry)
    diag = ok + '\n[steer.diagnostics]\nreference = "exact"\nestimators = ["dps"]\n'
    assert list(problems(write("diag.toml", diag), box)) == ["$.steer.diagnostics.estimators[0].kind"]


def test_a_model_is_required(write, system):
    found = problems(write("st.toml", BASE.replace("[train]\nsteps = 10\n", "")), system)
    assert found == {"$.steer.model": "which model? give the path of a model.pt, or add a [train] section"}
    found = problems(write("nodata.toml", BASE.replace('[data]\nkind = "gmm"\n', "")), system)
    assert "$.data" in found


def test_required_lists(write, system):
    text = BASE[: BASE.index("[[steer.rewards]]")]
    found = problems(write("st.toml", text), system)
    assert set(found) == {"$.steer.rewards", "$.steer.methods"}
    found = problems(write("empty.toml", text + "rewards = []\nmethods = []\n"), system)
    assert set(found) == {"$.steer.rewards", "$.steer.methods"}


def test_method_problems_name_their_keys(write, system):
    methods = """
[[steer.methods]]
estimator = "dps"
particles = [3]
sde = true
t_min = 0.0

[[steer.methods]]
baseline = "best-of-n"
estimator = "mfm-g"
particles = [2]

[[steer.methods]]
baseline = "smc"
estimator = "mfm-gf"
draws = [4]

[[steer.methods]]
baseline = "mfm-search"
label = "twice"

[[steer.methods]]
label = "twice"
estimator = "exact"
"""
    found = problems(write("st.toml", BASE + methods), system)
    assert set(found) == {
        "$.steer.methods[1].particles",  # dps has no particles option
        "$.steer.methods[1].integrator.kind",  # sde with a deterministic integrator
        "$.steer.methods[1].t_min",  # t = 0 without g_max
        "$.steer.methods[2].estimator",  # best-of-n takes none
        "$.steer.methods[2].draws",  # ...but needs draws
        "$.steer.methods[2].particles",
        "$.steer.methods[3].draws",  # smc takes none
        "$.steer.methods[3].particles",  # ...but needs particles
        "$.steer.methods[3].integrator.kind",  # and a stochastic integrator
        "$.steer.methods[4].draws",
        "$.steer.methods[4].label",  # two methods labelled 'twice'
        "$.steer.methods[5].label",
    }, found
    assert "deterministic" in found["$.steer.methods[1].integrator.kind"]
    assert "required by baseline 'smc'" in found["$.steer.methods[3].particles"]


def test_structural_problems_come_first_with_their_paths(write, system):
    text = BASE + '\n[[steer.methods]]\nbaseline = "sir"\ndraws = [4]\nsampler = "sde"\n'
    text += '\n[steer.diagnostics]\nreference = "exact"\nt_grid = [0.0, 0.5]\n'
    found = problems(write("st.toml", text), system)
    assert set(found) == {"$.steer.methods[1].sampler", "$.steer.diagnostics.t_grid"}, found
    assert "'kernel', 'ode'" in found["$.steer.methods[1].sampler"]
    found = problems(write("empty.toml", BASE + '\n[[steer.methods]]\nbaseline = "sir"\ndraws = []\n'), system)
    assert found == {"$.steer.methods[1].draws": "must hold at least one value, got an empty array"}


def test_headlines_must_exist(write, system):
    found = problems(write("st.toml", BASE.replace("samples = 100", 'samples = 100\nheadline = "fid"\nheadline_method = "nope"')), system)
    assert set(found) == {"$.steer.headline", "$.steer.headline_method"}
    assert "mfm-g" in found["$.steer.headline_method"]
