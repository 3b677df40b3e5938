"""Warm-up probe for one molecule: bridge matching on ETKDG, then conformer quality.

Trains MolecularEGNN on one molecule with the bridge-matching warm-up only (no energy
calls), then samples conformers and compares them with ETKDG's
(:func:`adjoint_core_chem.diagnostics.compare_with_etkdg`): bond-length and angle errors
against MMFF-minimised ETKDG geometry, broken bonds, clashes and MMFF energies. With
``--precondition`` the network is wrapped in ``PreconditionedControl`` (docs/chem.md).

    OMP_NUM_THREADS=1 python bench/chem_warmup_probe.py --smiles CCCC --steps 2500 \\
        [--precondition] [--out bench/results/warmup_probe_butane.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    """Run the probe; returns (and optionally writes) the result."""
    from adjoint_core_chem.diagnostics import compare_with_etkdg

    from adjoint_core.app.config import load_config
    from adjoint_core.app.run import build_trainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smiles", required=True)
    p.add_argument("--steps", type=int, default=2500, help="warm-up Adam steps")
    p.add_argument("--precondition", action="store_true")
    p.add_argument("--data-scale", type=float, default=0.5)
    p.add_argument("--noise-floor", type=float, default=0.0)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--samples", type=int, default=64, help="conformers evaluated")
    p.add_argument("--sde-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--as-epochs", type=int, default=0,
                   help="then this many Adjoint Sampling epochs on regularised MMFF94 "
                        "(16 energy evaluations and --as-steps Adam steps each)")
    p.add_argument("--as-steps", type=int, default=25, help="Adam steps per AS epoch")
    p.add_argument("--as-lr", type=float, default=3e-4, help="learning rate of the AS phase")
    p.add_argument("--as-clip", type=float, default=150.0,
                   help="per-atom clipping threshold of grad E / tau in the AS phase")
    p.add_argument("--as-grad-clip", type=float, default=None,
                   help="clip the parameters' gradient norm in the AS phase")
    p.add_argument("--temperature", type=float, default=0.5961613,
                   help="tau of the AS target in kcal/mol (default k_B * 300 K)")
    p.add_argument("--diag-every", type=int, default=5, help="diagnostics every N epochs")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    per_epoch = 100
    epochs = max(1, a.steps // per_epoch)
    model = {"name": "molecular_egnn", "hidden": a.hidden, "n_layers": a.layers,
             "time_dim": 16}
    if a.precondition:
        model.update(precondition=True, data_scale=a.data_scale, noise_floor=a.noise_floor)
    cfg = load_config({
        "seed": a.seed,
        "problem": {"name": "molecules", "smiles": [a.smiles], "max_molecules": 1,
                    "max_atoms": 200, "temperature": a.temperature},
        "schedule": {"name": "geometric", "sigma_min": 0.001, "sigma_max": 1.0},
        "model": model, "buffer": {"name": "fifo", "capacity": 128},
        "train": {"n_epochs": epochs, "warmup_epochs": epochs, "samples_per_epoch": 16,
                  "grad_steps_per_epoch": per_epoch, "train_batch_size": 16,
                  "n_sde_steps": a.sde_steps, "lr": 3e-4, "max_grad_norm": 150.0},
    })
    tr = build_trainer(cfg)
    t0 = time.perf_counter()
    rows = tr.fit()
    train_s = time.perf_counter() - t0
    as_rows: list[dict] = []
    if a.as_epochs:
        from adjoint_core_chem.diagnostics import DiagnosticsCallback

        # the warm-up above used per_epoch steps per epoch; Adjoint Sampling continues with
        # --as-steps per epoch and the same network, optimiser and schedule
        tr.settings = tr.settings.model_copy(update={
            "n_epochs": epochs + a.as_epochs, "grad_steps_per_epoch": a.as_steps,
            "lr": a.as_lr, "max_grad_norm": a.as_clip, "grad_clip": a.as_grad_clip})
        for group in tr.optimizer.param_groups:
            group["lr"] = a.as_lr
        diag = DiagnosticsCallback(targets=[0], every=a.diag_every, n_samples=a.samples,
                                   n_sde_steps=a.sde_steps, seed=123)
        t1 = time.perf_counter()
        as_rows = tr.fit(callback=diag)
        train_s += time.perf_counter() - t1
        rows += as_rows
    mol = tr.targets[0].info["molecule"]
    gen = torch.Generator().manual_seed(123)
    x = tr.sample(a.samples, n_steps=a.sde_steps, generator=gen, target=tr.targets[0])
    res = {"smiles": a.smiles, "n_atoms": mol.n_atoms, "steps": epochs * per_epoch,
           "precondition": a.precondition, "data_scale": a.data_scale,
           "noise_floor": a.noise_floor,
           "model": f"{a.hidden}x{a.layers}", "sde_steps": a.sde_steps,
           "train_seconds": round(train_s, 1), "final_loss": rows[-1]["loss"],
           **compare_with_etkdg(mol, x)}
    if a.as_epochs:
        name = tr.targets[0].name
        res.update(as_epochs=a.as_epochs, as_steps=a.as_steps, as_lr=a.as_lr,
                   as_clip=a.as_clip, as_grad_clip=a.as_grad_clip,
                   temperature=a.temperature)
        res["energy_evaluations"] = int(tr.counters["energy_evals"])
        res["as_history"] = [{"epoch": r["epoch"], "loss": r["loss"],
                              **{k.split("/")[-1]: v for k, v in r.items()
                                 if k.startswith(f"diag/{name}/")}}
                             for r in as_rows if any(k.startswith("diag/") for k in r)]
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
