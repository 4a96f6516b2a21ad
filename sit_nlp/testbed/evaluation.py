"""Scoring a trained model on the testbed: split accuracies, worst group, graph and factor recovery, probes.

Every number is computed from the predictions JSONL that :func:`sit_nlp.evaluation.evaluate.evaluate_records` writes
(rank classification over ``yes`` / ``no`` for yes/no records: the option with the larger summed
log-probability; greedy generation and exact match for generation records) joined with the records' true
factors. Matrices: factor tables are ``(N, n)`` (rows = samples, columns = factors); graphs ``(m, n)``
(rows = tasks, columns = factors).

* **accuracy** per split (yes/no records), **exact match** on the ``generation`` split;
* **worst-group accuracy** of a split: groups = (label, whether the spurious factor agrees with it), the
  minimum over the four groups' accuracies;
* **learned graph**: SIT's fixed task graph (``task_graph.json``, columns = learned factor channels) aligned
  to the true factors by the Hungarian matching of :func:`sit_causal.metrics.mcc`, then precision, recall
  and F1 (:func:`sit_causal.metrics.graph_recovery`) and the UIC verdict of the learned graph
  (:func:`sit_causal.theory.uic.check_uic`);
* **factor MCC**: the selected-factor channels pooled over a sentence's tokens (masked mean of the posterior
  mean, ``(N, n, d_f)``), each channel reduced to its first principal component (fit on the validation
  records), against the true ``L`` (:func:`sit_causal.metrics.mcc`);
* **spurious-factor probe**: a logistic regression from the pooled representation (SIT: the selected
  channels ``m_t * z``; vanilla: the encoder states) to the bit of the task's spurious factor on the
  ``balanced`` split, fit on half the records and scored on the other half;
* **2-D map**: t-SNE of the same pooled representation on the ``balanced`` split, coloured by task and by
  the true value of the task's spurious factor (:func:`factor_map`, :func:`plot_factor_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sit_nlp.data.records import InstructionRecord

__all__ = [
    "accuracy_by_source",
    "factor_map",
    "factor_recovery",
    "first_components",
    "fit_logistic",
    "learned_graph_recovery",
    "plot_factor_maps",
    "pooled_representations",
    "predict_logistic",
    "score_predictions_by_split",
    "spurious_probe",
]


def score_predictions_by_split(records: Sequence[InstructionRecord], predictions: Path,
                               roles: dict[str, str] | None = None) -> dict[str, Any]:
    """Accuracy / exact match per split, worst-group accuracy and per-task accuracy from a predictions file
    written for ``records`` (same ids); ``aligned_minus_flipped`` between the splits of those ``roles``
    (default: the splits named ``aligned`` and ``flipped``)."""
    from sit_nlp.evaluation.scoring import normalize_answer, read_predictions

    by_id = {p.id: p for p in read_predictions(predictions)}
    correct: dict[str, list[float]] = {}
    groups: dict[str, dict[str, list[float]]] = {}
    per_task: dict[str, dict[str, list[float]]] = {}
    for r in records:
        p = by_id[r.id]
        split = r.extra["split"]
        if r.options:
            scores = p.option_scores or []
            ok = float(r.options[int(np.argmax(scores))] == r.output)
            if "spurious_agrees" in r.extra:
                key = f"y={r.output},spurious={'agrees' if r.extra['spurious_agrees'] else 'disagrees'}"
                groups.setdefault(split, {}).setdefault(key, []).append(ok)
        else:
            ok = float(normalize_answer(p.prediction) == normalize_answer(r.output))
        correct.setdefault(split, []).append(ok)
        per_task.setdefault(split, {}).setdefault(r.task, []).append(ok)
    out: dict[str, Any] = {"accuracy": {s: float(np.mean(v)) for s, v in correct.items()},
                           "n": {s: len(v) for s, v in correct.items()},
                           "per_task": {s: {t: float(np.mean(v)) for t, v in sorted(tasks.items())}
                                        for s, tasks in per_task.items()},
                           "worst_group": {}, "groups": {}}
    for split, g in groups.items():
        accs = {k: float(np.mean(v)) for k, v in sorted(g.items())}
        out["groups"][split] = accs
        out["worst_group"][split] = min(accs.values())
    acc = out["accuracy"]
    aligned, flipped = (roles or {}).get("aligned", "aligned"), (roles or {}).get("flipped", "flipped")
    if aligned in acc and flipped in acc:
        out["aligned_minus_flipped"] = acc[aligned] - acc[flipped]
    return out


def accuracy_by_source(records: Sequence[InstructionRecord], predictions: Path) -> dict[str, Any]:
    """Rank-classification accuracy of the yes/no records (those with ``options``) per data source
    (``record.dataset``), from a predictions file written for ``records``: ``{"by_source": {source: acc},
    "n": {source: count}, "mean": mean over sources, "worst_source": min over sources}``. On the validation
    split (the training sources' own held-out records) the worst source's accuracy is a criterion that reads
    no test split: the penalty weight of the invariance methods is chosen by it."""
    from sit_nlp.evaluation.scoring import read_predictions

    by_id = {p.id: p for p in read_predictions(predictions)}
    correct: dict[str, list[float]] = {}
    for r in records:
        if r.options:
            scores = by_id[r.id].option_scores or []
            correct.setdefault(r.dataset, []).append(float(r.options[int(np.argmax(scores))] == r.output))
    acc = {s: float(np.mean(v)) for s, v in sorted(correct.items())}
    return {"by_source": acc, "n": {s: len(v) for s, v in sorted(correct.items())},
            "mean": float(np.mean(list(acc.values()))) if acc else None,
            "worst_source": min(acc.values()) if acc else None}


def pooled_representations(model: Any, collator: Any, records: Sequence[InstructionRecord], batch_size: int,
                           device: Any) -> dict[str, np.ndarray]:
    """Per record, the masked token mean of the encoder states ``encoder`` ``(N, D)`` and, for SIT, of the
    posterior mean of the factors ``factors`` ``(N, n, d_f)`` and of the selected factors ``selected``
    (``m_t * mean``, the target decoder's input; ``(N, n, d_f)``), plus the masks ``masks`` ``(N, n)``."""
    import torch

    from sit_nlp.model.seq2seq import masked_mean

    keep: dict[str, list[np.ndarray]] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collator(collator.tokenize(chunk)).items()}
            mask = model.factor_mask(batch) if model.is_sit else batch["attention_mask"]
            if model.is_sit:
                h_x, lat, _, _ = model.latent_path(batch)
                w = mask.to(lat.mean.dtype)[:, :, None, None]
                mean = (lat.mean * w).sum(1) / w.sum(1).clamp_min(1.0)
                keep.setdefault("factors", []).append(mean.float().cpu().numpy())
                keep.setdefault("selected", []).append((mean * lat.mask[:, :, None]).float().cpu().numpy())
                keep.setdefault("masks", []).append(lat.mask.float().cpu().numpy())
            else:
                h_x = model.encode(batch["input_ids"], mask)
            keep.setdefault("encoder", []).append(masked_mean(h_x, mask).float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in keep.items()}


def fit_logistic(x_train: np.ndarray, y_train: np.ndarray, seed: int = 0, steps: int = 300,
                 l2: float = 1e-3) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """An L2-regularised logistic regression ``p(y = 1 | x) = sigmoid(w . (x - mu) / sd + b)`` (features
    standardised on ``x_train`` ``(N, F)``; full-batch L-BFGS in torch, float64): ``(w, b, mu, sd)``."""
    import torch

    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    xt = torch.as_tensor((x_train - mu) / sd, dtype=torch.float64)
    yt = torch.as_tensor(y_train, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(xt.shape[1], generator=g, dtype=torch.float64)).requires_grad_(True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach()), mu, sd


def predict_logistic(params: tuple[np.ndarray, float, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """0/1 predictions ``(N,)`` of :func:`fit_logistic`'s model."""
    w, b, mu, sd = params
    return (((x - mu) / sd) @ w + b > 0).astype(int)


def spurious_probe(features: np.ndarray, records: Sequence[InstructionRecord], seed: int) -> float:
    """Held-out accuracy of a linear probe from ``features`` ``(N, F)`` to each record's spurious bit
    (``bits[spurious_factor]``), fit on a seeded half."""
    from sit_nlp.testbed.grammar import FACTORS

    y = np.array([r.extra["bits"][FACTORS.index(r.extra["spurious_factor"])] for r in records])
    order = np.random.default_rng(seed).permutation(len(y))
    half = len(y) // 2
    tr, te = order[:half], order[half:]
    params = fit_logistic(features[tr], y[tr], seed=seed)
    return float((predict_logistic(params, features[te]) == y[te]).mean())


def first_components(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Each factor channel ``(N, n, d_f)`` reduced to its first principal component (fit on ``train``),
    applied to ``test``: ``(N_test, n)``."""
    out = np.zeros(test.shape[:2])
    for j in range(train.shape[1]):
        a = train[:, j, :]
        mu = a.mean(0)
        _, _, vt = np.linalg.svd(a - mu, full_matrices=False)
        out[:, j] = (test[:, j, :] - mu) @ vt[0]
    return out


def factor_recovery(fit: np.ndarray, test: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """MCC of the pooled factor channels (``fit``: ``(N_fit, n, d_f)`` for the principal components,
    ``test``: ``(N, n, d_f)``) against the true factors ``true`` ``(N, 6)``, with the matching."""
    from sit_causal.metrics import mcc

    learned = first_components(fit, test)
    result = mcc(true, learned)
    return {"mcc": result.score, "assignment": result.assignment.tolist(), "matched": result.matched.tolist()}


def learned_graph_recovery(run_dir: Path, true_graph: Any, assignment: Sequence[int]) -> dict[str, Any] | None:
    """The run's fixed task graph (``task_graph.json``) against the true one; ``None`` when there is none."""
    from sit_causal.metrics import graph_recovery
    from sit_causal.theory.graph import load_graph
    from sit_causal.theory.uic import check_uic

    path = run_dir / "task_graph.json"
    if not path.is_file():
        return None
    learned = load_graph(path)
    rows = [learned.tasks.index(t) for t in true_graph.tasks]
    adj = np.asarray(learned.adjacency)[rows].astype(int)
    rec = graph_recovery(adj, true_graph, np.asarray(assignment))
    return {"precision": rec.precision, "recall": rec.recall, "f1": rec.f1, "uic_holds": check_uic(learned).uic_holds,
            "edges": int(adj.sum()), "true_edges": int(np.asarray(true_graph.adjacency).sum()),
            "adjacency": adj.tolist()}


def factor_map(features: np.ndarray, records: Sequence[InstructionRecord], seed: int) -> dict[str, Any]:
    """A 2-D t-SNE map of per-record features ``(N, F)`` (SIT: the selected factors; vanilla: the encoder),
    with what each point is coloured by: its task and the true value of its task's spurious factor.

    Features are standardised per column first; t-SNE (scikit-learn, perplexity ``min(30, (N - 1) / 3)``,
    PCA initialisation) is seeded. Returns ``{"xy": (N, 2) list, "task": [...], "spurious_value": [...]}``."""
    from sklearn.manifold import TSNE

    from sit_nlp.testbed.grammar import FACTORS

    x = np.asarray(features, dtype=np.float64).reshape(len(records), -1)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    perplexity = float(min(30.0, max(2.0, (len(records) - 1) / 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    spurious = [float(r.extra["factors"][FACTORS.index(r.extra["spurious_factor"])])
                if r.extra.get("spurious_factor") else float("nan") for r in records]
    return {"xy": np.round(xy, 4).tolist(), "task": [r.task for r in records], "spurious_value": spurious}


def plot_factor_maps(maps: dict[str, dict[str, Any]], path: Path) -> Any:
    """One row per method (``maps``: method -> :func:`factor_map` output): the 2-D t-SNE map of one seed's
    held-out records coloured by task, and by the true value of the task's spurious factor (colour bar
    labelled). Drawn on a :class:`matplotlib.figure.Figure` (no pyplot state), written atomically to
    ``path``; returns the figure."""
    from matplotlib.figure import Figure

    from sit_causal.plotting import save_figure

    fig = Figure(figsize=(8.4, 3.6 * len(maps) + 0.5), layout="constrained")
    axes = fig.subplots(len(maps), 2, squeeze=False)
    for row, (method, m) in enumerate(maps.items()):
        xy = np.asarray(m["xy"])
        tasks = sorted(set(m["task"]))
        codes = np.array([tasks.index(t) for t in m["task"]])
        ax = axes[row, 0]
        for i, t in enumerate(tasks):
            ax.scatter(xy[codes == i, 0], xy[codes == i, 1], s=4, label=t)
        ax.set_title(f"{method}: by task (n = {len(xy)} records)", fontsize=9)
        ax.legend(fontsize=6, markerscale=2)
        ax = axes[row, 1]
        points = ax.scatter(xy[:, 0], xy[:, 1], s=4, c=np.asarray(m["spurious_value"]), cmap="coolwarm")
        ax.set_title(f"{method}: by the spurious factor's value", fontsize=9)
        fig.colorbar(points, ax=ax, shrink=0.8, label="true value of the task's spurious factor")
        for a in axes[row]:
            a.set_xticks([])
            a.set_yticks([])
            a.set_xlabel("t-SNE 1", fontsize=8)
            a.set_ylabel("t-SNE 2", fontsize=8)
    fig.suptitle("2-D t-SNE maps of each method's features, first seed (axes have no units)", fontsize=10)
    save_figure(fig, path, dpi=110)
    return fig
