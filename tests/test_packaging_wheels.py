"""``adjoint-core[chem]`` installs from built wheels into a clean virtual environment.

Builds a wheel and an sdist of the core and of every plugin distribution under ``plugins/``
with ``python -m build`` (the wheel is built from the sdist, so an incomplete sdist fails
here), creates a fresh virtual environment that sees nothing of the project's, installs
``adjoint-core[chem]`` into it with ``--find-links`` pointing at the built wheels (third-party
dependencies come from the package index; ``constraints.txt`` keeps torch at the CPU wheel),
and checks that the installed code is the built one, that ``adjoint-core plugins`` lists the
chemistry components, and that a two-epoch MMFF run of ethanol trains.

Slow (a few minutes on 2 cores, mostly unpacking torch); needs the package index or a pip
cache holding the third-party wheels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib", reason="Python >= 3.11 reads pyproject.toml here")

pytestmark = pytest.mark.slow

CHEM_COMPONENTS = {("energy", "mmff"), ("energy", "xtb"), ("model", "molecular_egnn"),
                   ("model", "egnn"), ("model", "torsion_net")}

TINY_CHEM_RUN = """
seed: 0
device: cpu
energy:   {name: mmff, smiles: "CCO"}
space:    {name: euclidean, n_particles: 9, spatial_dim: 3, mean_free: true}
schedule: {name: geometric, sigma_min: 0.001, sigma_max: 1.0}
model:    {name: molecular_egnn, smiles: "CCO", hidden: 16, n_layers: 2, time_dim: 8}
buffer:   {name: fifo, capacity: 256}
train:
  n_epochs: 2
  samples_per_epoch: 16
  sim_batch_size: 16
  grad_steps_per_epoch: 4
  train_batch_size: 16
  n_sde_steps: 10
  lr: 0.001
"""


_IGNORE_ANYWHERE = shutil.ignore_patterns(".venv", ".git", "runs", "_build", "_generated",
                                          "__pycache__", "*.egg-info", "build", "dist",
                                          ".pytest_cache", ".ruff_cache")


def _IGNORE(folder: str, names: list[str]) -> set[str]:
    """What not to copy: build outputs anywhere, and the plugin sources at the top only (the
    core's own ``adjoint_core/plugins`` package is part of its distribution)."""
    skip = set(_IGNORE_ANYWHERE(folder, names))
    if Path(folder).resolve() == ROOT and "plugins" in names:
        skip.add("plugins")
    return skip


def _distributions() -> list[Path]:
    return [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc


def test_chem_extra_names_the_chemistry_plugins():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chem = meta["optional-dependencies"]["chem"]
    for dist in ("adjoint-core-chem", "adjoint-core-egnn", "adjoint-core-torsion"):
        assert dist in chem
    local = {tomllib.loads((d / "pyproject.toml").read_text())["project"]["name"]
             for d in _distributions()}
    for extra, reqs in meta["optional-dependencies"].items():
        for req in reqs:
            name = req.split(">")[0].split("=")[0].split("<")[0].strip()
            if name.startswith("adjoint-core"):
                assert name in local, f"[{extra}] names {name}, which no plugins/ directory builds"


def test_wheels_install_adjoint_core_chem_into_a_clean_venv(tmp_path):
    pytest.importorskip("build", reason="the [dev] extra (python -m build) is not installed")
    clock = [time.perf_counter()]

    def phase(name: str) -> None:  # wall time of each phase, shown with ``pytest -rP``
        clock.append(time.perf_counter())
        print(f"{name}: {clock[-1] - clock[-2]:.1f} s")

    wheels = tmp_path / "wheels"
    built = {}
    for dist in _distributions():
        name = tomllib.loads((dist / "pyproject.toml").read_text())["project"]["name"]
        out = tmp_path / "dist" / name
        # build from a copy: the build writes egg-info and build/ next to the sources, which
        # must not change the working tree (tests running alongside read its metadata)
        src = tmp_path / "src" / name
        shutil.copytree(dist, src, ignore=_IGNORE)
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src])
        files = sorted(p.name for p in out.iterdir())
        assert any(f.endswith(".tar.gz") for f in files), (name, files)
        assert any(f.endswith(".whl") for f in files), (name, files)
        built[name] = files
        wheels.mkdir(exist_ok=True)
        for whl in out.glob("*.whl"):
            whl.rename(wheels / whl.name)

    phase(f"build wheel + sdist of {len(built)} distributions")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    phase("create the clean venv")
    py = venv / "bin" / "python"
    _run([py, "-m", "pip", "install", "--quiet", "--find-links", wheels,
          "-c", ROOT / "constraints.txt", "adjoint-core[chem]"])
    phase("pip install adjoint-core[chem]")

    # the installed code is the built wheels', inside the clean venv (no editable paths)
    probe = _run([py, "-c",
                  "import json, torch, adjoint_core, adjoint_core_chem, adjoint_core_egnn,"
                  " adjoint_core_torsion;"
                  "print(json.dumps({'torch': torch.__version__,"
                  " 'files': [m.__file__ for m in (adjoint_core, adjoint_core_chem,"
                  " adjoint_core_egnn, adjoint_core_torsion)]}))"], cwd=tmp_path)
    info = json.loads(probe.stdout)
    assert info["torch"].startswith("2.13.0")
    for f in info["files"]:
        assert Path(f).resolve().is_relative_to(venv.resolve()), f
    freeze = _run([py, "-m", "pip", "list", "--format", "json"]).stdout
    names = {p["name"].lower(): p for p in json.loads(freeze)}
    for name in ("adjoint-core", "adjoint-core-chem", "adjoint-core-egnn", "adjoint-core-torsion"):
        assert name in names and "editable_project_location" not in names[name], name

    listing = json.loads(_run([venv / "bin" / "adjoint-core", "plugins", "--json"],
                              cwd=tmp_path).stdout)
    rows = listing["components"] if isinstance(listing, dict) else listing
    found = {(r["kind"], r["name"]) for r in rows}
    assert CHEM_COMPONENTS <= found, CHEM_COMPONENTS - found
    if isinstance(listing, dict):
        assert not listing.get("failures"), listing["failures"]
    phase("checks + adjoint-core plugins")

    cfg = tmp_path / "ethanol_mmff.yaml"
    cfg.write_text(TINY_CHEM_RUN)
    _run([venv / "bin" / "adjoint-core", "train", cfg, "--out", tmp_path / "run",
          "--no-progress"], cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["counters"]["epoch"] == 2
    assert metrics["counters"]["energy_evals"] == 32
    phase("2-epoch MMFF run of ethanol")

    # the conformer model ships in the wheel and is the default of `conformers`
    _run([venv / "bin" / "adjoint-core", "conformers", "--smiles", "CCO", "--num-conformers",
          "2", "--n-sde-steps", "5", "--out", tmp_path / "confs"], cwd=tmp_path)
    summary = json.loads((tmp_path / "confs" / "summary.json").read_text())
    assert [w["n_conformers"] for w in summary["written"]] == [2]
    assert "spice_egnn" in str(summary.get("model", "")), summary.get("model")
    phase("conformers with the shipped model")
