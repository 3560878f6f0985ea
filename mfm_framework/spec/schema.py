"""The run spec schema: attrs classes that a TOML run spec is structured into.

A *component table* names the component with ``kind = "<name>"``; its other keys are that
component's options, structured into its own options class. Sections and component tables with a
``fill`` default are filled in before structuring when the spec leaves them out, so the resolved
spec (``resolved.toml``) always states every choice explicitly.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Literal

import attrs

from mfm_framework.kinds import Kind, kind_by_name

__all__ = [
    "ComponentSpec",
    "InterpolantSpec",
    "BackboneSpec",
    "DiagonalTargetSpec",
    "ConsistencyLossSpec",
    "ValueEstimatorSpec",
    "RewardSpec",
    "IntegratorSpec",
    "DataSourceSpec",
    "MetricSpec",
    "RunSection",
    "ModelSection",
    "OptimizationSettings",
    "TrainSection",
    "EvaluateSection",
    "RewardTerm",
    "SteerMethod",
    "SteerDiagnostics",
    "SteerSection",
    "FinetuneSection",
    "RunSpec",
    "filled",
]


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """A component chosen in a spec: its name (the TOML ``kind`` key) and its structured options.

    Attributes:
        name: the component's registered name, e.g. ``"linear"``.
        options: an instance of the component's ``Options`` class.
        component: the component class (not part of equality).
    """

    kind: ClassVar[Kind]

    name: str
    options: Any
    component: type = attrs.field(eq=False, repr=False)

    def build(self, **kwargs: Any) -> Any:
        """Instantiate the component with its options (plus constructor keywords, e.g. ``data_shape``)."""
        return self.component(self.options, **kwargs)


def _spec_class(kind_name: str, cls_name: str) -> type[ComponentSpec]:
    cls = attrs.frozen(kw_only=True)(
        type(cls_name, (ComponentSpec,), {"__doc__": f"A {kind_name.replace('-', ' ')} table in a spec."})
    )
    cls.kind = kind_by_name(kind_name)
    return cls


InterpolantSpec = _spec_class("interpolant", "InterpolantSpec")
BackboneSpec = _spec_class("backbone", "BackboneSpec")
DiagonalTargetSpec = _spec_class("diagonal-target", "DiagonalTargetSpec")
ConsistencyLossSpec = _spec_class("consistency-loss", "ConsistencyLossSpec")
ValueEstimatorSpec = _spec_class("value-estimator", "ValueEstimatorSpec")
RewardSpec = _spec_class("reward", "RewardSpec")
IntegratorSpec = _spec_class("integrator", "IntegratorSpec")
DataSourceSpec = _spec_class("data-source", "DataSourceSpec")
MetricSpec = _spec_class("metric", "MetricSpec")


def filled(raw_default: Any, **kwargs: Any) -> Any:
    """A field the loader fills with ``raw_default`` (a raw TOML value) when the spec omits it."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["fill"] = raw_default
    return attrs.field(metadata=metadata, **kwargs)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE_RE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


def _matches(pattern: re.Pattern[str], what: str) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: str) -> None:
        if not pattern.match(value):
            raise ValueError(f"'{attribute.name}' must be {what}, got {value!r}")

    return check


@attrs.frozen(kw_only=True)
class RunSection:
    """``[run]``: where and how the run executes.

    Attributes:
        name: the run's name and the name of its directory under ``out_dir`` (default: the spec
            file's stem).
        seed: seed of every random draw of the run.
        out_dir: parent folder of run directories.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA when available).
        dtype: floating-point precision of models and data.
        threads: CPU threads of torch's intra-op pool (0: torch's default). Small models on a
            busy machine often run faster with 1.
    """

    name: str = attrs.field(validator=_matches(_NAME_RE, "letters, digits, '.', '_' or '-'"))
    seed: int = 0
    out_dir: str = "runs"
    device: str = attrs.field(default="cpu", validator=_matches(_DEVICE_RE, "cpu, cuda, cuda:N, mps or auto"))
    dtype: Literal["float32", "float64"] = "float32"
    threads: int = attrs.field(default=0, validator=attrs.validators.ge(0))


@attrs.frozen(kw_only=True)
class ModelSection:
    """``[model]``: the meta flow map's schedules and network.

    Attributes:
        interpolant: the outer schedule of contexts ``x_t`` (``[model.interpolant]``).
        inner_interpolant: the inner schedule from fresh noise to the posterior.
        backbone: the network; ``None`` until a backbone plugin is chosen.
    """

    interpolant: InterpolantSpec = filled({"kind": "linear"})
    inner_interpolant: InterpolantSpec = filled({"kind": "linear"})
    backbone: BackboneSpec = filled({"kind": "mlp"})


_pos = attrs.validators.gt(0)
_nonneg = attrs.validators.ge(0)
_unit = [attrs.validators.ge(0), attrs.validators.le(1)]


@attrs.frozen(kw_only=True)
class OptimizationSettings:
    """The optimisation settings shared by ``[train]`` and ``[finetune]``.

    Attributes:
        steps: optimizer steps.
        batch_size: examples per step.
        optimizer: ``"adamw"`` or ``"radam"``.
        lr: peak learning rate.
        beta1, beta2: Adam moment decays.
        weight_decay: decoupled weight decay.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: after warm-up, ``"constant"`` or ``"cosine"`` decay to 0.
        grad_clip: maximum gradient norm (0: no clipping).
        ema_decay: decay of the EMA of the weights used for sampling and evaluation.
        log_every: steps between records in ``metrics.jsonl``.
        checkpoint_every: steps between checkpoints (0: only the last).
        keep_checkpoints: how many recent checkpoints to keep.
    """

    steps: int = attrs.field(default=10_000, validator=_pos)
    batch_size: int = attrs.field(default=512, validator=_pos)
    optimizer: Literal["adamw", "radam"] = "adamw"
    lr: float = attrs.field(default=1e-3, validator=_pos)
    beta1: float = attrs.field(default=0.9, validator=_unit)
    beta2: float = attrs.field(default=0.999, validator=_unit)
    weight_decay: float = attrs.field(default=0.0, validator=_nonneg)
    warmup_steps: int = attrs.field(default=200, validator=_nonneg)
    schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float = attrs.field(default=1.0, validator=_nonneg)
    ema_decay: float = attrs.field(default=0.999, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    log_every: int = attrs.field(default=100, validator=_pos)
    checkpoint_every: int = attrs.field(default=1000, validator=_nonneg)
    keep_checkpoints: int = attrs.field(default=2, validator=_pos)


@attrs.frozen(kw_only=True)
class TrainSection(OptimizationSettings):
    """``[train]``: training a meta flow map (MATH.md section 4).

    Attributes:
        steps, batch_size, optimizer, lr, beta1, beta2, weight_decay, warmup_steps, schedule,
            grad_clip, ema_decay, log_every, checkpoint_every, keep_checkpoints: see
            :class:`OptimizationSettings`.
        q0: probability of the context time ``t = 0`` exactly (paper: 0.1).
        gamma: other context times are ``U^gamma`` (paper: 2 on ImageNet).
        loss: the consistency loss (``[train.loss]``).
        target: the diagonal target (``[train.target]``).
    """

    q0: float = attrs.field(default=0.1, validator=_unit)
    gamma: float = attrs.field(default=1.0, validator=_pos)
    loss: ConsistencyLossSpec = filled({"kind": "eulerian"})
    target: DiagonalTargetSpec = filled({"kind": "data"})


def _each(validator: Any) -> Any:
    return attrs.validators.deep_iterable(member_validator=validator)


@attrs.frozen(kw_only=True)
class EvaluateSection:
    """``[evaluate]``: distances of posterior and unconditional samples to the exact law.

    Needs a data source with closed forms (``ExactData``) for the posterior part and exact samples
    (``SamplableData``) for the unconditional part. Every distance comes with its noise floor: the
    same metric between two independent exact sample sets of the same size.

    Attributes:
        t_grid: context times of the posterior evaluation.
        contexts: contexts ``x ~ p_t`` per context time.
        samples: posterior draws per context (and size of each exact reference set).
        mfm_steps: inner step counts K of the MFM posterior sampler.
        glass_steps: step counts S of the GLASS posterior baseline on the same base drift.
        unconditional_samples: samples of each unconditional sampler.
        kernel_steps: step counts K of the unconditional kernel sampler.
        ode_steps: step counts of the unconditional ODE on the t = 0 drift.
        metrics: the distances (``[[evaluate.metrics]]`` tables).
        headline: the metric that headline comparisons use.
        glass_integrator: integrator of the GLASS baseline.
        ode_integrator: integrator of the unconditional ODE.
        plots: write PNG plots.
        plot_contexts: contexts per context time shown in the posterior plot.
        model: a ``model.pt`` to evaluate; default: the model trained by this run's ``[train]``.
    """

    model: str | None = None
    t_grid: tuple[float, ...] = attrs.field(default=(0.1, 0.3, 0.5, 0.7, 0.9), validator=_each(_unit))
    contexts: int = attrs.field(default=4, validator=_pos)
    samples: int = attrs.field(default=1000, validator=attrs.validators.ge(2))
    mfm_steps: tuple[int, ...] = attrs.field(default=(1, 2, 4), validator=_each(_pos))
    glass_steps: tuple[int, ...] = attrs.field(default=(1, 2, 4, 8, 16, 32, 64), validator=_each(_pos))
    unconditional_samples: int = attrs.field(default=4000, validator=attrs.validators.ge(2))
    kernel_steps: tuple[int, ...] = attrs.field(default=(1, 2, 4), validator=_each(_pos))
    ode_steps: tuple[int, ...] = attrs.field(default=(4, 16), validator=_each(_pos))
    metrics: list[MetricSpec] = filled([{"kind": "sw2"}, {"kind": "mmd"}, {"kind": "energy"}])
    headline: str = "sw2"
    glass_integrator: IntegratorSpec = filled({"kind": "euler"})
    ode_integrator: IntegratorSpec = filled({"kind": "heun"})
    plots: bool = True
    plot_contexts: int = attrs.field(default=3, validator=_nonneg)


def _optional(validator: Any) -> Any:
    return attrs.validators.optional(validator)


def _nonempty(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if len(value) == 0:
        raise ValueError(f"'{attribute.name}' must hold at least one value, got an empty array")


def _finite(_: Any, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number, got {value!r}")


@attrs.frozen(kw_only=True)
class RewardTerm:
    """One ``[[steer.rewards]]`` table: a reward and its weight in the weighted sum.

    The table holds the reward's ``kind`` and options next to ``weight`` and ``label`` (the
    converter splits them: ``weight`` and ``label`` are not options of any reward)::

        [[steer.rewards]]
        kind = "gaussian-likelihood"
        sigma = 0.2
        weight = 1.0

    Attributes:
        reward: the reward component (every key of the table but ``weight`` and ``label``).
        weight: its weight ``w_i`` in ``r = sum_i w_i r_i`` (a finite number; default 1).
        label: its name in logs and tables (default: the reward's name, ``#1``, ``#2``... when
            repeated).
    """

    flatten_into: ClassVar[str] = "reward"

    reward: RewardSpec
    weight: float = attrs.field(default=1.0, validator=_finite)
    label: str | None = None


#: The sampler-level baselines a ``[[steer.methods]]`` table can name (``mfm_framework.baselines``).
BASELINES: tuple[str, ...] = ("best-of-n", "sir", "smc", "mfm-search")


@attrs.frozen(kw_only=True)
class SteerMethod:
    """One ``[[steer.methods]]`` table: a steering method to compare, run at one or more budgets.

    A method is run once for every combination of the values of ``steps``, ``particles`` and
    ``draws`` that it uses (a sweep: one point each on the distance-vs-NFE plot).

    - **Estimator method** (no ``baseline``): the steered ODE (or SDE) of MATH.md section 6 with
      the value estimator ``estimator``: from pure noise, ``start_steps`` steps of the unsteered
      base ODE to ``t_min`` (a draw of ``p_{t_min}``), then ``steps`` steps of ``integrator`` on a
      uniform grid to 1. ``particles`` sweeps the estimator's own ``particles`` option.
    - **Baselines** (``mfm_framework.baselines``; MATH.md section 6):

      - ``"best-of-n"`` / ``"sir"``: ``draws`` base samples per output sample, keep the best /
        resample one in proportion to ``exp r``; the base sampler is ``sampler`` with ``steps``
        steps (``"kernel"``: the K-step MFM kernel sampler; ``"ode"``: the base ODE with
        ``integrator``).
      - ``"smc"``: ``particles`` particles per output sample on the base SDE from ``t_min`` to 1
        (``steps`` steps of the stochastic ``integrator``), weighted by the potentials
        ``V_t`` of ``estimator`` (its ``value`` only), resampled when the effective sample size
        falls below ``ess_threshold`` times the particles.
      - ``"mfm-search"``: ``particles`` greedy chains per output sample (default 1), ``draws``
        posterior draws per chain and step (``posterior_steps`` inner jumps each) over ``steps``
        steps from 0 to 1.

    Attributes:
        label: the method's name in tables, plots and checks; default: the estimator's name for an
            estimator method, the baseline's name for a baseline (``-2``, ``-3``... when repeated).
        baseline: a sampler-level baseline (one of ``BASELINES``), or none: an estimator method.
        estimator: the value estimator (``[steer.methods.estimator]``, a component table); for
            estimator methods and ``"smc"``.
        integrator: the integrator of the steered dynamics (stochastic for ``sde = true`` and for
            ``"smc"``; the base ODE's for a ``sampler = "ode"``).
        steps: steps ``K`` (steered dynamics, SMC moves, search steps, or the base sampler's).
        particles: estimator methods: values of the estimator's ``particles`` option (default:
            the estimator's own); ``"smc"``: particles per output sample (required);
            ``"mfm-search"``: chains per output sample (default 1).
        draws: ``"best-of-n"``, ``"sir"``: candidates per output sample; ``"mfm-search"``:
            posterior draws per chain and step (required for these three).
        sde: integrate the steered SDE instead of the ODE (estimator methods).
        t_min: the start time of the steered integration and of SMC (``g_t`` is infinite at 0).
        g_max: clamp ``g_t`` at this value (reported when it takes effect); default: no clamp.
        renormalize: ``kappa`` of the paper's renormalisation (``kappa |b| grad V / |grad V|``
            replaces ``g_t grad V``; changes the target, reported); default: off.
        start_steps: steps of the unsteered base ODE from noise at 0 to ``t_min`` (with
            ``integrator``, without noise; its cost is part of the method's).
        sampler: the base sampler of ``"best-of-n"`` and ``"sir"``.
        ess_threshold: ``"smc"``: resample when the ESS falls below this fraction of the particles.
        resampling: ``"smc"``: the resampling scheme.
        posterior_steps: ``"mfm-search"``: inner jumps of each posterior draw.
    """

    label: str | None = attrs.field(default=None, validator=_optional(_matches(_NAME_RE, "letters, digits, '.', '_' or '-'")))
    baseline: Literal["best-of-n", "sir", "smc", "mfm-search"] | None = None
    estimator: ValueEstimatorSpec | None = None
    integrator: IntegratorSpec = filled({"kind": "euler"})
    steps: tuple[int, ...] = attrs.field(default=(20,), validator=[_each(_pos), _nonempty])
    particles: tuple[int, ...] | None = attrs.field(default=None, validator=_optional([_each(_pos), _nonempty]))
    draws: tuple[int, ...] | None = attrs.field(default=None, validator=_optional([_each(_pos), _nonempty]))
    sde: bool = False
    t_min: float = attrs.field(default=0.02, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    g_max: float | None = attrs.field(default=None, validator=_optional(_pos))
    renormalize: float | None = attrs.field(default=None, validator=_optional(_nonneg))
    start_steps: int = attrs.field(default=2, validator=_pos)
    sampler: Literal["kernel", "ode"] = "kernel"
    ess_threshold: float = attrs.field(default=0.5, validator=_unit)
    resampling: Literal["systematic", "multinomial"] = "systematic"
    posterior_steps: int = attrs.field(default=1, validator=_pos)


@attrs.frozen(kw_only=True)
class SteerDiagnostics:
    """``[steer.diagnostics]``: estimated ``grad V_t`` against a reference estimator's, on a t grid.

    For each context time ``t``: ``contexts`` contexts ``x ~ p_t`` (``x = alpha_t z + beta_t x_1``
    with exact data draws); every diagnosed estimator, rebuilt with ``particles = N`` for each
    ``N`` of ``particles`` (estimators without a ``particles`` option are evaluated once and shown
    flat), is compared with the reference: relative error ``|g - g_ref| / |g_ref|`` (norms over
    all contexts) and the mean cosine.

    Attributes:
        reference: the value estimator taken as the truth (e.g. ``{kind = "exact"}``).
        estimators: the estimators to diagnose; default: every distinct estimator of
            ``[[steer.methods]]`` of another kind than the reference.
        t_grid: context times, in (0, 1).
        particles: the values of ``N``.
        contexts: contexts per context time.
    """

    reference: ValueEstimatorSpec
    estimators: list[ValueEstimatorSpec] | None = None
    t_grid: tuple[float, ...] = attrs.field(
        default=(0.1, 0.3, 0.5, 0.7, 0.9), validator=[_each([attrs.validators.gt(0), attrs.validators.lt(1)]), _nonempty]
    )
    particles: tuple[int, ...] = attrs.field(default=(1, 4, 16, 64), validator=[_each(_pos), _nonempty])
    contexts: int = attrs.field(default=128, validator=_pos)


@attrs.frozen(kw_only=True)
class SteerSection:
    """``[steer]``: inference-time steering toward ``p_1 exp(r) / Z``, every method against the exact tilt.

    Needs a data source whose tilt by the reward is known exactly (``TiltableData``, e.g. ``gmm``)
    and a reward with a closed form: each method's samples are compared with exact samples of the
    tilted law by every metric, next to the noise floor (an independent exact set of the same size).

    Attributes:
        model: a ``model.pt`` to steer; default: the model trained by this run's ``[train]`` (when
            given, ``[train]`` is skipped unless another stage needs the trained model).
        rewards: the reward terms (``[[steer.rewards]]``); the reward is their weighted sum.
        methods: the methods to compare (``[[steer.methods]]``).
        samples: output samples per method and budget (and size of each exact reference set).
        batch_size: samples steered at once (memory only: costs are counted per sample).
        floor_repeats: independent exact sets whose distances to the reference set are averaged
            into the noise floor (their standard deviation is reported as its spread: between
            well-separated modes a distance like SW2 fluctuates with the sampled mode weights).
        metrics: the distances (``[[steer.metrics]]`` tables).
        headline: the metric that the excess over the floor and the checks use.
        headline_method: the label of the method that the checks compare the others with;
            default: the first method.
        diagnostics: the estimator diagnostics (``[steer.diagnostics]``); default: none.
        plots: write PNG plots.
        plot_methods: how many runs to show in the sample scatter plot (the largest budget of each
            of the first methods).
    """

    model: str | None = None
    rewards: list[RewardTerm] = attrs.field(validator=_nonempty)
    methods: list[SteerMethod] = attrs.field(validator=_nonempty)
    samples: int = attrs.field(default=2000, validator=attrs.validators.ge(2))
    batch_size: int = attrs.field(default=1000, validator=_pos)
    floor_repeats: int = attrs.field(default=8, validator=_pos)
    metrics: list[MetricSpec] = filled([{"kind": "sw2"}, {"kind": "mmd"}, {"kind": "energy"}])
    headline: str = "sw2"
    headline_method: str | None = None
    diagnostics: SteerDiagnostics | None = None
    plots: bool = True
    plot_methods: int = attrs.field(default=6, validator=_nonneg)


@attrs.frozen(kw_only=True)
class FinetuneSection(OptimizationSettings):
    """``[finetune]``: off-policy reward fine-tuning of the base drift (MATH.md section 7).

    Trains a copy ``b_theta`` of the base drift (the ``t = 0`` slice of the meta flow map: the
    tuned model starts as a copy of the whole network and only its drift is used) toward the
    steered drift ``b + g_t grad V_t`` of ``p_1 exp(r) / Z``, once per objective, all from the same
    start, data and step count. States always come from the data (``x = alpha_t z + beta_t x_1``),
    never from the model being tuned. Objectives:

    - ``"mfm-ft"``: the MFM-FT fixed-point regression with ``draws`` posterior draws of the frozen
      meta flow map per state: ``target = b - (R - 1)(b_theta - b) + g_t G`` (all detached),
      ``R = exp(r(xh) - c)``, ``G = grad_x R`` through the frozen map (averages over the draws);
    - ``"reward-weighted"``: the baseline, reward-weighted flow matching: self-normalised weights
      ``softmax(r(x_1))`` over the batch on the regression of ``b_theta(x_t)`` on the conditional
      velocity ``dalpha_t x_0 + dbeta_t x_1``.

    Each tuned model is sampled with the plain (unsteered) ODE and compared with exact samples of
    the tilted law (when the data source can tilt and the reward has a closed form), with the
    noise floor, the base model's own distance and the fraction of the gap closed.

    Attributes:
        model: a ``model.pt`` to fine-tune; default: the model trained by this run's ``[train]``
            (when given, ``[train]`` is skipped unless another stage needs the trained model).
        rewards: the reward terms (``[[finetune.rewards]]``, as ``[[steer.rewards]]``).
        scale: inverse temperature multiplying the whole reward (the target is ``p_1 exp(scale r)``).
        objectives: the objectives to train and compare, each from the same start.
        draws: posterior draws ``N`` per state (``"mfm-ft"``); ``R`` and ``G`` are their means.
        posterior_steps: inner steps of each posterior draw of the frozen meta flow map.
        t_distribution: ``"uniform"``: ``t ~ U(t_min, 1)``; ``"power"``:
            ``t = t_min + (1 - t_min) U^t_gamma`` (``t_gamma > 1`` favours small t).
        t_gamma: the exponent of ``"power"``.
        t_min: the smallest time trained (``g_t`` is infinite at 0).
        g_max: clamp ``g_t`` at this value; default: no clamp.
        covariance_until: below this time, ``G`` is the covariance estimate of the draws,
            ``(beta_t / alpha_t^2) sum_i R_i (xh_i - mean xh) / (N - 1)`` (unbiased too, by
            ``grad E[R | x] = (beta_t / alpha_t^2) Cov(x_1, R | x)``; needs ``draws >= 2``), not
            the pathwise gradient: it avoids the derivative of the map in ``x``, poorly learnt
            at small t where ``g_t`` amplifies it; 0 (default): pathwise everywhere (MATH.md).
        baseline: ``"running"``: ``c`` is a running mean (decay ``baseline_decay``) of the batches'
            ``log mean exp r(xh)`` from the previous steps, so ``R`` stays near 1 (the fixed point
            does not depend on ``c``); ``"none"``: ``c = 0``.
        baseline_decay: the decay of the running baseline.
        steps, batch_size, optimizer, lr, beta1, beta2, weight_decay, warmup_steps, schedule,
            grad_clip, ema_decay, log_every, checkpoint_every, keep_checkpoints: see
            :class:`OptimizationSettings` (per objective; defaults: 2000 steps, ``lr`` 3e-4,
            100 warm-up steps, EMA decay 0.99, a checkpoint every 500 steps).
        eval_every: steps between quick evaluations of the EMA model (curves in
            ``metrics.jsonl``; 0: only at the start and the end).
        eval_samples: samples of each quick evaluation (headline metric and mean reward).
        samples: samples of the final evaluation (and size of each exact reference set).
        ode_steps: steps of the unsteered ODE that samples each model.
        ode_integrator: its integrator.
        metrics: the distances (``[[finetune.metrics]]`` tables).
        headline: the metric of the curves, the gap closed and the checks.
        plots: write PNG plots.
    """

    model: str | None = None
    rewards: list[RewardTerm] = attrs.field(validator=attrs.validators.min_len(1))
    scale: float = attrs.field(default=1.0, validator=[_finite, _pos])
    objectives: tuple[Literal["mfm-ft", "reward-weighted"], ...] = attrs.field(
        default=("mfm-ft",), validator=attrs.validators.min_len(1)
    )
    draws: int = attrs.field(default=1, validator=_pos)
    posterior_steps: int = attrs.field(default=1, validator=_pos)
    t_distribution: Literal["uniform", "power"] = "uniform"
    t_gamma: float = attrs.field(default=1.0, validator=_pos)
    t_min: float = attrs.field(default=0.02, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    g_max: float | None = attrs.field(default=None, validator=_optional(_pos))
    covariance_until: float = attrs.field(default=0.0, validator=_unit)
    baseline: Literal["running", "none"] = "running"
    baseline_decay: float = attrs.field(default=0.99, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    # OptimizationSettings with fine-tuning's own defaults
    steps: int = attrs.field(default=2000, validator=_pos)
    lr: float = attrs.field(default=3e-4, validator=_pos)
    warmup_steps: int = attrs.field(default=100, validator=_nonneg)
    ema_decay: float = attrs.field(default=0.99, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    checkpoint_every: int = attrs.field(default=500, validator=_nonneg)
    eval_every: int = attrs.field(default=250, validator=_nonneg)
    eval_samples: int = attrs.field(default=1000, validator=attrs.validators.ge(2))
    samples: int = attrs.field(default=4000, validator=attrs.validators.ge(2))
    ode_steps: int = attrs.field(default=32, validator=_pos)
    ode_integrator: IntegratorSpec = filled({"kind": "heun"})
    metrics: list[MetricSpec] = filled([{"kind": "sw2"}, {"kind": "mmd"}, {"kind": "energy"}])
    headline: str = "sw2"
    plots: bool = True


@attrs.frozen(kw_only=True)
class RunSpec:
    """A whole run spec (one TOML file)."""

    run: RunSection = filled({})
    model: ModelSection = filled({})
    data: DataSourceSpec | None = None
    train: TrainSection | None = None
    evaluate: EvaluateSection | None = None
    steer: SteerSection | None = None
    finetune: FinetuneSection | None = None

    def components(self) -> dict[str, ComponentSpec]:
        """Every component table of the spec by key path (``"model.interpolant"``, ...)."""
        found: dict[str, ComponentSpec] = {}

        def walk(obj: Any, prefix: str) -> None:
            for field in attrs.fields(type(obj)):
                value = getattr(obj, field.name)
                path = f"{prefix}.{field.name}" if prefix else field.name
                if field.name == getattr(type(obj), "flatten_into", None):
                    path = prefix  # its keys live in the table itself (e.g. a reward and its weight)
                if isinstance(value, ComponentSpec):
                    found[path] = value
                elif attrs.has(type(value)):
                    walk(value, path)
                elif isinstance(value, (list, tuple)):
                    for i, item in enumerate(value):
                        if isinstance(item, ComponentSpec):
                            found[f"{path}[{i}]"] = item
                        elif attrs.has(type(item)):
                            walk(item, f"{path}[{i}]")

        walk(self, "")
        return found
