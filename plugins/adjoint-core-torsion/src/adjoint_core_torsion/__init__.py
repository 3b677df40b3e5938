"""adjoint-core-torsion: a torsion network for torsional Adjoint Sampling of conformers.

:class:`TorsionNet` maps torsion angles ``τ (batch, K)`` of a molecule (given as a context: atom
features, bonds, torsion quadruples and the map ``τ → x``) to one score per torsion, invariant
to global rotations and translations. Torsional conformer training over many molecules (the
``torsional_molecules`` problem of :mod:`adjoint_core_torsion.molecules`, trained by the core
trainer) needs the chemistry plugin.
"""

from .model import InteractionLayer, TorsionNet, torsion_net

__all__ = ["TorsionNet", "InteractionLayer", "torsion_net"]
