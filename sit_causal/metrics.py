"""Recovery metrics: how well learned factors recover the true ones "up to permutation and linear shift".

Conventions (docs/design.md section 6):

* ``true``: ``(N, n)`` the true latent factors, **rows = samples, columns = true factors**;
* ``learned``: ``(N, d)`` a learned representation (posterior means), rows = samples, columns = learned
  factors (``d`` may differ from ``n``);
* ``correlation``: ``(n, d)``, **rows = true factors, columns = learned factors**;
* ``assignment``: ``(n,)`` int, the learned column matched to each true factor (``-1`` if unmatched);
* graphs: ``(m, n)`` / ``(m, d)`` binary matrices, **rows = tasks, columns = factors**.

Metrics:

* :func:`mcc`: mean absolute correlation after the optimal one-to-one matching (Hungarian,
  ``scipy.optimize.linear_sum_assignment``), Pearson or Spearman. Averaged over the ``n`` true factors;
  an unmatched true factor (``d < n``) and a constant column count as correlation 0.
* :func:`affine_r2`: ``R^2`` of each true factor predicted by an affine map of **all** learned factors,
  fitted by least squares on one split and scored on the other (``R^2 = 1 - SSE / SST``, ``SST`` around
  the test mean; a constant true factor scores 0). Can be negative on the test split.
* :func:`graph_consistent_r2`: the same, but true factor ``i`` may only use the learned factors matched
  to ``{i} ∪ M_i`` (``M_i`` the UIC mixing set, :func:`sit_causal.theory.uic.containment_matrix`): the
  "consistency" score of Lachapelle et al. If the representation is identified exactly as the checker
  predicts (learned factor of ``i`` = affine in ``L_i`` and ``L_j, j in M_i``), it equals
  :func:`affine_r2` per factor, since ``{i} ∪ M_i`` is closed under mixing sets (containment is
  transitive).
* :func:`factor_report`: per true factor, the matched correlation and the largest correlation with any
  other learned factor; per learned factor, the true factors it mixes (see :class:`LearnedFactorMix`).
* :func:`graph_recovery`: precision and recall of a learned binary task x factor matrix against the true
  graph after aligning learned columns to true factors with ``assignment``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import UICReport, containment_matrix

__all__ = [
    "DEFAULT_MIX_THRESHOLD",
    "FactorRecovery",
    "GraphRecovery",
    "LearnedFactorMix",
    "MCCResult",
    "R2Result",
    "RecoveryReport",
    "affine_r2",
    "auroc",
    "correlation_matrix",
    "factor_report",
    "fit_affine_r2",
    "graph_consistent_r2",
    "graph_recovery",
    "mcc",
]

Method = Literal["pearson", "spearman"]
DEFAULT_MIX_THRESHOLD = 0.2


def _as_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N samples, n factors), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_pair(true: np.ndarray, learned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, learned = _as_2d("true", true), _as_2d("learned", learned)
    if true.shape[0] != learned.shape[0]:
        raise ValueError(f"true has {true.shape[0]} samples but learned has {learned.shape[0]}")
    if true.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    return true, learned


def _standardise(a: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit norm; a constant column becomes all zeros."""
    c = a - a.mean(axis=0)
    norm = np.sqrt(np.einsum("ij,ij->j", c, c))
    scale = np.where(norm > 1e-12 * np.maximum(1.0, np.abs(a).max(axis=0)) * np.sqrt(a.shape[0]),
                     norm, np.inf)
    return c / scale


def correlation_matrix(true: np.ndarray, learned: np.ndarray, method: Method = "pearson") -> np.ndarray:
    """Signed correlations ``(n, d)``: rows = true factors, columns = learned factors.

    ``method="spearman"`` correlates ranks (average ranks for ties). Constant columns give 0.
    """
    true, learned = _check_pair(true, learned)
    if method == "spearman":
        true, learned = rankdata(true, axis=0), rankdata(learned, axis=0)
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    corr = _standardise(true).T @ _standardise(learned)
    return np.clip(corr, -1.0, 1.0)


@dataclass(frozen=True)
class MCCResult:
    """Result of :func:`mcc`.

    Arguments:
        score: mean over true factors of the matched absolute correlation.
        method: ``"pearson"`` or ``"spearman"``.
        correlation: ``(n, d)`` signed correlations, rows = true, columns = learned.
        assignment: ``(n,)`` learned column matched to each true factor (``-1``: unmatched).
        matched: ``(n,)`` absolute correlation of each true factor with its match (0 if unmatched).
    """

    score: float
    method: str
    correlation: np.ndarray
    assignment: np.ndarray
    matched: np.ndarray

    def matched_correlation(self) -> np.ndarray:
        """``(n, n)`` absolute correlations with learned columns reordered by the matching, so the
        diagonal holds the matched pairs (columns of unmatched true factors are zero)."""
        n = self.correlation.shape[0]
        out = np.zeros((n, n))
        ok = self.assignment >= 0
        out[:, ok] = np.abs(self.correlation[:, self.assignment[ok]])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "method": self.method, "assignment": self.assignment.tolist(),
                "matched": self.matched.tolist(), "correlation": self.correlation.tolist()}


def mcc(true: np.ndarray, learned: np.ndarray, method: Method = "pearson") -> MCCResult:
    """Mean correlation coefficient after optimal matching.

    ``MCC = (1/n) sum_i |rho(L_i, hat L_{pi(i)})|`` with ``pi`` the one-to-one matching maximising the sum
    (Hungarian algorithm on ``|correlation|``).

    Arguments:
        true: ``(N, n)``; learned: ``(N, d)``; method: ``"pearson"`` or ``"spearman"``.
    """
    corr = correlation_matrix(true, learned, method)
    absc = np.abs(corr)
    rows, cols = linear_sum_assignment(absc, maximize=True)
    n = corr.shape[0]
    assignment = np.full(n, -1, dtype=np.int64)
    assignment[rows] = cols
    matched = np.zeros(n)
    matched[rows] = absc[rows, cols]
    return MCCResult(score=float(matched.mean()), method=method, correlation=corr,
                     assignment=assignment, matched=matched)


# ---------------------------------------------------------------------- R^2
@dataclass(frozen=True)
class R2Result:
    """Test-split ``R^2`` per true factor (``per_factor``, shape ``(n,)``) and its ``mean``.

    ``inputs[i]``: the learned columns used to predict true factor ``i``.
    """

    mean: float
    per_factor: np.ndarray
    inputs: tuple[tuple[int, ...], ...]

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "per_factor": self.per_factor.tolist(),
                "inputs": [list(c) for c in self.inputs]}


def _r2_single(y_train: np.ndarray, x_train: np.ndarray, y_test: np.ndarray, x_test: np.ndarray) -> float:
    design = np.column_stack([np.ones(x_train.shape[0]), x_train])
    coef, *_ = np.linalg.lstsq(design, y_train, rcond=None)
    pred = coef[0] + x_test @ coef[1:]
    sst = float(np.sum(np.square(y_test - y_test.mean())))
    if sst <= 1e-12 * max(1.0, float(np.sum(np.square(y_test)))):
        return 0.0
    return 1.0 - float(np.sum(np.square(y_test - pred))) / sst


def fit_affine_r2(true_train: np.ndarray, learned_train: np.ndarray, true_test: np.ndarray,
                  learned_test: np.ndarray, inputs: list[list[int]] | None = None) -> R2Result:
    """``R^2`` of affine maps fitted on the training pair and scored on the test pair.

    Arguments:
        true_train, true_test: ``(N_train, n)``, ``(N_test, n)``.
        learned_train, learned_test: ``(N_train, d)``, ``(N_test, d)``.
        inputs: optional list (length ``n``) of the learned columns allowed for each true factor
            (default: all ``d``). An empty list predicts the training mean.
    """
    true_train, learned_train = _check_pair(true_train, learned_train)
    true_test, learned_test = _check_pair(true_test, learned_test)
    n, d = true_train.shape[1], learned_train.shape[1]
    if true_test.shape[1] != n or learned_test.shape[1] != d:
        raise ValueError("train and test splits have different numbers of columns")
    cols = [list(range(d))] * n if inputs is None else [sorted(set(c)) for c in inputs]
    if len(cols) != n:
        raise ValueError(f"inputs must list the allowed learned columns of each of the {n} true factors")
    per = np.array([
        _r2_single(true_train[:, i], learned_train[:, c], true_test[:, i], learned_test[:, c])
        for i, c in enumerate(cols)
    ])
    return R2Result(mean=float(per.mean()), per_factor=per, inputs=tuple(tuple(c) for c in cols))


def _split_masks(n_samples: int, rng: np.random.Generator | None, test_fraction: float,
                 train_mask: np.ndarray | None) -> np.ndarray:
    if train_mask is not None:
        mask = np.asarray(train_mask, dtype=bool)
        if mask.shape != (n_samples,):
            raise ValueError(f"train_mask must have shape ({n_samples},)")
    elif rng is not None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError("test_fraction must be in (0, 1)")
        mask = np.ones(n_samples, dtype=bool)
        mask[rng.permutation(n_samples)[: round(test_fraction * n_samples)]] = False
    else:  # deterministic and unbiased for data ordered by dataset: even rows train, odd rows test
        mask = np.arange(n_samples) % 2 == 0
    if mask.all() or not mask.any():
        raise ValueError("both the training and the test split need samples")
    return mask


def affine_r2(true: np.ndarray, learned: np.ndarray, rng: np.random.Generator | None = None,
              test_fraction: float = 0.5, train_mask: np.ndarray | None = None) -> R2Result:
    """``R^2`` of each true factor from an affine map of all learned factors, fitted on one split and
    scored on the other.

    The split: ``train_mask`` ``(N,)`` if given; else a random ``test_fraction`` of the rows drawn with
    ``rng``; else even rows train and odd rows test (deterministic).
    """
    true, learned = _check_pair(true, learned)
    mask = _split_masks(true.shape[0], rng, test_fraction, train_mask)
    return fit_affine_r2(true[mask], learned[mask], true[~mask], learned[~mask])


def _mixing_matrix(graph: TaskFactorGraph | UICReport | np.ndarray) -> np.ndarray:
    if isinstance(graph, UICReport):
        graph = graph.graph
    adj = graph.adjacency if isinstance(graph, TaskFactorGraph) else np.asarray(graph)
    return containment_matrix(adj)


def graph_consistent_r2(true: np.ndarray, learned: np.ndarray,
                        graph: TaskFactorGraph | UICReport | np.ndarray, assignment: np.ndarray,
                        rng: np.random.Generator | None = None, test_fraction: float = 0.5,
                        train_mask: np.ndarray | None = None) -> R2Result:
    """``R^2`` of true factor ``i`` from the learned factors matched to ``{i} ∪ M_i`` only.

    Arguments:
        true: ``(N, n)``; learned: ``(N, d)``.
        graph: the true graph (``TaskFactorGraph``, a ``UICReport`` or an ``(m, n)`` matrix, rows = tasks);
            ``M_i = {j : C_i ⊆ C_j, j != i}``.
        assignment: ``(n,)`` learned column of each true factor, e.g. ``mcc(...).assignment``
            (``-1`` entries are skipped).
        rng, test_fraction, train_mask: the split, as in :func:`affine_r2`.
    """
    true, learned = _check_pair(true, learned)
    k = _mixing_matrix(graph)
    n = true.shape[1]
    assignment = np.asarray(assignment, dtype=np.int64)
    if k.shape != (n, n) or assignment.shape != (n,):
        raise ValueError(f"graph and assignment must describe the {n} true factors")
    inputs = []
    for i in range(n):
        allowed = [i, *np.flatnonzero(k[i]).tolist()]
        inputs.append([int(assignment[j]) for j in allowed if assignment[j] >= 0])
    mask = _split_masks(true.shape[0], rng, test_fraction, train_mask)
    return fit_affine_r2(true[mask], learned[mask], true[~mask], learned[~mask], inputs=inputs)


# ---------------------------------------------------------------------- per-factor report
@dataclass(frozen=True)
class FactorRecovery:
    """One true factor: its matched learned column, ``|rho|`` with it, and the largest ``|rho|`` with any
    other learned column (``off_diagonal``) and which column that is (``-1`` if ``d = 1``)."""

    factor: int
    matched_to: int
    matched_correlation: float
    off_diagonal: float
    off_diagonal_with: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LearnedFactorMix:
    """One learned factor ``j`` regressed on all true factors (both standardised, affine least squares).

    ``coefficients``: ``(n,)`` standardised coefficients ``beta``; ``r2``: in-sample ``R^2`` of that fit;
    ``mixes``: the true factors ``i`` with ``|beta_i| >= threshold * max_i |beta_i|`` (empty when the learned
    factor is constant).
    """

    learned: int
    mixes: tuple[int, ...]
    coefficients: np.ndarray
    r2: float

    def to_json(self) -> dict[str, Any]:
        return {"learned": self.learned, "mixes": list(self.mixes),
                "coefficients": self.coefficients.tolist(), "r2": self.r2}


@dataclass(frozen=True)
class RecoveryReport:
    """Output of :func:`factor_report`: the MCC result, one :class:`FactorRecovery` per true factor and
    one :class:`LearnedFactorMix` per learned factor."""

    mcc: MCCResult
    factors: tuple[FactorRecovery, ...]
    learned: tuple[LearnedFactorMix, ...]
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {"mcc": self.mcc.score, "method": self.mcc.method, "threshold": self.threshold,
                "factors": [f.to_json() for f in self.factors],
                "learned": [f.to_json() for f in self.learned]}


def factor_report(true: np.ndarray, learned: np.ndarray, method: Method = "pearson",
                  threshold: float = DEFAULT_MIX_THRESHOLD) -> RecoveryReport:
    """Per-factor diagnostics (see :class:`FactorRecovery`, :class:`LearnedFactorMix`).

    ``threshold`` (default 0.2): a learned factor mixes true factor ``i`` when ``i``'s standardised
    regression coefficient is at least ``threshold`` times the largest one. Relative, so it does not
    depend on how well the learned factor is fitted overall (read ``r2`` for that); 0.2 separates a
    mixing weight of 1 : 0.2 from estimation noise at the sample sizes of our experiments.
    """
    true, learned = _check_pair(true, learned)
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1]")
    res = mcc(true, learned, method)
    absc = np.abs(res.correlation)
    d = learned.shape[1]
    factors = []
    for i in range(true.shape[1]):
        j = int(res.assignment[i])
        others = absc[i].copy()
        if j >= 0:
            others[j] = -1.0
        k = int(np.argmax(others))
        if others[k] < 0:  # the only learned column is the matched one
            k = -1
        off = float(absc[i, k]) if k >= 0 else 0.0
        factors.append(FactorRecovery(factor=i, matched_to=j, matched_correlation=float(res.matched[i]),
                                      off_diagonal=off, off_diagonal_with=k))
    zt = _standardise(true)
    zl = _standardise(learned)
    beta, *_ = np.linalg.lstsq(zt, zl, rcond=None)  # (n, d): learned_j ~ sum_i beta_ij true_i
    fitted = zt @ beta
    mixes = []
    for j in range(d):
        b = beta[:, j]
        sst = float(zl[:, j] @ zl[:, j])
        r2 = 1.0 - float(np.sum(np.square(zl[:, j] - fitted[:, j]))) / sst if sst > 0 else 0.0
        top = float(np.max(np.abs(b))) if b.size else 0.0
        chosen = tuple(int(i) for i in np.flatnonzero(np.abs(b) >= threshold * top)) if top > 0 else ()
        mixes.append(LearnedFactorMix(learned=j, mixes=chosen, coefficients=b, r2=r2))
    return RecoveryReport(mcc=res, factors=tuple(factors), learned=tuple(mixes), threshold=threshold)


# ---------------------------------------------------------------------- learned graph
@dataclass(frozen=True)
class GraphRecovery:
    """Edge precision/recall of a learned graph after alignment.

    ``aligned``: ``(m, n)`` learned matrix with column ``i`` = learned column ``assignment[i]`` (rows =
    tasks, columns = true factors). Learned edges in unmatched columns count as false positives.
    ``precision`` is 0 when nothing is predicted, ``recall`` 0 when the true graph has no edge.
    """

    precision: float
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    aligned: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "true_positives": self.true_positives, "false_positives": self.false_positives,
                "false_negatives": self.false_negatives, "aligned": self.aligned.astype(int).tolist()}


def graph_recovery(learned_adjacency: np.ndarray, true_adjacency: np.ndarray | TaskFactorGraph,
                   assignment: np.ndarray) -> GraphRecovery:
    """Compare a learned binary ``(m, d)`` task x factor matrix with the true ``(m, n)`` one.

    Arguments:
        learned_adjacency: ``(m, d)`` 0/1 or bool (binarise soft masks first), rows = tasks.
        true_adjacency: ``(m, n)`` (or a :class:`TaskFactorGraph`), rows = tasks, same task order.
        assignment: ``(n,)`` learned column matched to each true factor (``-1``: none).
    """
    true_adj = true_adjacency.adjacency if isinstance(true_adjacency, TaskFactorGraph) else true_adjacency
    true_adj = np.asarray(true_adj).astype(bool)
    learned = np.asarray(learned_adjacency)
    if learned.ndim != 2 or true_adj.ndim != 2 or learned.shape[0] != true_adj.shape[0]:
        raise ValueError(f"learned {learned.shape} and true {true_adj.shape} must be (tasks x factors) "
                         "with the same number of tasks")
    if learned.size and not np.isin(learned, (0, 1)).all():
        raise ValueError("learned_adjacency must be binary; threshold soft masks first")
    learned = learned.astype(bool)
    assignment = np.asarray(assignment, dtype=np.int64)
    if assignment.shape != (true_adj.shape[1],):
        raise ValueError(f"assignment must have shape ({true_adj.shape[1]},)")
    ok = assignment >= 0
    aligned = np.zeros_like(true_adj)
    aligned[:, ok] = learned[:, assignment[ok]]
    unmatched = np.ones(learned.shape[1], dtype=bool)
    unmatched[assignment[ok]] = False
    tp = int(np.sum(aligned & true_adj))
    fp = int(np.sum(aligned & ~true_adj)) + int(learned[:, unmatched].sum())
    fn = int(np.sum(~aligned & true_adj))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return GraphRecovery(precision=precision, recall=recall, f1=f1, true_positives=tp, false_positives=fp,
                         false_negatives=fn, aligned=aligned)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U, ties count 1/2).

    ``AUROC = (sum of the ranks of the positives - P (P + 1) / 2) / (P N)`` with average ranks for ties;
    ``nan`` when one class is empty.

    Arguments:
        scores: ``(K,)`` higher = more likely positive.
        labels: ``(K,)`` booleans (True = positive).
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError("scores and labels must be 1-D of the same length")
    p, n = int(y.sum()), int((~y).sum())
    if p == 0 or n == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - p * (p + 1) / 2) / (p * n))
