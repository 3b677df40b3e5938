"""The ``adjoint-core`` command line.

Commands::

    adjoint-core train CONFIG --out RUN_DIR
    adjoint-core sample RUN_DIR --num-samples N --out FILE.npy [--resample K]
    adjoint-core evaluate FILE.npy --reference REF.npy --energy NAME [--out FILE.json]
    adjoint-core mcmc CONFIG --out FILE.npy   (samples + FILE.json convergence report)
    adjoint-core plugins
    adjoint-core info          (versions and device, for bug reports; also --version)

``train`` ends with a plain verdict (untrained vs trained vs reference) and the paths of its
plots. ``--reference`` and ``eval.reference`` take a registered reference name (``dw4_val``)
or a file.

``train`` also runs data-parallel under ``torchrun --nproc-per-node N adjoint-core train …``
(or ``python -m torch.distributed.run … -m adjoint_core.app.cli train …``): rank 0 alone prints,
shows the progress bar and writes the run directory (see ``docs/scaling.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from adjoint_core.app.checkpoint import CheckpointError
from adjoint_core.plugins.registry import ConfigError, default_registry

__all__ = ["main"]


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``adjoint-core train`` (data-parallel under ``torchrun``; only rank 0 prints)."""
    from adjoint_core.app.run import train_run

    record = train_run(args.config, args.out, progress=not args.no_progress)
    if _rank() != 0:
        return 0
    summary = {
        "run_dir": str(args.out),
        "evaluations": record["evaluations"],
        "counters": record["counters"],
        "timers_s": record["timers"],
        "grad_steps_per_energy_eval": record["grad_steps_per_energy_eval"],
    }
    print(json.dumps(summary, indent=2))
    print(_verdict(record, Path(args.out)))
    return 0


#: Metrics of a run's evaluations shown by the verdict, with what they measure.
_VERDICT_METRICS = {
    "energy_w2": "energy W2: distance between the energy histograms of samples and reference",
    "geometric_w2_papers": "geometric W2: optimal-transport distance between particle "
                           "configurations up to rotation, reflection and permutation "
                           "(the papers' protocol)",
    "euclidean_w2": "Euclidean W2: optimal-transport distance between the states",
    "periodic_w2": "periodic W2: optimal-transport distance with minimum-image distances",
    "pair_distance_w2": "pair-distance W2: distance between the interparticle-distance "
                        "histograms (minimum image)",
}
#: Plots written by a run (:func:`adjoint_core.evaluation.plotting.plot_run`).
_PLOTS = {
    "energy_hist.png": "energy histogram, samples vs reference",
    "samples_2d.png": "samples over the target density",
    "pair_distances.png": "interparticle distances, samples vs reference",
    "loss.png": "training loss and buffer energy per epoch",
}


def _verdict(record: dict, out: Path) -> str:
    """Plain-language summary of a run: untrained vs trained vs reference, and its pictures."""
    evals = {e.get("tag"): e for e in record.get("evaluations", [])}
    final, start = evals.get("final"), evals.get("untrained") or evals.get("warm-start")
    lines = ["", "Verdict"]
    if final is None:
        lines.append("  no evaluation against a reference (the config has no eval.reference)")
    else:
        keys = [k for k in _VERDICT_METRICS if final.get(k) is not None]
        rows = [("", *[k.replace("_papers", "") for k in keys], "mean energy")]
        if start is not None:
            rows.append((f"before training ({start['tag']})",
                         *[f"{start.get(k, float('nan')):.4g}" for k in keys],
                         f"{start['energy_mean']:.4g}"))
        rows.append((f"after training (epoch {final['epoch']})",
                     *[f"{final[k]:.4g}" for k in keys], f"{final['energy_mean']:.4g}"))
        rows.append(("reference samples", *["-"] * len(keys),
                     f"{final['reference_energy_mean']:.4g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                                   for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                  for r in rows]
        lines += [f"  {_VERDICT_METRICS[k]}." for k in keys]
        sizes = f"{int(final['n_samples'])} samples"
        if final.get("geometric_samples") and "geometric_w2_papers" in keys:
            sizes += f" ({int(final['geometric_samples'])} for the geometric W2)"
        lines.append(f"  Lower is better (0: the same distribution); measured on {sizes} against "
                     "as many reference samples, so even two exact sample sets differ a little.")
        if start is not None and final["energy_w2"] < start["energy_w2"]:
            fold = start["energy_w2"] / max(final["energy_w2"], 1e-12)
            lines.append(f"  Training lowered the energy W2 {fold:.0f}-fold; the mean energy moved "
                         f"from {start['energy_mean']:.4g} to {final['energy_mean']:.4g} "
                         f"(reference {final['reference_energy_mean']:.4g}).")
    c = record.get("counters", {})
    lines.append(f"  Budget: {c.get('energy_evals', 0):,} energy evaluations, "
                 f"{c.get('grad_steps', 0):,} gradient steps.")
    plots = [(out / "plots" / name, what) for name, what in _PLOTS.items()
             if (out / "plots" / name).is_file()]
    if plots:
        lines.append("Pictures")
        lines += [f"  {path}  ({what})" for path, what in plots]
    return "\n".join(lines)


def cmd_sample(args: argparse.Namespace) -> int:
    """``adjoint-core sample``."""
    from tqdm.auto import tqdm

    from adjoint_core.app.run import load_run

    sampler = load_run(args.run_dir, device=args.device)
    gen = torch.Generator(device=sampler.device).manual_seed(args.seed)
    bs = args.batch_size or sampler.settings.sim_batch_size
    if args.resample:
        from adjoint_core.evaluation.importance import importance_resample

        if args.resample < 1:
            raise ConfigError(f"--resample must be an integer >= 1 (oversampling factor), got "
                              f"{args.resample}")
        print(f"simulating {args.resample} x {args.num_samples} paths for importance resampling")
        rs = importance_resample(sampler, args.num_samples, args.resample, generator=gen,
                                 n_steps=args.n_steps, batch_size=bs,
                                 progress=not args.no_progress)
        x = sampler.space.flatten(rs.x).cpu().numpy()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, x)
        print(f"wrote {x.shape[0]} importance-resampled samples of width {x.shape[1]} to {out} "
              f"(normalised ESS {rs.ess:.4f} of {rs.n_drawn} paths, {rs.n_unique} distinct)")
        warning = rs.few_effective_warning()
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    chunks = []
    with tqdm(total=args.num_samples, desc="sampling", unit="sample",
              disable=args.no_progress) as bar:
        for start in range(0, args.num_samples, bs):
            b = min(bs, args.num_samples - start)
            chunks.append(sampler.sample(b, n_steps=args.n_steps, batch_size=b, generator=gen))
            bar.update(b)
    x = sampler.space.flatten(torch.cat(chunks)).cpu().numpy()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    print(f"wrote {x.shape[0]} samples of width {x.shape[1]} to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``adjoint-core evaluate``."""
    from adjoint_core.app.run import evaluate_samples, load_reference
    from adjoint_core.problem.spaces import EuclideanSpace

    params = {}
    for item in args.param or []:
        if "=" not in item:
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        params[k] = _parse_value(v)
    energy = default_registry().build("energy", args.energy, params)
    shape = energy.event_shape
    space = (EuclideanSpace(shape[0], shape[1], mean_free=True) if len(shape) == 2
             else EuclideanSpace(dim=int(np.prod(shape))))
    samples = load_reference(args.samples, space)
    reference = load_reference(args.reference, space)
    res = evaluate_samples(samples, reference, energy, space, args.num_samples,
                           args.geometric_samples, tuple(args.protocol), seed=args.seed)
    res = {"samples": str(args.samples), "reference": str(args.reference),
           "energy": args.energy, **res}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_mcmc(args: argparse.Namespace) -> int:
    """``adjoint-core mcmc`` (see :mod:`adjoint_core.mcmc.run`)."""
    from adjoint_core.mcmc.run import run_mcmc_config

    report = run_mcmc_config(args.config, args.out, progress=not args.no_progress)
    print(json.dumps({k: report[k] for k in ("samples", "shape", "diagnostics", "wall_time_s")}
                     | ({"evaluation": report["evaluation"]} if "evaluation" in report else {}),
                     indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    """``adjoint-core plugins``."""
    reg = default_registry()
    rows = [(e.kind, e.name, e.distribution, e.plugin, e.target) for e in reg.entries()]
    if args.json:
        print(json.dumps({"components": [dict(zip(("kind", "name", "distribution", "plugin",
                                                        "target"), r, strict=True)) for r in rows],
                          "failures": [f.__dict__ for f in reg.failures]}, indent=2))
        return 0
    head = ("KIND", "NAME", "DISTRIBUTION", "PLUGIN", "TARGET")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for f in reg.failures:
        print(f"FAILED plugin {f.plugin!r} from {f.distribution}: {f.error}")
    return 0


def environment_info() -> dict:
    """Versions and device for bug reports (what ``adjoint-core info`` prints).

    Returns:
        ``{"adjoint-core", "plugins" ({distribution: version}), "plugin_failures", "python",
        "platform", "torch", "numpy", "rdkit", "device"}``; a missing optional package is
        ``None``.
    """
    import importlib.metadata as im
    import platform

    import adjoint_core

    def version(dist: str) -> str | None:
        try:
            return im.version(dist)
        except im.PackageNotFoundError:
            return None

    plugins = {ep.dist.name: ep.dist.version for ep in im.entry_points(group="adjoint_core")
               if ep.dist is not None and ep.dist.name != "adjoint-core"}
    if torch.cuda.is_available():
        device = (f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} device(s), "
                  f"CUDA {torch.version.cuda})")
    else:
        device = f"cpu: {torch.get_num_threads()} threads ({os.cpu_count()} cores), no CUDA"
    return {
        "adjoint-core": adjoint_core.__version__,
        "plugins": dict(sorted(plugins.items())),
        "plugin_failures": [f"{f.plugin} ({f.distribution}): {f.error}"
                            for f in default_registry().failures],
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "rdkit": version("rdkit"),
        "device": device,
    }


def cmd_info(args: argparse.Namespace) -> int:
    """``adjoint-core info``: versions of the core, plugins and dependencies, and the device."""
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"adjoint-core {info['adjoint-core']}")
    for dist, ver in info["plugins"].items():
        print(f"  {dist} {ver}")
    for failure in info["plugin_failures"]:
        print(f"  FAILED {failure}")
    for key in ("python", "platform", "torch", "numpy", "rdkit", "device"):
        print(f"{key}: {info[key] or 'not installed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``adjoint-core``."""
    import adjoint_core

    p = argparse.ArgumentParser(prog="adjoint-core", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version",
                   version=f"adjoint-core {adjoint_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a sampler from a YAML config")
    t.add_argument("config", help="run config (YAML)")
    t.add_argument("--out", required=True, help="run directory (resumes if it has a checkpoint)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--num-samples", type=int, required=True)
    s.add_argument("--out", required=True, help="output .npy, shape (N, prod(event_shape))")
    s.add_argument("--n-steps", type=int, default=None, help="SDE steps (default: training)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=None)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--resample", type=int, default=0, metavar="K",
                   help="simulate K x N paths and resample N by their path weights "
                        "(costs K x N energy evaluations; see adjoint_core.evaluation.importance)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="energy W2 and geometric W2 of samples vs a reference")
    e.add_argument("samples", help=".npy of shape (N, prod(event_shape))")
    e.add_argument("--reference", required=True)
    e.add_argument("--energy", required=True, help="registered energy name, e.g. dw4")
    e.add_argument("--param", action="append", help="energy parameter KEY=VALUE (repeatable)")
    e.add_argument("--num-samples", type=int, default=2000)
    e.add_argument("--geometric-samples", type=int, default=2000)
    e.add_argument("--protocol", nargs="+", default=["papers", "invariant"],
                   choices=["papers", "invariant"])
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="write the JSON here too")
    e.set_defaults(func=cmd_evaluate)

    mc = sub.add_parser("mcmc", help="MALA/RWM (optionally tempered) MCMC on a config's energy")
    mc.add_argument("config", help="config (YAML) with energy, space and an mcmc: section")
    mc.add_argument("--out", required=True, help="output .npy; the report goes to .json beside")
    mc.add_argument("--no-progress", action="store_true")
    mc.set_defaults(func=cmd_mcmc)

    pl = sub.add_parser("plugins", help="list registered components and failed plugins")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    info = sub.add_parser("info", help="versions of the core, plugins, torch, numpy, rdkit and "
                                       "the device in use (for bug reports)")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    _add_plugin_commands(sub)
    return p


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Let installed plugins add sub-commands (hook ``register_commands``)."""
    reg = default_registry()
    for impl in reg.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(subparsers=sub)
        except Exception as exc:  # a broken plugin command must not break the CLI
            reg.record_failure(impl.plugin_name, exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adjoint-core`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError) as exc:
        rank = f"[rank {_rank()}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
        print(f"{rank}error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
