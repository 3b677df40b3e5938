"""The out-of-tree plugin ``examples/external-plugin`` works once installed, by name.

The example distribution ``adjoint-core-example-energy`` is installed (a regular, non-editable
wheel build) into a **temporary virtual environment**, never into the project's: the test
creates a venv with ``python -m venv --without-pip`` and puts one ``.pth`` file into its
site-packages that calls ``site.addsitedir`` on the project venv's site-packages. The temporary
environment thereby sees the installed core and its dependencies (torch is not copied) exactly
as a ``--system-site-packages`` venv sees its base interpreter's packages — which
``--system-site-packages`` itself cannot do here, because the project's packages live in a venv,
not in the base interpreter. pip then installs the example into the temporary venv only
(``pip --python TMP/bin/python install --no-deps --no-build-isolation``: the core is already
visible, and the build backend is the project's setuptools, so no network is needed).

Then, in that environment only, ``adjoint-core plugins`` lists ``harmonic_ring`` with its
distribution, and a config naming ``harmonic_ring`` trains for two epochs.
"""

from __future__ import annotations

import importlib.metadata as im
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "external-plugin"
DIST = "adjoint-core-example-energy"


def _run(cmd: list, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-5000:]}"
    return proc


@pytest.fixture()
def ring_energy_cls(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from adjoint_core_example_energy import HarmonicRingEnergy

    return HarmonicRingEnergy


def test_example_energy_gradient_and_invariances(ring_energy_cls):
    energy = ring_energy_cls(n_particles=5, spatial_dim=3, k=3.0, r0=0.8, temperature=0.5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    e, g = energy.energy_and_grad(x)
    xr = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(energy._energy(xr).sum(), xr)
    assert torch.allclose(g, g_auto, atol=1e-10)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    moved = x @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(energy.energy(moved), e, atol=1e-10)
    assert torch.allclose(energy.energy(torch.roll(x, 2, dims=1)), e, atol=1e-10)
    # a regular pentagon of side r0 is the minimum
    ang = torch.arange(5, dtype=torch.float64) * 2 * math.pi / 5
    radius = 0.8 / (2 * math.sin(math.pi / 5))
    ring = torch.stack([radius * ang.cos(), radius * ang.sin(), torch.zeros(5, dtype=ang.dtype)],
                       dim=-1)[None]
    e0, g0 = energy.energy_and_grad(ring)
    assert float(e0) < 1e-20 and float(g0.abs().max()) < 1e-10


def test_example_energy_rejects_bad_parameters(ring_energy_cls):
    with pytest.raises(ValueError, match="n_particles must be >= 3"):
        ring_energy_cls(n_particles=2)
    with pytest.raises(ValueError, match="k must be > 0"):
        ring_energy_cls(k=0.0)


@pytest.mark.slow
def test_installed_in_temporary_venv_and_used_by_name(tmp_path):
    with pytest.raises(im.PackageNotFoundError):
        im.distribution(DIST)  # the project's environment stays untouched
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    site_dir = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                    .stdout.strip())
    project_site = sysconfig.get_path("purelib")
    (site_dir / "_adjoint_core_project.pth").write_text(
        f"import site; site.addsitedir({project_site!r})\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--quiet", "--no-deps",
          "--no-build-isolation", EXAMPLE])

    where = _run([py, "-c", "import adjoint_core_example_energy as m; print(m.__file__)"],
                 cwd=tmp_path).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    listing = json.loads(_run([py, "-m", "adjoint_core.app.cli", "plugins", "--json"],
                              cwd=tmp_path).stdout)
    rows = {(r["kind"], r["name"]): r for r in listing["components"]}
    assert rows[("energy", "harmonic_ring")]["distribution"] == DIST
    assert rows[("energy", "harmonic_ring")]["plugin"] == "example_energy"
    text = _run([py, "-m", "adjoint_core.app.cli", "plugins"], cwd=tmp_path).stdout
    assert "harmonic_ring" in text and DIST in text

    # train with only this plugin loaded (ADJOINT_CORE_PLUGINS; the core always loads)
    _run([py, "-m", "adjoint_core.app.cli", "train", EXAMPLE / "harmonic_ring.yaml", "--out",
          tmp_path / "run", "--no-progress"], cwd=tmp_path,
         env_extra={"ADJOINT_CORE_PLUGINS": "example_energy"})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["counters"]["epoch"] == 2
    assert metrics["counters"]["energy_evals"] == 64
    assert metrics["counters"]["grad_steps"] == 10

    with pytest.raises(im.PackageNotFoundError):
        im.distribution(DIST)
