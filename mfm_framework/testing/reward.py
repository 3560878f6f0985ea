"""Conformance suite of the ``reward`` kind (MATH.md sections 6 and 8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import pytest
import torch
from torch import Tensor, nn

from mfm_framework.interfaces import ExpQuadraticMixture, Reward
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, applies_to, assert_close

__all__ = ["RewardConformance", "reward_tensors"]

F32, F64 = torch.float32, torch.float64


def _is_differentiable(component_cls: type) -> bool:
    return bool(getattr(component_cls, "is_differentiable", False))


def reward_tensors(reward: Any) -> list[tuple[str, Tensor]]:
    """The tensors a reward holds: its parameters and buffers, and tensors in its attributes.

    Looks at the reward itself when it is an ``nn.Module``, and at every attribute that is a
    tensor, an ``nn.Module``, or a dict, list or tuple of tensors (one level deep).

    Returns:
        ``(label, tensor)`` pairs, each tensor once, labelled like ``"weights"`` or ``"net.fc.bias"``.
    """
    found: dict[int, tuple[str, Tensor]] = {}

    def add(label: str, value: Any) -> None:
        if torch.is_tensor(value):
            found.setdefault(id(value), (label, value))
        elif isinstance(value, nn.Module):
            for name, tensor in [*value.named_parameters(), *value.named_buffers()]:
                found.setdefault(id(tensor), (f"{label}.{name}" if label else name, tensor))

    if isinstance(reward, nn.Module):
        add("", reward)
    for attr, value in vars(reward).items():
        if isinstance(value, Mapping):
            for key, item in value.items():
                if torch.is_tensor(item):
                    add(f"{attr}[{key!r}]", item)
                elif isinstance(item, Mapping):  # e.g. a cache keyed by (device, dtype)
                    for key2, item2 in item.items():
                        add(f"{attr}[{key!r}][{key2!r}]", item2)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{attr}[{i}]", item)
        else:
            add(attr, value)
    return list(found.values())


class RewardConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.Reward`: shapes, dtypes, gradients, closed form, scale.

    Each check builds the reward with :meth:`make_component`: with the options in
    :attr:`example_options` under its name, else with default options; a reward whose options have
    required fields and no example is skipped with a message that names it. Inputs come from
    :meth:`inputs` (Gaussian, of the shape :meth:`input_shape` gives). The checks:

    - the result is ``[B]`` in ``x``'s dtype (float32 and float64, also for a batch of 1), finite
      (also far from the origin);
    - the same ``x`` twice gives the same values, and ``x`` is left as it was;
    - no tensor of the reward requires grad, and a backward pass through it gives none a ``.grad``;
    - a differentiable reward (``is_differentiable = True``) has finite autograd gradients equal to
      central finite differences (float64, random directions);
    - a reward with a :meth:`~mfm_framework.interfaces.Reward.closed_form` agrees with it up to an
      additive constant (a constant shifts the exact ``V_t`` and ``log Z`` by itself and changes
      neither the tilted law nor ``grad V``);
    - when the options have a ``scale``, multiplying it multiplies ``r`` (and the closed form, if
      any, follows).

    Attributes:
        example_options: options (keyword arguments of the reward's ``Options``) per reward name,
            for rewards that have no default options or should be checked with others (see
            :class:`~mfm_framework.testing._options.ExampleOptions`); extend it in a subclass, e.g.
            ``example_options = {**RewardConformance.example_options, "my-reward": {"target": (1.0, 2.0)}}``.
        shape: the per-sample shape of the inputs when the reward says nothing (no ``dim`` or
            ``data_shape`` attribute).
        batch: rows per input batch.
        spread: standard deviation of the inputs; :attr:`far` that of the far-away inputs of the
            finiteness check.
        fd_step: step of the central finite differences.
        fd_directions: random directions of the finite-difference check.
        scale_factor: the factor the scale check multiplies ``scale`` by.
    """

    kind = "reward"
    shape: ClassVar[tuple[int, ...]] = (3,)
    batch: ClassVar[int] = 16
    spread: ClassVar[float] = 2.0
    far: ClassVar[float] = 10.0
    fd_step: ClassVar[float] = 1e-6
    fd_directions: ClassVar[int] = 3
    scale_factor: ClassVar[float] = 2.5

    # ------------------------------------------------------------------ helpers
    def make_component(self, component_cls: type, **overrides: Any) -> Reward:
        """The reward with its example options (or its defaults), updated by ``overrides``.

        Skips the check, naming the reward and its required options, when there is neither.
        """
        return component_cls(self.component_options(component_cls, **overrides))

    def describe_component(self, component_cls: type) -> str:
        """``reward 'name'``, as the skip message names it."""
        return f"reward {component_cls.name!r}"

    def input_shape(self, reward: Reward) -> tuple[int, ...]:
        """Per-sample input shape: ``(reward.dim,)``, else ``reward.data_shape``, else :attr:`shape`."""
        dim = getattr(reward, "dim", None)
        if isinstance(dim, int) and not isinstance(dim, bool):
            return (dim,)
        data_shape = getattr(reward, "data_shape", None)
        if isinstance(data_shape, tuple):
            return data_shape
        return self.shape

    def inputs(self, reward: Reward, *, tag: str, batch: int | None = None, dtype: torch.dtype = F64, spread: float | None = None) -> Tensor:
        """Random inputs ``[batch, *input_shape]`` in ``dtype``; override for rewards with an input range."""
        n = self.batch if batch is None else batch
        scale = self.spread if spread is None else spread
        return (scale * torch.randn(n, *self.input_shape(reward), generator=self.generator(tag), dtype=F64)).to(dtype)

    def _scaled(self, component_cls: type, reward: Reward) -> Reward | None:
        """The reward with ``scale`` times :attr:`scale_factor`, or ``None`` without a ``scale`` option."""
        options = reward.options
        if not (attrs.has(type(options)) and "scale" in attrs.fields_dict(type(options))):
            return None
        return component_cls(attrs.evolve(options, scale=options.scale * self.scale_factor))

    # ------------------------------------------------------------------ checks
    def test_shape_and_dtype(self, component_cls: type) -> None:
        """``r(x)`` is a ``[B]`` tensor in ``x``'s dtype and device, for float32 and float64, B and 1 rows."""
        reward = self.make_component(component_cls)
        for dtype in (F32, F64):
            for batch in (self.batch, 1):
                x = self.inputs(reward, tag="test_shape_and_dtype", batch=batch, dtype=dtype)
                r = reward(x)
                assert torch.is_tensor(r), f"reward {reward.name!r} returned {type(r).__name__}, not a tensor"
                assert r.shape == (batch,), (
                    f"reward {reward.name!r} on x of shape {tuple(x.shape)} returned shape {tuple(r.shape)}, "
                    f"expected ({batch},): one value per row"
                )
                assert r.dtype == dtype, f"reward {reward.name!r} on {dtype} inputs returned {r.dtype}, expected {dtype}"
                assert r.device == x.device, f"reward {reward.name!r} returned a tensor on {r.device}, x is on {x.device}"

    def test_finite_values(self, component_cls: type) -> None:
        """``r(x)`` is finite in float32 and float64, near the origin and far from it."""
        reward = self.make_component(component_cls)
        for dtype in (F32, F64):
            for spread in (self.spread, self.far):
                x = self.inputs(reward, tag="test_finite_values", dtype=dtype, spread=spread)
                r = reward(x)
                bad = (~torch.isfinite(r)).nonzero().flatten()
                assert bad.numel() == 0, (
                    f"reward {reward.name!r}: {bad.numel()} of {r.numel()} values are not finite on {dtype} inputs "
                    f"of spread {spread}, e.g. r = {r[bad[0]].item()!r} at x = {x[bad[0]].tolist()}"
                )

    def test_deterministic_without_side_effects(self, component_cls: type) -> None:
        """The same ``x`` twice gives the same values; ``x`` (values, ``requires_grad``, ``.grad``) is untouched."""
        reward = self.make_component(component_cls)
        for needs_grad in (False, True):
            x = self.inputs(reward, tag="test_deterministic_without_side_effects").requires_grad_(needs_grad)
            before = x.detach().clone()
            first = reward(x).detach()
            assert torch.equal(x.detach(), before), (
                f"reward {reward.name!r} modified its input in place (max change {(x.detach() - before).abs().max().item():.3e})"
            )
            second = reward(x).detach()
            differ = (first != second).nonzero().flatten()
            assert differ.numel() == 0, (
                f"reward {reward.name!r} is not deterministic: row {differ[0].item()} gave "
                f"{first[differ[0]].item()!r} then {second[differ[0]].item()!r} ({differ.numel()} rows differ)"
            )
            assert x.requires_grad == needs_grad and x.grad is None, (
                f"reward {reward.name!r} changed its input's requires_grad ({needs_grad} -> {x.requires_grad}) "
                f"or .grad ({x.grad is not None})"
            )

    def test_no_gradient_to_reward_parameters(self, component_cls: type) -> None:
        """No tensor of the reward requires grad; a backward pass through ``r`` gives none a ``.grad``."""
        reward = self.make_component(component_cls)
        tensors = reward_tensors(reward)
        trainable = [label for label, tensor in tensors if tensor.requires_grad]
        assert not trainable, (
            f"reward {reward.name!r} holds tensors that require grad: {', '.join(trainable)}; a reward is "
            "frozen during steering and fine-tuning (call requires_grad_(False) on them)"
        )
        x = self.inputs(reward, tag="test_no_gradient_to_reward_parameters")
        r = reward(x)
        assert not r.requires_grad, (
            f"reward {reward.name!r} returned a result that requires grad for an input that does not: "
            "gradients reach its parameters"
        )
        x = x.clone().requires_grad_(True)
        r = reward(x)
        if r.requires_grad:
            r.sum().backward()
        with_grad = [label for label, tensor in tensors + reward_tensors(reward) if tensor.grad is not None]
        assert not with_grad, f"reward {reward.name!r}: a backward pass gave these tensors a .grad: {', '.join(sorted(set(with_grad)))}"

    @applies_to(_is_differentiable, "a differentiable reward (is_differentiable = True)")
    def test_gradient_matches_finite_differences(self, component_cls: type) -> None:
        """Autograd ``grad_x r`` is finite and equals central finite differences along random directions (float64)."""
        reward = self.make_component(component_cls)
        tag = "test_gradient_matches_finite_differences"
        x = self.inputs(reward, tag=tag).requires_grad_(True)
        r = reward(x)
        assert r.requires_grad, (
            f"reward {reward.name!r} declares is_differentiable = True but its output has no autograd graph "
            "(it detaches, or computes without autograd); set is_differentiable = False or keep the graph"
        )
        (grad,) = torch.autograd.grad(r.sum(), x)
        assert torch.isfinite(grad).all(), f"reward {reward.name!r}: the autograd gradient is not finite"
        gen = self.generator(tag + "-directions")
        h, x0 = self.fd_step, x.detach()
        scale = max(1.0, r.detach().abs().max().item())
        for k in range(self.fd_directions):
            v = torch.randn(x0.shape, generator=gen, dtype=F64)
            v = v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))
            with torch.no_grad():
                fd = (reward(x0 + h * v) - reward(x0 - h * v)) / (2 * h)
            ad = (grad * v).flatten(1).sum(1)
            assert_close(
                ad, fd, rtol=1e-5, atol=1e-6 * scale,
                what=(
                    f"reward {reward.name!r}: autograd directional derivatives (direction {k}) differ from central "
                    f"finite differences with step {h} (first rows: autograd {ad[:3].tolist()}, "
                    f"finite differences {fd[:3].tolist()})"
                ),
            )

    def test_closed_form_matches_values(self, component_cls: type) -> None:
        """``closed_form().reward(x)`` equals ``r(x)`` up to an additive constant (also for a scaled reward)."""
        reward = self.make_component(component_cls)
        form = reward.closed_form()
        if form is None:
            pytest.skip(f"reward {reward.name!r} has no closed form (closed_form() is None)")
        cases = [("", reward, form)]
        scaled = self._scaled(component_cls, reward)
        if scaled is not None and scaled.closed_form() is not None:
            cases.append((f" with scale x {self.scale_factor}", scaled, scaled.closed_form()))
        for what, rew, frm in cases:
            assert isinstance(frm, ExpQuadraticMixture), (
                f"reward {reward.name!r}{what}: closed_form() returned {type(frm).__name__}, not an ExpQuadraticMixture or None"
            )
            shape = self.input_shape(rew)
            assert shape == (frm.dim,), (
                f"reward {reward.name!r}{what}: the closed form is {frm.dim}-dimensional but the reward takes inputs "
                f"of shape {shape}"
            )
            x = self.inputs(rew, tag="test_closed_form_matches_values")
            r = rew(x).detach()
            diff = frm.reward(x) - r
            gap = (diff - diff[0]).abs().max().item()
            tol = 1e-9 * max(1.0, r.abs().max().item())
            assert gap <= tol, (
                f"reward {reward.name!r}{what}: closed_form().reward(x) - r(x) is not constant over {x.shape[0]} "
                f"inputs: it ranges over [{diff.min().item():.6g}, {diff.max().item():.6g}] (tolerance {tol:.1e}); "
                f"first rows r = {r[:3].tolist()}, closed form {frm.reward(x)[:3].tolist()}"
            )

    def test_scale_multiplies_reward(self, component_cls: type) -> None:
        """Multiplying the ``scale`` option by a factor multiplies ``r`` by it."""
        reward = self.make_component(component_cls)
        scaled = self._scaled(component_cls, reward)
        if scaled is None:
            pytest.skip(f"reward {reward.name!r} has no 'scale' option")
        x = self.inputs(reward, tag="test_scale_multiplies_reward")
        r, rs = reward(x).detach(), scaled(x).detach()
        factor = self.scale_factor
        assert_close(
            rs, factor * r, rtol=1e-10, atol=1e-12 * max(1.0, r.abs().max().item()),
            what=(
                f"reward {reward.name!r}: scale {reward.options.scale} -> {scaled.options.scale} must multiply r by "
                f"{factor} (first rows: r = {r[:3].tolist()}, scaled {rs[:3].tolist()})"
            ),
        )
