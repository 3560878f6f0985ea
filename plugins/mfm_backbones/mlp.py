"""A multilayer perceptron backbone for vector data."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from mfm_framework.interfaces import Backbone

__all__ = ["MLPBackbone", "MLPOptions", "FourierTimeEmbedding"]


class FourierTimeEmbedding(nn.Module):
    """Features of a time in [0, 1]: the time itself and ``sin/cos(pi 2^k t)``, ``k < frequencies``.

    The lowest frequency has period 2 (no aliasing between t = 0 and t = 1); the highest resolves
    time differences of about ``2^-frequencies``. Output ``[B, 1 + 2 * frequencies]``.
    """

    def __init__(self, frequencies: int) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(frequencies), persistent=False)
        self.dim = 1 + 2 * frequencies

    def forward(self, t: Tensor) -> Tensor:
        angles = t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


@attrs.frozen(kw_only=True)
class MLPOptions:
    """Options of :class:`MLPBackbone`.

    Attributes:
        width: hidden width.
        depth: number of hidden layers (>= 1).
        frequencies: Fourier frequencies per time input (the highest is ``pi 2^(frequencies - 1)``).
            High frequencies inflate ``d_s v``, which the Eulerian and Lagrangian targets contain;
            with an exact teacher, 3 gave far better one-step maps on the 2-D mixture than 6
            (``examples/gmm2d.toml``), while training on data pairs did better with 6.
        class_dim: size of the class-label embedding (used when the data has labels).
    """

    width: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    depth: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    frequencies: int = attrs.field(default=6, validator=attrs.validators.ge(0))
    class_dim: int = attrs.field(default=32, validator=attrs.validators.ge(1))


class MLPBackbone(Backbone):
    """MLP for ``v_{s,u}(y; t, x)`` on vectors: ``[y, x, emb(s), emb(u), emb(u - s), emb(t)[, emb(c)]]``.

    Inputs are flattened to ``[B, prod D]``; times ``s``, ``u``, ``t`` are ``[B]``; ``cond``
    (optional) holds labels in ``[0, num_classes)`` (index ``num_classes`` is reserved for "no
    label", for classifier-free guidance). SiLU activations; the output layer starts at zero so the
    initial map is the identity. Works with ``torch.func.jvp``. Cost: 1 NFE per call.
    """

    name = "mlp"
    Options = MLPOptions
    supports_jvp = True

    def __init__(self, options: MLPOptions | None = None, *, data_shape: tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__(options, data_shape=data_shape, num_classes=num_classes)
        opts = self.options
        self.dim = math.prod(self.data_shape)
        self.time_embedding = FourierTimeEmbedding(opts.frequencies)
        in_dim = 2 * self.dim + 4 * self.time_embedding.dim
        if num_classes is not None:
            self.class_embedding = nn.Embedding(num_classes + 1, opts.class_dim)
            in_dim += opts.class_dim
        else:
            self.class_embedding = None
        layers: list[nn.Module] = []
        for i in range(opts.depth):
            layers += [nn.Linear(in_dim if i == 0 else opts.width, opts.width), nn.SiLU()]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(opts.width, self.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, *, y: Tensor, s: Tensor, u: Tensor, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        batch = y.shape[0]
        emb = self.time_embedding
        parts = [y.reshape(batch, -1), x.reshape(batch, -1), emb(s), emb(u), emb(u - s), emb(t)]
        if self.class_embedding is not None:
            labels = cond if cond is not None else torch.full((batch,), self.num_classes, device=y.device, dtype=torch.long)
            parts.append(self.class_embedding(labels))
        return self.out(self.hidden(torch.cat(parts, dim=1))).reshape(y.shape)
