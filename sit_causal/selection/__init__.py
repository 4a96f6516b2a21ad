"""SIT's selection step: which factors each task reads, found on any frozen representation.

Every function takes plain arrays (factors ``(N, n)``, task ids ``(N,)``, dataset ids ``(N,)``, targets
``(N,)`` or per-sample per-factor contributions ``(N, n)``); every matrix over tasks and factors has
**rows = tasks, columns = factors**. ``sit-causal simulate`` calls it on the synthetic models'
representations, :mod:`sit_nlp.model.task_graph` on a sequence model's factor channels.

* :mod:`~sit_causal.selection.gradients`: whitening and per-task gradient matrices;
* :mod:`~sit_causal.selection.align`: the task-sparse rotation (SIT's selection step under a rotation
  ambiguity);
* :mod:`~sit_causal.selection.linear`: the task-sparse invertible matrix (the same step over GL(n), where a
  general linear map is left: the ``linear-left`` regime);
* :mod:`~sit_causal.selection.intersect`: identification by task-subspace intersection (the UIC as an
  estimator);
* :mod:`~sit_causal.selection.taskfree`: the task-free control (dataset ids only);
* :mod:`~sit_causal.selection.graph`: task-factor energies, a graph from them, and its repair to the UIC.
"""

from sit_causal.selection.align import AlignConfig, AlignResult, align_by_task_sparsity
from sit_causal.selection.gradients import GradientConfig, fit_task_gradient_matrices, gradient_matrix, whitening
from sit_causal.selection.graph import (
    GraphRepair,
    graph_from_energies,
    repair_to_uic,
    task_factor_energies,
    uic_violations,
)
from sit_causal.selection.intersect import IntersectConfig, IntersectResult, identify_by_intersection
from sit_causal.selection.linear import LinearAlignConfig, LinearAlignResult, align_linear_by_task_sparsity
from sit_causal.selection.taskfree import TaskFreeResult, identify_without_tasks

__all__ = [
    "AlignConfig",
    "AlignResult",
    "GradientConfig",
    "GraphRepair",
    "IntersectConfig",
    "IntersectResult",
    "LinearAlignConfig",
    "LinearAlignResult",
    "TaskFreeResult",
    "align_by_task_sparsity",
    "align_linear_by_task_sparsity",
    "fit_task_gradient_matrices",
    "gradient_matrix",
    "graph_from_energies",
    "identify_by_intersection",
    "identify_without_tasks",
    "repair_to_uic",
    "task_factor_energies",
    "uic_violations",
    "whitening",
]
