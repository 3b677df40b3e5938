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

A mistake in an argument, a config or an input file ends with one line on stderr,
``error: <field or argument>: <value>: <what is allowed>``, and a non-zero exit status
(a traceback means a bug). Exit statuses: 0 success; 1 the run failed for a reason outside its
inputs (a write failed: disk full, permission; out of memory); 2 a bad argument, config, file,
or a run directory in use by another training; 3 training diverged (non-finite losses or
samples; the last good checkpoint is kept); 143 (128 + SIGTERM) training was pre-empted by
SIGTERM or SIGUSR1, wrote a checkpoint at the end of its current epoch and stopped: run the same
command to resume.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from adjoint_core.app.checkpoint import CheckpointError, CheckpointWriteError
from adjoint_core.plugins.registry import ConfigError, default_registry, is_resource_error
from adjoint_core.training.trainer import NonFiniteEnergyError

__all__ = ["main", "ArgumentParser", "arg_int", "arg_seed", "arg_device", "arg_output",
           "EXIT_FAILED", "EXIT_USAGE", "EXIT_DIVERGED", "EXIT_PREEMPTED"]

#: Exit status: the run failed for a reason outside its inputs (a write failed, out of memory).
EXIT_FAILED = 1
#: Exit status: a bad argument, config or input file, or a run directory in use (argparse's too).
EXIT_USAGE = 2
#: Exit status: training diverged (non-finite losses or samples); the last checkpoint is kept.
EXIT_DIVERGED = 3
#: Exit status: pre-empted by SIGTERM or SIGUSR1 after writing a checkpoint (128 + SIGTERM).
EXIT_PREEMPTED = 143


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


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line: ``error: <argument>: <value>: <allowed>``.

    Sub-parsers (also those plugins add through ``register_commands``) are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with status 2 (argparse's usage-error status)."""
        self.exit(EXIT_USAGE, f"error: {_argparse_message(message, self)}\n")


def _argparse_message(message: str, parser: argparse.ArgumentParser) -> str:
    """An argparse message in the ``<argument>: <value>: <what is allowed>`` form."""
    message = " ".join(message.split())
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    patterns: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"argument (?P<a>[^:]+): invalid choice: (?P<v>.*) \(choose from (?P<c>.*)\)",
         lambda m: f"{m['a']}: {m['v']}: one of {m['c']}"),
        (r"argument (?P<a>[^:]+): invalid (?P<t>\w+) value: (?P<v>.*)",
         lambda m: f"{m['a']}: {m['v']}: a value of type {m['t']}"),
        (r"argument (?P<a>[^:]+): expected (?P<n>.*) arguments?",
         lambda m: f"{m['a']}: missing value: expects {m['n']} value(s) (usage: {usage})"),
        (r"argument (?P<a>[^:]+): (?P<rest>.*)", lambda m: f"{m['a']}: {m['rest']}"),
        (r"the following arguments are required: (?P<a>.*)",
         lambda m: f"{m['a']}: missing: required (usage: {usage})"),
        (r"unrecognized arguments: (?P<a>.*)",
         lambda m: f"{m['a']}: unrecognized: not an argument of this command (see "
                   f"{parser.prog} COMMAND --help)"),
    ]
    for pattern, fmt in patterns:
        m = re.fullmatch(pattern, message)
        if m:
            return fmt(m)
    return message


def arg_int(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low`` (and ``<= high``).

    Args:
        low: Smallest value allowed.
        high: Largest value allowed (``None``: no bound).

    Returns:
        The conversion function; a bad value reads ``--arg: 'x': an integer >= low``.
    """
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {allowed}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r}: {allowed}")
        return value

    parse.__name__ = "int"
    return parse


_seed = arg_int(0, 2**63 - 1)


def arg_seed(text: str) -> int:
    """An argparse ``type``: a seed of torch generators, an integer ``0 <= seed < 2**63``."""
    return _seed(text)


def arg_device(text: str) -> str:
    """An argparse ``type``: a device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    from adjoint_core.training import distributed

    try:
        distributed.resolve_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("device: ")) from None
    return text


def _unwritable(path: Path, directory: bool) -> str | None:
    """Why ``path`` (a file, or a directory) cannot be written; ``None`` when it can."""
    if directory and path.exists() and not path.is_dir():
        return "exists and is not a directory"
    if not directory and path.is_dir():
        return "is a directory; give a file name"
    folder = (path if directory else path.parent).absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror})"
    return None


def arg_output(directory: bool = False) -> Callable[[str], str]:
    """An argparse ``type``: a path where a file (or a directory) can be written.

    Nothing is created: the nearest existing folder gets a temporary file to prove that it is
    writable, so a command fails before its work rather than when it saves the result.
    """

    def parse(text: str) -> str:
        if not text or "\x00" in text:
            raise argparse.ArgumentTypeError(f"{text!r}: a path (not empty, no NUL character)")
        reason = _unwritable(Path(text), directory)
        if reason:
            raise argparse.ArgumentTypeError(f"{text}: {reason}")
        return text

    parse.__name__ = "path"
    return parse


def save_array(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically (temporary file, then rename); returns the path.

    ``np.save`` adds ``.npy`` to a name without it; so does this, and the path returned is the
    one written.
    """
    from adjoint_core.app.checkpoint import atomic_write

    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    return atomic_write(path, lambda fh: np.save(fh, array))


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

        print(f"simulating {args.resample} x {args.num_samples} paths for importance resampling")
        rs = importance_resample(sampler, args.num_samples, args.resample, generator=gen,
                                 n_steps=args.n_steps, batch_size=bs,
                                 progress=not args.no_progress)
        x = sampler.space.flatten(rs.x).cpu().numpy()
        out = save_array(args.out, x)
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
    out = save_array(args.out, x)
    print(f"wrote {x.shape[0]} samples of width {x.shape[1]} to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``adjoint-core evaluate``."""
    from adjoint_core.app.run import evaluate_samples, load_reference
    from adjoint_core.problem.spaces import EuclideanSpace

    params = {}
    for item in args.param or []:
        k, v = item.split("=", 1)
        params[k] = _parse_value(v)
    try:
        energy = default_registry().build("energy", args.energy, params)
    except ConfigError as exc:  # name the arguments, not the config fields
        text = str(exc)
        text = ("--energy" + text.removeprefix("energy.name")) if text.startswith("energy.name") \
            else re.sub(r"^energy\.(\w+)", r"--param \1", text)
        raise ConfigError(text) from None
    shape = energy.event_shape
    space = (EuclideanSpace(shape[0], shape[1], mean_free=True) if len(shape) == 2
             else EuclideanSpace(dim=int(np.prod(shape))))
    samples = load_reference(args.samples, space, field="samples", allow_nonfinite=True)
    finite = torch.isfinite(samples.flatten(1)).all(-1)
    samples = samples[finite]
    reference = load_reference(args.reference, space, field="--reference")
    res = evaluate_samples(samples, reference, energy, space, args.num_samples,
                           args.geometric_samples, tuple(args.protocol), seed=args.seed)
    res = {"samples": str(args.samples), "reference": str(args.reference),
           "energy": args.energy, "nonfinite_samples_dropped": int((~finite).sum()), **res}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        from adjoint_core.app.checkpoint import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


def _key_value(text: str) -> str:
    """The ``--param`` argument type: ``KEY=VALUE`` with a non-empty key."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"{text!r}: KEY=VALUE (a parameter of the energy)")
    return text


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

    p = ArgumentParser(prog="adjoint-core", description=__doc__.split("\n")[0],
                       epilog="Exit status: 0 success; 1 a write failed or memory ran out; 2 a "
                              "bad argument, config or file, or a run directory in use; 3 "
                              "training diverged (the last good checkpoint is kept); 143 "
                              "pre-empted by SIGTERM or SIGUSR1 after writing a checkpoint (run "
                              "the same command to resume).")
    p.add_argument("--version", action="version",
                   version=f"adjoint-core {adjoint_core.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a sampler from a YAML config",
                       description="Train a sampler from a YAML config into a run directory, or "
                                   "resume it. On SIGTERM or SIGUSR1 (what SLURM sends before "
                                   "a time limit) the run finishes its current epoch, writes a "
                                   "checkpoint and exits with status 143; the same command "
                                   "resumes it bit for bit. A run that diverges (non-finite "
                                   "losses or samples) stops with status 3 and keeps its last "
                                   "good checkpoint.")
    t.add_argument("config", help="run config (YAML)")
    t.add_argument("--out", type=arg_output(directory=True), required=True,
                   help="run directory (resumes if it has a checkpoint; locked while training)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run_dir")
    s.add_argument("--num-samples", type=arg_int(1), required=True)
    s.add_argument("--out", type=arg_output(), required=True,
                   help="output .npy, shape (N, prod(event_shape))")
    s.add_argument("--n-steps", type=arg_int(1), default=None,
                   help="SDE steps (default: training)")
    s.add_argument("--batch-size", type=arg_int(1), default=None)
    s.add_argument("--seed", type=arg_seed, default=0)
    s.add_argument("--device", type=arg_device, default=None)
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--resample", type=arg_int(0), default=0, metavar="K",
                   help="simulate K x N paths and resample N by their path weights "
                        "(costs K x N energy evaluations; see adjoint_core.evaluation.importance)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("evaluate", help="energy W2 and geometric W2 of samples vs a reference")
    e.add_argument("samples", help=".npy of shape (N, prod(event_shape))")
    e.add_argument("--reference", required=True)
    e.add_argument("--energy", required=True, help="registered energy name, e.g. dw4")
    e.add_argument("--param", action="append", type=_key_value,
                   help="energy parameter KEY=VALUE (repeatable)")
    e.add_argument("--num-samples", type=arg_int(2), default=2000)
    e.add_argument("--geometric-samples", type=arg_int(0), default=2000)
    e.add_argument("--protocol", nargs="+", default=["papers", "invariant"],
                   choices=["papers", "invariant"])
    e.add_argument("--seed", type=arg_seed, default=0)
    e.add_argument("--out", type=arg_output(), default=None, help="write the JSON here too")
    e.set_defaults(func=cmd_evaluate)

    mc = sub.add_parser("mcmc", help="MALA/RWM (optionally tempered) MCMC on a config's energy")
    mc.add_argument("config", help="config (YAML) with energy, space and an mcmc: section")
    mc.add_argument("--out", type=arg_output(), required=True,
                    help="output .npy; the report goes to .json beside")
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


def _report(prefix: str, exc: BaseException | str, status: int) -> int:
    """Print ``[rank R] <prefix>: <message>`` as one line on stderr; returns ``status``."""
    rank = f"[rank {_rank()}] " if _world_size() > 1 else ""
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"{rank}{prefix}: {text}", file=sys.stderr, flush=True)
    return status


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def _os_error_message(exc: OSError) -> str:
    """``<path>: <what failed> (<ERRNO>: <reason>)`` of an operating-system error."""
    name = errno.errorcode.get(exc.errno, "?") if exc.errno is not None else "?"
    where = exc.filename if exc.filename is not None else "file"
    return f"{where}: cannot be read or written ({name}: {exc.strerror or exc})"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adjoint-core`` console script.

    Returns:
        The exit status (see the module's documentation): 0, or :data:`EXIT_FAILED`,
        :data:`EXIT_USAGE`, :data:`EXIT_DIVERGED`, :data:`EXIT_PREEMPTED` after one line on
        stderr. argparse's own errors exit with status 2 through ``SystemExit``.
    """
    from adjoint_core.app.run import Preempted

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CheckpointWriteError as exc:
        return _report("error", exc, EXIT_FAILED)
    except (ConfigError, CheckpointError) as exc:
        return _report("error", exc, EXIT_USAGE)
    except NonFiniteEnergyError as exc:
        return _report("error", exc, EXIT_DIVERGED)
    except Preempted as exc:
        return _report("preempted", exc, EXIT_PREEMPTED)
    except OSError as exc:
        return _report("error", _os_error_message(exc), EXIT_FAILED)
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not (isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or is_resource_error(exc)):
            raise
        return _report("error", f"memory: out of memory ({' '.join(str(exc).split())[:160]}); "
                                "lower the sizes: buffer.capacity, train.sim_batch_size, "
                                "train.train_batch_size, the model, --batch-size", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
