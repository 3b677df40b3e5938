"""Every shipped config validates with the loader of its command and builds.

Both the canonical configs in ``examples/`` and the experiment variants in ``bench/configs/``
(whose ``base:`` links may point into ``examples/``). A config that no longer matches the code
(a renamed field, a removed option, a ``base:`` that moved, an unknown reference name) fails
here instead of in a user's first run.
"""

from pathlib import Path

import pytest
import yaml

from adjoint_core.app.config import build_components, load_config, read_config_file
from adjoint_core.mcmc.run import load_mcmc_config
from adjoint_core.plugins.registry import default_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
BENCH_CONFIGS = sorted((ROOT / "bench" / "configs").glob("*.yaml"))
CONFIGS = EXAMPLES + BENCH_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_example_config_validates_and_builds(path):
    data = read_config_file(path)
    if "mcmc" in data and "model" not in data:
        cfg = load_mcmc_config(path)
        assert cfg.mcmc.n_chains >= 1
        return
    cfg = load_config(path)
    if cfg.problem is not None:
        # amortized problems (conformers) read a SMILES list that does not ship with the
        # repository and build hundreds of molecules: validated here, built by their own tests
        assert cfg.energy is None and cfg.space is None
        return
    if cfg.energy.name == "esen":  # needs a checkpoint file made by its own example script
        return
    parts = build_components(cfg)
    assert sum(p.numel() for p in parts["model"].parameters()) > 0


def test_configs_were_found():
    assert 10 <= len(EXAMPLES) <= 20, "examples/ holds the canonical configs, about a dozen"
    assert len(BENCH_CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_config_needs_nothing_outside_the_repository(path):
    """Particle references are registered names, never a path into a folder beside the clone."""
    data = read_config_file(path)
    reference = (data.get("eval") or {}).get("reference")
    if reference is not None and isinstance(data.get("eval"), dict):
        assert reference in default_registry().names("reference"), reference
    text = path.read_text()
    assert "shared/data/particles" not in text


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_canonical_example_has_a_header(path):
    """Each canonical config starts with a comment saying what it shows and what it measured."""
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(header).lower()
    assert len(header) >= 3, "a header comment of a few lines"
    assert "measured" in text or "demo" in text, "the header states its measured result"


@pytest.mark.parametrize("path", [p for p in CONFIGS if "base:" in p.read_text()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_base_links_resolve(path):
    base = yaml.safe_load(path.read_text())["base"]
    assert (path.parent / base).resolve().is_file(), base
