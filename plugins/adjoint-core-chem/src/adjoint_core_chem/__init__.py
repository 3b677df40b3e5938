"""Chemistry plugin of adjoint-core: molecular conformers from SMILES.

Modules (see each docstring):

- :mod:`adjoint_core_chem.molecule`: ``mol_from_smiles`` → :class:`Molecule` (atomic numbers,
  atom types, bonds / ``edge_index``, model context, optional ETKDG geometry);
- :mod:`adjoint_core_chem.energy`: MMFF94 (RDKit) and GFN2-xTB (tblite) energies in kcal/mol,
  the bond-structure regulariser (eSEN through the eSEN plugin for amortized runs);
- :mod:`adjoint_core_chem.workers`: worker processes for per-conformer energies;
- :mod:`adjoint_core_chem.model`: the graph-conditioned molecular EGNN;
- :mod:`adjoint_core_chem.problem`: the ``molecules`` problem (one target per molecule) for
  amortized training with the core trainer;
- :mod:`adjoint_core_chem.torsion`: torsional coordinates (rotatable bonds, torsions →
  Cartesian, chain rule);
- :mod:`adjoint_core_chem.metrics`: coverage / AMR with symmetry-aware heavy-atom RMSD;
- :mod:`adjoint_core_chem.diagnostics`: bond, angle, clash and energy checks of conformers;
- :mod:`adjoint_core_chem.api`: ``generate_conformers`` (SMILES or RDKit ``Mol`` in, RDKit
  ``Mol`` with conformers and energies out) and the ``conformers`` command;
- :mod:`adjoint_core_chem.pretrained`: the shipped model (``DEFAULT_MODEL``), ``export_model``
  and ``load_model``;
- :mod:`adjoint_core_chem.finetune`: per-molecule Adjoint Sampling fine-tuning;
- :mod:`adjoint_core_chem.commands`: the ``chem-train``, ``chem-export`` and ``conformers``
  commands.
"""

from __future__ import annotations

from .molecule import Molecule, MoleculeError, mol_from_smiles

__all__ = ["Molecule", "MoleculeError", "mol_from_smiles"]
