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
* :mod:`~sit_causal.selection.graph`: task-factor energies, a graph from them, and its repair to the UIC;
* :mod:`~sit_causal.selection.invariance`: selection that reads the data sources (a factor is kept only if
  the target's law given it is the same in every source of the task), then coverage and repair;
* :mod:`~sit_causal.selection.batches`: batches holding several sources of every task in them (the contract of
  the objective's invariance term).
"""

from sit_causal.selection.align import AlignConfig, AlignResult, align_by_task_sparsity
from sit_causal.selection.batches import source_covering_batches, sources_per_task
from sit_causal.selection.gradients import GradientConfig, fit_task_gradient_matrices, gradient_matrix, whitening
from sit_causal.selection.graph import (
    GraphRepair,
    graph_from_energies,
    repair_to_uic,
    task_factor_energies,
    uic_violations,
)
from sit_causal.selection.intersect import IntersectConfig, IntersectResult, identify_by_intersection
from sit_causal.selection.invariance import (
    InvarianceConfig,
    InvariantSelection,
    invariance_test,
    select_invariant,
    source_score_test,
    stratified_g_test,
)
from sit_causal.selection.linear import LinearAlignConfig, LinearAlignResult, align_linear_by_task_sparsity
from sit_causal.selection.taskfree import TaskFreeResult, identify_without_tasks

__all__ = [
    "AlignConfig",
    "AlignResult",
    "GradientConfig",
    "GraphRepair",
    "IntersectConfig",
    "IntersectResult",
    "InvarianceConfig",
    "InvariantSelection",
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
    "invariance_test",
    "repair_to_uic",
    "select_invariant",
    "source_covering_batches",
    "source_score_test",
    "sources_per_task",
    "stratified_g_test",
    "task_factor_energies",
    "uic_violations",
    "whitening",
]
