"""The ``[finetune]`` section: defaults made explicit, its problems reported with key paths, and
where its stage and ``[train]`` run."""

from __future__ import annotations

import pytest

from mfm_framework.run import stages_for, trains
from mfm_framework.spec import dump_spec, load_spec
from tests.framework.spec_helpers import BLACK_BOX, problems, register_black_box

BASE = """
[run]
name = "ft"

[data]
kind = "gmm"

[train]
steps = 10

[finetune]
objectives = ["mfm-ft", "reward-weighted"]

[[finetune.rewards]]
kind = "gaussian-likelihood"
sigma = 0.3
weight = 2.0
"""


def test_defaults_are_explicit_and_the_resolved_spec_round_trips(write, system):
    loaded = load_spec(write("ft.toml", BASE), registry=system.registry)
    ft = loaded.spec.finetune
    assert ft.objectives == ("mfm-ft", "reward-weighted")
    (term,) = ft.rewards
    assert term.reward.name == "gaussian-likelihood" and term.reward.options.sigma == 0.3 and term.weight == 2.0
    assert ft.t_min == 0.02 and ft.g_max is None and ft.draws == 1 and ft.baseline == "running"
    resolved = loaded.resolved["finetune"]
    assert resolved["ode_integrator"]["kind"] == "heun"
    assert [m["kind"] for m in resolved["metrics"]] == ["sw2", "mmd", "energy"]
    assert resolved["rewards"][0]["kind"] == "gaussian-likelihood" and resolved["rewards"][0]["weight"] == 2.0
    again = load_spec(write("resolved.toml", dump_spec(loaded.resolved)), registry=system.registry)
    assert again.spec == loaded.spec and again.resolved == loaded.resolved


def test_overrides_reach_the_section(write, system):
    loaded = load_spec(
        write("ft.toml", BASE), registry=system.registry,
        overrides=["finetune.draws=4", 'finetune.objectives=["reward-weighted"]', "finetune.g_max=20.0"],
    )
    assert loaded.spec.finetune.draws == 4 and loaded.spec.finetune.objectives == ("reward-weighted",)
    assert loaded.spec.finetune.g_max == 20.0


@pytest.mark.parametrize(
    ("extra", "path", "needle"),
    [
        ('objectives = ["mfm-ft", "mfm-ft"]', "$.finetune.objectives", "more than once"),
        ('objectives = ["dpo"]', "$.finetune.objectives[0]", "mfm-ft"),
        ("objectives = []", "$.finetune", "'objectives' must be >= 1"),
        ("t_min = 0.0", "$.finetune.t_min", "g_max"),
        ("t_min = 1.0", "$.finetune.t_min", ""),
        ('headline = "fid"', "$.finetune.headline", "not one of the metrics"),
        ("draws = 0", "$.finetune.draws", ""),
        ("t_gamma = 2.0", "$.finetune.t_gamma", "power"),
        ('baseline = "mean"', "$.finetune.baseline", ""),
        ("stepz = 3", "$.finetune.stepz", ""),
        ("covariance_until = 0.5", "$.finetune.draws", "draws >= 2"),
        ("covariance_until = 1.5", "$.finetune.covariance_until", ""),
    ],
)
def test_each_problem_names_its_key_path(write, system, extra, path, needle):
    text = BASE.replace('objectives = ["mfm-ft", "reward-weighted"]', extra) if extra.startswith("objectives") else BASE.replace(
        "[[finetune.rewards]]", f"{extra}\n\n[[finetune.rewards]]"
    )
    found = problems(write("bad.toml", text), system)
    assert path in found, found
    assert needle in found[path]


def test_t_min_zero_is_fine_with_a_clamp_or_without_mfm_ft(write, system):
    text = BASE.replace("[[finetune.rewards]]", "t_min = 0.0\ng_max = 10.0\n\n[[finetune.rewards]]")
    load_spec(write("ok.toml", text), registry=system.registry)
    text = BASE.replace('["mfm-ft", "reward-weighted"]', '["reward-weighted"]').replace(
        "[[finetune.rewards]]", "t_min = 0.0\n\n[[finetune.rewards]]"
    )
    load_spec(write("ok2.toml", text), registry=system.registry)


def test_the_section_needs_rewards_data_and_a_model(write, system):
    found = problems(write("bad.toml", "[finetune]\nsteps = 3\n"), system)
    assert "$.finetune.rewards" in found
    text = BASE.replace("[data]\nkind = \"gmm\"\n", "").replace("[train]\nsteps = 10\n", "")
    found = problems(write("bad2.toml", text), system)
    assert "required by [finetune]" in found["$.data"]
    assert "model.pt" in found["$.finetune.model"]


def test_mfm_ft_needs_a_differentiable_reward(write, system):
    register_black_box(system)
    text = BASE + f'\n[[finetune.rewards]]\nkind = "{BLACK_BOX}"\n'
    found = problems(write("bad.toml", text), system)
    assert "not differentiable" in found["$.finetune.rewards[1].kind"]
    ok = text.replace('["mfm-ft", "reward-weighted"]', '["reward-weighted"]')
    load_spec(write("ok.toml", ok), registry=system.registry)
    # with the covariance estimate of G at every t, mfm-ft never differentiates the reward
    everywhere = text.replace("[[finetune.rewards]]", "covariance_until = 1.0\ndraws = 2\n\n[[finetune.rewards]]", 1)
    load_spec(write("ok2.toml", everywhere), registry=system.registry)


def test_stages_and_when_train_runs(write, system):
    spec = load_spec(write("ft.toml", BASE), registry=system.registry).spec
    assert [name for name, _ in stages_for(spec)] == ["components", "train", "finetune"]
    assert trains(spec)
    given = load_spec(write("ft.toml", BASE), registry=system.registry, overrides=["finetune.model=runs/x/model.pt"]).spec
    assert not trains(given)  # nothing else needs the trained model
    with_eval = load_spec(
        write("ft2.toml", BASE + "\n[evaluate]\nt_grid = [0.5]\n"), registry=system.registry,
        overrides=["finetune.model=runs/x/model.pt"],
    ).spec
    assert trains(with_eval)
    assert [name for name, _ in stages_for(with_eval)] == ["components", "train", "evaluate", "finetune"]
    no_train = load_spec(
        write("ft3.toml", BASE.replace("[train]\nsteps = 10\n", "")), registry=system.registry,
        overrides=["finetune.model=runs/x/model.pt"],
    ).spec
    assert [name for name, _ in stages_for(no_train)] == ["components", "finetune"]


def test_the_example_validates(system):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "gmm2d_finetune.toml"
    spec = load_spec(example, registry=system.registry).spec
    assert spec.finetune.objectives == ("mfm-ft", "reward-weighted")
    assert spec.data.options.preset == "paper-2d" and spec.train.loss.name == "eulerian"
    (term,) = spec.finetune.rewards
    assert term.reward.options.A == ((1.2, -0.8),) and term.reward.options.y == (-1.0,) and term.reward.options.sigma == 0.2
