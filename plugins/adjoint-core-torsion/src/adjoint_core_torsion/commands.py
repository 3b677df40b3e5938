"""``adjoint-core torsion-train``: an alias of ``adjoint-core train``.

Amortized torsional runs are ordinary core runs of the ``torsional_molecules`` problem
(:mod:`adjoint_core_torsion.molecules`): ``adjoint-core torsion-train CONFIG --out RUN_DIR``
equals ``adjoint-core train CONFIG --out RUN_DIR`` with a torch thread count. Conformers are
generated from the run directory with the chemistry plugin's ``adjoint-core conformers``.
"""

from __future__ import annotations

import argparse

import torch

from adjoint_core.app.cli import arg_int

__all__ = ["add_commands"]


def _run_train(args: argparse.Namespace) -> int:
    from adjoint_core.app.cli import main

    torch.set_num_threads(args.threads)
    return main(["train", args.config, "--out", args.out]
                + (["--no-progress"] if args.no_progress else []))


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``torsion-train`` to the ``adjoint-core`` command line."""
    p = subparsers.add_parser("torsion-train", help="alias of `train` with a torch thread count "
                              "(torsional configs: problem: {name: torsional_molecules})")
    p.add_argument("config", help="run config (YAML), as for `adjoint-core train`")
    p.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    p.add_argument("--threads", type=arg_int(1), default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)
