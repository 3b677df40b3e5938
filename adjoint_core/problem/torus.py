r"""Torus maths shared by every periodic state space (periodic boxes, torsion angles).

A coordinate with period ``L`` lives on the circle ``R / LZ``. Everything periodic in
adjoint-core (:class:`~adjoint_core.problem.spaces.PeriodicSpace`, a later torsional space with
``L = 2π``, the periodic Lennard-Jones fluid, the MCMC sampler) goes through the functions of
this module, so the conventions below are fixed once.

**Representative interval.** States are stored in the centred interval ``[-L/2, L/2)``
(:func:`wrap`), like torsion angles in ``[-π, π)``; the source of the base process, the origin,
is the centre of the box. Up to floating-point rounding (``wrap`` may return ``L/2`` itself for
inputs a few ulps below it), every function here is ``L``-periodic in its arguments anyway, so
the representative does not matter for densities, energies or models.

**Minimum image.** The displacement between two points is the shortest representative
(:func:`minimum_image`): ``d − L·round(d/L) ∈ [-L/2, L/2]``.

**Wrapped normal.** The base process ``dX = g(t) dW`` run on the real line and wrapped has the
marginal ``WN(0, h(t)²)``; per coordinate, with ``2K + 1`` images,

.. math::

    \log p(x) = \log \sum_{k=-K}^{K} \mathcal N(x + kL;\, 0, \sigma^2), \qquad
    \partial_x \log p(x) = -\sum_{k=-K}^{K} w_k(x)\, \frac{x + kL}{\sigma^2},
    \quad w_k(x) = \frac{\mathcal N(x + kL; 0, \sigma^2)}{\sum_j \mathcal N(x + jL; 0, \sigma^2)}

(:func:`wrapped_normal_log_prob`, :func:`wrapped_normal_score`). ``x`` is first reduced to
``[-L/2, L/2)``, so the omitted images are at distance ``≥ (K + 1/2) L`` and the relative
truncation error is below ``exp(-((K + 1/2)L)² / (2σ²))``. :func:`default_n_images` picks
``K = ceil(6σ/L) + 1``, which makes it ``< exp(-18)``.

**Bridge.** The base bridge ``X_t | X_0 = 0, X_1 = x_1`` on the torus is the ambient Brownian
bridge to a lift of ``x_1``, wrapped: the lift ``x_1 + kL`` is drawn with probability
``w_k(x_1)`` (the posterior of the image under the ambient terminal law ``N(0, h(1)²)``,
:func:`sample_image`), then ``x_t = wrap(λ(t)(x_1 + kL) + σ_bridge(t) ε)``
(:func:`wrapped_bridge_sample`). This is the torsional construction of AS-mol (the Adjoint
Sampling paper's code, github.com/facebookresearch/adjoint_sampling; wrapped normals as in
torsional diffusion, Jing et al., NeurIPS 2022) for any period.

**Features.** Networks see a periodic coordinate through ``sin(2πnx/L), cos(2πnx/L)``
(:func:`periodic_features`), which is smooth and exactly periodic.

Shapes: ``box`` is anything that broadcasts against the coordinates, normally a tensor of
shape ``(event_shape[-1],)`` (one period per spatial axis, or per coordinate of a flat state) or
a float.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "as_box",
    "wrap",
    "minimum_image",
    "default_n_images",
    "image_offsets",
    "wrapped_normal_log_prob",
    "wrapped_normal_score",
    "sample_image",
    "wrapped_bridge_sample",
    "periodic_features",
]


def as_box(box: float | torch.Tensor | list | tuple, like: torch.Tensor) -> torch.Tensor:
    """Box lengths as a tensor on ``like``'s device and dtype (no copy when already there).

    Args:
        box: Period(s): a float, a sequence or a tensor broadcastable to ``like``.
        like: Tensor whose device and dtype the result takes.

    Returns:
        The period(s) as a tensor.
    """
    return torch.as_tensor(box, device=like.device, dtype=like.dtype)


def wrap(x: torch.Tensor, box: float | torch.Tensor) -> torch.Tensor:
    """Reduce coordinates to the centred interval ``[-L/2, L/2)``.

    ``wrap(x) = x − L·floor(x/L + 1/2)``.

    Args:
        x: Coordinates, any shape.
        box: Periods ``L``, broadcastable to ``x``.

    Returns:
        Tensor like ``x``.
    """
    box = as_box(box, x)
    return x - box * torch.floor(x / box + 0.5)


def minimum_image(d: torch.Tensor, box: float | torch.Tensor) -> torch.Tensor:
    """Minimum-image representative of a displacement: ``d − L·round(d/L) ∈ [-L/2, L/2]``.

    Args:
        d: Displacements, e.g. ``x_i − x_j``; any shape.
        box: Periods ``L``, broadcastable to ``d``.

    Returns:
        Tensor like ``d``; its norm is the periodic distance when applied per axis.
    """
    box = as_box(box, d)
    return d - box * torch.round(d / box)


def default_n_images(sigma: float, box_min: float) -> int:
    """Images ``K`` per side so the wrapped-normal truncation error is ``< exp(-18)``.

    ``K = ceil(6σ / L_min) + 1``.

    Args:
        sigma: Standard deviation ``σ`` of the wrapped normal.
        box_min: Smallest period ``L``.

    Returns:
        ``K >= 1``.
    """
    if not (sigma >= 0 and box_min > 0):
        raise ValueError(f"need sigma >= 0 and box > 0, got sigma={sigma}, box={box_min}")
    return int(math.ceil(6.0 * sigma / box_min)) + 1


def image_offsets(n_images: int, like: torch.Tensor) -> torch.Tensor:
    """The integers ``k = -K, ..., K`` as a tensor of shape ``(2K + 1,)`` like ``like``."""
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    return torch.arange(-n_images, n_images + 1, device=like.device, dtype=like.dtype)


def _image_log_terms(
    x: torch.Tensor, sigma: float | torch.Tensor, box: float | torch.Tensor, n_images: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lifts ``x + kL`` (last axis ``k``) and their Gaussian log-densities, shape ``(*x, 2K+1)``."""
    box = as_box(box, x)
    sigma = as_box(sigma, x)
    xw = wrap(x, box)
    lifts = xw.unsqueeze(-1) + box.unsqueeze(-1) * image_offsets(n_images, x)
    s = sigma.unsqueeze(-1) if sigma.ndim else sigma
    logn = -0.5 * (lifts / s).square() - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return xw, lifts, logn


def wrapped_normal_log_prob(
    x: torch.Tensor, sigma: float | torch.Tensor, box: float | torch.Tensor, n_images: int
) -> torch.Tensor:
    r"""Element-wise log-density of the wrapped normal ``WN(0, σ²)`` with period ``L``.

    ``log Σ_{k=-K}^{K} N(wrap(x) + kL; 0, σ²)`` by ``logsumexp``; a density on ``[-L/2, L/2)``
    (it integrates to 1 over one period, up to the truncation error).

    Args:
        x: Coordinates, any shape.
        sigma: ``σ > 0`` (float or tensor broadcastable to ``x``).
        box: Periods ``L``, broadcastable to ``x``.
        n_images: ``K``, images on each side.

    Returns:
        Tensor like ``x`` (sum over coordinates for the joint density of independent axes).
    """
    _, _, logn = _image_log_terms(x, sigma, box, n_images)
    return torch.logsumexp(logn, dim=-1)


def wrapped_normal_score(
    x: torch.Tensor, sigma: float | torch.Tensor, box: float | torch.Tensor, n_images: int
) -> torch.Tensor:
    r"""Element-wise ``∂_x log WN(x; 0, σ²)`` = ``-Σ_k w_k(x) (x + kL)/σ²`` (exact gradient).

    Args:
        x: Coordinates, any shape.
        sigma: ``σ > 0``.
        box: Periods ``L``, broadcastable to ``x``.
        n_images: ``K``, images on each side.

    Returns:
        Tensor like ``x``; equals the autograd gradient of :func:`wrapped_normal_log_prob`.
    """
    _, lifts, logn = _image_log_terms(x, sigma, box, n_images)
    w = torch.softmax(logn, dim=-1)
    sigma = as_box(sigma, x)
    return -(w * lifts).sum(-1) / sigma.square()


def sample_image(
    x: torch.Tensor, sigma: float | torch.Tensor, box: float | torch.Tensor, n_images: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a lift ``wrap(x) + kL`` of each coordinate with ``P(k) ∝ N(wrap(x) + kL; 0, σ²)``.

    This is the posterior of the ambient terminal value of ``N(0, σ²)`` given its wrapped value.

    Args:
        x: Coordinates, any shape.
        sigma: ``σ > 0`` of the ambient terminal law.
        box: Periods ``L``, broadcastable to ``x``.
        n_images: ``K``, images on each side.
        generator: Random generator (one uniform draw per coordinate).

    Returns:
        Ambient coordinates like ``x`` (``wrap`` of the result is ``wrap(x)``).
    """
    _, lifts, logn = _image_log_terms(x, sigma, box, n_images)
    cdf = torch.softmax(logn, dim=-1).cumsum(-1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    idx = (cdf < u.unsqueeze(-1)).sum(-1, keepdim=True).clamp_max(lifts.shape[-1] - 1)
    return lifts.gather(-1, idx).squeeze(-1)


def wrapped_bridge_sample(
    x1: torch.Tensor, lam: torch.Tensor, std: torch.Tensor, eps: torch.Tensor,
    sigma1: float, box: float | torch.Tensor, n_images: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Base bridge ``X_t | X_0 = 0, X_1 = x1`` on the torus: lift, ambient bridge, wrap.

    ``x_t = wrap(λ (x1 + kL) + σ_bridge ε)`` with ``k`` from :func:`sample_image` at
    ``σ = sigma1 = h(1)``.

    Args:
        x1: Terminal coordinates ``(batch, ...)``.
        lam: ``λ(t)``, broadcastable to ``x1`` (e.g. ``(batch, 1, ...)``).
        std: ``σ_bridge(t)``, broadcastable to ``x1``.
        eps: Standard normal noise like ``x1``.
        sigma1: ``h(1)``, the ambient terminal standard deviation.
        box: Periods ``L``, broadcastable to ``x1``.
        n_images: ``K``, images on each side for the lift.
        generator: Random generator for the image draw.

    Returns:
        ``x_t`` in ``[-L/2, L/2)``, like ``x1``.
    """
    lift = sample_image(x1, sigma1, box, n_images, generator)
    return wrap(lam * lift + std * eps, box)


def periodic_features(
    x: torch.Tensor, box: float | torch.Tensor, n_harmonics: int = 1
) -> torch.Tensor:
    r"""Smooth periodic embedding ``[sin(2πnx/L), cos(2πnx/L)]_{n=1..H}`` of each coordinate.

    Args:
        x: Coordinates ``(..., m)``.
        box: Periods, broadcastable to ``x``.
        n_harmonics: ``H >= 1``, number of harmonics.

    Returns:
        Features ``(..., 2·H·m)``: first the sines of all coordinates for ``n = 1``, then the
        cosines, then ``n = 2``, ... Invariant to ``x → x + kL``.
    """
    if n_harmonics < 1:
        raise ValueError(f"n_harmonics must be >= 1, got {n_harmonics}")
    ang = (2 * math.pi) * x / as_box(box, x)
    feats = []
    for n in range(1, n_harmonics + 1):
        feats += [torch.sin(n * ang), torch.cos(n * ang)]
    return torch.cat(feats, dim=-1)
