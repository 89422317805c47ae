"""dpmcli: a workbench for the DPM-Solver family of diffusion samplers.

Importing the package loads neither Typer, Rich nor matplotlib.
"""

from .api import DPMSolver
from .config import SolverConfig
from .errors import ConfigError, NumericalError
from .plan import Plan, build_plan

__version__ = "0.1.0"

__all__ = ["DPMSolver", "SolverConfig", "Plan", "build_plan", "ConfigError", "NumericalError", "__version__"]
