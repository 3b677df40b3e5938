r"""E(n)-equivariant graph network (Satorras, Hoogeboom & Welling, 2021) as a control network.

The architecture follows the EGNN used by the Adjoint Sampling and iDEM experiments on DW-4,
LJ-13 and LJ-55: a fully connected graph over the particles, node features that carry the time
(and optionally particle types), and ``n_layers`` equivariant layers

.. math::

    m_{ij} &= \phi_e\big(h_i, h_j, \|x_i - x_j\|^2, a_{ij}\big), \qquad
              m_{ij} \leftarrow m_{ij}\,\sigma(\phi_{att}(m_{ij})) \text{ (attention)}, \\
    x_i &\leftarrow x_i + \sum_{j \ne i} \frac{x_i - x_j}{\|x_i - x_j\| + 1}\,
              \tanh(\phi_x(m_{ij}))\,\frac{r}{L}, \\
    h_i &\leftarrow h_i + \phi_h\big(h_i, \textstyle\sum_{j \ne i} m_{ij}\big),

with ``a_ij`` the squared distance of the *input* configuration (so the first layer sees the
squared distance twice), SiLU activations, ``r`` = ``coords_range`` and ``L`` = ``n_layers``.
The control is the total displacement ``x_L − x_0`` with its centre of mass removed; it is
invariant to translations of the input and equivariant to rotations, reflections and
permutations of the particles (permuting node types along with them).

Implementation notes:

* The first linear layer of ``φ_e`` acts on ``[h_i, h_j, r_ij, a_ij]``; it is split as
  ``W_i h_i + W_j h_j + w_r r_ij + w_a a_ij + b`` and the two node terms are computed once per
  node instead of once per edge ("factored" edge layer). This is the same function with the same
  parameters (one ``nn.Linear(2·hidden + 2, hidden)``), only cheaper.
* Messages for ``h`` and ``x`` are aggregated in one pass. On the default fully connected graph
  the edges are stored grouped by receiving particle, so the sum over neighbours is a reshape and
  a dense sum instead of a scatter; with a distance cut-off a scatter sum is used.
* The coordinate update of the last layer is the only thing that reaches the output, so the last
  layer has no node update (it would be dead weight that receives no gradient).

**Periodic boxes.** With ``box = (L_1, ..., L_d)`` every edge vector is the minimum-image
displacement ``r_ij = x_i − x_j − L·round((x_i − x_j)/L)``
(:func:`adjoint_core.problem.torus.minimum_image`), in the first layer and in every later one (whose
positions are the unwrapped ``x + Σ dpos``; only minimum-image differences of them are used).
The output is then invariant to shifting any particle by a multiple of the box and to
translations, and equivariant to permutations and to the symmetries of the box (reflections,
permutations of axes of equal length); it is no longer rotation-equivariant (a box is not). It
jumps where a pair's separation along an axis crosses ``L/2`` (the minimum image flips); with a
``cutoff < L_min/2`` such pairs are outside the graph (the cut-off's own discontinuity remains).
Such a model only accepts a :class:`~adjoint_core.problem.spaces.PeriodicSpace` with the same box
(:meth:`EGNN.check_space`).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from adjoint_core.problem.models import FourierTimeEmbedding, Model
from adjoint_core.problem.spaces import PeriodicSpace, StateSpace
from adjoint_core.problem.torus import minimum_image

with warnings.catch_warnings():  # PyG's import calls the deprecated torch.jit.script
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*",
                            category=DeprecationWarning)
    from torch_geometric.nn import MessagePassing

__all__ = ["EGNN", "EGNNLayer", "egnn", "fully_connected_edges"]

_EPS = 1e-8  # inside the square root of the distance normalisation (zero-distance safety)
_CACHE_SIZE = 8  # fully connected edge indices kept per model, keyed by (batch, N, device)
# Automatic CPU chunking: about this many elements (edges × hidden) per per-edge tensor, 4 MiB in
# float32. Measured on a 2-core CPU (LJ-13, batch 512, hidden 128, 5 layers): 1.8x faster with
# one thread than unchunked, whose 40 MiB per-edge tensors are fresh page-faulting allocations.
_AUTO_CHUNK_ELEMENTS = 2**20


def fully_connected_edges(
    batch: int, n_particles: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Directed edges ``j → i`` (``i ≠ j``) of ``batch`` disjoint complete graphs.

    Nodes are numbered ``b·N + i``. Edges are grouped by receiving node: the ``N − 1`` edges into
    node ``k`` are ``edge_index[:, k(N−1) : (k+1)(N−1)]``.

    Args:
        batch: Number of graphs.
        n_particles: Nodes per graph ``N``.
        device: Device of the result.

    Returns:
        Long tensor of shape ``(2, batch·N·(N−1))``: row 0 the senders ``j``, row 1 the
        receivers ``i`` (PyG's ``source_to_target`` flow).
    """
    n = n_particles
    ar = torch.arange(n, device=device)
    recv = ar.repeat_interleave(n)
    send = ar.repeat(n)
    keep = recv != send
    recv, send = recv[keep], send[keep]
    offset = (torch.arange(batch, device=device) * n).repeat_interleave(n * (n - 1))
    return torch.stack([send.repeat(batch) + offset, recv.repeat(batch) + offset])


class EGNNLayer(MessagePassing):
    r"""One equivariant layer (edge, coordinate and, optionally, node update).

    Args:
        hidden: Width of node features and messages.
        attention: Gate each message by ``sigmoid(Linear(m_ij))``.
        tanh: Bound the per-edge coordinate weight by ``tanh(·)·coords_range``.
        coords_range: Scale of the bounded coordinate weight (per layer).
        update_nodes: Apply the residual node update ``h ← h + φ_h(h, Σ m)``.
    """

    def __init__(
        self, hidden: int, attention: bool = True, tanh: bool = True, coords_range: float = 3.0,
        update_nodes: bool = True,
    ) -> None:
        super().__init__(aggr="sum", node_dim=0)
        self.hidden = int(hidden)
        self.use_tanh = bool(tanh)
        self.coords_range = float(coords_range)
        # φ_e on [h_i, h_j, ‖x_i − x_j‖², a_ij]; applied in factored form (see module docstring).
        self.edge_in = nn.Linear(2 * hidden + 2, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.att = nn.Linear(hidden, 1) if attention else None
        self.coord_hidden = nn.Linear(hidden, hidden)
        self.coord_out = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.coord_out.weight, gain=0.001)
        self.node_mlp = (
            nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            if update_nodes else None
        )

    def forward(
        self, h: torch.Tensor, pos: torch.Tensor, edge_attr: torch.Tensor,
        edge_index: torch.Tensor, degree: int | None = None, box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update node features and coordinates.

        Args:
            h: Node features, shape ``(n_nodes, hidden)``.
            pos: Coordinates, shape ``(n_nodes, spatial_dim)``.
            edge_attr: Fixed edge features (squared input distances), shape ``(n_edges, 1)``.
            edge_index: Edges ``j → i``, shape ``(2, n_edges)``.
            degree: If every node receives exactly ``degree`` edges stored consecutively
                (grouped by receiver, as :func:`fully_connected_edges` makes them), the
                aggregation is a reshape-and-sum; ``None`` uses a scatter sum.
            box: Periodic box lengths ``(spatial_dim,)``: edge vectors are minimum images;
                ``None``: plain differences.

        Returns:
            ``(h, dpos)``: updated node features and the coordinate update (add ``dpos`` to
            ``pos``), same shapes as the inputs.
        """
        hid = self.hidden
        w = self.edge_in.weight
        # Node halves of the first edge layer, once per node: W_i h_i + b and W_j h_j.
        both = F.linear(h, torch.cat([w[:, :hid], w[:, hid:2 * hid]], dim=0))
        recv = both[:, :hid] + self.edge_in.bias
        send = both[:, hid:]
        m_sum, dpos = self.propagate(
            edge_index, recv=recv, send=send, pos=pos, edge_attr=edge_attr, degree=degree,
            box=box, size=None,
        )
        if self.node_mlp is not None:
            h = h + self.node_mlp(torch.cat([h, m_sum], dim=-1))
        return h, dpos

    def message(
        self, recv: torch.Tensor, send_j: torch.Tensor, pos_i: torch.Tensor,
        pos_j: torch.Tensor, edge_attr: torch.Tensor, edge_index_i: torch.Tensor,
        degree: int | None = None, box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge message ``m_ij`` and coordinate displacement of each edge ``j → i``."""
        diff = pos_i - pos_j
        if box is not None:
            diff = minimum_image(diff, box)
        radial = diff.square().sum(dim=-1, keepdim=True)
        geo = torch.cat([radial, edge_attr], dim=-1)
        if degree is not None:  # receiver-grouped edges: broadcast instead of a gather
            hid = send_j.shape[-1]
            pre = (send_j.view(-1, degree, hid) + recv[:, None, :]).view(-1, hid)
        else:
            pre = recv.index_select(0, edge_index_i) + send_j
        # ``pre`` is a fresh tensor that no backward needs: accumulate the geometric term into
        # it in place (one pass over the edge features fewer than an out-of-place addmm).
        pre = pre.addmm_(geo, self.edge_in.weight[:, 2 * self.hidden:].t())
        m = F.silu(self.edge_out(F.silu(pre)))
        if self.att is not None:
            m = m * torch.sigmoid(self.att(m))
        phi = self.coord_out(F.silu(self.coord_hidden(m)))
        if self.use_tanh:
            phi = torch.tanh(phi) * self.coords_range
        trans = diff * (phi / (torch.sqrt(radial + _EPS) + 1.0))
        return m, trans

    def aggregate(
        self, inputs: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor,
        dim_size: int | None = None, degree: int | None = None, box: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum messages and displacements over the incoming edges of each node."""
        if degree is not None:
            return tuple(v.view(-1, degree, v.shape[-1]).sum(dim=1) for v in inputs)
        return tuple(self.aggr_module(v, index, dim_size=dim_size, dim=0) for v in inputs)


class EGNN(Model):
    r"""E(n)-equivariant graph network control ``u_θ(t, x)`` for particle systems.

    See the module docstring for the equations. The output is ``x_L − x`` with the centre of
    mass removed: invariant to translations of ``x``, equivariant to rotations, reflections and
    permutations of the particles. It is therefore always mean-free, which is exactly right on a
    mean-free space (translation-invariant energies); on a space without centre-of-mass removal
    the network cannot represent a drift of the centre of mass.

    Args:
        n_particles: Number of particles ``N`` (at least 2).
        spatial_dim: Dimension ``d`` of each particle (e.g. 2 or 3).
        hidden: Width of node features and messages.
        n_layers: Number of equivariant layers.
        attention: Sigmoid gate on each message.
        tanh: Bound the coordinate update per edge and layer by ``coords_range / n_layers``.
        coords_range: Total range of the bounded coordinate update (``tanh=True``).
        n_node_types: Number of particle types; if positive, ``context["node_types"]`` (long,
            shape ``(batch, N)`` or ``(N,)``, values in ``[0, n_node_types)``) is one-hot
            encoded into the node input. ``0``: identical particles, no context needed.
        cutoff: If given, only pairs closer than ``cutoff`` in the input ``x`` exchange messages
            (the graph is fixed for the forward pass and changes discontinuously with ``x``).
            ``None`` (default): fully connected.
        time_dim: ``0`` (default, as in the papers): the node input is the scalar ``t``;
            positive (even): a sinusoidal embedding of ``t`` of this width.
        max_chunk_edges: Evaluate the batch in chunks of whole graphs with at most this many
            edges each (the result is the same; only speed and peak memory change). ``None``
            (default): automatic, about ``2**20 / hidden`` edges per chunk on CPU (small per-edge
            tensors stay in cache and avoid fresh page-faulting allocations; ~1.8x faster for
            LJ-13 at batch 512) and the whole batch on other devices. ``0``: never chunk.
        box: Periodic box: one length for all axes or one per axis. Edge vectors (and the
            distances of the cut-off and of the edge features) are then minimum images, and
            the model only fits a :class:`~adjoint_core.problem.spaces.PeriodicSpace` with this box.
            ``None`` (default): plain coordinate differences (non-periodic spaces).

    Shapes:
        ``t``: ``(batch,)``; ``x``: ``(batch, N, d)``; output: ``(batch, N, d)``.
    """

    def __init__(
        self, n_particles: int, spatial_dim: int, hidden: int = 128, n_layers: int = 5,
        attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
        n_node_types: int = 0, cutoff: float | None = None, time_dim: int = 0,
        max_chunk_edges: int | None = None, box: float | list[float] | None = None,
    ) -> None:
        super().__init__()
        if n_particles < 2:
            raise ValueError(f"EGNN needs n_particles >= 2, got {n_particles}")
        if spatial_dim < 1:
            raise ValueError(f"EGNN needs spatial_dim >= 1, got {spatial_dim}")
        if hidden < 1 or n_layers < 1:
            raise ValueError(f"EGNN needs hidden >= 1 and n_layers >= 1, got {hidden}, "
                             f"{n_layers}")
        if not coords_range > 0:
            raise ValueError(f"EGNN coords_range must be > 0, got {coords_range}")
        if n_node_types < 0:
            raise ValueError(f"EGNN n_node_types must be >= 0, got {n_node_types}")
        if cutoff is not None and not cutoff > 0:
            raise ValueError(f"EGNN cutoff must be > 0 or None, got {cutoff}")
        if time_dim < 0 or time_dim % 2:
            raise ValueError(f"EGNN time_dim must be 0 or a positive even number, got {time_dim}")
        if max_chunk_edges is not None and max_chunk_edges < 0:
            raise ValueError(f"EGNN max_chunk_edges must be >= 0 or None, got {max_chunk_edges}")
        if box is not None:
            lengths = [float(box)] * spatial_dim if isinstance(box, (int, float)) else \
                [float(b) for b in box]
            if len(lengths) != spatial_dim or not all(b > 0 for b in lengths):
                raise ValueError(f"EGNN box needs one positive length or {spatial_dim} of them, "
                                 f"got {box}")
            box_t: torch.Tensor | None = torch.tensor(lengths)
        else:
            box_t = None
        # Not persistent: the box is a constructor argument, and state dicts stay compatible.
        self.register_buffer("box", box_t, persistent=False)
        self.n_particles = int(n_particles)
        self.spatial_dim = int(spatial_dim)
        self.hidden = int(hidden)
        self.n_layers = int(n_layers)
        self.n_node_types = int(n_node_types)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.time_dim = int(time_dim)
        self.max_chunk_edges = None if max_chunk_edges is None else int(max_chunk_edges)
        self.time_embedding = FourierTimeEmbedding(time_dim) if time_dim else None
        in_dim = (time_dim or 1) + self.n_node_types
        self.embed = nn.Linear(in_dim, hidden)
        per_layer = coords_range / n_layers
        self.layers = nn.ModuleList(
            EGNNLayer(hidden, attention=attention, tanh=tanh, coords_range=per_layer,
                      update_nodes=k < n_layers - 1)
            for k in range(n_layers)
        )
        self._edge_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ space contract
    def check_space(self, space: StateSpace) -> None:
        """Require a particle space of shape ``(n_particles, spatial_dim)``.

        A :class:`~adjoint_core.problem.spaces.PeriodicSpace` is accepted only by a model built
        with the
        same ``box`` (minimum-image edges), and a model with a ``box`` only fits such a space.

        Raises:
            ValueError: ``space`` is not a particle space, its shape differs, or the
                periodicity (box) of model and space differ.
        """
        shape = getattr(space, "particle_shape", None)
        if shape is None:
            raise ValueError(
                f"EGNN needs a particle state space (n_particles, spatial_dim), got {space} "
                f"with event shape {getattr(space, 'event_shape', None)}; use e.g. "
                f"EuclideanSpace(n_particles, spatial_dim, mean_free=True), or a flat model "
                f"such as MLP for non-particle states"
            )
        if tuple(shape) != (self.n_particles, self.spatial_dim):
            raise ValueError(
                f"EGNN(n_particles={self.n_particles}, spatial_dim={self.spatial_dim}) does not "
                f"fit state space {space} with particle shape {tuple(shape)}"
            )
        if isinstance(space, PeriodicSpace):
            if self.box is None:
                raise ValueError(
                    f"EGNN without a box uses plain coordinate differences and cannot act on the "
                    f"periodic space {space}; build it with box={list(space.box)} (the 'egnn' "
                    f"factory does this automatically)"
                )
            want = torch.tensor(space.box, dtype=torch.float64)
            if not torch.allclose(self.box.double().cpu(), want, rtol=1e-6, atol=0):
                raise ValueError(f"EGNN was built for box {self.box.tolist()} but the space "
                                 f"{space} has box {list(space.box)}")
        elif self.box is not None:
            raise ValueError(f"EGNN with a periodic box {self.box.tolist()} uses minimum-image "
                             f"edges and does not fit the non-periodic space {space}")

    # ------------------------------------------------------------------ graph
    def _full_edges(self, batch: int, device: torch.device) -> torch.Tensor:
        key = (batch, self.n_particles, str(device))
        edges = self._edge_cache.get(key)
        if edges is None:
            if len(self._edge_cache) >= _CACHE_SIZE:
                self._edge_cache.pop(next(iter(self._edge_cache)))
            edges = fully_connected_edges(batch, self.n_particles, device)
            self._edge_cache[key] = edges
        return edges

    def _node_input(self, t: torch.Tensor, x: torch.Tensor, context: dict | None) -> torch.Tensor:
        """Node input features ``(batch, N, f)``: time (embedding) and one-hot node type."""
        batch, n = x.shape[0], self.n_particles
        t = t.to(device=x.device, dtype=x.dtype).reshape(-1)
        if t.numel() == 1 and batch != 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"EGNN: t has {t.shape[0]} entries for a batch of {batch}")
        feat = t[:, None] if self.time_embedding is None else self.time_embedding(t)
        feat = feat[:, None, :].expand(batch, n, feat.shape[-1])
        if self.n_node_types:
            types = None if context is None else context.get("node_types")
            if types is None:
                raise ValueError(
                    f"EGNN(n_node_types={self.n_node_types}) needs context['node_types'], a long "
                    f"tensor of shape (batch, {n}) or ({n},)"
                )
            types = torch.as_tensor(types, device=x.device)
            if types.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.uint8):
                raise ValueError(f"EGNN: context['node_types'] must be integer, got {types.dtype}")
            if types.ndim == 1:
                types = types.expand(batch, -1)
            if tuple(types.shape) != (batch, n):
                raise ValueError(
                    f"EGNN: context['node_types'] must have shape ({batch}, {n}) or ({n},), got "
                    f"{tuple(types.shape)}"
                )
            lo, hi = int(types.min()), int(types.max())
            if lo < 0 or hi >= self.n_node_types:
                raise ValueError(
                    f"EGNN: node types must lie in [0, {self.n_node_types}), got values in "
                    f"[{lo}, {hi}]"
                )
            onehot = F.one_hot(types.long(), self.n_node_types).to(x.dtype)
            feat = torch.cat([feat, onehot], dim=-1)
        return feat

    # ------------------------------------------------------------------ forward
    def forward(
        self, t: torch.Tensor, x: torch.Tensor, context: dict | None = None
    ) -> torch.Tensor:
        """Control ``u_θ(t, x)``.

        Args:
            t: Times, shape ``(batch,)`` (a single time is broadcast).
            x: Particle positions, shape ``(batch, n_particles, spatial_dim)``.
            context: ``{"node_types": LongTensor (batch, n_particles)}`` when
                ``n_node_types > 0``; otherwise ignored.

        Returns:
            Mean-free displacement, shape ``(batch, n_particles, spatial_dim)``.
        """
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_particles, self.spatial_dim):
            raise ValueError(
                f"EGNN expects x of shape (batch, {self.n_particles}, {self.spatial_dim}), got "
                f"{tuple(x.shape)}"
            )
        feat = self._node_input(t, x, context)
        batch = x.shape[0]
        step = self._graphs_per_chunk(batch, x.device)
        if step >= batch:
            return self._forward_graphs(feat, x)
        # The graphs are independent: evaluating them in chunks gives the same result and keeps
        # every per-edge tensor small (see ``max_chunk_edges``).
        return torch.cat([self._forward_graphs(feat[i:i + step], x[i:i + step])
                          for i in range(0, batch, step)])

    def _graphs_per_chunk(self, batch: int, device: torch.device) -> int:
        limit = self.max_chunk_edges
        if limit is None:
            limit = _AUTO_CHUNK_ELEMENTS // self.hidden if device.type == "cpu" else 0
        if limit <= 0:
            return max(batch, 1)
        return max(1, limit // (self.n_particles * (self.n_particles - 1)))

    def _forward_graphs(self, feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Network on a batch of graphs: node inputs ``(B, N, f)``, positions ``(B, N, d)``."""
        batch, n, d = x.shape
        h = self.embed(feat.reshape(batch * n, -1))
        pos0 = x.reshape(batch * n, d)
        edge_index = self._full_edges(batch, x.device)
        degree: int | None = n - 1
        src, dst = edge_index
        box = None if self.box is None else self.box.to(x.dtype)
        diff0 = pos0[dst] - pos0[src]
        if box is not None:
            diff0 = minimum_image(diff0, box)
        sq = diff0.square().sum(dim=-1, keepdim=True)
        if self.cutoff is not None:
            keep = sq.squeeze(-1) < self.cutoff ** 2
            edge_index, sq, degree = edge_index[:, keep], sq[keep], None
        # x_L - x_0 accumulated as the sum of the layer updates: the same value as the
        # difference of positions, without its cancellation error in float32.
        pos, disp = pos0, None
        for layer in self.layers:
            h, dpos = layer(h, pos, sq, edge_index, degree, box)
            pos = pos + dpos
            disp = dpos if disp is None else disp + dpos
        out = disp.view(batch, n, d)
        return out - out.mean(dim=1, keepdim=True)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"n_particles={self.n_particles}, spatial_dim={self.spatial_dim}, "
                f"hidden={self.hidden}, n_layers={self.n_layers}, "
                f"n_node_types={self.n_node_types}, cutoff={self.cutoff}, "
                f"time_dim={self.time_dim}, max_chunk_edges={self.max_chunk_edges}, "
                f"box={None if self.box is None else self.box.tolist()}")


def egnn(
    space: StateSpace, hidden: int = 128, n_layers: int = 5, attention: bool = True,
    tanh: bool = True, coords_range: float = 15.0, n_node_types: int = 0,
    cutoff: float | None = None, time_dim: int = 0, max_chunk_edges: int | None = None,
    box: float | list[float] | None = None,
) -> EGNN:
    """Registry factory: an :class:`EGNN` sized from ``space.particle_shape``.

    Args:
        space: The sampler's state space; must be a particle space (injected by the registry).
        hidden: Width of node features and messages.
        n_layers: Number of equivariant layers.
        attention: Sigmoid gate on each message.
        tanh: Bound the coordinate update (``coords_range / n_layers`` per layer).
        coords_range: Total range of the bounded coordinate update.
        n_node_types: Number of particle types read from ``context["node_types"]`` (0: none).
        cutoff: Distance cut-off of the message graph (``None``: fully connected).
        time_dim: Width of a sinusoidal time embedding (0: the scalar ``t``).
        max_chunk_edges: Edges per evaluation chunk (``None``: automatic, ``0``: no chunking);
            see :class:`EGNN`.
        box: Periodic box for minimum-image edges; ``None`` (default): taken from ``space``
            when it is a :class:`~adjoint_core.problem.spaces.PeriodicSpace`, else no periodicity.

    Raises:
        ValueError: ``space`` is not a particle space, a parameter is out of range, or
            ``box`` differs from the periodic space's box.
    """
    shape = getattr(space, "particle_shape", None)
    if shape is None:
        raise ValueError(
            f"the 'egnn' model needs a particle state space (n_particles, spatial_dim), got "
            f"{space}; use e.g. EuclideanSpace(n_particles, spatial_dim, mean_free=True), or "
            f"a flat model such as MLP for non-particle states"
        )
    n_particles, spatial_dim = shape
    if box is None and isinstance(space, PeriodicSpace):
        box = list(space.box)
    model = EGNN(n_particles, spatial_dim, hidden=hidden, n_layers=n_layers,
                 attention=attention, tanh=tanh, coords_range=coords_range,
                 n_node_types=n_node_types, cutoff=cutoff, time_dim=time_dim,
                 max_chunk_edges=max_chunk_edges, box=box)
    model.check_space(space)
    return model

