"""Diagonal targets: the GLASS teacher drift is the exact conditional drift."""

from __future__ import annotations

import pytest
import torch

from mfm_framework.errors import MfmUserError
from mfm_framework.kinds import kind_by_name
from mfm_framework.plugins import default_plugin_system

REG = default_plugin_system().registry


def comp(kind, name, **options):
    cls = REG.get(kind_by_name(kind), name).cls
    return cls(cls.Options(**options))


class _Model:
    def __init__(self, interpolant):
        self.interpolant = interpolant


@pytest.mark.parametrize("interp", ["linear", "trigonometric"])
def test_teacher_drift_equals_the_exact_conditional_drift(interp):
    """Monte Carlo: E[dabar eps + dbbar x_1 | y_s = y, x_t = x] from exact posterior draws of x_1 | x,
    importance-weighted by the likelihood N(y; bbar_s x_1, abar_s^2 I) of the inner state."""
    data = comp("data-source", "gmm", preset="paper-2d")
    outer, inner = comp("interpolant", interp), comp("interpolant", "linear")
    teacher = comp("diagonal-target", "teacher")
    teacher.prepare(model=_Model(outer), data=data, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    cases = [(0.3, 0.4), (0.6, 0.2), (0.5, 0.7), (0.0, 0.5)]
    t = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    s = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    x_1 = data.sample(len(cases), generator=gen).x_1.double()
    x = outer.interpolate(x_0=torch.randn(x_1.shape, generator=gen, dtype=torch.float64), x_1=x_1, t=t)
    y = inner.interpolate(x_0=torch.randn(x_1.shape, generator=gen, dtype=torch.float64), x_1=x_1, t=s)
    drift = teacher.drift(s=s, y=y, t=t, x=x, eps=torch.zeros_like(y), x_1=x_1, inner=inner)

    n = 400_000
    draws = data.posterior_sample(t=t, x=x, n=n, interpolant=outer, generator=gen).double()  # [B, n, 2]
    a, b = inner.alpha(s)[:, None, None], inner.beta(s)[:, None, None]
    logw = -((y[:, None, :] - b * draws) ** 2).sum(-1) / (2 * a[..., 0] ** 2)
    w = torch.softmax(logw, dim=1)[..., None]
    d_hat = (w * draws).sum(1)
    expected = inner.velocity_from_denoiser(t=s, x=y, denoiser=d_hat)
    ess = 1 / (w[..., 0] ** 2).sum(1)
    assert (ess > 1000).all(), ess  # the Monte Carlo estimate itself is trustworthy
    assert torch.allclose(drift, expected, atol=0.05), (drift, expected)


def test_data_target_is_the_conditional_velocity():
    inner = comp("interpolant", "trigonometric")
    eps, x_1 = torch.randn(4, 2), torch.randn(4, 2)
    s = torch.rand(4)
    drift = comp("diagonal-target", "data").drift(s=s, y=None, t=None, x=None, eps=eps, x_1=x_1, inner=inner)
    assert torch.allclose(drift, inner.dalpha(s)[:, None] * eps + inner.dbeta(s)[:, None] * x_1)


def test_teacher_from_data_needs_an_exact_data_source():
    class NotExact:
        name = "plain"

    teacher = comp("diagonal-target", "teacher")
    with pytest.raises(MfmUserError, match="needs a data source with an exact velocity"):
        teacher.prepare(model=_Model(comp("interpolant", "linear")), data=NotExact(), device=torch.device("cpu"))


def test_teacher_from_a_checkpoint_needs_its_path():
    cls = REG.get(kind_by_name("diagonal-target"), "teacher").cls
    with pytest.raises(ValueError, match="'checkpoint' must be"):
        cls.Options(source="checkpoint")


def test_teacher_checkpoint_missing_is_a_user_error(tmp_path):
    teacher = comp("diagonal-target", "teacher", source="checkpoint", checkpoint=str(tmp_path / "none.pt"))
    with pytest.raises(MfmUserError, match="does not exist"):
        teacher.prepare(model=_Model(comp("interpolant", "linear")), data=None, device=torch.device("cpu"))
