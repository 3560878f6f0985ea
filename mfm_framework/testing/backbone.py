"""Conformance suite of the ``backbone`` kind: shapes, dtypes, labels, forward-mode JVPs, gradients."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mfm_framework.interfaces import Backbone
from mfm_framework.objectives import jvp
from mfm_framework.testing._options import ExampleOptions
from mfm_framework.testing._suite import ConformanceSuite, applies_to, assert_close

__all__ = ["BackboneConformance"]

F32, F64 = torch.float32, torch.float64
_INPUTS = ("y", "s", "u", "t", "x")


def _supports_jvp(component_cls: type) -> bool:
    return bool(getattr(component_cls, "supports_jvp", False))


class BackboneConformance(ExampleOptions, ConformanceSuite):
    """Checks a :class:`~mfm_framework.interfaces.Backbone` against its interface and MATH.md section 4.

    A backbone is built with :meth:`make_backbone`: its example options (or defaults), a data
    shape from :meth:`shapes_for`, and ``num_classes``. Zero-initialised output layers (the
    identity map at initialisation) would hide every dependence on the inputs, so every parameter
    first gets N(0, ``perturb_std^2``) noise added. Checks:

    - the output has the shape of ``y`` and its dtype (float32 and float64), is finite, for every
      data shape of :meth:`shapes_for` and for batches of ``batch`` and of 1, times ``[B]``;
    - with ``num_classes`` set, integer labels ``cond`` ``[B]`` and ``cond = None`` both work,
      and the labels change the output (MATH.md section 2);
    - the output depends on each of ``y``, ``s``, ``u``, ``t`` and ``x``;
    - rows are independent (a batch gives the rows' outputs one by one) and eval mode is
      deterministic (the global random state does not matter);
    - ``supports_jvp = True``: ``torch.func.jvp`` and ``torch.autograd.forward_ad`` pass through
      :meth:`forward` with the tangents of the Eulerian (``ds = 1, dy = b``), Lagrangian
      (``du = 1``) and context (``dt = 1, dx``) derivatives, match central finite differences in
      float64 and run in float32;
    - every parameter receives a finite, non-zero gradient (DDP needs it);
    - a new instance with the same options loads the ``state_dict`` and gives the same outputs
      (how checkpoints are restored).

    Attributes:
        example_options: see :class:`~mfm_framework.testing._options.ExampleOptions`.
        default_data_shapes: the data shapes checked when :attr:`data_shapes` has no entry; the
            first one is used by the checks that take a single shape.
        data_shapes: data shapes per backbone name (e.g. ``{"my-unet": ((3, 8, 8),)}``).
        num_classes: the number of labels of the label checks.
        batch: rows per input batch.
        perturb_std: standard deviation of the noise added to every parameter.
        fd_step: step of the central finite differences.
    """

    kind = "backbone"
    default_data_shapes: ClassVar[tuple[tuple[int, ...], ...]] = ((3,), (2, 3, 2))
    data_shapes: ClassVar[Mapping[str, tuple[tuple[int, ...], ...]]] = {}
    num_classes: ClassVar[int] = 3
    batch: ClassVar[int] = 4
    perturb_std: ClassVar[float] = 0.1
    fd_step: ClassVar[float] = 1e-6

    # ------------------------------------------------------------------ helpers
    def shapes_for(self, component_cls: type) -> tuple[tuple[int, ...], ...]:
        """The data shapes a backbone is checked on."""
        return tuple(self.data_shapes.get(component_cls.name, self.default_data_shapes))

    def make_component(self, component_cls: type) -> Backbone:
        return self.make_backbone(component_cls)

    def make_backbone(
        self,
        component_cls: type,
        *,
        data_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        dtype: torch.dtype = F64,
        perturb: bool = True,
    ) -> Backbone:
        """The backbone in eval mode and ``dtype``, its parameters perturbed (seeded by its name)."""
        shape = self.shapes_for(component_cls)[0] if data_shape is None else tuple(data_shape)
        model = component_cls(self.component_options(component_cls), data_shape=shape, num_classes=num_classes)
        model = model.to(dtype).eval()
        if perturb:
            gen = self.generator(f"perturb-{component_cls.name}")
            with torch.no_grad():
                for p in model.parameters():
                    if p.is_floating_point():
                        p.add_(self.perturb_std * torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype))
        return model

    def inputs(
        self,
        gen: torch.Generator,
        shape: tuple[int, ...],
        *,
        batch: int | None = None,
        dtype: torch.dtype = F64,
        num_classes: int | None = None,
    ) -> dict[str, Tensor | None]:
        """Random keyword arguments of ``forward``: ``s < u`` interior, ``t`` interior, Gaussian states."""
        b = self.batch if batch is None else batch
        s = 0.1 + 0.3 * torch.rand(b, generator=gen, dtype=F64)
        u = 0.6 + 0.3 * torch.rand(b, generator=gen, dtype=F64)
        t = 0.1 + 0.8 * torch.rand(b, generator=gen, dtype=F64)
        y = torch.randn(b, *shape, generator=gen, dtype=F64)
        x = torch.randn(b, *shape, generator=gen, dtype=F64)
        cond = None if num_classes is None else torch.randint(num_classes, (b,), generator=gen)
        values = {"y": y, "s": s, "u": u, "t": t, "x": x}
        return {**{k: v.to(dtype) for k, v in values.items()}, "cond": cond}

    @staticmethod
    def _call(model: Backbone, inputs: Mapping[str, Tensor | None], what: str) -> Tensor:
        try:
            return model(**inputs)
        except Exception as exc:
            raise AssertionError(f"{what}: forward raised {type(exc).__name__}: {exc}") from exc

    def _check_output(self, out: Any, like: Tensor, what: str) -> None:
        assert isinstance(out, Tensor), f"{what}: forward returned {type(out).__name__}, not a tensor"
        assert out.shape == like.shape, (
            f"{what}: output of shape {tuple(out.shape)} for y of shape {tuple(like.shape)} "
            "(the output must have the shape of y, batch dimension included)"
        )
        assert out.dtype == like.dtype, f"{what}: output dtype {out.dtype} for inputs of dtype {like.dtype}"
        assert bool(torch.isfinite(out).all()), f"{what}: the output is not finite"

    # ------------------------------------------------------------------ shapes and labels
    def test_output_shape_and_dtype(self, component_cls: type) -> None:
        """``[B, *D]`` in the inputs' dtype for every data shape, float32 and float64, batches of B and 1."""
        gen = self.generator("test_output_shape_and_dtype")
        for shape in self.shapes_for(component_cls):
            for dtype in (F32, F64):
                model = self.make_backbone(component_cls, data_shape=shape, dtype=dtype)
                for batch in (self.batch, 1):
                    inputs = self.inputs(gen, shape, batch=batch, dtype=dtype)
                    what = f"{component_cls.name} (data_shape {shape}, batch {batch}, {dtype})"
                    with torch.no_grad():
                        self._check_output(self._call(model, inputs, what), inputs["y"], what)

    def test_class_labels(self, component_cls: type) -> None:
        """With ``num_classes``: labels ``[B]`` and ``cond = None`` work, and the labels matter."""
        shape = self.shapes_for(component_cls)[0]
        k = self.num_classes
        model = self.make_backbone(component_cls, num_classes=k)
        assert model.num_classes == k, f"{component_cls.name}: num_classes={k} gave num_classes={model.num_classes!r}"
        inputs = self.inputs(self.generator("test_class_labels"), shape, num_classes=k)
        with torch.no_grad():
            what = f"{component_cls.name} with num_classes={k}"
            labelled = self._call(model, inputs, f"{what} and labels {inputs['cond'].tolist()}")
            self._check_output(labelled, inputs["y"], f"{what} and labels")
            unlabelled = self._call(model, {**inputs, "cond": None}, f"{what} and cond=None")
            self._check_output(unlabelled, inputs["y"], f"{what} and cond=None")
            per_label = [self._call(model, {**inputs, "cond": torch.full_like(inputs["cond"], c)}, what) for c in range(k)]
        same = [c for c in range(1, k) if torch.allclose(per_label[c], per_label[0], rtol=1e-9, atol=1e-12)]
        assert not same, f"{what}: labels {same} give the same output as label 0 (the labels are ignored)"

    def test_depends_on_every_input(self, component_cls: type) -> None:
        """Changing any one of ``y``, ``s``, ``u``, ``t``, ``x`` changes the output."""
        shape = self.shapes_for(component_cls)[0]
        model = self.make_backbone(component_cls)
        gen = self.generator("test_depends_on_every_input")
        inputs = self.inputs(gen, shape)
        other = self.inputs(gen, shape)
        with torch.no_grad():
            base = self._call(model, inputs, component_cls.name)
            ignored = [
                name
                for name in _INPUTS
                if torch.allclose(self._call(model, {**inputs, name: other[name]}, component_cls.name), base, rtol=1e-9, atol=1e-12)
            ]
        assert not ignored, (
            f"{component_cls.name}: the output v_{{s,u}}(y; t, x) does not change with {ignored} "
            "(MATH.md section 2: the network sees every input)"
        )

    def test_rows_are_independent(self, component_cls: type) -> None:
        """A batch gives the same rows as the rows one by one (no mixing across the batch)."""
        shape = self.shapes_for(component_cls)[0]
        model = self.make_backbone(component_cls, num_classes=self.num_classes)
        inputs = self.inputs(self.generator("test_rows_are_independent"), shape, num_classes=self.num_classes)
        with torch.no_grad():
            whole = self._call(model, inputs, component_cls.name)
            rows = torch.cat([self._call(model, {k: v[i : i + 1] for k, v in inputs.items()}, component_cls.name) for i in range(self.batch)])
        assert_close(
            whole, rows, rtol=1e-9, atol=1e-12,
            what=f"{component_cls.name}: the output of a row depends on the other rows of the batch",
        )

    def test_eval_mode_is_deterministic(self, component_cls: type) -> None:
        """In eval mode two calls give identical outputs, whatever the global random state."""
        shape = self.shapes_for(component_cls)[0]
        for dtype in (F32, F64):
            model = self.make_backbone(component_cls, dtype=dtype)
            inputs = self.inputs(self.generator("test_eval_mode_is_deterministic"), shape, dtype=dtype)
            with torch.no_grad():
                torch.manual_seed(1)
                first = self._call(model, inputs, component_cls.name)
                torch.manual_seed(2)
                second = self._call(model, inputs, component_cls.name)
            assert torch.equal(first, second), f"{component_cls.name}: two calls in eval mode ({dtype}) differ"

    # ------------------------------------------------------------------ forward-mode derivatives
    def _tangent_cases(self, inputs: Mapping[str, Tensor | None], gen: torch.Generator) -> dict[str, dict[str, Tensor]]:
        y = inputs["y"]
        assert y is not None
        ones = torch.ones_like(inputs["s"])
        drift = torch.randn(y.shape, generator=gen, dtype=F64).to(y.dtype)
        return {
            "Eulerian (ds = 1, dy = b)": {"s": ones, "y": drift},
            "Lagrangian (du = 1)": {"u": ones},
            "context (dt = 1, dx)": {"t": ones, "x": torch.randn(y.shape, generator=gen, dtype=F64).to(y.dtype)},
        }

    def _jvp(self, model: Backbone, inputs: Mapping[str, Tensor | None], tangents: Mapping[str, Tensor], forward_ad: bool) -> Tensor:
        names = tuple(tangents)

        def fn(*primals: Tensor) -> Tensor:
            return model(**{**inputs, **dict(zip(names, primals))})

        return jvp(fn, [inputs[n] for n in names], [tangents[n] for n in names], forward_ad=forward_ad)[1]

    @applies_to(_supports_jvp, "a backbone that supports forward-mode JVPs (supports_jvp = True)")
    def test_jvp_matches_finite_differences(self, component_cls: type) -> None:
        """``torch.func.jvp`` and ``forward_ad`` work and match central finite differences (float64)."""
        shape = self.shapes_for(component_cls)[0]
        gen = self.generator("test_jvp_matches_finite_differences")
        model = self.make_backbone(component_cls, num_classes=self.num_classes)
        inputs = self.inputs(gen, shape, num_classes=self.num_classes)
        h = self.fd_step
        for case, tangents in self._tangent_cases(inputs, gen).items():
            with torch.no_grad():
                plus = model(**{**inputs, **{n: inputs[n] + h * d for n, d in tangents.items()}})
                minus = model(**{**inputs, **{n: inputs[n] - h * d for n, d in tangents.items()}})
            fd = (plus - minus) / (2 * h)
            scale = fd.abs().max().item()
            for forward_ad in (False, True):
                api = "torch.autograd.forward_ad" if forward_ad else "torch.func.jvp"
                derivative = self._jvp_or_explain(component_cls, model, inputs, tangents, forward_ad, api, case)
                assert_close(
                    derivative, fd, rtol=1e-5, atol=1e-6 * max(scale, 1.0),
                    what=f"{component_cls.name}: the {case} JVP by {api} differs from central finite differences",
                )

    @applies_to(_supports_jvp, "a backbone that supports forward-mode JVPs (supports_jvp = True)")
    def test_jvp_in_float32(self, component_cls: type) -> None:
        """The JVPs also run in float32 (the training dtype) and agree with float64."""
        shape = self.shapes_for(component_cls)[0]
        gen = self.generator("test_jvp_in_float32")
        model64 = self.make_backbone(component_cls)
        model32 = copy.deepcopy(model64).to(F32)
        inputs = self.inputs(gen, shape)
        inputs32 = {k: None if v is None else v.float() for k, v in inputs.items()}
        for case, tangents in self._tangent_cases(inputs, gen).items():
            exact = self._jvp_or_explain(component_cls, model64, inputs, tangents, False, "torch.func.jvp", case)
            tangents32 = {k: v.float() for k, v in tangents.items()}
            derivative = self._jvp_or_explain(component_cls, model32, inputs32, tangents32, False, "torch.func.jvp", case)
            assert derivative.dtype == F32, f"{component_cls.name}: the float32 {case} JVP is {derivative.dtype}"
            scale = max(exact.abs().max().item(), 1.0)
            assert_close(
                derivative.double(), exact, rtol=1e-3, atol=1e-4 * scale,
                what=f"{component_cls.name}: the float32 {case} JVP differs from the float64 one",
            )

    def _jvp_or_explain(
        self,
        component_cls: type,
        model: Backbone,
        inputs: Mapping[str, Tensor | None],
        tangents: Mapping[str, Tensor],
        forward_ad: bool,
        api: str,
        case: str,
    ) -> Tensor:
        try:
            return self._jvp(model, inputs, tangents, forward_ad)
        except Exception as exc:
            raise AssertionError(
                f"{component_cls.name} declares supports_jvp = True but the {case} JVP by {api} raised "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} -- fused attention kernels "
                "(scaled_dot_product_attention, flash attention) and custom autograd Functions without a jvp have "
                "no forward-mode derivative: use a plain softmax attention, or set supports_jvp = False"
            ) from exc

    # ------------------------------------------------------------------ training and checkpoints
    def test_gradients_reach_every_parameter(self, component_cls: type) -> None:
        """A backward pass gives every parameter a finite, non-zero gradient (labels in use)."""
        shape = self.shapes_for(component_cls)[0]
        gen = self.generator("test_gradients_reach_every_parameter")
        model = self.make_backbone(component_cls, num_classes=self.num_classes).train()
        inputs = self.inputs(gen, shape, num_classes=self.num_classes)
        out = self._call(model, inputs, component_cls.name)
        weights = torch.randn(out.shape, generator=gen, dtype=F64)
        (out * weights).sum().backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert params, f"{component_cls.name} has no trainable parameters"
        missing = [n for n, p in params if p.grad is None]
        assert not missing, (
            f"{component_cls.name}: parameters {missing} receive no gradient (unused in forward: DDP fails "
            "without find_unused_parameters, and they never train)"
        )
        bad = [n for n, p in params if not bool(torch.isfinite(p.grad).all())]
        assert not bad, f"{component_cls.name}: parameters {bad} have non-finite gradients"
        zero = [n for n, p in params if not bool((p.grad != 0).any())]
        assert not zero, f"{component_cls.name}: parameters {zero} get an all-zero gradient (detached from the output?)"

    def test_rebuilds_from_options_and_state_dict(self, component_cls: type) -> None:
        """A new instance with the same options loads the ``state_dict`` (strict) and gives the same outputs."""
        shape = self.shapes_for(component_cls)[0]
        model = self.make_backbone(component_cls, num_classes=self.num_classes)
        fresh = self.make_backbone(component_cls, num_classes=self.num_classes, perturb=False)
        try:
            fresh.load_state_dict(model.state_dict())
        except RuntimeError as exc:
            raise AssertionError(f"{component_cls.name}: a new instance cannot load the state_dict: {exc}") from exc
        inputs = self.inputs(self.generator("test_rebuilds_from_options_and_state_dict"), shape, num_classes=self.num_classes)
        with torch.no_grad():
            assert_close(
                fresh(**inputs), model(**inputs), rtol=0, atol=0,
                what=f"{component_cls.name}: a new instance with the loaded state_dict gives other outputs "
                "(state kept outside parameters and buffers is lost by checkpoints)",
            )
