"""Forward + backward timing of :class:`adjoint_core_egnn.EGNN` on CPU.

Run from the repository root, with the thread count set explicitly, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python plugins/adjoint-core-egnn/benchmarks/bench_egnn.py
    OMP_NUM_THREADS=2 .venv/bin/python plugins/adjoint-core-egnn/benchmarks/bench_egnn.py --naive

Prints the median and minimum seconds of one forward + backward pass (loss = mean square error
of the output against a random target; no optimiser step) for the papers' LJ-13 and DW-4
settings, with the default automatic chunking of the batch and without it. ``--naive`` also
times an unfactored, unchunked reference with the same parameters (first edge layer applied to
the concatenated edge features ``[h_i, h_j, r_ij, a_ij]``, gathers and scatter sums), and checks
that it gives the same output. Runs are interleaved, so a busy machine slows
both alike; compare the minima.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from adjoint_core_egnn import EGNN
from torch_geometric.utils import scatter

SETTINGS = {
    "lj13": dict(n_particles=13, spatial_dim=3, hidden=128, n_layers=5, batch=512),
    "dw4": dict(n_particles=4, spatial_dim=2, hidden=64, n_layers=3, batch=512),
    "lj55": dict(n_particles=55, spatial_dim=3, hidden=128, n_layers=5, batch=128),
}


def naive_forward(model: EGNN, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same network evaluated edge by edge without the factored first edge layer."""
    batch, n, d = x.shape
    h = model.embed(model._node_input(t, x, None).reshape(batch * n, -1))
    pos0 = x.reshape(batch * n, d)
    src, dst = model._full_edges(batch, x.device)
    a = (pos0[dst] - pos0[src]).square().sum(-1, keepdim=True)
    pos = pos0
    for layer in model.layers:
        diff = pos[dst] - pos[src]
        radial = diff.square().sum(-1, keepdim=True)
        m = F.silu(layer.edge_in(torch.cat([h[dst], h[src], radial, a], dim=-1)))
        m = F.silu(layer.edge_out(m))
        if layer.att is not None:
            m = m * torch.sigmoid(layer.att(m))
        phi = layer.coord_out(F.silu(layer.coord_hidden(m)))
        if layer.use_tanh:
            phi = torch.tanh(phi) * layer.coords_range
        trans = diff * phi / (torch.sqrt(radial + 1e-8) + 1.0)
        pos = pos + scatter(trans, dst, dim=0, dim_size=batch * n, reduce="sum")
        if layer.node_mlp is not None:
            agg = scatter(m, dst, dim=0, dim_size=batch * n, reduce="sum")
            h = h + layer.node_mlp(torch.cat([h, agg], dim=-1))
    out = (pos - pos0).view(batch, n, d)
    return out - out.mean(dim=1, keepdim=True)


def _step_time(fn, t, x, target) -> float:
    start = time.perf_counter()
    (fn(t, x) - target).square().mean().backward()
    return time.perf_counter() - start


def bench(name: str, repeats: int, warmup: int, naive: bool) -> dict[str, list[float]]:
    """Seconds of ``repeats`` forward + backward passes per variant for setting ``name``."""
    cfg = dict(SETTINGS[name])
    batch = cfg.pop("batch")
    torch.manual_seed(0)
    model = EGNN(**cfg)
    x = torch.randn(batch, cfg["n_particles"], cfg["spatial_dim"])
    t = torch.rand(batch)
    target = torch.randn_like(x)
    unchunked = EGNN(**cfg, max_chunk_edges=0)
    unchunked.load_state_dict(model.state_dict())
    variants = {"factored+auto-chunks": model, "factored, unchunked": unchunked}
    if naive:
        variants["naive"] = lambda t_, x_: naive_forward(model, t_, x_)
        with torch.no_grad():
            err = (model(t, x) - naive_forward(model, t, x)).abs().max().item()
        if err > 1e-5:
            raise RuntimeError(f"factored and naive EGNN disagree by {err:.2e}")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for k in range(warmup + repeats):
        for key, fn in variants.items():
            dt = _step_time(fn, t, x, target)
            model.zero_grad(set_to_none=True)
            unchunked.zero_grad(set_to_none=True)
            if k >= warmup:
                times[key].append(dt)
    return times


def main() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="*",
                        help=f"any of {', '.join(SETTINGS)} (default: lj13 dw4)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--naive", action="store_true",
                        help="also time the unfactored reference")
    args = parser.parse_args()
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; choose from {', '.join(SETTINGS)}")
    for name in args.settings or ["lj13", "dw4"]:
        for key, ts in bench(name, args.repeats, args.warmup, args.naive).items():
            print(f"{name} {key}: threads={torch.get_num_threads()} forward+backward median "
                  f"{statistics.median(ts):.3f} s, min {min(ts):.3f} s  {SETTINGS[name]}")


if __name__ == "__main__":
    main()
