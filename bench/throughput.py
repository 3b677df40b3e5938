"""Seconds per SDE step and per training step of the EGNN at the papers' sizes, CPU and CUDA.

Usage (from the repository root)::

    .venv/bin/python bench/throughput.py                       # 1 and 2 CPU threads, CUDA if any
    .venv/bin/python bench/throughput.py --devices cuda --out $OUT/throughput_cuda.json
    .venv/bin/python bench/throughput.py --quick               # tiny sizes, 1 repeat (tests)

Sizes (the Adjoint Sampling / ASBS papers' networks and batches; ``--sizes`` picks some):

* ``dw4``: 4 particles in 2-D, EGNN hidden 128 x 3 layers, batch 512;
* ``lj13``: 13 particles in 3-D, EGNN 128 x 5, batch 512;
* ``lj55``: 55 particles in 3-D, EGNN 128 x 5, batch 128.

The network is built by the registry exactly as a run builds it (``model: {name: egnn,
hidden, n_layers}`` on the system's mean-free particle space). Timed, on random states and
times in ``[0, 1]``:

* ``sde_step_s``: one forward pass under ``torch.no_grad()`` (what one Euler-Maruyama step of
  a simulation costs in network time);
* ``train_step_s``: forward + backward of the regression loss (mean squared error against a
  random target; no optimizer step), what one gradient step costs in network time.

Each is the median (and minimum) of ``--repeats`` timings after ``--warmup`` untimed calls. On
CPU every size is timed with each of ``--threads`` (``torch.set_num_threads``); on CUDA with
``torch.cuda.synchronize()`` around each call, optionally also ``torch.compile``d
(``--compile``; the compile time is reported separately) and at ``--cuda-batch-scale`` times the
batch. The JSON (stdout and ``--out``, default ``bench/results/throughput_cpu.json``) records the
machine: CPU model, cores, torch version, thread counts, GPU name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from adjoint_core.plugins.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]

SIZES = {
    "dw4": dict(n_particles=4, spatial_dim=2, hidden=128, n_layers=3, batch=512),
    "lj13": dict(n_particles=13, spatial_dim=3, hidden=128, n_layers=5, batch=512),
    "lj55": dict(n_particles=55, spatial_dim=3, hidden=128, n_layers=5, batch=128),
}
QUICK = {
    "dw4": dict(n_particles=4, spatial_dim=2, hidden=8, n_layers=2, batch=8),
    "lj13": dict(n_particles=13, spatial_dim=3, hidden=8, n_layers=2, batch=4),
}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, cores, platform, torch version, CUDA device (if any), thread environment."""
    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": str(torch.__version__),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "cuda_available": torch.cuda.is_available()}
    try:
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def build(size: dict, device: str) -> torch.nn.Module:
    """The EGNN of a run with ``model: {name: egnn, hidden, n_layers}`` on this particle space."""
    reg = default_registry()
    space = reg.build("space", "euclidean", {"n_particles": size["n_particles"],
                                             "spatial_dim": size["spatial_dim"],
                                             "mean_free": True})
    torch.manual_seed(0)
    model = reg.build("model", "egnn", {"hidden": size["hidden"], "n_layers": size["n_layers"]},
                      space=space)
    return model.to(device)


def _timed(fn, device: str, repeats: int, warmup: int) -> dict:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "all": times}


def bench_size(name: str, size: dict, device: str, repeats: int, warmup: int,
               compile_model: bool = False, batch_scale: int = 1) -> dict:
    """Timings of one size on one device (the current thread count on CPU)."""
    model = build(size, device)
    batch = size["batch"] * batch_scale
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, size["n_particles"], size["spatial_dim"], generator=g)
    x = (x - x.mean(dim=1, keepdim=True)).to(device)
    t = torch.rand(batch, generator=g).to(device)
    target = torch.randn(x.shape, generator=g).to(device)
    row = {"size": name, "device": device, "batch": batch, "hidden": size["hidden"],
           "n_layers": size["n_layers"], "n_particles": size["n_particles"],
           "spatial_dim": size["spatial_dim"],
           "edges_per_call": batch * size["n_particles"] * (size["n_particles"] - 1),
           "parameters": sum(p.numel() for p in model.parameters()),
           "compiled": compile_model}
    fn = model
    if compile_model:
        t0 = time.perf_counter()
        fn = torch.compile(model)
        with torch.no_grad():
            fn(t, x)
        (fn(t, x) - target).square().mean().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        row["compile_s"] = time.perf_counter() - t0

    def sde_step():
        with torch.no_grad():
            fn(t, x)

    def train_step():
        model.zero_grad(set_to_none=True)
        (fn(t, x) - target).square().mean().backward()

    sde = _timed(sde_step, device, repeats, warmup)
    train = _timed(train_step, device, repeats, warmup)
    row.update({"sde_step_s": sde["median"], "sde_step_min_s": sde["min"],
                "train_step_s": train["median"], "train_step_min_s": train["min"],
                "sde_step_all_s": sde["all"], "train_step_all_s": train["all"]})
    if device.startswith("cuda"):
        row["cuda_max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=list(SIZES))
    p.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu", "cuda"],
                   help="cuda is skipped (and said so in the JSON) when CUDA is not available")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                   help="CPU thread counts (torch.set_num_threads)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true",
                   help="CUDA: also time the torch.compile'd network")
    p.add_argument("--cuda-batch-scale", nargs="+", type=int, default=[1],
                   help="CUDA: also time these multiples of the papers' batch (e.g. 1 4)")
    p.add_argument("--require-cuda", action="store_true",
                   help="exit with status 1 (after writing the JSON) when CUDA is unavailable")
    p.add_argument("--quick", action="store_true",
                   help="tiny networks and batches, 1 repeat, no warm-up (a smoke test)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "throughput_cpu.json"),
                   help="JSON path ('-': stdout only)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else SIZES
    names = [n for n in args.sizes if n in sizes] or list(sizes)
    repeats, warmup = (1, 0) if args.quick else (args.repeats, args.warmup)
    rows, skipped = [], []
    threads_before = torch.get_num_threads()
    if "cpu" in args.devices:
        for n_threads in args.threads:
            torch.set_num_threads(n_threads)
            for name in names:
                row = bench_size(name, sizes[name], "cpu", repeats, warmup)
                row["threads"] = n_threads
                rows.append(row)
                print(f"cpu {n_threads} thread(s) {name}: SDE step {row['sde_step_s']:.4g} s, "
                      f"train step {row['train_step_s']:.4g} s", file=sys.stderr, flush=True)
        torch.set_num_threads(threads_before)
    if "cuda" in args.devices:
        if not torch.cuda.is_available():
            skipped.append("cuda: torch.cuda.is_available() is False on this machine")
        else:
            for name in names:
                variants = [(False, s) for s in args.cuda_batch_scale]
                if args.compile:
                    variants.append((True, 1))
                for compiled, scale in variants:
                    row = bench_size(name, sizes[name], "cuda", repeats, warmup,
                                     compile_model=compiled, batch_scale=scale)
                    rows.append(row)
                    print(f"cuda {name} batch {row['batch']}{' compiled' if compiled else ''}: "
                          f"SDE step {row['sde_step_s']:.4g} s, train step "
                          f"{row['train_step_s']:.4g} s", file=sys.stderr, flush=True)
    out = {"benchmark": "bench/throughput.py", "quick": args.quick,
           "date": time.strftime("%Y-%m-%d"), "repeats": repeats, "warmup": warmup,
           "timed": {"sde_step_s": "forward under no_grad (one Euler-Maruyama step)",
                     "train_step_s": "forward + backward of an MSE loss (no optimizer step)"},
           "machine": machine(), "rows": rows, "skipped": skipped}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out != "-":
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    if args.require_cuda and not torch.cuda.is_available():
        sys.exit("--require-cuda: CUDA is not available")
    return out


if __name__ == "__main__":
    main()
