"""ESENEnergy against fairchem itself, finite differences and symmetry (random-weight eSEN)."""

import math

import pytest
import torch

pytest.importorskip(
    "fairchem.core",
    reason="fairchem-core is not installed (pip install adjoint-core[esen]); eSEN tests skipped")

from adjoint_core_esen import (  # noqa: E402
    EV_IN_KCAL_MOL,
    ESENArchitecture,
    ESENEnergy,
    ESENPotential,
    build_random_checkpoint,
    default_temperature,
    energy_and_grad_many,
)

from adjoint_core import ConfigError, Registry  # noqa: E402
from adjoint_core.problem.spaces import EuclideanSpace  # noqa: E402
from adjoint_core.testing import (  # noqa: E402
    assert_energy_gradient,
    assert_energy_invariant,
    check_energy_contract,
)

#: Ethanol (C C O H H H H H H), a hand-made geometry in Å.
ETHANOL_Z = [6, 6, 8, 1, 1, 1, 1, 1, 1]
ETHANOL = torch.tensor([
    [-0.75, -0.02, 0.02], [0.56, 0.42, -0.61], [1.50, -0.65, -0.48], [-1.55, 0.69, -0.20],
    [-0.65, -0.09, 1.11], [-1.05, -1.00, -0.37], [0.85, 1.35, -0.11], [0.42, 0.63, -1.68],
    [2.32, -0.34, -0.88],
], dtype=torch.float64)
WATER_Z = [8, 1, 1]
WATER = torch.tensor([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]],
                     dtype=torch.float64)
#: A non-trivial energy normaliser (eV), so the comparisons check fairchem's denormalisation.
ARCH = ESENArchitecture(energy_mean=-0.3, energy_rmsd=1.7)


def conformers(base: torch.Tensor, n: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return base + scale * torch.randn(n, *base.shape, generator=g, dtype=base.dtype)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build_random_checkpoint(tmp_path_factory.mktemp("esen") / "esen.pt", ARCH, seed=3)


@pytest.fixture(scope="module")
def pot32(ckpt):
    return ESENPotential(ckpt)


@pytest.fixture(scope="module")
def pot64(ckpt):
    return ESENPotential(ckpt, precision="float64")


def test_esen_shapes_units_and_counts(pot32):
    e = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z)
    assert e.event_shape == (9, 3) and e.unit == "kcal/mol"
    assert e.temperature == pytest.approx(0.0019872043 * 300.0, rel=1e-6)  # chem's KT_300K
    x = conformers(ETHANOL, 5, 0).float()
    E, G = e.energy_and_grad(x)
    assert E.shape == (5,) and G.shape == (5, 9, 3)
    assert E.dtype == G.dtype == torch.float32
    assert torch.isfinite(E).all() and torch.isfinite(G).all()
    assert e.energy(x).shape == (5,) and e.grad(x).shape == (5, 9, 3)
    assert e.n_evaluations == 15
    ev, fv = e.energy_and_forces_ev(x)
    assert torch.allclose(E.double(), ev * EV_IN_KCAL_MOL, rtol=1e-5)
    assert torch.allclose(G.double(), -fv * EV_IN_KCAL_MOL, rtol=1e-5, atol=1e-5)
    e_ev = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z, units="eV")
    assert e_ev.temperature == pytest.approx(default_temperature("eV"))
    assert torch.allclose(e_ev.energy(x).double() * EV_IN_KCAL_MOL, E.double(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expects states of shape \(batch, 9, 3\)"):
        e.energy(torch.zeros(2, 8, 3))


def test_esen_autograd_energy_matches_forces(pot32):
    e = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z)
    x = conformers(ETHANOL, 3, 1).float().requires_grad_(True)
    (2.0 * e.energy(x)).sum().backward()
    _, G = e.energy_and_grad(x.detach())
    assert torch.allclose(x.grad, 2.0 * G, rtol=1e-4, atol=1e-4)


def test_esen_forces_match_finite_differences(pot64):
    e = ESENEnergy(pot64, atomic_numbers=ETHANOL_Z)
    x = conformers(ETHANOL, 1, 2)
    scale = e.grad(x).abs().max().item()
    assert scale > 1e-3  # a non-trivial gradient
    assert_energy_gradient(e, x, eps=1e-4, rtol=1e-5, atol=1e-6 * scale)


def test_esen_rotation_translation_invariance(pot32, pot64):
    """Translations are exact; rotations hold to ~4e-5 (E) / ~2e-4 (∇E) relative.

    eSEN's point-wise non-linearities act on a discrete S² grid, so the network is equivariant
    only up to the grid resolution (measured with this random-weight model, float32 and float64
    alike); a 1 % stretch of the molecule changes the energy by far more than that.
    """
    x = conformers(ETHANOL, 4, 4)
    for pot, dtype, exact in ((pot64, torch.float64, 1e-12), (pot32, torch.float32, 1e-5)):
        e = ESENEnergy(pot, atomic_numbers=ETHANOL_Z)
        E, G = e.energy_and_grad(x.to(dtype))
        e_scale, g_scale = E.abs().max().item(), G.abs().max().item()
        # E(x + s) = E(x), ∇E(x + s) = ∇E(x)  (shifts of about the molecule's size)
        assert_energy_invariant(e, x.to(dtype), symmetries=("translation",), gradient=True,
                                translation_scale=1.5, rtol=0.0, atol=exact * e_scale,
                                grad_rtol=0.0, grad_atol=10 * exact * g_scale)
        # E(Rx) = E(x) and the gradient is equivariant: ∇E(Rx) = R ∇E(x)
        assert_energy_invariant(e, x.to(dtype), symmetries=("rotation",), gradient=True,
                                n_trials=2, rtol=0.0, atol=2e-4 * e_scale, grad_rtol=0.0,
                                grad_atol=1e-3 * g_scale, seed=5)
        stretched = e.energy((1.01 * x).to(dtype))
        assert (stretched - E).abs().max().item() > 1e-2 * e_scale


def test_esen_energy_contract(pot32, pot64):
    space = EuclideanSpace(9, 3, mean_free=True)
    check_energy_contract(ESENEnergy(pot64, atomic_numbers=ETHANOL_Z), space,
                          conformers(ETHANOL, 3, 12))
    check_energy_contract(ESENEnergy(pot32, atomic_numbers=ETHANOL_Z), space,
                          conformers(ETHANOL, 3, 12).float())


def test_esen_agrees_with_fairchem_calculator(ckpt, pot32):
    import ase
    from fairchem.core.calculate.ase_calculator import FAIRChemCalculator
    from fairchem.core.units.mlip_unit import load_predict_unit
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

    unit = load_predict_unit(ckpt, device="cpu", inference_settings=InferenceSettings(
        tf32=False, merge_mole=False, compile=False, activation_checkpointing=False))
    calc = FAIRChemCalculator(unit, task_name="omol")
    e = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z)
    x = conformers(ETHANOL, 3, 6).float()
    E, G = e.energy_and_grad(x)
    for k in range(3):
        atoms = ase.Atoms(numbers=ETHANOL_Z, positions=x[k].double().numpy())
        atoms.info.update(charge=0, spin=1)
        atoms.calc = calc
        ref_e = atoms.get_potential_energy() * EV_IN_KCAL_MOL
        ref_g = -torch.as_tensor(atoms.get_forces(), dtype=torch.float64) * EV_IN_KCAL_MOL
        assert E[k].item() == pytest.approx(ref_e, rel=1e-5, abs=1e-4)
        assert torch.allclose(G[k].double(), ref_g, rtol=1e-4, atol=1e-4)


def test_esen_agrees_with_raw_hydra_model(ckpt, pot32):
    """The backbone + MLP_EFS_Head called directly, with the checkpoint's normaliser by hand."""
    import ase
    from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch
    from fairchem.core.models.base import HydraModel

    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = {k: v for k, v in raw.model_config.items() if k != "_target_"}
    model = HydraModel(**cfg)
    model.load_state_dict(raw.model_state_dict)
    model.eval()
    x = conformers(ETHANOL, 2, 7).float()
    data = []
    for k in range(2):
        atoms = ase.Atoms(numbers=ETHANOL_Z, positions=x[k].double().numpy())
        atoms.info.update(charge=0, spin=1)
        data.append(AtomicData.from_ase(atoms, task_name="omol", r_data_keys=["charge", "spin"]))
    out = model(atomicdata_list_to_batch(data))
    ref_e = (out["omol_energy"]["energy"].detach().double() * ARCH.energy_rmsd
             + ARCH.energy_mean) * EV_IN_KCAL_MOL
    ref_g = -(out["omol_forces"]["forces"].detach().double() * ARCH.energy_rmsd
              * EV_IN_KCAL_MOL).reshape(2, 9, 3)
    E, G = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z).energy_and_grad(x)
    assert torch.allclose(E.double(), ref_e, rtol=1e-5, atol=1e-4)
    assert torch.allclose(G.double(), ref_g, rtol=1e-4, atol=1e-4)


def test_esen_batches_molecules_and_skips_nonfinite(pot32):
    eth = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z)
    wat = ESENEnergy(pot32, atomic_numbers=WATER_Z)
    xe, xw = conformers(ETHANOL, 3, 8).float(), conformers(WATER, 2, 9).float()
    xe[1, 4, 2] = math.nan
    (Ee, Ge), (Ew, Gw) = energy_and_grad_many([eth, wat], [xe, xw])
    assert eth.n_evaluations == 3 and wat.n_evaluations == 2
    assert torch.isnan(Ee[1]) and torch.isnan(Ge[1]).all()
    keep = torch.tensor([0, 2])
    Ee_alone, Ge_alone = eth.energy_and_grad(xe[keep])
    assert torch.allclose(Ee[keep], Ee_alone, rtol=1e-5)
    assert torch.allclose(Ge[keep], Ge_alone, rtol=1e-4, atol=1e-5)
    Ew_alone, Gw_alone = wat.energy_and_grad(xw)
    assert torch.allclose(Ew, Ew_alone, rtol=1e-5)
    assert torch.allclose(Gw, Gw_alone, rtol=1e-4, atol=1e-5)
    # a chunked evaluation (one conformer per fairchem call) gives the same numbers
    small = ESENPotential(pot32.path, max_atoms_per_call=5)
    Ee_small, _ = ESENEnergy(small, atomic_numbers=ETHANOL_Z).energy_and_grad(xe[keep])
    assert torch.allclose(Ee_small, Ee_alone, rtol=1e-5)


def test_esen_charge_and_spin_reach_the_model(pot32):
    x = conformers(WATER, 2, 10).float()
    neutral = ESENEnergy(pot32, atomic_numbers=WATER_Z).energy(x)
    cation = ESENEnergy(pot32, atomic_numbers=WATER_Z, charge=1, spin=2).energy(x)
    assert not torch.allclose(neutral, cation)


def test_esen_bad_molecules(pot32):
    with pytest.raises(ValueError, match="exactly one of molecule, smiles, atomic_numbers"):
        ESENEnergy(pot32)
    with pytest.raises(ValueError, match=r"atomic numbers \[120\] are outside .* 1\.\.99"):
        ESENEnergy(pot32, atomic_numbers=[6, 120])
    with pytest.raises(ValueError, match="units must be one of"):
        ESENEnergy(pot32, atomic_numbers=WATER_Z, units="hartree")
    e = ESENEnergy(pot32, atomic_numbers=[14, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"no node type for atomic numbers \[14\]"):
        e.context()
    assert ESENEnergy(pot32, atomic_numbers=WATER_Z).context()["node_types"].tolist() == [3, 0, 0]


def test_esen_registry_build(ckpt):
    import adjoint_core_esen.plugin as plugin

    reg = Registry(load_entry_points=False)
    reg.add_plugin(plugin, name="esen")
    space = EuclideanSpace(3, 3, mean_free=True)
    e = reg.build("energy", "esen", {"checkpoint": str(ckpt), "atomic_numbers": WATER_Z,
                                     "temperature": 1.5}, space=space)
    assert isinstance(e, ESENEnergy) and e.temperature == 1.5
    with pytest.raises(ConfigError, match=r"has 3 atoms .* n_particles=3"):
        reg.build("energy", "esen", {"checkpoint": str(ckpt), "atomic_numbers": WATER_Z},
                  space=EuclideanSpace(4, 3, mean_free=True))
    with pytest.raises(ConfigError, match="energy.units"):
        reg.build("energy", "esen", {"checkpoint": str(ckpt), "atomic_numbers": WATER_Z,
                                     "units": "hartree"})
    with pytest.raises(ConfigError, match="regularize: the bond regulariser needs"):
        reg.build("energy", "esen", {"checkpoint": str(ckpt), "atomic_numbers": WATER_Z,
                                     "regularize": True})


def test_esen_smiles_like_the_chemistry_plugin(pot32):
    chem = pytest.importorskip("adjoint_core_chem.molecule",
                               reason="adjoint-core-chem (RDKit) is not installed")
    mol = chem.mol_from_smiles("CCO")
    e = ESENEnergy(pot32, smiles="CCO")
    assert e.atomic_numbers.tolist() == mol.atomic_numbers.tolist()
    assert (e.charge, e.spin) == (0, 1)
    assert torch.equal(e.context()["node_types"], mol.context()["node_types"])
    ion = ESENEnergy(pot32, smiles="[NH4+]")
    assert (ion.charge, ion.spin) == (1, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_esen_on_gpu_matches_cpu(pot32):
    e = ESENEnergy(pot32, atomic_numbers=ETHANOL_Z)
    x = conformers(ETHANOL, 3, 11).float()
    E, G = e.energy_and_grad(x)
    Ec, Gc = e.energy_and_grad(x.cuda())
    assert Ec.device.type == "cuda" and Gc.device.type == "cuda"
    assert torch.allclose(Ec.cpu(), E, rtol=1e-4, atol=1e-3)
    assert torch.allclose(Gc.cpu(), G, rtol=1e-3, atol=1e-3)
