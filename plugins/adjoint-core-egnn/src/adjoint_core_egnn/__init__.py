"""adjoint-core-egnn: an E(n)-equivariant graph network control model for adjoint-core.

Installing the distribution registers the model ``egnn`` (factory :func:`egnn`) through the
``adjoint_core`` entry-point group.
"""

from .model import EGNN, EGNNLayer, egnn, fully_connected_edges

__version__ = "0.1.0"

__all__ = ["EGNN", "EGNNLayer", "egnn", "fully_connected_edges", "__version__"]
