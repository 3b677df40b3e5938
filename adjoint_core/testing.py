r"""Checks for your own components: gradients, symmetries and the interface contracts.

A plugin author calls these from their own tests (pytest or any other runner); each one raises
:class:`AssertionError` with a message that names what broke, the worst element, its value and
the tolerance, and returns normally when the component is fine::

    from adjoint_core.testing import assert_energy_gradient, check_energy_contract

    def test_my_energy():
        energy, space = MyEnergy(), EuclideanSpace(13, 3, mean_free=True)
        check_energy_contract(energy, space)
        x = space.project(torch.randn(4, 13, 3, dtype=torch.float64))
        assert_energy_gradient(energy, x)       # ∇E against central finite differences

* :func:`assert_energy_gradient`: :meth:`~adjoint_core.Energy.grad` against central finite
  differences of :meth:`~adjoint_core.Energy.energy` in float64, coordinate by coordinate or
  along random directions (for expensive energies).
* :func:`assert_energy_invariant`: ``E(g·x) = E(x)`` (and optionally ``∇E(g·x) = g·∇E(x)``)
  for rotations, reflections, translations, permutations of particles and periodic images.
* :func:`assert_equivariant`: ``u(t, g·x) = g·u(t, x)`` for a control network on a state
  space (after e3nn's ``assert_equivariant``); the symmetries default to those of the space.
* :func:`check_energy_contract`, :func:`check_model_contract`, :func:`check_space_contract`:
  everything the training loop assumes of an :class:`~adjoint_core.Energy`, a
  :class:`~adjoint_core.Model` and a :class:`~adjoint_core.StateSpace` (shapes, dtypes,
  finite values, batch independence, evaluation counters, projections, the base bridge and
  its closed-form moments...).
* :func:`random_orthogonal`: a Haar-random rotation or reflection matrix for hand-written
  checks.

Errors of the *caller* (states of the wrong shape, a symmetry a space cannot have) raise
:class:`ValueError`; a component that breaks its contract raises :class:`AssertionError`.
Tolerances follow ``torch.testing.assert_close``: a value passes when
``|actual − expected| <= atol + rtol·|expected|``; unless given they are torch's defaults for
the dtype (float32: ``rtol = 1.3e-6, atol = 1e-5``; float64: ``rtol = atol = 1e-7``).

This module is not imported by ``import adjoint_core``; import it explicitly.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Iterator, Sequence

import torch

from adjoint_core.problem.energy import Energy
from adjoint_core.problem.models import Model
from adjoint_core.problem.schedules import NoiseSchedule
from adjoint_core.problem.spaces import EuclideanSpace, PeriodicSpace, StateSpace

__all__ = [
    "CLEAN_ERROR",
    "SYMMETRIES",
    "assert_energy_gradient",
    "assert_energy_invariant",
    "assert_equivariant",
    "check_energy_contract",
    "check_model_contract",
    "check_space_contract",
    "random_orthogonal",
    "run_cli",
]

#: Names of the transformations the symmetry checks understand: ``rotation`` (a random proper
#: rotation of every particle, ``det R = +1``), ``reflection`` (a random orthogonal matrix with
#: ``det R = −1``), ``translation`` (one random shift per sample, not wrapped), ``permutation``
#: (a random non-trivial reordering of the particles) and ``periodic`` (adding random integer
#: multiples of the box length to every coordinate). All but ``periodic`` need a particle layout
#: ``(n_particles, spatial_dim)``.
SYMMETRIES = ("rotation", "reflection", "translation", "permutation", "periodic")

_PARTICLE_SYMMETRIES = ("rotation", "reflection", "translation", "permutation")

#: The shape of a clean command-line error (the CLI's contract, ``docs/cli.md``): one line
#: ``error: <field or argument>: <rest>``.
CLEAN_ERROR = re.compile(r"error: [^:\s][^:]*: .+")


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run ``adjoint-core ARGV`` in-process (plugin commands included).

    Returns:
        ``(status, stdout, stderr)``; argparse's exits give their status (1 for a non-integer
        exit code).
    """
    from adjoint_core.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------- shared helpers
def random_orthogonal(dim: int, *, reflection: bool = False,
                      generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal matrix with ``det = +1`` (rotation) or ``−1`` (reflection).

    Args:
        dim: Spatial dimension ``d >= 1``.
        reflection: ``False``: a proper rotation; ``True``: an improper one (a rotation
            composed with a reflection).
        generator: Random generator (CPU).
        dtype: Floating dtype of the result.

    Returns:
        ``Q`` of shape ``(d, d)`` with ``Q Qᵀ = I``; rotate particle states ``x`` of shape
        ``(batch, n_particles, d)`` by ``x @ Q.T``.
    """
    if dim < 1:
        raise ValueError(f"random_orthogonal needs dim >= 1, got {dim}")
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # makes the distribution Haar
    if bool(torch.linalg.det(q) < 0) != reflection:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of ``torch.testing.assert_close`` for ``dtype``."""
    if dtype == torch.float64:
        return 1e-7, 1e-7
    if dtype in (torch.float16, torch.bfloat16):
        return 1e-3, 1e-5
    return 1.3e-6, 1e-5


def _tolerances(dtype: torch.dtype, rtol: float | None, atol: float | None
                ) -> tuple[float, float]:
    d_rtol, d_atol = _default_tolerances(dtype)
    return (d_rtol if rtol is None else float(rtol)), (d_atol if atol is None else float(atol))


def _sample_coordinate(idx: tuple[int, ...]) -> str:
    """``'sample 2, coordinate (1, 0)'`` for an index into a ``(batch, *event_shape)`` tensor."""
    if not idx:
        return "the value"
    head = f"sample {idx[0]}"
    if len(idx) == 1:
        return head
    rest = idx[1:]
    return f"{head}, coordinate {rest if len(rest) > 1 else rest[0]}"


def _compare(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float,
             what: str, where: Callable[[tuple[int, ...]], str] = _sample_coordinate,
             hint: str = "") -> float:
    """Assert ``|actual − expected| <= atol + rtol·|expected|`` element-wise.

    Returns:
        The largest absolute difference.

    Raises:
        AssertionError: A shape mismatch, or the worst offending element with its values.
    """
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: got shape {tuple(actual.shape)}, expected "
                             f"{tuple(expected.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    diff = (a - e).abs()
    allowed = atol + rtol * e.abs()
    ok = diff <= allowed  # NaN and inf differences fail
    if bool(ok.all()):
        return float(diff.max()) if diff.numel() else 0.0
    excess = torch.where(ok, torch.full_like(diff, -math.inf),
                         torch.nan_to_num(diff - allowed, nan=math.inf, posinf=math.inf))
    flat = int(excess.reshape(-1).argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
    n_bad = int((~ok).sum())
    raise AssertionError(
        f"{what}: {n_bad} of {a.numel()} values exceed the tolerance "
        f"|got − expected| <= atol + rtol·|expected| with atol={atol:.3g}, rtol={rtol:.3g}; "
        f"worst at {where(idx)}: got {float(a[idx]):.10g}, expected {float(e[idx]):.10g} "
        f"(|difference| {float(diff[idx]):.3g} > allowed {float(allowed[idx]):.3g}){hint}")


def _assert_finite(value: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(value.detach())
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {value.numel()} values are not "
                             f"finite; first at {_sample_coordinate(idx)}: "
                             f"{float(value.detach()[idx])}")


def _name(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 120 and "\n" not in text else type(obj).__name__


def _check_states(event_shape: Sequence[int], x: torch.Tensor, who: str) -> None:
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(f"{who} takes states of shape (batch, "
                         f"{', '.join(map(str, event_shape))}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who} takes floating-point states, got {x.dtype}")


def _box_tensor(box: float | Sequence[float] | torch.Tensor, event_shape: Sequence[int],
                like: torch.Tensor) -> torch.Tensor:
    """Box lengths broadcastable to ``(batch, *event_shape)``: one, one per last axis or all."""
    b = torch.as_tensor(box, dtype=like.dtype, device=like.device).reshape(-1)
    if b.numel() in (1, event_shape[-1]):
        return b
    if b.numel() == math.prod(event_shape):
        return b.reshape(tuple(event_shape))
    raise ValueError(f"box with {b.numel()} lengths does not fit states of event shape "
                     f"{tuple(event_shape)} (give one length, one per axis of the last "
                     f"dimension, or one per coordinate)")


def _random_permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``n >= 2`` items that is not the identity."""
    perm = torch.randperm(n, generator=generator)
    if bool((perm == torch.arange(n)).all()):
        perm = torch.roll(perm, 1)
    return perm


_Transform = tuple[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _transforms(symmetry: str, x: torch.Tensor, n_trials: int, generator: torch.Generator,
                box: torch.Tensor | None, translation_scale: float) -> Iterator[_Transform]:
    """``(label, g·x, v ↦ g·v)`` for ``n_trials`` random elements ``g`` of ``symmetry``.

    ``g·v`` is how a vector field attached to the particles transforms (rotated and permuted;
    unchanged by translations and periodic images).
    """
    for trial in range(n_trials):
        label = symmetry if n_trials == 1 else f"{symmetry} (trial {trial + 1} of {n_trials})"
        if symmetry in ("rotation", "reflection"):
            q = random_orthogonal(x.shape[-1], reflection=symmetry == "reflection",
                                  generator=generator, dtype=x.dtype).to(x.device)
            yield label, x @ q.T, lambda v, q=q: v @ q.T.to(v.dtype)
        elif symmetry == "permutation":
            perm = _random_permutation(x.shape[1], generator).to(x.device)
            yield f"{label} {perm.tolist()}", x[:, perm], lambda v, p=perm: v[:, p]
        elif symmetry == "translation":
            shift = translation_scale * torch.randn(
                (x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1]), generator=generator,
                dtype=x.dtype).to(x.device)
            yield label, x + shift, lambda v: v
        elif symmetry == "periodic":
            if box is None:
                raise ValueError("the symmetry 'periodic' needs the box lengths")
            k = torch.randint(-3, 4, x.shape, generator=generator).to(x.device, x.dtype)
            yield label, x + k * box, lambda v: v
        else:  # pragma: no cover - validated by the callers
            raise ValueError(symmetry)


def _validate_symmetries(symmetries: Sequence[str], particles: bool, has_box: bool,
                         who: str, n_trials: int) -> tuple[str, ...]:
    if n_trials < 1:
        raise ValueError(f"{who}: n_trials must be >= 1, got {n_trials}")
    if isinstance(symmetries, str):
        symmetries = (symmetries,)
    out = tuple(symmetries)
    if not out:
        raise ValueError(f"{who}: give at least one symmetry of {SYMMETRIES}")
    for s in out:
        if s not in SYMMETRIES:
            raise ValueError(f"{who}: unknown symmetry {s!r}; choose from {SYMMETRIES}")
        if s in _PARTICLE_SYMMETRIES and not particles:
            raise ValueError(f"{who}: the symmetry {s!r} acts on particles, but the states have "
                             f"no particle layout (event_shape (n_particles, spatial_dim))")
        if s == "periodic" and not has_box:
            raise ValueError(f"{who}: the symmetry 'periodic' needs the box lengths (pass box=, "
                             f"or use a PeriodicSpace)")
    return out


def _typical_states(space: StateSpace, batch: int, generator: torch.Generator,
                    dtype: torch.dtype) -> torch.Tensor:
    """States the sampler could visit: uniform in a periodic box, else ``project(N(0, I))``."""
    shape = (batch, *space.event_shape)
    if isinstance(space, PeriodicSpace):
        u = torch.rand(shape, generator=generator, dtype=dtype)
        return space.project((u - 0.5) * _box_tensor(space.box, space.event_shape, u))
    return space.project(torch.randn(shape, generator=generator, dtype=dtype))


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _call(model: Callable, t: torch.Tensor, x: torch.Tensor, context: dict | None
          ) -> torch.Tensor:
    return model(t, x) if context is None else model(t, x, context)


def _evaluate(energy: Energy, states: torch.Tensor, max_batch: int) -> torch.Tensor:
    """``energy.energy`` over ``states`` in chunks of at most ``max_batch``, detached."""
    out = []
    for chunk in states.split(max_batch):
        e = energy.energy(chunk)
        if tuple(e.shape) != (chunk.shape[0],):
            raise AssertionError(f"{_name(energy)}.energy on a batch of {chunk.shape[0]} states "
                                 f"returned shape {tuple(e.shape)}, expected "
                                 f"({chunk.shape[0]},)")
        out.append(e.detach().to(states.dtype))
    return torch.cat(out)


# ---------------------------------------------------------------------------- energies
def assert_energy_gradient(
    energy: Energy, x: torch.Tensor, *, eps: float = 1e-6, rtol: float = 1e-5,
    atol: float = 1e-6, directions: int | None = None, seed: int = 0, max_batch: int = 4096,
) -> torch.Tensor:
    r"""Assert that ``energy.grad`` matches central finite differences of ``energy.energy``.

    Both sides are computed in float64 (``x`` is converted): the finite difference of
    coordinate ``k`` is ``(E(x + ε e_k) − E(x − ε e_k)) / 2ε`` and is compared with
    ``∇E(x)_k``. With ``directions = m`` only ``m`` random Gaussian directions ``v`` are probed,
    ``(E(x + εv) − E(x − εv)) / 2ε`` against ``⟨∇E(x), v⟩`` — ``2m`` batched energy calls
    instead of ``2·prod(event_shape)``, for energies that are expensive per evaluation.

    The energy should compute in float64 when given float64 states (a network that evaluates in
    float32 internally needs ``ε ~ 1e-2`` and loose tolerances). The finite-difference
    evaluations are counted in :attr:`~adjoint_core.Energy.n_evaluations` like any other.

    Args:
        energy: The energy under test.
        x: States ``(batch, *event_shape)`` away from singularities of ``E``.
        eps: Finite-difference step ``ε`` (the truncation error is ``O(ε²)``, the round-off
            ``O(1e-16·|E|/ε)``).
        rtol: Relative tolerance, relative to the finite difference.
        atol: Absolute tolerance, in the energy's units per unit of ``x``.
        directions: ``None``: every coordinate; an integer ``m >= 1``: ``m`` random directions.
        seed: Seed of the random directions.
        max_batch: Largest batch passed to one ``energy.energy`` call.

    Returns:
        The finite-difference estimate in float64: ``(batch, *event_shape)``, or
        ``(batch, m)`` directional derivatives with ``directions = m``.

    Raises:
        AssertionError: The gradient has the wrong shape or differs from the finite
            differences beyond ``atol + rtol·|fd|`` (the message names the worst sample and
            coordinate), or ``E`` is not finite at the probed states.
        ValueError: ``x`` does not have the energy's event shape, or bad ``eps``/``directions``.
    """
    name = _name(energy)
    _check_states(energy.event_shape, x, f"assert_energy_gradient({name})")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if directions is not None and directions < 1:
        raise ValueError(f"directions must be None or >= 1, got {directions}")
    ev = tuple(energy.event_shape)
    x64 = x.detach().to(torch.float64)
    batch = x64.shape[0]
    grad = energy.grad(x64)
    if tuple(grad.shape) != tuple(x64.shape):
        raise AssertionError(f"{name}.grad returned shape {tuple(grad.shape)} for states of "
                             f"shape {tuple(x64.shape)}")
    grad = grad.detach().to(torch.float64)
    _assert_finite(grad, f"{name}.grad(x)")
    if directions is None:
        n = math.prod(ev)
        steps = (eps * torch.eye(n, dtype=torch.float64, device=x64.device)).reshape(n, *ev)
        plus = (x64.unsqueeze(1) + steps).reshape(-1, *ev)
        minus = (x64.unsqueeze(1) - steps).reshape(-1, *ev)
        fd = ((_evaluate(energy, plus, max_batch) - _evaluate(energy, minus, max_batch))
              / (2 * eps)).reshape(x64.shape)
        analytic = grad
        where = _sample_coordinate
        probe = "x ± ε·e_k"
    else:
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn((directions, *x64.shape), generator=gen,
                        dtype=torch.float64).to(x64.device)
        plus = (x64 + eps * v).reshape(-1, *ev)
        minus = (x64 - eps * v).reshape(-1, *ev)
        fd = ((_evaluate(energy, plus, max_batch) - _evaluate(energy, minus, max_batch))
              / (2 * eps)).reshape(directions, batch).T
        analytic = (grad.unsqueeze(0) * v).reshape(directions, batch, -1).sum(-1).T

        def where(idx: tuple[int, ...]) -> str:
            return f"sample {idx[0]}, direction {idx[1]}"
        probe = "x ± ε·v"
    _assert_finite(fd, f"{name}: finite differences at {probe} (ε={eps:g}; the energy is not "
                       f"finite near x)")
    kind = "coordinate-wise" if directions is None else f"along {directions} random direction(s)"
    _compare(analytic, fd, rtol=rtol, atol=atol, where=where,
             what=f"{name}.grad does not match central finite differences {kind} "
                  f"(ε={eps:g}, float64)")
    return fd


def assert_energy_invariant(
    energy: Energy, x: torch.Tensor, *,
    symmetries: Sequence[str] = ("rotation", "translation", "permutation"),
    box: float | Sequence[float] | torch.Tensor | None = None, gradient: bool = False,
    n_trials: int = 1, rtol: float | None = None, atol: float | None = None,
    grad_rtol: float | None = None, grad_atol: float | None = None,
    translation_scale: float = 5.0, seed: int = 0,
) -> dict[str, float]:
    r"""Assert ``E(g·x) = E(x)`` for random elements ``g`` of the given symmetries.

    Each symmetry of :data:`SYMMETRIES` is checked on its own, ``n_trials`` times, so that a
    failure names the transformation that broke it. With ``gradient=True`` the gradient must
    transform as a vector field: ``∇E(g·x) = g·∇E(x)`` (rotated and permuted with the
    particles, unchanged by translations and periodic images).

    Args:
        energy: The energy under test.
        x: States ``(batch, *event_shape)`` (evaluated in their own dtype).
        symmetries: Names from :data:`SYMMETRIES`; all but ``periodic`` need
            ``event_shape = (n_particles, spatial_dim)``.
        box: Period(s) for ``periodic``: one length, one per spatial axis or one per
            coordinate; default ``energy.box`` when the energy has one.
        gradient: Also check the gradient (one :meth:`~adjoint_core.Energy.energy_and_grad`
            call per transformation instead of one :meth:`~adjoint_core.Energy.energy` call).
        n_trials: Random transformations per symmetry.
        rtol: Relative tolerance on ``E`` (default: by dtype).
        atol: Absolute tolerance on ``E`` (default: by dtype).
        grad_rtol: Relative tolerance on ``∇E`` (default ``rtol``).
        grad_atol: Absolute tolerance on ``∇E`` (default ``atol``).
        translation_scale: Standard deviation of the random translations.
        seed: Seed of the random transformations.

    Returns:
        The largest absolute deviation of ``E`` seen for each symmetry (and of ``∇E`` under the
        key ``"<symmetry> gradient"`` with ``gradient=True``).

    Raises:
        AssertionError: ``E`` (or ``∇E``) changes beyond the tolerance; the message names the
            symmetry, the transformation and the worst sample.
        ValueError: Wrong shape of ``x``, an unknown symmetry, or one the layout cannot have.
    """
    name = _name(energy)
    who = f"assert_energy_invariant({name})"
    _check_states(energy.event_shape, x, who)
    if box is None:
        box = getattr(energy, "box", None)
    syms = _validate_symmetries(symmetries, len(energy.event_shape) == 2, box is not None, who,
                                n_trials)
    rtol, atol = _tolerances(x.dtype, rtol, atol)
    grad_rtol = rtol if grad_rtol is None else grad_rtol
    grad_atol = atol if grad_atol is None else grad_atol
    box_t = None if box is None else _box_tensor(box, energy.event_shape, x)
    gen = torch.Generator().manual_seed(seed)

    def evaluate(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if gradient:
            e, g = energy.energy_and_grad(states)
            return e.detach(), g.detach()
        return energy.energy(states).detach(), None

    e0, g0 = evaluate(x.detach())
    worst: dict[str, float] = {}
    for sym in syms:
        for label, gx, act in _transforms(sym, x.detach(), n_trials, gen, box_t,
                                          translation_scale):
            e1, g1 = evaluate(gx)
            err = _compare(e1, e0, rtol=rtol, atol=atol,
                           what=f"{name}.energy is not invariant under {label}: E(g·x) vs E(x)")
            worst[sym] = max(worst.get(sym, 0.0), err)
            if gradient:
                err = _compare(g1, act(g0), rtol=grad_rtol, atol=grad_atol,
                               what=f"{name}.grad does not transform as a vector under {label}: "
                                    f"∇E(g·x) vs g·∇E(x)")
                worst[f"{sym} gradient"] = max(worst.get(f"{sym} gradient", 0.0), err)
    return worst


# ---------------------------------------------------------------------------- models
def _default_symmetries(space: StateSpace) -> tuple[str, ...]:
    periodic = isinstance(space, PeriodicSpace)
    if space.particle_shape is None:
        if periodic:
            return ("periodic",)
        raise ValueError(
            f"{space} has no particle layout (particle_shape is None) and is not periodic: "
            f"there is no rotation, permutation or periodic image to check a model against; "
            f"use check_model_contract for a flat state space")
    if periodic:
        return ("translation", "permutation", "periodic")
    out = ("rotation", "permutation")
    return out + ("translation",) if getattr(space, "mean_free", False) else out


def assert_equivariant(
    model: Callable[..., torch.Tensor], space: StateSpace, t: torch.Tensor | None = None,
    x: torch.Tensor | None = None, context: dict | None = None, *,
    symmetries: Sequence[str] | None = None, n_trials: int = 1, rtol: float | None = None,
    atol: float | None = None, translation_scale: float = 5.0, batch: int = 6, seed: int = 0,
) -> dict[str, float]:
    r"""Assert that a control network commutes with the symmetries of the state space.

    For each transformation ``g`` the check is ``u(t, g·x) = g·u(t, x)``:

    * ``rotation`` / ``reflection``: ``u(t, x Rᵀ) = u(t, x) Rᵀ`` with a random orthogonal ``R``
      of determinant ``+1`` / ``−1``;
    * ``permutation``: ``u(t, x[:, π]) = u(t, x)[:, π]``;
    * ``translation``: ``u(t, x + s) = u(t, x)`` for a random shift ``s`` of all particles
      (the shifted states are not projected back: on a mean-free space this asks for a
      translation-invariant network, as an EGNN is; on a periodic box they are not wrapped,
      so this also exercises periodicity);
    * ``periodic``: ``u(t, x + kL) = u(t, x)`` for random integers ``k`` per coordinate (the
      network is a function on the torus).

    The default symmetries follow the space: particles in ``R^d``: rotation and permutation,
    plus translation when the space is mean-free; particles in a periodic box: translation,
    permutation and periodic; a flat periodic space (e.g. a
    :class:`~adjoint_core.TorsionalSpace`): periodic. Reflections are opt-in (a network that
    sees chirality, like a molecule's, need not be reflection-equivariant).

    The ``context`` is passed unchanged to every call. A context with per-particle entries
    (node types) does not follow a permutation of ``x``: leave ``permutation`` out of
    ``symmetries`` for such a model and permute the context by hand.

    Args:
        model: A :class:`~adjoint_core.Model` (any callable ``(t, x[, context]) -> like x``).
        space: The state space the model acts on.
        t: Times ``(batch,)``; default uniform in ``[0, 1]``.
        x: States ``(batch, *event_shape)``; default random states of the space (uniform in a
            periodic box, else ``space.project(N(0, I))``) in the model's dtype.
        context: Optional conditioning passed as the third argument.
        symmetries: Names from :data:`SYMMETRIES`; default from the space (see above).
        n_trials: Random transformations per symmetry.
        rtol: Relative tolerance (default: by dtype).
        atol: Absolute tolerance (default: by dtype).
        translation_scale: Standard deviation of the random translations.
        batch: Batch size of the default ``t`` and ``x``.
        seed: Seed of the default inputs and of the transformations.

    Returns:
        The largest absolute deviation seen for each symmetry.

    Raises:
        AssertionError: The model is not equivariant (the message names the symmetry, the
            transformation and the worst sample/coordinate), its output has the wrong shape,
            or it is exactly zero (the check would pass for any network: perturb a
            zero-initialised last layer first).
        ValueError: A flat, non-periodic space without explicit symmetries, an unknown
            symmetry, or one the space cannot have.
    """
    name = type(model).__name__
    who = f"assert_equivariant({name}, {space})"
    syms = _validate_symmetries(
        _default_symmetries(space) if symmetries is None else symmetries,
        space.particle_shape is not None, isinstance(space, PeriodicSpace), who, n_trials)
    return _equivariance(model, space, t, x, context, syms, n_trials=n_trials, rtol=rtol,
                         atol=atol, translation_scale=translation_scale, batch=batch, seed=seed,
                         allow_zero=False)


def _equivariance(model: Callable[..., torch.Tensor], space: StateSpace,
                  t: torch.Tensor | None, x: torch.Tensor | None, context: dict | None,
                  syms: tuple[str, ...], *, n_trials: int, rtol: float | None,
                  atol: float | None, translation_scale: float, batch: int, seed: int,
                  allow_zero: bool) -> dict[str, float]:
    """The work of :func:`assert_equivariant` on validated symmetries."""
    name = type(model).__name__
    who = f"assert_equivariant({name}, {space})"
    gen = torch.Generator().manual_seed(seed)
    dtype = x.dtype if x is not None else _model_dtype(model) if isinstance(
        model, torch.nn.Module) else torch.float32
    device = x.device if x is not None else _model_device(model) if isinstance(
        model, torch.nn.Module) else torch.device("cpu")
    if x is None:
        x = _typical_states(space, batch, gen, dtype).to(device)
    _check_states(space.event_shape, x, who)
    if t is None:
        t = torch.rand(x.shape[0], generator=gen, dtype=dtype).to(device)
    rtol, atol = _tolerances(x.dtype, rtol, atol)
    box = _box_tensor(space.box, space.event_shape, x) if isinstance(space, PeriodicSpace) \
        else None
    x = x.detach()
    out = _call(model, t, x, context).detach()
    if tuple(out.shape) != tuple(x.shape):
        raise AssertionError(f"{name} returned shape {tuple(out.shape)} for states of shape "
                             f"{tuple(x.shape)}")
    if not allow_zero and bool((out == 0).all()):
        raise AssertionError(
            f"{name} returned exactly zero on every input, so every equivariance check would "
            f"pass trivially; give the network non-zero output weights (e.g. re-initialise a "
            f"zero-initialised last layer with small random values) before checking it")
    worst: dict[str, float] = {}
    for sym in syms:
        hint = ("; the shifted states are not wrapped, so a network that is not periodic in "
                "the box fails here too (check symmetries=('periodic',) alone)"
                if sym == "translation" and box is not None else "")
        for label, gx, act in _transforms(sym, x, n_trials, gen, box, translation_scale):
            got = _call(model, t, gx, context).detach()
            err = _compare(got, act(out), rtol=rtol, atol=atol, hint=hint,
                           what=f"{name} is not equivariant under {label}: u(t, g·x) vs "
                                f"g·u(t, x)")
            worst[sym] = max(worst.get(sym, 0.0), err)
    return worst


# ---------------------------------------------------------------------------- contracts
def check_energy_contract(
    energy: Energy, space: StateSpace | None = None, x: torch.Tensor | None = None, *,
    batch: int = 4, rtol: float | None = None, atol: float | None = None, seed: int = 0,
) -> None:
    r"""Assert everything the training loop assumes of an :class:`~adjoint_core.Energy`.

    Checked, on ``x`` (default: random states of ``space``):

    * it is an :class:`~adjoint_core.Energy` whose ``event_shape`` is a tuple of ints (equal
      to the space's) and whose ``temperature`` is a finite float ``> 0``;
    * :meth:`~adjoint_core.Energy.energy` returns shape ``(batch,)`` in the dtype of ``x``,
      :meth:`~adjoint_core.Energy.energy_and_grad` returns ``(batch,)`` and the shape of
      ``x`` in that dtype, detached, with the same energies, and
      :meth:`~adjoint_core.Energy.grad` the same gradient; all finite;
    * each of the three calls adds ``batch`` to :attr:`~adjoint_core.Energy.n_evaluations`;
    * no call modifies ``x`` in place;
    * batch independence: row ``i`` of a batch equals the evaluation of state ``i`` alone, and
      reversing the batch reverses the results (energy and gradient);
    * :meth:`~adjoint_core.Energy.energy` is differentiable and autograd through it gives
      :meth:`~adjoint_core.Energy.grad` (wrap external codes with
      :func:`~adjoint_core.problem.energy.external_energy`);
    * states of the wrong shape raise :class:`ValueError`.

    The gradient's *values* are checked by :func:`assert_energy_gradient`.

    Args:
        energy: The energy under test.
        space: The state space it is meant for (checks ``event_shape``; default states).
        x: States ``(batch, *event_shape)`` with finite energy; default: ``batch`` random
            states of ``space`` in float32 (uniform in a periodic box, else
            ``space.project(N(0, I))``), or standard normal ones without a space. Give typical
            states for energies that diverge on random ones (overlapping atoms).
        batch: Number of default states (``>= 2``).
        rtol: Relative tolerance of the consistency checks (default: by dtype).
        atol: Absolute tolerance of the consistency checks (default: by dtype).
        seed: Seed of the default states.

    Raises:
        AssertionError: A broken contract, with what was expected and what came back.
        ValueError: ``x`` of the wrong shape or a batch of fewer than two states.
    """
    if not isinstance(energy, Energy):
        raise AssertionError(f"{type(energy).__name__} is not an adjoint_core.Energy subclass")
    name = _name(energy)
    pre = f"Energy contract of {name}"
    ev = energy.event_shape
    if not (isinstance(ev, tuple) and ev and all(isinstance(s, int) and s >= 1 for s in ev)):
        raise AssertionError(f"{pre}: event_shape must be a non-empty tuple of ints >= 1, got "
                             f"{ev!r}")
    if space is not None and tuple(space.event_shape) != ev:
        raise AssertionError(f"{pre}: event_shape {ev} differs from the space's "
                             f"{tuple(space.event_shape)} ({space})")
    tau = energy.temperature
    if not (isinstance(tau, float) and math.isfinite(tau) and tau > 0):
        raise AssertionError(f"{pre}: temperature must be a finite float > 0, got {tau!r}")
    if x is None:
        gen = torch.Generator().manual_seed(seed)
        x = _typical_states(space, batch, gen, torch.float32) if space is not None else \
            torch.randn((batch, *ev), generator=gen)
    _check_states(ev, x, f"check_energy_contract({name})")
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"check_energy_contract needs a batch of at least 2 states, got {b}")
    rtol, atol = _tolerances(x.dtype, rtol, atol)
    x = x.detach()
    before = x.clone()

    def counted(call: str, fn: Callable[[], object]) -> object:
        n0 = energy.n_evaluations
        out = fn()
        if not torch.equal(x, before):
            raise AssertionError(f"{pre}: {call} modified its input states in place")
        added = energy.n_evaluations - n0
        if added != b:
            raise AssertionError(f"{pre}: {call} on a batch of {b} states must add {b} to "
                                 f"n_evaluations, it added {added}")
        return out

    e = counted("energy(x)", lambda: energy.energy(x))
    if tuple(e.shape) != (b,):
        raise AssertionError(f"{pre}: energy(x) returned shape {tuple(e.shape)} for {b} states, "
                             f"expected ({b},)")
    if e.dtype != x.dtype:
        raise AssertionError(f"{pre}: energy(x) returned {e.dtype} for {x.dtype} states")
    _assert_finite(e, f"{pre}: energy(x)")
    e2, g = counted("energy_and_grad(x)", lambda: energy.energy_and_grad(x))
    if tuple(e2.shape) != (b,) or tuple(g.shape) != tuple(x.shape):
        raise AssertionError(f"{pre}: energy_and_grad(x) returned shapes {tuple(e2.shape)} and "
                             f"{tuple(g.shape)}, expected ({b},) and {tuple(x.shape)}")
    if e2.dtype != x.dtype or g.dtype != x.dtype:
        raise AssertionError(f"{pre}: energy_and_grad(x) returned {e2.dtype} and {g.dtype} for "
                             f"{x.dtype} states")
    if e2.requires_grad or g.requires_grad:
        raise AssertionError(f"{pre}: energy_and_grad(x) must return detached tensors (the "
                             f"sampler stores them), got requires_grad="
                             f"{e2.requires_grad}, {g.requires_grad}")
    _assert_finite(g, f"{pre}: the gradient of energy_and_grad(x)")
    _compare(e2, e.detach(), rtol=rtol, atol=atol,
             what=f"{pre}: energy_and_grad(x)[0] differs from energy(x)")
    g2 = counted("grad(x)", lambda: energy.grad(x))
    _compare(g2, g, rtol=rtol, atol=atol, what=f"{pre}: grad(x) differs from "
                                                 f"energy_and_grad(x)[1]")

    for i in range(b):
        ei, gi = energy.energy_and_grad(x[i:i + 1])
        _compare(ei, e2[i:i + 1], rtol=rtol, atol=atol,
                 where=lambda idx, i=i: f"sample {i}",
                 what=f"{pre}: batch dependence: the energy of state {i} alone differs from row "
                      f"{i} of the batch")
        _compare(gi, g[i:i + 1], rtol=rtol, atol=atol,
                 where=lambda idx, i=i: _sample_coordinate((i, *idx[1:])),
                 what=f"{pre}: batch dependence: the gradient of state {i} alone differs from "
                      f"row {i} of the batch")
    er, gr = energy.energy_and_grad(x.flip(0))
    _compare(er.flip(0), e2, rtol=rtol, atol=atol,
             what=f"{pre}: batch dependence: reversing the batch changes the energies")
    _compare(gr.flip(0), g, rtol=rtol, atol=atol,
             what=f"{pre}: batch dependence: reversing the batch changes the gradients")

    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        ea = energy.energy(xr)
        if not ea.requires_grad:
            raise AssertionError(
                f"{pre}: energy(x) is not differentiable (its result has no autograd graph); "
                f"implement _energy with torch operations, or wrap an external code with "
                f"adjoint_core.problem.energy.external_energy")
        (ga,) = torch.autograd.grad(ea.sum(), xr)
    _compare(ga, g, rtol=rtol, atol=atol,
             what=f"{pre}: autograd through energy(x) differs from energy_and_grad(x)[1]")

    wrong = torch.zeros((b, *ev[:-1], ev[-1] + 1), dtype=x.dtype, device=x.device)
    try:
        energy.energy(wrong)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{pre}: energy() accepted states of shape {tuple(wrong.shape)}; "
                             f"it must raise ValueError for a wrong event shape (the base "
                             f"class' public methods do: override _energy, not energy)")


def check_model_contract(
    model: Model, space: StateSpace, t: torch.Tensor | None = None,
    x: torch.Tensor | None = None, context: dict | None = None, *, batch: int = 4,
    rtol: float | None = None, atol: float | None = None, seed: int = 0,
) -> None:
    r"""Assert everything the training loop assumes of a :class:`~adjoint_core.Model`.

    Checked, on ``(t, x)`` (default: uniform times and random states of ``space`` in the
    model's dtype) with ``context`` passed unchanged:

    * it is a :class:`~adjoint_core.Model` and :meth:`~adjoint_core.Model.check_space`
      accepts ``space``;
    * the output has the shape and dtype of ``x`` and is finite; ``t`` and ``x`` are not
      modified in place;
    * batch independence: row ``i`` of a batch equals the output for ``(t_i, x_i)`` alone, and
      reversing the batch reverses the output;
    * it is trainable: it has parameters, back-propagating a loss through the output gives
      finite gradients and at least one non-zero one (``.grad`` is left untouched);
    * its ``state_dict`` survives :func:`torch.save` and ``torch.load(weights_only=True)``
      (the checkpoint format) and loading it back leaves the output unchanged;
    * on a :class:`~adjoint_core.PeriodicSpace`, the output is periodic:
      ``u(t, x + kL) = u(t, x)`` (a network that sees raw coordinates jumps when a state
      wraps).

    The model is used in its current mode (``train()``/``eval()``); a context with a batch
    dimension cannot be checked for batch independence (give one shared by all rows).
    Symmetries are checked by :func:`assert_equivariant`.

    Args:
        model: The network under test.
        space: The state space it is meant for.
        t: Times ``(batch,)``.
        x: States ``(batch, *event_shape)``.
        context: Optional conditioning passed as the third argument.
        batch: Number of default states (``>= 2``).
        rtol: Relative tolerance of the consistency checks (default: by dtype).
        atol: Absolute tolerance of the consistency checks (default: by dtype).
        seed: Seed of the default inputs.

    Raises:
        AssertionError: A broken contract, with what was expected and what came back.
        ValueError: ``x`` of the wrong shape or a batch of fewer than two states.
    """
    if not isinstance(model, Model):
        raise AssertionError(f"{type(model).__name__} is not an adjoint_core.Model subclass")
    name = type(model).__name__
    pre = f"Model contract of {name} on {space}"
    try:
        model.check_space(space)
    except ValueError as exc:
        raise AssertionError(f"{pre}: check_space refused the space: {exc}") from exc
    gen = torch.Generator().manual_seed(seed)
    dtype = x.dtype if x is not None else _model_dtype(model)
    device = x.device if x is not None else _model_device(model)
    if x is None:
        x = _typical_states(space, batch, gen, dtype).to(device)
    _check_states(space.event_shape, x, f"check_model_contract({name})")
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"check_model_contract needs a batch of at least 2 states, got {b}")
    if t is None:
        t = torch.rand(b, generator=gen, dtype=dtype).to(device)
    if tuple(t.shape) != (b,):
        raise ValueError(f"check_model_contract takes times of shape ({b},), got "
                         f"{tuple(t.shape)}")
    rtol, atol = _tolerances(x.dtype, rtol, atol)
    x, t = x.detach(), t.detach()
    x_before, t_before = x.clone(), t.clone()

    out = _call(model, t, x, context)
    if tuple(out.shape) != tuple(x.shape):
        raise AssertionError(f"{pre}: output shape {tuple(out.shape)} differs from the states' "
                             f"{tuple(x.shape)}")
    if out.dtype != x.dtype:
        raise AssertionError(f"{pre}: output dtype {out.dtype} differs from the states' "
                             f"{x.dtype}")
    _assert_finite(out, f"{pre}: output")
    if not (torch.equal(x, x_before) and torch.equal(t, t_before)):
        raise AssertionError(f"{pre}: the forward pass modified its input t or x in place")
    ref = out.detach()

    for i in range(b):
        alone = _call(model, t[i:i + 1], x[i:i + 1], context).detach()
        _compare(alone, ref[i:i + 1], rtol=rtol, atol=atol,
                 where=lambda idx, i=i: _sample_coordinate((i, *idx[1:])),
                 what=f"{pre}: batch dependence: the output for sample {i} alone differs from "
                      f"row {i} of the batch")
    rev = _call(model, t.flip(0), x.flip(0), context).detach()
    _compare(rev.flip(0), ref, rtol=rtol, atol=atol,
             what=f"{pre}: batch dependence: reversing the batch changes the output")

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AssertionError(f"{pre}: the model has no trainable parameters")
    with torch.enable_grad():
        out = _call(model, t, x, context)
        if not out.requires_grad:
            raise AssertionError(f"{pre}: the output does not depend on any parameter through "
                                 f"autograd (computed under no_grad, or detached?)")
        weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        loss = (out * weights.to(out.device, out.dtype)).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    nonzero = False
    for pname, gr in zip(names, grads, strict=True):
        if gr is None:
            continue
        if not bool(torch.isfinite(gr).all()):
            raise AssertionError(f"{pre}: the gradient of parameter {pname!r} has "
                                 f"{int((~torch.isfinite(gr)).sum())} non-finite values")
        nonzero = nonzero or bool((gr != 0).any())
    if not nonzero:
        raise AssertionError(f"{pre}: every parameter gradient is zero or missing, so the "
                             f"model cannot be trained")

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    try:
        state = torch.load(buf, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error is the finding
        raise AssertionError(f"{pre}: the state_dict cannot be loaded with "
                             f"torch.load(weights_only=True) (checkpoints are): {exc}") from exc
    model.load_state_dict(state)
    again = _call(model, t, x, context).detach()
    _compare(again, ref, rtol=rtol, atol=atol,
             what=f"{pre}: the output changed after saving and re-loading the state_dict")

    if isinstance(space, PeriodicSpace):
        _equivariance(model, space, t, x, context, ("periodic",), n_trials=1, rtol=rtol,
                      atol=atol, translation_scale=0.0, batch=b, seed=seed, allow_zero=True)


def _same_state(space: StateSpace, a: torch.Tensor, b: torch.Tensor, *, atol: float,
                what: str) -> None:
    """``a`` and ``b`` are the same state (minimum-image difference where the space has one)."""
    disp = space.displacement(a, b) if hasattr(space, "displacement") else a - b
    _compare(disp, torch.zeros_like(disp), rtol=0.0, atol=atol, what=what)


def _on_space(space: StateSpace, x: torch.Tensor, *, atol: float, what: str) -> None:
    _same_state(space, space.project(x), x, atol=atol,
                what=f"{what} is not on the space: project(x) differs from x")
    if isinstance(space, PeriodicSpace):
        half = _box_tensor(space.box, space.event_shape, x) / 2
        outside = (x < -half - atol) | (x > half + atol)
        if bool(outside.any()):
            idx = tuple(int(i) for i in outside.nonzero()[0])
            raise AssertionError(f"{what} is not wrapped into [-L/2, L/2): "
                                 f"{_sample_coordinate(idx)} is {float(x[idx]):.6g}")


def _moment_check(estimate: torch.Tensor, expected: torch.Tensor, stderr: torch.Tensor,
                  what: str, n_sigma: float = 5.0) -> None:
    """Monte-Carlo estimate within ``n_sigma`` standard errors (+1e-9) of the exact value."""
    diff = (estimate - expected).abs()
    allowed = n_sigma * stderr + 1e-9
    bad = ~(diff <= allowed)
    if bool(bad.any()):
        k = int(torch.nan_to_num(diff - allowed, nan=math.inf).argmax())
        raise AssertionError(f"{what}: coordinate {k}: Monte-Carlo estimate "
                             f"{float(estimate[k]):.6g}, exact {float(expected[k]):.6g} "
                             f"(|difference| {float(diff[k]):.3g} > {n_sigma:g} standard errors "
                             f"= {float(allowed[k]):.3g})")


def _euclidean_moments(space: EuclideanSpace, schedule: NoiseSchedule, x1: torch.Tensor,
                       n: int, gen: torch.Generator, pre: str) -> None:
    """Gaussian bridge and base moments, rank of the tangent projection, base density."""
    ev = space.event_shape
    d = math.prod(ev)
    eye = torch.eye(d, dtype=torch.float64)
    proj = space.tangent(eye.reshape(d, *ev)).reshape(d, d).T  # column k = tangent(e_k)
    rank = float(torch.trace(proj))
    if abs(rank - space.dim) > 1e-6:
        raise AssertionError(f"{pre}: dim = {space.dim} but the tangent projection has rank "
                             f"{rank:.6g}")
    var_unit = torch.diagonal(proj)
    h1s = schedule.h1_squared
    for tv in (0.25, 0.75):
        t = torch.full((n,), tv, dtype=torch.float64)
        lam, std = schedule.bridge_coefficients(t[:1])
        xt = space.bridge_sample(x1[:1].expand(n, *ev), t, schedule, gen).reshape(n, d)
        mean = float(lam) * space.project(x1[:1]).reshape(d)
        var = float(std) ** 2 * var_unit
        what = f"{pre}: bridge_sample at t={tv}"
        _moment_check(xt.mean(0), mean, (var / n).sqrt(), f"{what}: mean ≠ λ(t)·x1")
        _moment_check(xt.var(0), var, var * math.sqrt(2.0 / (n - 1)),
                      f"{what}: variance ≠ σ_bridge(t)²·(tangent projection)")
    xb = space.sample_base(n, schedule, gen, dtype=torch.float64).reshape(n, d)
    var = h1s * var_unit
    _moment_check(xb.mean(0), torch.zeros(d, dtype=torch.float64), (var / n).sqrt(),
                  f"{pre}: sample_base: mean ≠ 0")
    _moment_check(xb.var(0), var, var * math.sqrt(2.0 / (n - 1)),
                  f"{pre}: sample_base: variance ≠ h(1)²·(tangent projection)")
    px = space.project(x1).reshape(x1.shape[0], d)
    want = -0.5 * px.square().sum(-1) / h1s - 0.5 * space.dim * math.log(2 * math.pi * h1s)
    _compare(space.base_log_prob(x1, schedule), want, rtol=1e-9, atol=1e-9,
             what=f"{pre}: base_log_prob differs from the Gaussian N(0, h(1)²) on the "
                  f"{space.dim}-dimensional tangent space")


def _periodic_moments(space: PeriodicSpace, schedule: NoiseSchedule, x1: torch.Tensor,
                      n: int, gen: torch.Generator, pre: str) -> None:
    """Circular moments of the wrapped bridge and base, and the wrapped-normal base density."""
    ev = space.event_shape
    d = math.prod(ev)
    box = _box_tensor(space.box, ev, x1).expand(ev).reshape(d)
    h1s = schedule.h1_squared
    h1 = math.sqrt(h1s)
    k = torch.arange(-(math.ceil(8 * h1 / float(box.min())) + 2),
                     math.ceil(8 * h1 / float(box.min())) + 3, dtype=torch.float64)

    def circular(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  torch.Tensor]:
        ang = 2 * math.pi * samples.reshape(samples.shape[0], d) / box
        c, s = ang.cos(), ang.sin()
        m = samples.shape[0]
        return c.mean(0), s.mean(0), c.std(0) / math.sqrt(m), s.std(0) / math.sqrt(m)

    x10 = x1[:1].reshape(d)
    lifts = x10.unsqueeze(-1) + box.unsqueeze(-1) * k  # (d, images)
    w = torch.softmax(-0.5 * lifts.square() / h1s, dim=-1)
    for tv in (0.25, 0.75):
        t = torch.full((n,), tv, dtype=torch.float64)
        lam, std = schedule.bridge_coefficients(t[:1])
        xt = space.bridge_sample(x1[:1].expand(n, *ev), t, schedule, gen)
        phase = 2 * math.pi * float(lam) * lifts / box.unsqueeze(-1)
        damp = torch.exp(-2 * math.pi**2 * float(std) ** 2 / box.square())
        want_c = (w * phase.cos()).sum(-1) * damp
        want_s = (w * phase.sin()).sum(-1) * damp
        c, s, se_c, se_s = circular(xt)
        what = f"{pre}: bridge_sample at t={tv} (wrapped bridge)"
        _moment_check(c, want_c, se_c, f"{what}: E[cos(2πx/L)]")
        _moment_check(s, want_s, se_s, f"{what}: E[sin(2πx/L)]")
    xb = space.sample_base(n, schedule, gen, dtype=torch.float64)
    c, s, se_c, se_s = circular(xb)
    _moment_check(c, torch.exp(-2 * math.pi**2 * h1s / box.square()), se_c,
                  f"{pre}: sample_base: E[cos(2πx/L)] of the wrapped normal WN(0, h(1)²)")
    _moment_check(s, torch.zeros(d, dtype=torch.float64), se_s,
                  f"{pre}: sample_base: E[sin(2πx/L)] of the wrapped normal WN(0, h(1)²)")
    flat = x1.reshape(x1.shape[0], d)
    lifts = flat.unsqueeze(-1) + box.unsqueeze(-1) * k
    logn = -0.5 * lifts.square() / h1s - 0.5 * math.log(2 * math.pi * h1s)
    want = torch.logsumexp(logn, dim=-1).sum(-1)
    _compare(space.base_log_prob(x1, schedule), want, rtol=1e-7, atol=1e-7,
             what=f"{pre}: base_log_prob differs from the wrapped normal WN(0, h(1)²) summed "
                  f"over images")


def check_space_contract(space: StateSpace, schedule: NoiseSchedule, *, batch: int = 8,
                         n_samples: int = 20_000, seed: int = 0) -> None:
    r"""Assert everything the training loop assumes of a :class:`~adjoint_core.StateSpace`.

    Checked for every space (float64 unless stated):

    * ``event_shape`` is a tuple of ints, ``particle_shape`` is ``None`` or equals it,
      ``1 <= dim <= prod(event_shape)``, :meth:`~adjoint_core.StateSpace.config` is a dict;
    * :meth:`~adjoint_core.StateSpace.origin`, :meth:`~adjoint_core.StateSpace.noise` and
      :meth:`~adjoint_core.StateSpace.sample_base` have the requested shape and dtype (float32
      and float64), the origin and base samples are on the space, the noise is tangent,
      finite and reproducible from a seeded generator;
    * :meth:`~adjoint_core.StateSpace.project` and :meth:`~adjoint_core.StateSpace.tangent`
      are idempotent, ``project(x)`` is on the space (wrapped into ``[-L/2, L/2)`` on a
      periodic space), :meth:`~adjoint_core.StateSpace.step` stays on the space and
      ``step(x, 0) = x``; ``unflatten(flatten(x)) = x`` and a wrong width raises
      :class:`ValueError`;
    * :meth:`~adjoint_core.StateSpace.bridge_sample` has the shape of ``x1``, stays on the
      space, starts at the origin (``t = 0``) and ends at ``x1`` (``t = 1``) (compared by
      minimum image on periodic spaces);
    * :meth:`~adjoint_core.StateSpace.base_log_prob` has shape ``(batch,)`` and
      :meth:`~adjoint_core.StateSpace.base_score` the shape of ``x``, both finite; the score
      is tangent and matches central finite differences of the log-density along random
      tangent directions.

    Closed-form checks where the space provides them, from ``n_samples`` Monte-Carlo draws
    (each within 5 standard errors): on a :class:`~adjoint_core.EuclideanSpace` the bridge
    mean ``λ(t)·x1`` and variance ``σ_bridge(t)²`` per tangent coordinate at ``t = 0.25, 0.75``,
    the base mean 0 and variance ``h(1)²``, ``dim`` = rank of the tangent projection and
    ``base_log_prob`` = the Gaussian density; on a :class:`~adjoint_core.PeriodicSpace` the
    circular moments ``E[cos 2πx/L], E[sin 2πx/L]`` of the wrapped bridge and of the base, and
    ``base_log_prob`` = the wrapped-normal density. Other spaces get the structural checks only.

    Args:
        space: The state space under test.
        schedule: The noise schedule of the base process.
        batch: Number of states of the structural checks (``>= 2``).
        n_samples: Monte-Carlo draws of the moment checks.
        seed: Seed of every random draw.

    Raises:
        AssertionError: A broken contract, with what was expected and what came back.
    """
    if not isinstance(space, StateSpace):
        raise AssertionError(f"{type(space).__name__} is not an adjoint_core.StateSpace "
                             f"subclass")
    pre = f"StateSpace contract of {space}"
    ev = space.event_shape
    if not (isinstance(ev, tuple) and ev and all(isinstance(s, int) and s >= 1 for s in ev)):
        raise AssertionError(f"{pre}: event_shape must be a non-empty tuple of ints >= 1, got "
                             f"{ev!r}")
    ps = space.particle_shape
    if ps is not None and (tuple(ps) != ev or len(ev) != 2):
        raise AssertionError(f"{pre}: particle_shape {ps!r} must be None or equal the event "
                             f"shape (n_particles, spatial_dim) {ev}")
    dim = space.dim
    if not (isinstance(dim, int) and 1 <= dim <= math.prod(ev)):
        raise AssertionError(f"{pre}: dim must be an int in [1, {math.prod(ev)}], got {dim!r}")
    if not isinstance(space.config(), dict):
        raise AssertionError(f"{pre}: config() must return a dict, got "
                             f"{type(space.config()).__name__}")
    if batch < 2:
        raise ValueError(f"check_space_contract needs batch >= 2, got {batch}")
    f64 = torch.float64
    tol = 1e-10
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *ev)

    ambient = 10.0 * torch.randn(shape, generator=gen, dtype=f64)
    if isinstance(space, PeriodicSpace):
        ambient = ambient * max(space.box)
    p1 = space.project(ambient)
    _compare(space.project(p1), p1, rtol=0.0, atol=tol * max(1.0, float(p1.abs().max())),
             what=f"{pre}: project is not idempotent: project(project(y)) differs from "
                  f"project(y)")
    _on_space(space, p1, atol=tol, what=f"{pre}: project(y)")
    v = 3.0 * torch.randn(shape, generator=gen, dtype=f64)
    t1 = space.tangent(v)
    _compare(space.tangent(t1), t1, rtol=0.0, atol=tol,
             what=f"{pre}: tangent is not idempotent: tangent(tangent(v)) differs from "
                  f"tangent(v)")

    for dtype in (torch.float32, f64):
        for what, value in (
                ("origin", space.origin(batch, dtype=dtype)),
                ("noise", space.noise(batch, torch.Generator().manual_seed(seed), dtype=dtype)),
                ("sample_base", space.sample_base(batch, schedule, gen, dtype=dtype))):
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise AssertionError(f"{pre}: {what}({batch}, dtype={dtype}) returned "
                                     f"{tuple(value.shape)} {value.dtype}, expected {shape} "
                                     f"{dtype}")
            _assert_finite(value, f"{pre}: {what}")
    _on_space(space, space.origin(batch, dtype=f64), atol=tol, what=f"{pre}: the origin")
    _on_space(space, space.sample_base(batch, schedule, gen, dtype=f64), atol=tol,
              what=f"{pre}: a sample_base draw")
    noise = space.noise(batch, torch.Generator().manual_seed(seed), dtype=f64)
    again = space.noise(batch, torch.Generator().manual_seed(seed), dtype=f64)
    if not torch.equal(noise, again):
        raise AssertionError(f"{pre}: noise() is not reproducible from a generator with the "
                             f"same seed (does it draw from the global RNG?)")
    _compare(space.tangent(noise), noise, rtol=0.0, atol=tol,
             what=f"{pre}: noise() is not in the tangent space: tangent(noise) differs")

    x = _typical_states(space, batch, gen, f64)
    _on_space(space, x, atol=tol, what=f"{pre}: a projected random state")
    stepped = space.step(x, 0.3 * space.noise(batch, gen, dtype=f64))
    _on_space(space, stepped, atol=tol, what=f"{pre}: step(x, dx)")
    _same_state(space, space.step(x, torch.zeros_like(x)), x, atol=tol,
                what=f"{pre}: step(x, 0) is not x")
    flat = space.flatten(x)
    if tuple(flat.shape) != (batch, math.prod(ev)) or not torch.equal(space.unflatten(flat), x):
        raise AssertionError(f"{pre}: flatten/unflatten do not round-trip: flatten gave "
                             f"{tuple(flat.shape)}, expected ({batch}, {math.prod(ev)})")
    try:
        space.unflatten(torch.zeros(batch, math.prod(ev) + 1, dtype=f64))
    except ValueError:
        pass
    else:
        raise AssertionError(f"{pre}: unflatten accepted a width of {math.prod(ev) + 1}; it "
                             f"must raise ValueError")

    tt = torch.rand(batch, generator=gen, dtype=f64)
    xt = space.bridge_sample(x, tt, schedule, gen)
    if tuple(xt.shape) != shape or xt.dtype != f64:
        raise AssertionError(f"{pre}: bridge_sample returned {tuple(xt.shape)} {xt.dtype} for "
                             f"x1 of shape {shape} float64")
    _assert_finite(xt, f"{pre}: bridge_sample")
    _on_space(space, xt, atol=tol, what=f"{pre}: a bridge_sample draw")
    x0 = space.bridge_sample(x, torch.zeros(batch, dtype=f64), schedule, gen)
    _same_state(space, x0, space.origin(batch, dtype=f64), atol=1e-9,
                what=f"{pre}: bridge_sample at t=0 is not the origin (the source x_0)")
    x1 = space.bridge_sample(x, torch.ones(batch, dtype=f64), schedule, gen)
    _same_state(space, x1, x, atol=1e-9, what=f"{pre}: bridge_sample at t=1 is not x1")

    lp = space.base_log_prob(x, schedule)
    if tuple(lp.shape) != (batch,):
        raise AssertionError(f"{pre}: base_log_prob returned shape {tuple(lp.shape)}, expected "
                             f"({batch},)")
    _assert_finite(lp, f"{pre}: base_log_prob")
    score = space.base_score(x, schedule)
    if tuple(score.shape) != shape:
        raise AssertionError(f"{pre}: base_score returned shape {tuple(score.shape)}, expected "
                             f"{shape}")
    _assert_finite(score, f"{pre}: base_score")
    _compare(space.tangent(score), score, rtol=0.0, atol=tol * max(1.0, float(
        score.abs().max())), what=f"{pre}: base_score is not in the tangent space")
    h = 1e-5
    direction = space.tangent(torch.randn(shape, generator=gen, dtype=f64))
    fd = (space.base_log_prob(x + h * direction, schedule)
          - space.base_log_prob(x - h * direction, schedule)) / (2 * h)
    _compare((score * direction).reshape(batch, -1).sum(-1), fd, rtol=1e-6, atol=1e-6,
             what=f"{pre}: base_score does not match central finite differences of "
                  f"base_log_prob along a tangent direction (ε={h:g})")

    if isinstance(space, EuclideanSpace):
        _euclidean_moments(space, schedule, x, n_samples, gen, pre)
    elif isinstance(space, PeriodicSpace):
        _periodic_moments(space, schedule, x, n_samples, gen, pre)
