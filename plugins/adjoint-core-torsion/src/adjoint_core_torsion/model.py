r"""Torsion network: one score per rotatable torsion from a graph network over the molecule.

The control of torsional Adjoint Sampling is a vector ``u_θ(t, τ) ∈ R^K``, one number per
torsion angle. AS-mol uses the tensor-product score model of torsional diffusion (e3nn); this
plugin's :class:`TorsionNet` is a lighter invariant message-passing network on
torch-geometric with the same inputs and output:

* **Geometry.** The Cartesian coordinates ``x(τ)`` of the molecule at the current torsions
  come from the context's ``to_cartesian`` map (for molecules:
  :meth:`adjoint_core_chem.torsion.MoleculeTorsions.positions`). Messages see them only through
  interatomic distances (a radius graph with cut-off ``cutoff`` Å plus the bonds, Gaussian
  radial basis), so they are invariant to global rotations and translations of the molecule.
* **Handedness.** Distances cannot tell a conformation from its mirror image, but the score is
  odd under reflection (reflecting the molecule negates every torsion). The torsion angles
  themselves are rotation/translation invariant and reflection odd: ``(sin τ_k, cos τ_k)`` of
  every torsion is embedded and added to the node features of its bond atoms ``b_k, c_k``
  before message passing, and again at the read-out.
* **Nodes and edges.** Node input: the context's ``atom_features`` and a Fourier embedding of
  ``t``. Edge input: radial basis of the distance, plus, when present, the context's
  ``pair_features`` (bond type, topological distance, common ring) or else a one-hot of the
  bond type from ``bond_types`` (0 = not bonded).
* **Layers.** ``m_ij = SiLU(W [h_i, h_j, e_ij])``, ``h_i ← h_i + φ_h([h_i, Σ_j m_ij / s])``
  (torch-geometric ``MessagePassing``, sum aggregation scaled by ``s = aggregation_scale``),
  SiLU MLPs with LayerNorm.
* **Read-out.** For torsion ``k = (a, b, c, d)``:
  ``u_k = ψ([h_b + h_c, h_a + h_d, sin τ_k, cos τ_k, emb(t)])`` — symmetric in the two
  directions of the quadruple, whose dihedral is the same. The last layer is zero-initialised,
  so the untrained sampler is the base process, and its output is multiplied by
  ``output_scale`` (the torsional adjoint reaches hundreds in ``kT/rad``).

The output follows the order of the context's ``torsion_index``, the order of the state (AS-mol
reads predictions out in bond order but uses them in torsion order, see docs/conventions.md; here
permuting the torsions permutes the output, tested).

Everything is exactly ``2π``-periodic in every ``τ_k`` (coordinates and features are).

Context keys: ``atom_features`` ``(N, F)``, ``edge_index`` ``(2, E)`` bonds (both directions),
``torsion_index`` ``(K, 4)``, ``to_cartesian``: ``(batch, K) → (batch, N, 3)``; optional
``pair_features`` ``(N, N, P)`` or ``bond_types`` ``(E,)`` (1 single … 4 aromatic).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from adjoint_core.problem.models import FourierTimeEmbedding, Model
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace

with warnings.catch_warnings():  # PyG's import calls the deprecated torch.jit.script
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*",
                            category=DeprecationWarning)
    from torch_geometric.nn import MessagePassing

__all__ = ["TorsionNet", "InteractionLayer", "torsion_net", "N_BOND_CLASSES"]

#: Bond classes of the ``bond_types`` fallback: not bonded, single, double, triple, aromatic.
N_BOND_CLASSES = 5
_REQUIRED = ("atom_features", "edge_index", "torsion_index", "to_cartesian")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.LayerNorm(hidden),
                         nn.Linear(hidden, n_out))


class InteractionLayer(MessagePassing):
    """One invariant message-passing layer.

    ``m_ij = SiLU(W_i h_i + W_j h_j + W_e e_ij + b)``,
    ``h_i ← h_i + φ_h([h_i, Σ_j m_ij / s])``. The linear map of ``[h_i, h_j, e_ij]`` is split
    so that the node terms are computed once per node, not once per edge (the same function as
    one ``Linear`` on the concatenation, several times cheaper on a CPU).

    Args:
        hidden: Node width.
        edge_dim: Edge-feature width.
        aggregation_scale: ``s``, divides the summed messages.
    """

    def __init__(self, hidden: int, edge_dim: int, aggregation_scale: float) -> None:
        super().__init__(aggr="add")
        self.receiver = nn.Linear(hidden, hidden)
        self.sender = nn.Linear(hidden, hidden, bias=False)
        self.edge = nn.Linear(edge_dim, hidden, bias=False)
        self.node_mlp = _mlp(2 * hidden, hidden, hidden)
        self.scale = float(aggregation_scale)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
                ) -> torch.Tensor:
        """``h (nodes, H)``, ``edge_index (2, E)`` (sender, receiver), ``edge_attr (E, D)``."""
        agg = self.propagate(edge_index, r=self.receiver(h), s=self.sender(h),
                             e=self.edge(edge_attr)) / self.scale
        return h + self.node_mlp(torch.cat([h, agg], -1))

    def message(self, r_i: torch.Tensor, s_j: torch.Tensor, e: torch.Tensor
                ) -> torch.Tensor:
        """``m_ij = SiLU(W_i h_i + b + W_j h_j + W_e e_ij)`` per edge."""
        return nn.functional.silu(r_i + s_j + e)


class TorsionNet(Model):
    """Invariant graph network with one output per torsion (see the module docstring).

    Args:
        n_atom_features: Width ``F`` of the context's ``atom_features``.
        n_pair_features: Width ``P`` of the context's ``pair_features`` (0: use the
            ``bond_types`` one-hot instead).
        hidden: Node and message width.
        n_layers: Message-passing layers.
        time_dim: Fourier time-embedding width (even).
        cutoff: Radius-graph cut-off in Å (bonds are always edges).
        n_rbf: Gaussian radial basis functions on ``[0, cutoff]``.
        aggregation_scale: Divides summed messages (≈ typical neighbour count).
        output_scale: Multiplies the zero-initialised read-out.

    Shapes:
        ``t`` ``(batch,)``, ``x`` ``(batch, K)`` → ``(batch, K)``.
    """

    def __init__(self, n_atom_features: int, n_pair_features: int = 0, hidden: int = 64,
                 n_layers: int = 3, time_dim: int = 16, cutoff: float = 5.0, n_rbf: int = 24,
                 aggregation_scale: float = 10.0, output_scale: float = 10.0) -> None:
        super().__init__()
        if n_atom_features < 1 or n_pair_features < 0 or hidden < 1 or n_layers < 1:
            raise ValueError(f"TorsionNet needs n_atom_features >= 1, n_pair_features >= 0, "
                             f"hidden >= 1, n_layers >= 1; got {n_atom_features}, "
                             f"{n_pair_features}, {hidden}, {n_layers}")
        if not (cutoff > 0 and n_rbf >= 1 and aggregation_scale > 0 and output_scale > 0):
            raise ValueError(f"TorsionNet needs cutoff > 0, n_rbf >= 1, aggregation_scale > 0, "
                             f"output_scale > 0; got {cutoff}, {n_rbf}, {aggregation_scale}, "
                             f"{output_scale}")
        self.n_atom_features, self.n_pair_features = int(n_atom_features), int(n_pair_features)
        self.cutoff, self.output_scale = float(cutoff), float(output_scale)
        self.time = FourierTimeEmbedding(time_dim)
        self.node_in = nn.Linear(n_atom_features + time_dim, hidden)
        self.torsion_in = nn.Linear(2, hidden)
        self.register_buffer("rbf_centres", torch.linspace(0.0, cutoff, n_rbf))
        self.rbf_gamma = 0.5 / (cutoff / max(n_rbf - 1, 1)) ** 2
        edge_dim = n_rbf + (n_pair_features if n_pair_features else N_BOND_CLASSES)
        self.layers = nn.ModuleList(InteractionLayer(hidden, edge_dim, aggregation_scale)
                                    for _ in range(n_layers))
        self.readout = nn.Sequential(nn.Linear(2 * hidden + 2 + time_dim, hidden), nn.SiLU(),
                                     nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 1))
        nn.init.zeros_(self.readout[-1].weight)
        nn.init.zeros_(self.readout[-1].bias)

    def check_space(self, space: StateSpace) -> None:
        """Require a flat periodic (torsional) space."""
        if not isinstance(space, PeriodicSpace) or space.particle_shape is not None:
            raise ValueError(f"TorsionNet needs a torsional space (TorsionalSpace), got {space}")

    # ------------------------------------------------------------------ graph
    def _pair_table(self, context: dict, n: int, device, dtype) -> torch.Tensor:
        """Dense static pair features ``(N, N, P')`` (pair features or bond one-hot)."""
        if self.n_pair_features:
            pf = context.get("pair_features")
            if pf is None or tuple(pf.shape) != (n, n, self.n_pair_features):
                raise ValueError(f"TorsionNet was built with n_pair_features="
                                 f"{self.n_pair_features}: context needs 'pair_features' of "
                                 f"shape ({n}, {n}, {self.n_pair_features})")
            return pf.to(device, dtype)
        table = torch.zeros(n, n, N_BOND_CLASSES, device=device, dtype=dtype)
        table[..., 0] = 1.0
        ei = context["edge_index"].to(device)
        bt = context.get("bond_types")
        bt = torch.ones(ei.shape[1], dtype=torch.long, device=device) if bt is None else \
            bt.to(device).clamp(1, N_BOND_CLASSES - 1)
        table[ei[0], ei[1], 0] = 0.0
        table[ei[0], ei[1], bt] = 1.0
        return table

    def _graph(self, pos: torch.Tensor, context: dict, pair_table: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edges (radius graph ∪ bonds) of the batch of conformers and their features."""
        b, n, _ = pos.shape
        dist = torch.cdist(pos, pos)  # (B, N, N)
        bonded = torch.zeros(n, n, dtype=torch.bool, device=pos.device)
        ei = context["edge_index"].to(pos.device)
        bonded[ei[0], ei[1]] = True
        keep = (dist < self.cutoff) | bonded
        keep &= ~torch.eye(n, dtype=torch.bool, device=pos.device)
        g, i, j = keep.nonzero(as_tuple=True)  # message j → i in conformer g
        d = dist[g, i, j]
        rbf = torch.exp(-self.rbf_gamma * (d[:, None] - self.rbf_centres.to(d)) ** 2)
        # smooth cut-off envelope (bonds beyond the cut-off keep weight 0 on the RBF part)
        env = 0.5 * (torch.cos(math.pi * (d / self.cutoff).clamp(max=1.0)) + 1.0)
        attr = torch.cat([rbf * env[:, None], pair_table[i, j]], -1)
        edge_index = torch.stack([g * n + j, g * n + i])
        return edge_index, attr

    # ------------------------------------------------------------------ forward
    def forward(self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
                ) -> torch.Tensor:
        """Scores ``u_θ(t, τ)`` of shape ``(batch, K)`` in the order of ``torsion_index``."""
        if context is None or any(k not in context for k in _REQUIRED):
            raise ValueError(f"TorsionNet needs a context with {', '.join(_REQUIRED)} (e.g. "
                             f"adjoint_core_chem.torsion.MoleculeTorsions.context())")
        tor = context["torsion_index"].to(x.device)
        if x.ndim != 2 or x.shape[1] != tor.shape[0]:
            raise ValueError(f"TorsionNet expects torsions of shape (batch, {tor.shape[0]}) "
                             f"for this context, got {tuple(x.shape)}")
        af = context["atom_features"].to(x.device, x.dtype)
        if af.ndim != 2 or af.shape[1] != self.n_atom_features:
            raise ValueError(f"TorsionNet was built for {self.n_atom_features} atom features, "
                             f"context has {tuple(af.shape)}")
        b, k = x.shape
        n = af.shape[0]
        with torch.no_grad():  # geometry is an input; no gradient through the map is needed
            pos = context["to_cartesian"](x.detach()).to(x.dtype)
        if tuple(pos.shape) != (b, n, 3):
            raise ValueError(f"to_cartesian returned {tuple(pos.shape)}, expected ({b}, {n}, 3)")
        t = t.to(x.device, x.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        temb = self.time(t)  # (B, T)
        ang = torch.stack([torch.sin(x), torch.cos(x)], -1)  # (B, K, 2)
        h = self.node_in(torch.cat([af.expand(b, n, -1), temb[:, None].expand(b, n, -1)], -1))
        tor_feat = self.torsion_in(ang)  # (B, K, H)
        h = h.index_add(1, tor[:, 1], tor_feat).index_add(1, tor[:, 2], tor_feat)
        edge_index, attr = self._graph(pos, context, self._pair_table(context, n, x.device,
                                                                       x.dtype))
        hf = h.reshape(b * n, -1)
        for layer in self.layers:
            hf = layer(hf, edge_index, attr)
        h = hf.reshape(b, n, -1)
        centre = h[:, tor[:, 1]] + h[:, tor[:, 2]]
        ends = h[:, tor[:, 0]] + h[:, tor[:, 3]]
        feats = torch.cat([centre, ends, ang, temb[:, None].expand(b, k, -1)], -1)
        return self.output_scale * self.readout(feats).squeeze(-1)


def torsion_net(space: StateSpace | None = None, n_atom_features: int = 20,
                n_pair_features: int = 0, hidden: int = 64, n_layers: int = 3,
                time_dim: int = 16, cutoff: float = 5.0, n_rbf: int = 24,
                aggregation_scale: float = 10.0, output_scale: float = 10.0) -> TorsionNet:
    """Registry factory of :class:`TorsionNet` (needs a context at call time).

    In config-driven single-molecule runs the context is bound by the chemistry plugin's
    ``molecular_torsion_net`` model; this factory builds the bare network for Python use and
    amortized training.
    """
    model = TorsionNet(n_atom_features, n_pair_features, hidden, n_layers, time_dim, cutoff,
                       n_rbf, aggregation_scale, output_scale)
    if space is not None:
        model.check_space(space)
    return model
