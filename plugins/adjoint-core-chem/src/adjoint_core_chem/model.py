r"""Molecular EGNN control ``u_θ(t, x; G)`` conditioned on the molecular graph, any molecule size.

The equations are those of the EGNN plugin (:mod:`adjoint_core_egnn.model`, Satorras et al.
2021) with the conditioning the amortized conformer sampler needs (as the AS-mol EGNN: atom
types as node input, bond information as edge input):

.. math::

    h^0_i &= W_{in}[t, \mathrm{emb}(t), f_i], \qquad e_{ij} = W_{pair} p_{ij}, \\
    m_{ij} &= \phi_e(h_i, h_j, \|x_i - x_j\|^2, a_{ij}, e_{ij})\,
              \sigma(\phi_{att}(m_{ij})), \\
    x_i &\leftarrow x_i + \sum_{j \ne i} \frac{x_i - x_j}{\|x_i - x_j\| + 1}\,\phi_x(m_{ij}), \\
    h_i &\leftarrow h_i + \phi_h(h_i, \textstyle\sum_{j \ne i} m_{ij}),

with ``f_i`` the atom features and ``p_ij`` the pair features of
:meth:`~adjoint_core_chem.molecule.Molecule.context` (element, aromaticity, hybridisation,
charge; bond type, topological distance, common ring), ``a_ij`` the squared input distance and
SiLU activations. As in AS-mol the coordinate weight ``φ_x`` is unbounded (no ``tanh``): the
control must reach the clipped adjoint's magnitude (up to ``max_grad_norm`` per atom). The
output ``x_L − x`` minus its centre of mass is translation invariant and rotation / reflection /
permutation equivariant (permuting the context with the atoms).

With ``cutoff`` (Å) the messages are local: ``m_ij`` is multiplied by
``w_ij = max(b_ij, ½(1 + cos(π d_ij / cutoff)))`` (the second term 0 beyond ``cutoff``), with
``b_ij = 1`` for atoms at most :data:`~adjoint_core_chem.molecule.MAX_TOPO` bonds apart and
``d_ij`` the current distance, so that an atom's update sums over a neighbourhood whose size
does not grow with the molecule (bonded terms up to torsions, contacts within ``cutoff``).
Without it every pair exchanges messages.

The network is *dense*: one molecule per call, pair tensors of shape ``(batch, N, N, hidden)``
(cheap for the 10-70 atoms of drug-like molecules; batches are chunked by
``max_pair_elements``). The size ``N`` is read from ``x`` and the context, so one network
serves every molecule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adjoint_core.problem.models import FourierTimeEmbedding, Model
from adjoint_core.problem.spaces import StateSpace

from .molecule import FURTHER_PAIR_FEATURE, N_ATOM_FEATURES, N_PAIR_FEATURES

__all__ = ["MolecularEGNN"]

_EPS = 1e-8


class _Layer(nn.Module):
    def __init__(self, hidden: int, update_nodes: bool) -> None:
        super().__init__()
        self.hidden = hidden
        self.node_in = nn.Linear(hidden, 2 * hidden)  # W_i h_i (+ bias) and W_j h_j
        self.geo = nn.Linear(2, hidden, bias=False)
        self.pair = nn.Linear(hidden, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.att = nn.Linear(hidden, 1)
        self.coord_hidden = nn.Linear(hidden, hidden)
        self.coord_out = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.coord_out.weight, gain=0.001)
        self.node_mlp = (nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(),
                                       nn.Linear(hidden, hidden)) if update_nodes else None)

    def forward(self, h, pos, sq0, pair, mask, bonded=None, cutoff=None):
        """One layer: ``h (B,N,H)``, ``pos (B,N,3)``, ``sq0 (B,N,N,1)``, ``pair (N,N,H)``.

        ``mask (N,N,1)`` removes the diagonal; with ``cutoff`` it is multiplied by the local
        weights (``bonded (N,N,1)`` or the distance envelope).
        """
        diff = pos[:, :, None, :] - pos[:, None, :, :]
        sq = diff.square().sum(-1, keepdim=True)
        if cutoff is not None:
            d = torch.sqrt(sq + _EPS)
            env = 0.5 * (1.0 + torch.cos(torch.pi * (d / cutoff).clamp(max=1.0)))
            mask = mask * torch.maximum(env, bonded)
        hi, hj = self.node_in(h).chunk(2, dim=-1)
        pre = hi[:, :, None, :] + hj[:, None, :, :] + self.geo(torch.cat([sq, sq0], -1))
        pre = pre + self.pair(pair)
        m = F.silu(self.edge_out(F.silu(pre)))
        m = m * torch.sigmoid(self.att(m)) * mask
        phi = self.coord_out(F.silu(self.coord_hidden(m)))
        dpos = (diff * (phi / (torch.sqrt(sq + _EPS) + 1.0)) * mask).sum(2)
        if self.node_mlp is not None:
            h = h + self.node_mlp(torch.cat([h, m.sum(2)], dim=-1))
        return h, dpos


class MolecularEGNN(Model):
    """Graph-conditioned EGNN control for molecules of any size (see the module docstring).

    Args:
        hidden: Width of node, pair and message features.
        n_layers: Equivariant layers.
        time_dim: Width of the sinusoidal time embedding (even, > 0), concatenated with ``t``.
        max_pair_elements: Chunk the batch so that one pair tensor holds at most this many
            numbers (only speed and memory change).
        cutoff: ``None`` (every pair exchanges messages) or the contact radius in Å of local
            messages (see the module docstring); must be > 0.

    Shapes:
        ``t``: ``(batch,)``; ``x``: ``(batch, N, 3)``; context ``atom_features``
        ``(N, N_ATOM_FEATURES)`` and ``pair_features`` ``(N, N, N_PAIR_FEATURES)``; output
        ``(batch, N, 3)``.
    """

    def __init__(self, hidden: int = 64, n_layers: int = 4, time_dim: int = 16,
                 max_pair_elements: int = 2**22, cutoff: float | None = None) -> None:
        super().__init__()
        if cutoff is not None and not cutoff > 0:
            raise ValueError(f"MolecularEGNN cutoff must be > 0 (Å) or None, got {cutoff}")
        self.cutoff = None if cutoff is None else float(cutoff)
        if hidden < 1 or n_layers < 1:
            raise ValueError(f"MolecularEGNN needs hidden >= 1 and n_layers >= 1, got "
                             f"{hidden}, {n_layers}")
        if time_dim < 2 or time_dim % 2:
            raise ValueError(f"MolecularEGNN time_dim must be a positive even number, got "
                             f"{time_dim}")
        self.hidden, self.n_layers, self.time_dim = int(hidden), int(n_layers), int(time_dim)
        self.max_pair_elements = int(max_pair_elements)
        self.time = FourierTimeEmbedding(time_dim)
        self.embed = nn.Linear(1 + time_dim + N_ATOM_FEATURES, hidden)
        self.pair_embed = nn.Sequential(nn.Linear(N_PAIR_FEATURES, hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList(_Layer(hidden, k < n_layers - 1) for k in range(n_layers))

    def check_space(self, space: StateSpace) -> None:
        """Require a 3-D particle space."""
        shape = getattr(space, "particle_shape", None)
        if shape is None or shape[1] != 3:
            raise ValueError(f"MolecularEGNN needs a (n_atoms, 3) particle space, got {space}")

    def forward(self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
                ) -> torch.Tensor:
        """Control ``u_θ(t, x)`` for one molecule (its context) and a batch of conformers."""
        if context is None or "atom_features" not in context or "pair_features" not in context:
            raise ValueError("MolecularEGNN needs context with 'atom_features' and "
                             "'pair_features' (Molecule.context())")
        if x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"MolecularEGNN expects x of shape (batch, N, 3), got "
                             f"{tuple(x.shape)}")
        batch, n, _ = x.shape
        af = context["atom_features"].to(x.device, x.dtype)
        pf = context["pair_features"].to(x.device, x.dtype)
        if af.shape != (n, N_ATOM_FEATURES) or pf.shape != (n, n, N_PAIR_FEATURES):
            raise ValueError(f"MolecularEGNN: context for {af.shape[0]} atoms does not fit x "
                             f"with {n} atoms")
        t = t.to(x.device, x.dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        pair = self.pair_embed(pf)
        mask = (1.0 - torch.eye(n, device=x.device, dtype=x.dtype))[..., None]
        bonded = None
        if self.cutoff is not None:  # at most MAX_TOPO bonds apart
            bonded = (1.0 - pf[..., FURTHER_PAIR_FEATURE:FURTHER_PAIR_FEATURE + 1]) * mask
        step = max(1, self.max_pair_elements // max(n * n * self.hidden, 1))
        outs = [self._run(t[i:i + step], x[i:i + step], af, pair, mask, bonded)
                for i in range(0, batch, step)]
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _run(self, t, x, af, pair, mask, bonded):
        b, n, _ = x.shape
        tf = torch.cat([t[:, None], self.time(t)], -1)
        h = self.embed(torch.cat([tf[:, None, :].expand(b, n, -1), af.expand(b, n, -1)], -1))
        sq0 = (x[:, :, None, :] - x[:, None, :, :]).square().sum(-1, keepdim=True)
        pos, disp = x, None
        for layer in self.layers:
            h, dpos = layer(h, pos, sq0, pair, mask, bonded, self.cutoff)
            pos = pos + dpos
            disp = dpos if disp is None else disp + dpos
        return disp - disp.mean(dim=1, keepdim=True)
