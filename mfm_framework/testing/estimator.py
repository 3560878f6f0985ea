"""Conformance suite of the ``value-estimator`` kind (MATH.md section 6), on closed-form contexts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import Tensor

from mfm_framework.interfaces import (
    Interpolant,
    Reward,
    SteeringContext,
    ValueEstimator,
)
from mfm_framework.model import MetaFlowMap
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, applies_to, assert_close
from mfm_framework.testing.exact import (
    LinearSchedule,
    LinearTestReward,
    NonDifferentiableReward,
    gaussian_grad_log_value,
    gaussian_log_value,
    gaussian_meta_flow_map,
    random_quadratic_reward,
)
from mfm_framework.testing.reward import reward_tensors

__all__ = ["ValueEstimatorConformance"]

F32, F64 = torch.float32, torch.float64


def _gradient_free(component_cls: type) -> bool:
    return not getattr(component_cls, "requires_differentiable_reward", True)


def _relative_error(got: Tensor, want: Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


class ValueEstimatorConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.ValueEstimator` against closed forms.

    The context is exact: Gaussian data ``N(mean 1, std^2 I)`` in :attr:`dim` dimensions, the exact
    meta flow map of it (:func:`~mfm_framework.testing.exact.gaussian_meta_flow_map`, with a
    parameter ``gain`` that requires grad so that leaks show), and a quadratic reward with a centre
    that requires grad (:class:`~mfm_framework.testing.exact.QuadraticTestReward`); ``V_t`` and
    ``grad V_t`` are then closed form. The checks:

    - ``grad_value`` and ``drift_and_grad_value`` give ``[B, D]``, ``value`` gives ``[B]``, finite,
      in ``x``'s dtype (float32 and float64), detached;
    - gradients reach ``x`` only: no model or reward parameter gets a ``.grad``, no
      ``requires_grad`` flag changes, ``x`` is not modified (with and without ``requires_grad``);
    - everything works under an outer ``torch.no_grad()`` (the steering engine runs in one), with
      the same results;
    - ``drift_and_grad_value`` returns the model's base drift (on the exact model, also an exact
      drift override equals it) and the gradient of ``grad_value`` (same generator seed; up to
      Monte Carlo noise when the draws differ);
    - consistency: with :attr:`particles` (set through the ``particles`` option, when there is
      one), ``grad V`` and ``V`` are within :attr:`grad_rtol` and :attr:`value_atol` (plus
      :attr:`value_rtol`) of the closed form at times where ``beta_t / alpha_t^2`` runs from 0.2 to 12, so that a wrong sign or a
      missing factor fails;
    - a linear reward, for which even a point-mass posterior gives the exact ``grad V`` on Gaussian
      data, gives it (every estimator);
    - an estimator with ``requires_differentiable_reward = False`` works with a reward that is not
      differentiable (:class:`~mfm_framework.testing.exact.NonDifferentiableReward`: back-propagating
      through it fails) and gives the same results as with the differentiable one;
    - the same ``context.generator`` seed gives the same outputs (the global generator moved).

    Exemptions: estimators that are biased by design are listed by name in :attr:`biased` (a suite
    attribute; extend it in a subclass) or declare a class attribute ``consistent = False``; they
    skip the consistency check (with the reason) and keep the others, the linear-reward check
    included. DPS is such an estimator: its point-mass posterior gives ``grad_x r(D_t(x))``,
    which on Gaussian data with a quadratic reward ``A`` misses the factor ``(I + c2 A)^-1``
    (``c2`` the posterior variance), and whose value misses ``log E exp`` of the spread.

    Estimators that need ``context.data`` (exact oracles, which need a
    :class:`~mfm_framework.interfaces.TiltableData`) get :meth:`make_data`; its default is ``None``,
    and a ``ValueError`` raised without data skips the check with the estimator's message. Override
    it to return a data law equal to ``N(mean 1, std^2 I)`` (e.g. a one-component Gaussian mixture).

    Attributes:
        example_options: options (keyword arguments of the estimator's ``Options``) per estimator
            name, used by every check (see :class:`~mfm_framework.testing._options.ExampleOptions`);
            extend it in a subclass.
        biased: names of the estimators exempt from the consistency check.
        dim: the data dimension.
        mean: the data mean (each coordinate).
        std: the data standard deviation.
        times: the context times of the batch (one row each).
        spread: standard deviation of the context states ``x``.
        particles: the ``particles`` option of the consistency checks.
        grad_rtol: tolerated relative error ``|grad - exact| / |exact|`` (Frobenius, over the batch).
        value_atol: tolerated error of ``V`` per row, with :attr:`value_rtol`:
            ``|V - exact| <= value_atol + value_rtol |exact|`` (a finite-step sampler such as GLASS-MC
            with 8 Euler steps is biased by a few percent of ``V``).
        value_rtol: see :attr:`value_atol`.
    """

    kind = "value-estimator"
    biased: ClassVar[tuple[str, ...]] = ()
    dim: ClassVar[int] = 2
    mean: ClassVar[float] = 0.5
    std: ClassVar[float] = 0.7
    times: ClassVar[tuple[float, ...]] = (0.15, 0.27, 0.39, 0.51, 0.63, 0.75)
    spread: ClassVar[float] = 1.5
    particles: ClassVar[int] = 4096
    grad_rtol: ClassVar[float] = 0.1
    value_atol: ClassVar[float] = 0.05
    value_rtol: ClassVar[float] = 0.05

    # ------------------------------------------------------------------ the context
    def make_component(self, component_cls: type, *, particles: int | None = None) -> ValueEstimator:
        """The estimator with its example options (or defaults), and ``particles`` when it has that option.

        Skips the check, naming the estimator, when its options have required fields and no example.
        """
        options_cls = component_cls.Options
        overrides = {}
        if particles is not None and attrs.has(options_cls) and "particles" in attrs.fields_dict(options_cls):
            overrides["particles"] = particles
        return component_cls(self.component_options(component_cls, **overrides))

    def describe_component(self, component_cls: type) -> str:
        """``value estimator 'name'``, as the skip message names it."""
        return f"value estimator {component_cls.name!r}"

    def make_interpolant(self) -> Interpolant:
        """The outer (and inner) schedule of the model: the linear one by default."""
        return LinearSchedule()

    def make_model(self, dtype: torch.dtype = F64) -> MetaFlowMap:
        """The exact meta flow map of ``N(mean 1, std^2 I)`` with a trainable ``gain`` (= 1)."""
        return gaussian_meta_flow_map(
            dim=self.dim, mean=self.mean, std=self.std, interpolant=self.make_interpolant(), trainable=True, dtype=dtype
        )

    def make_reward(self, tag: str) -> Reward:
        """A quadratic reward with a random SPD matrix and centre (the centre requires grad)."""
        return random_quadratic_reward(self.dim, self.generator(tag + "-reward"))

    def make_data(self) -> Any:
        """The data law for ``context.data``: ``None`` here; override to give a ``TiltableData`` equal to ``N(mean 1, std^2 I)``."""
        return None

    def context(self, model: MetaFlowMap, reward: Reward, seed: int) -> SteeringContext:
        """A steering context with a fresh generator seeded with ``seed`` and :meth:`make_data`."""
        return SteeringContext(model=model, reward=reward, generator=torch.Generator().manual_seed(seed), data=self.make_data())

    def contexts(self, tag: str, dtype: torch.dtype = F64) -> tuple[Tensor, Tensor]:
        """Times ``[B]`` (:attr:`times`) and states ``[B, dim]``."""
        t = torch.tensor(self.times, dtype=dtype)
        x = self.spread * torch.randn(len(self.times), self.dim, generator=self.generator(tag), dtype=F64)
        return t, x.to(dtype)

    def is_biased(self, component_cls: type) -> bool:
        """Whether the estimator is exempt from the consistency check (:attr:`biased` or ``consistent = False``)."""
        return component_cls.name in self.biased or getattr(component_cls, "consistent", True) is False

    def _call(self, est: ValueEstimator, method: str, *, t: Tensor, x: Tensor, context: SteeringContext) -> Any:
        """``est.method(t=t, x=x, context=context)``; a ``ValueError`` without ``context.data`` skips the check."""
        try:
            return getattr(est, method)(t=t, x=x, context=context)
        except ValueError as exc:
            if context.data is None:
                pytest.skip(
                    f"value estimator {est.name!r} raised ValueError in {method} with context.data = None ({exc}); "
                    f"override {type(self).__name__}.make_data() to give a data law equal to N(mean, std^2 I)"
                )
            raise

    def _all_outputs(
        self, est: ValueEstimator, *, t: Tensor, x: Tensor, model: MetaFlowMap, reward: Reward, seed: int
    ) -> dict[str, Tensor]:
        """``grad_value``, ``value`` and both outputs of ``drift_and_grad_value``, each from a fresh context of ``seed``."""
        out = {
            "grad_value": self._call(est, "grad_value", t=t, x=x, context=self.context(model, reward, seed)),
            "value": self._call(est, "value", t=t, x=x, context=self.context(model, reward, seed)),
        }
        out["drift"], out["drift_and_grad_value grad"] = self._call(
            est, "drift_and_grad_value", t=t, x=x, context=self.context(model, reward, seed)
        )
        return out

    def _assert_same_outputs(
        self, est: ValueEstimator, reference: dict[str, Tensor], *, failure: str, differs: Callable[[str], str], **kwargs: Any
    ) -> None:
        """:meth:`_all_outputs` with ``kwargs`` gives ``reference`` again (to float64 round-off).

        An exception (a skip aside) fails the check with ``failure`` and the exception; an output
        that differs fails it with ``differs(name)``.
        """
        try:
            outputs = self._all_outputs(est, **kwargs)
        except pytest.skip.Exception:
            raise
        except Exception as exc:
            raise AssertionError(f"{failure}: {exc!r}") from exc
        for name, expected in reference.items():
            assert_close(outputs[name], expected, rtol=1e-10, atol=1e-12, what=differs(name))

    # ------------------------------------------------------------------ checks
    def test_shapes_dtypes_and_finite(self, component_cls: type) -> None:
        """``[B, D]`` gradients and drift, ``[B]`` values, finite, in ``x``'s dtype (float32, float64), detached."""
        est = self.make_component(component_cls)
        reward = self.make_reward("test_shapes_dtypes_and_finite")
        for dtype in (F32, F64):
            model = self.make_model(dtype)
            t, x = self.contexts("test_shapes_dtypes_and_finite", dtype)
            batch = x.shape[0]
            outputs = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=0)
            for what, out in outputs.items():
                want = (batch,) if what == "value" else tuple(x.shape)
                assert torch.is_tensor(out) and out.shape == want, (
                    f"value estimator {est.name!r}: {what} returned {tuple(getattr(out, 'shape', ()))}, expected {want} "
                    f"for x of shape {tuple(x.shape)}"
                )
                assert out.dtype == dtype, f"value estimator {est.name!r}: {what} returned {out.dtype} for {dtype} inputs"
                bad = (~torch.isfinite(out)).nonzero()
                assert bad.numel() == 0, (
                    f"value estimator {est.name!r}: {what} ({dtype}) is not finite at row {bad[0, 0].item()} "
                    f"(t = {t[bad[0, 0]].item():.3f})"
                )
                assert not out.requires_grad, f"value estimator {est.name!r}: {what} must be detached (it requires grad)"

    def test_gradients_reach_x_only(self, component_cls: type) -> None:
        """No model or reward parameter gets a ``.grad``, no ``requires_grad`` flag changes, ``x`` is untouched."""
        est = self.make_component(component_cls)
        model = self.make_model()
        reward = self.make_reward("test_gradients_reach_x_only")
        params = {f"model.{name}": p for name, p in model.named_parameters()}
        params.update({f"reward.{label}": p for label, p in reward_tensors(reward) if p.requires_grad})
        assert any(p.requires_grad for p in params.values()), "the suite's model and reward must have trainable parameters"
        flags = {name: p.requires_grad for name, p in params.items()}
        for needs_grad in (False, True):
            t, x = self.contexts("test_gradients_reach_x_only")
            x.requires_grad_(needs_grad)
            before = x.detach().clone()
            outputs = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=1)
            leaked = sorted(name for name, p in params.items() if p.grad is not None)
            assert not leaked, (
                f"value estimator {est.name!r} gave .grad to {', '.join(leaked)}: gradients must flow to x only "
                "(use torch.autograd.grad(..., inputs=[x]) on a detached copy of x, not .backward())"
            )
            changed = sorted(name for name, p in params.items() if p.requires_grad != flags[name])
            assert not changed, f"value estimator {est.name!r} changed requires_grad of {', '.join(changed)}"
            assert torch.equal(x.detach(), before), f"value estimator {est.name!r} modified x in place"
            assert x.requires_grad == needs_grad and x.grad is None, (
                f"value estimator {est.name!r} changed x: requires_grad {needs_grad} -> {x.requires_grad}, "
                f".grad {'set' if x.grad is not None else 'None'} (x requires_grad={needs_grad})"
            )
            for what, out in outputs.items():
                if what == "value" and needs_grad:
                    continue  # a value may depend differentiably on an x that requires grad
                assert not out.requires_grad, (
                    f"value estimator {est.name!r}: {what} requires grad (x requires_grad={needs_grad}); it must be detached"
                )

    def test_works_under_no_grad(self, component_cls: type) -> None:
        """Under an outer ``torch.no_grad()`` the outputs are the same (same generator seed)."""
        est = self.make_component(component_cls)
        model = self.make_model()
        reward = self.make_reward("test_works_under_no_grad")
        t, x = self.contexts("test_works_under_no_grad")
        plain = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=2)
        with torch.no_grad():
            self._assert_same_outputs(
                est, plain, t=t, x=x, model=model, reward=reward, seed=2,
                failure=(
                    f"value estimator {est.name!r} fails under an outer torch.no_grad() (the steering engine runs in one; "
                    "wrap its own autograd in torch.enable_grad())"
                ),
                differs=lambda what: (
                    f"value estimator {est.name!r}: {what} under torch.no_grad() differs from {what} without it (same seed)"
                ),
            )

    def test_drift_and_grad_value(self, component_cls: type) -> None:
        """``drift_and_grad_value`` gives the model's base drift and the gradient of ``grad_value``."""
        est = self.make_component(component_cls, particles=self.particles)
        model = self.make_model()
        reward = self.make_reward("test_drift_and_grad_value")
        t, x = self.contexts("test_drift_and_grad_value")
        drift, grad = self._call(est, "drift_and_grad_value", t=t, x=x, context=self.context(model, reward, 3))
        alone = self._call(est, "grad_value", t=t, x=x, context=self.context(model, reward, 3))
        with torch.no_grad():
            base = model.drift(t=t, x=x)
        assert_close(
            drift, base, rtol=1e-9, atol=1e-10,
            what=(
                f"value estimator {est.name!r}: drift_and_grad_value must return the base drift b_t(x) "
                "(context.model.drift, or an exact drift, which equals it on this exact model)"
            ),
        )
        if torch.allclose(grad, alone, rtol=1e-10, atol=1e-12):
            return
        err = _relative_error(grad, alone)
        assert err <= self.grad_rtol, (
            f"value estimator {est.name!r}: the gradient of drift_and_grad_value differs from grad_value (same seed, "
            f"{self.particles} particles) by {err:.3f} relative (tolerance {self.grad_rtol}); first rows "
            f"{grad[:2].tolist()} vs {alone[:2].tolist()}"
        )

    def test_consistent_with_closed_form(self, component_cls: type) -> None:
        """With many particles, ``grad V`` and ``V`` match the closed form on Gaussian data and a quadratic reward."""
        if self.is_biased(component_cls):
            pytest.skip(
                f"value estimator {component_cls.name!r} is biased by design (listed in {type(self).__name__}.biased "
                "or consistent = False)"
            )
        est = self.make_component(component_cls, particles=self.particles)
        model = self.make_model()
        reward = self.make_reward("test_consistent_with_closed_form")
        t, x = self.contexts("test_consistent_with_closed_form")
        form, interp = reward.closed_form(), model.interpolant
        exact_grad = gaussian_grad_log_value(form=form, t=t, x=x, mean=self.mean, std=self.std, interpolant=interp)
        exact_value = gaussian_log_value(form=form, t=t, x=x, mean=self.mean, std=self.std, interpolant=interp)
        grad = self._call(est, "grad_value", t=t, x=x, context=self.context(model, reward, 4))
        err = _relative_error(grad, exact_grad)
        row_err = (grad - exact_grad).norm(dim=1) / exact_grad.norm(dim=1)
        assert err <= self.grad_rtol, (
            f"value estimator {est.name!r}: grad V is {err:.3f} off the closed form, relative (tolerance "
            f"{self.grad_rtol}, {self.particles} particles); per time t = {list(self.times)}: relative errors "
            f"{[round(e, 3) for e in row_err.tolist()]}; ratio |got| / |exact| "
            f"{[round(r, 3) for r in (grad.norm(dim=1) / exact_grad.norm(dim=1)).tolist()]}; cosine "
            f"{[round(c, 3) for c in torch.nn.functional.cosine_similarity(grad, exact_grad, dim=1).tolist()]}"
        )
        value = self._call(est, "value", t=t, x=x, context=self.context(model, reward, 5))
        gap = (value - exact_value).abs()
        tol = self.value_atol + self.value_rtol * exact_value.abs()
        worst = int((gap / tol).argmax())
        assert bool((gap <= tol).all()), (
            f"value estimator {est.name!r}: V is {gap[worst].item():.3f} off the closed form at t = {self.times[worst]} "
            f"(tolerance {self.value_atol} + {self.value_rtol} |V| = {tol[worst].item():.3f}, {self.particles} particles): "
            f"got {[round(v, 3) for v in value.tolist()]}, exact {[round(v, 3) for v in exact_value.tolist()]} "
            f"at t = {list(self.times)}"
        )

    def test_linear_reward_gradient(self, component_cls: type) -> None:
        """With a linear reward ``r = w . x_1`` (point-mass posteriors exact too), ``grad V = (d mu / d x) w``."""
        est = self.make_component(component_cls, particles=self.particles)
        model = self.make_model()
        w = torch.randn(self.dim, generator=self.generator("test_linear_reward_gradient-w"), dtype=F64)
        reward = LinearTestReward(w)
        t, x = self.contexts("test_linear_reward_gradient")
        exact = gaussian_grad_log_value(
            form=reward.closed_form(), t=t, x=x, mean=self.mean, std=self.std, interpolant=model.interpolant
        )
        grad = self._call(est, "grad_value", t=t, x=x, context=self.context(model, reward, 6))
        err = _relative_error(grad, exact)
        assert err <= self.grad_rtol, (
            f"value estimator {est.name!r}: with the linear reward w = {w.tolist()}, grad V is {err:.3f} off the "
            f"closed form (d mu / d x) w, relative (tolerance {self.grad_rtol}); at t = {list(self.times)} the ratio "
            f"grad / exact (first coordinate) is {[round(r, 3) for r in (grad[:, 0] / exact[:, 0]).tolist()]}"
        )

    @applies_to(_gradient_free, "a gradient-free estimator (requires_differentiable_reward = False)")
    def test_gradient_free_with_black_box_reward(self, component_cls: type) -> None:
        """With ``requires_differentiable_reward = False`` a non-differentiable reward works and changes nothing."""
        est = self.make_component(component_cls)
        model = self.make_model()
        reward = self.make_reward("test_gradient_free_with_black_box_reward")
        black_box = NonDifferentiableReward(reward)
        t, x = self.contexts("test_gradient_free_with_black_box_reward")
        reference = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=7)
        self._assert_same_outputs(
            est, reference, t=t, x=x, model=model, reward=black_box, seed=7,
            failure=(
                f"value estimator {est.name!r} declares requires_differentiable_reward = False but fails with a "
                "reward that is not differentiable"
            ),
            differs=lambda what: (
                f"value estimator {est.name!r} declares requires_differentiable_reward = False, but its {what} "
                "changes when the reward is not differentiable (does it back-propagate through the reward?)"
            ),
        )

    def test_reproducible_with_context_generator(self, component_cls: type) -> None:
        """The same ``context.generator`` seed gives identical outputs, whatever the global generator did."""
        est = self.make_component(component_cls)
        model = self.make_model()
        reward = self.make_reward("test_reproducible_with_context_generator")
        t, x = self.contexts("test_reproducible_with_context_generator")
        first = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=8)
        torch.rand(())  # move the global generator on: it must not matter
        second = self._all_outputs(est, t=t, x=x, model=model, reward=reward, seed=8)
        for what in first:
            assert torch.equal(first[what], second[what]), (
                f"value estimator {est.name!r}: {what} differs between two runs with the same context.generator seed "
                f"(max difference {(first[what] - second[what]).abs().max().item():.3e}); draw all noise from context.generator"
            )

