"""sit_causal: the theory of Structural Instruction Tuning made executable.

Task-to-factor graphs and the Uniform Identifiability Condition (:mod:`sit_causal.theory.graph`,
:mod:`sit_causal.theory.uic`), exponential-family latent SCMs and recovery metrics, and the shared SIT
latent module that :mod:`sit_nlp` imports unchanged.
"""

from sit_causal.theory.graph import GraphError, TaskFactorGraph, load_graph, parse_graph, save_graph
from sit_causal.theory.uic import UICReport, check_uic, containment_matrix, min_tasks_for_factors

__all__ = [
    "GraphError",
    "TaskFactorGraph",
    "UICReport",
    "check_uic",
    "containment_matrix",
    "load_graph",
    "min_tasks_for_factors",
    "parse_graph",
    "save_graph",
]

__version__ = "0.1.0"
