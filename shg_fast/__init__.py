"""shg_fast: the Stacked Hourglass pose network, fast.

A paper-faithful PyTorch reference (:mod:`shg_fast.reference`), fused ops with Triton, CUDA
and C++ backends (:mod:`shg_fast.ops`), and the pose pipeline around them. Importing the
package never initialises CUDA.
"""

from . import backends, ops, reference
from .backends import BackendUnavailableError
from .cuda_graph import cuda_graph
from .model import StackedHourglass

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "StackedHourglass", "backends", "cuda_graph", "ops", "reference", "__version__"]
