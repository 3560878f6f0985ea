"""How much compute can steering save over importance resampling on a task? An oracle bound.

For the data law and reward of a steering spec (``[data]`` with exact tilts, ``[[steer.rewards]]``
with a closed form; default ``examples/gmm2d_steer.toml``) this prints, with no model and no
training:

1. SIR's efficiency per candidate, ``ESS / N = Z(r)^2 / Z(2 r)`` with ``Z(r) = E_{p_1}[exp r]``
   (closed form; Monte Carlo when the doubled reward has none): how many base samples importance
   resampling needs per effective draw of the tilted law ``p_r``.
2. The best any steered sampler can do: the exact steered ODE (exact base drift, exact
   ``grad V_t``, MATH.md section 6) from an exact draw of the *tilted* marginal at ``t_min`` to 1,
   with K Euler or Heun steps, priced as the cheapest MFM-G would be counted (``1 + 4N`` NFE per
   steered drift evaluation with ``N = 1`` posterior draw; 1 per evaluation at ``t = 1``). A real
   estimator adds Monte Carlo noise and model error, and more draws cost more.
3. SIR with candidates drawn exactly from ``p_1`` (the best base sampler there is), each priced
   ``--candidate-nfe`` NFE plus its reward call (default 32: the 16-step Heun sampler of the
   example; 1 would be an ideal one-step sampler).
4. For each oracle budget, the NFE SIR needs to reach the same distance for good (the smallest
   budget from which every larger one tried is at least as close, up to two standard errors) (the headline metric
   minus its noise floor, each averaged over ``--repeats`` independent sets), as a multiple of
   the oracle's price. If that multiple stays below X for the oracle, no steering estimator can
   claim "SIR needs X times its NFE" on the task.

Usage::

    python benchmarks/steering_headroom.py [SPEC] [--set KEY=VALUE ...] [--repeats 4]

Measured on examples/gmm2d_steer.toml (one thread, about 20 s): see the comments of that example
and the README's steering section.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from mfm_framework.baselines import sir
from mfm_framework.grids import uniform_grid
from mfm_framework.interfaces import SteeringContext, ValueEstimator
from mfm_framework.kinds import kind_by_name
from mfm_framework.ledger import CostLedger
from mfm_framework.plugins import default_plugin_system
from mfm_framework.rewards import WeightedReward
from mfm_framework.spec import load_spec
from mfm_framework.steering import steered_sample

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@attrs.define
class _NoNetwork:
    """Stands in for the meta flow map: the interpolant the oracle needs, and no network to call."""

    interpolant: Any
    ledger: Any = None  # what the cost ledger attaches to

    def drift(self, **_: Any) -> Tensor:  # pragma: no cover - the oracle never calls it
        raise AssertionError("the oracle must not call the model")


@attrs.define
class _PricedOracle(ValueEstimator):
    """The exact oracle, counting its evaluations so they can be priced as MFM-G's would be."""

    exact: ValueEstimator
    steered: int = 0
    unsteered: int = 0
    name = "priced-oracle"

    def grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return self.exact.grad_value(t=t, x=x, context=context)

    def value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        return self.exact.value(t=t, x=x, context=context)

    def base_drift(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> Tensor:
        self.unsteered += 1
        return self.exact.base_drift(t=t, x=x, context=context)

    def drift_and_grad_value(self, *, t: Tensor, x: Tensor, context: SteeringContext) -> tuple[Tensor, Tensor]:
        self.steered += 1
        return self.exact.drift_and_grad_value(t=t, x=x, context=context)


@attrs.frozen
class _ExactBaseSampler:
    """Candidates drawn exactly from ``p_1`` (no network: the ledger counts the reward calls only)."""

    data: Any

    def __call__(self, *, model: Any, n: int, generator: torch.Generator | None, cond: Tensor | None) -> Tensor:
        return self.data.sample(n, generator=generator).x_1.to(F64)


def _component(kind: str, name: str) -> Any:
    return default_plugin_system().registry.get(kind_by_name(kind), name).cls


def _sir_efficiency(data: Any, reward: WeightedReward, generator: torch.Generator) -> tuple[float, str]:
    """``Z(r)^2 / Z(2r)``: closed form when both tilts have one, else 2e6 Monte Carlo draws."""
    doubled = WeightedReward([(2 * w, term, label) for (w, term), label in zip(reward.terms, reward.labels)])
    form, form2 = reward.closed_form(), doubled.closed_form()
    if form is not None and form2 is not None:
        return math.exp(2 * float(data.log_partition(form)) - float(data.log_partition(form2))), "closed form"
    r = reward(data.sample(2_000_000, generator=generator).x_1.to(F64))
    log_mean = torch.logsumexp(r, 0) - math.log(r.numel())
    log_mean2 = torch.logsumexp(2 * r, 0) - math.log(r.numel())
    return math.exp(float(2 * log_mean - log_mean2)), "Monte Carlo, 2e6 draws"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "examples" / "gmm2d_steer.toml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=8, help="independent sets per distance (default 8)")
    parser.add_argument("--t-min", type=float, default=0.005)
    parser.add_argument("--steps", default="1,2,3,5,10,20", help="oracle step counts K")
    parser.add_argument("--draws", default="1,2,3,4,5,6,8,10,12,16,24,32,48,64", help="SIR candidates per sample")
    parser.add_argument("--candidate-nfe", type=int, default=32, help="NFE of one base candidate (default 32: Heun-16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    loaded = load_spec(args.spec, registry=default_plugin_system().registry, overrides=args.overrides)
    spec = loaded.spec
    if spec.steer is None or spec.data is None:
        print(f"{args.spec}: needs [data] and [steer] sections", file=sys.stderr)
        return 2
    cfg = spec.steer
    data = spec.data.build()
    reward = WeightedReward([(term.weight, term.reward.build(), term.label) for term in cfg.rewards])
    form = reward.closed_form()
    if form is None or not hasattr(data, "tilted"):
        print(f"{args.spec}: the reward needs a closed form and the data exact tilts", file=sys.stderr)
        return 2
    law = data.tilted(form)
    interpolant = spec.model.interpolant.build()
    metric_spec = next(m for m in cfg.metrics if m.name == cfg.headline)
    metric = metric_spec.build()
    n, repeats = cfg.samples, args.repeats
    gen = torch.Generator().manual_seed(args.seed)

    def distance(samples: Tensor, reference: Tensor, seed: int) -> float:
        return float(metric(samples=samples, reference=reference, generator=torch.Generator().manual_seed(seed)))

    references = [law.sample(n, generator=gen).x_1.to(F64) for _ in range(repeats)]
    floors = torch.tensor([distance(law.sample(n, generator=gen).x_1.to(F64), ref, i) for i, ref in enumerate(references)])
    floor = float(floors.mean())
    # distances closer than two standard errors of a mean of `repeats` sets count as equal
    tolerance = 2 * float(floors.std()) / math.sqrt(repeats)

    def excess(draw: Any) -> float:
        return sum(distance(draw(i), ref, i) for i, ref in enumerate(references)) / repeats - floor

    efficiency, how = _sir_efficiency(data, reward, gen)
    print(f"task: {args.spec}; reward {reward!r}")
    print(f"SIR effective sample size per candidate Z(r)^2 / Z(2r) = {efficiency:.4f} ({how}): "
          f"about {1 / efficiency:.1f} candidates per effective draw of p_r")
    print(f"{cfg.headline} floor (exact vs exact, {n} samples, mean of {repeats}): {floor:.4f}; distances within "
          f"{tolerance:.3f} (two standard errors) count as a match")

    # ---- the oracle, priced as MFM-G with one posterior draw
    model = _NoNetwork(interpolant)
    exact_cls = _component("value-estimator", "exact")
    t_min = args.t_min
    alpha, beta = interpolant.alpha(torch.tensor([t_min], dtype=F64)), interpolant.beta(torch.tensor([t_min], dtype=F64))
    oracle_rows = []
    for integrator_name in ("euler", "heun"):
        integrator = _component("integrator", integrator_name)()
        for steps in [int(s) for s in args.steps.split(",")]:
            priced = _PricedOracle(exact_cls(exact_cls.Options(exact_drift=True)))

            def run(i: int, integrator: Any = integrator, steps: int = steps, priced: _PricedOracle = priced) -> Tensor:
                g = torch.Generator().manual_seed(1000 * steps + i)
                start = alpha * torch.randn(n, *data.data_shape, generator=g, dtype=F64) + beta * law.sample(n, generator=g).x_1.to(F64)
                context = SteeringContext(model=model, reward=reward, generator=g, data=data, ledger=CostLedger())
                times = uniform_grid(t_min, 1.0, steps, dtype=F64)
                return steered_sample(estimator=priced, integrator=integrator, context=context, x=start, times=times).samples

            e = excess(run)
            price = (5 * priced.steered + priced.unsteered) / repeats  # per sample: 1 + 4N with N = 1
            oracle_rows.append((integrator_name, steps, price, e))

    # ---- SIR from exact base draws
    sampler = _ExactBaseSampler(data)
    sir_rows = []
    for draws in [int(d) for d in args.draws.split(",")]:

        def run_sir(i: int, draws: int = draws) -> Tensor:
            g = torch.Generator().manual_seed(7919 * draws + i)
            context = SteeringContext(model=model, reward=reward, generator=g, data=data, ledger=CostLedger())
            return sir(context=context, n=n, draws=draws, sampler=sampler).samples

        sir_rows.append((draws, draws * (args.candidate_nfe + 1), excess(run_sir)))

    print(f"\nSIR on exact draws of p_1, {args.candidate_nfe} + 1 NFE a candidate ({cfg.headline} minus the floor):")
    print("  " + "  ".join(f"N={d}: {e:.3f}" for d, _, e in sir_rows))
    print(f"\nthe exact steered ODE from t_min = {t_min} (exact tilted start), priced as MFM-G with N = 1:")
    print(f"  {'integrator':<10} {'K':>3} {'NFE':>6} {'excess':>8} {'SIR NFE to match':>17} {'ratio':>7}")
    best = 0.0
    for name, steps, price, e in oracle_rows:
        # the first budget from which SIR stays at or below the oracle's distance (noise favours neither)
        match = next((nfe for i, (_, nfe, _) in enumerate(sir_rows) if all(se <= e + tolerance for _, _, se in sir_rows[i:])), None)
        ratio = None if match is None else match / price
        if ratio is not None:
            best = max(best, ratio)
        shown = f">{sir_rows[-1][1]}" if match is None else str(match)
        print(f"  {name:<10} {steps:>3} {price:>6.0f} {e:>8.3f} {shown:>17} {'-' if ratio is None else f'{ratio:.1f}x':>7}")
    print(f"\nlargest ratio reached by the oracle: {best:.1f}x (wall {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
