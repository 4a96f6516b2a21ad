"""Stage 1 of the theory check: the selection objective's landscape on exactly linear representations.

No model is trained. For a meta-SCM (graph ``A`` ``(m, n)``, rows = tasks, columns = factors) the
representation is exactly linear, ``z = L B^T + c`` (``B`` ``(n, n)`` Gaussian, ``c`` ``(n,)``; rows of ``z``
= samples), so the only thing left to decide is whether SIT's selection objective
(:func:`sit_causal.selection.align.rotation_objective`, the edge count ``J = sum_{t,j} log(1 + E_tj / eps)``
with the UIC and distinction terms off: the exact-sparsity selection the theory assumes) is flat along the
directions the UIC checker (:func:`sit_causal.theory.uic.check_uic`) calls ambiguous and rises along every other.

Gradients. ``G_t`` is the centred gradient statistic (:func:`sit_causal.selection.gradients.gradient_matrix`)
of the task function itself, ``dg_t / dL`` at each of task ``t``'s samples (central differences of
:meth:`sit_causal.sim.maps.TargetMaps.task_function`, exact zeros at non-parents), mapped to the coordinates
the selection step works in by the chain rule. This isolates the objective from the regressors that
estimate ``G_t`` in a trained run (stage 2 measures the whole estimator).

The two forms, each in its own regime:

* **orthogonal** (``rotation-left``: mean-modulated prior, shared diagonal within-dataset covariance).
  ``w = (z - mu) W`` with ``W`` the within-dataset whitening (:func:`~sit_causal.selection.gradients.whitening`,
  dataset ids only); ``L - const = w K`` with ``K = W^{-1} B^{-T}``, so the gradient in ``w`` is
  ``dg/dw = (dg/dL) K^T``. The exact solution ``R*`` ``(n, n)`` (rows = learned factors aligned with the true
  ones, columns = ``w`` dimensions) is the orthogonal polar factor of ``(K S)^T``, ``S`` = diag of the
  factors' inverse within-dataset standard deviations. Direction ``(i, j)``: the Givens rotation of rows
  ``i`` and ``j`` of ``R*`` by ``theta``; energies :func:`~sit_causal.selection.align.rotation_energies`.
  Predicted ambiguous: ``C_i = C_j`` (``check_uic(graph, "orthogonal")``).
* **linear** (``linear-left``: a general invertible map is left; no whitening). Coordinates
  ``s = (L - loc) / scale`` (the exact solution is the identity); direction ``(i, j)``: the shear
  ``u = M s`` with ``M = I + a e_i e_j^T`` (learned factor ``i`` becomes ``s_i + a s_j``); energies
  :func:`~sit_causal.selection.align.linear_energies`. Predicted ambiguous: ``C_i ⊆ C_j`` (the UIC).

Margin. Along direction ``(i, j)`` the profile ``J(theta)`` (or ``J(a)``) is compared with ``J`` at the exact
solution: ``margin_ij = min over the probe set of J - J(0)``, with the probe set away from the exact
solution and from the pure swap (angles in ``[pi/12, 5 pi/12]``; shears ``|a|`` in ``[0.25, 1]``). The noise
``sd_ij`` is the standard deviation of ``margin_ij`` over ``bootstrap`` resamples of the samples (whitening,
``R*`` and ``G_t`` recomputed). A factor's **score** is ``min_j margin_ij / sd_ij`` (``sd`` floored at
``1e-9``): high when every direction that moves it costs edges, about 0 or below when one is free. The
checker's label is scored by the AUROC of this score (:func:`sit_causal.metrics.auroc`).

Equal-likelihood test. At the transformed solution of every direction (``theta = pi/4``; ``a = 1``): the
edge count (the support, ``E_tj >= support_tol``) against the exact solution's, and the held-out loss of a
graph-sparse model: task ``t`` regressed on the learned factors the exact graph gives it, by least squares
on their polynomials of degree ``<= 3`` (a function class invariant under invertible linear maps of the
inputs, so only the information in the support matters). Along an ambiguous direction both stay equal
(the task functions are still expressible with the same support); along any other, edges are added or
the restricted loss rises. A direction counts as **equal** when the counts agree and the loss difference
is within ``3`` standard errors (over the held-out samples). A factor is *free* when some direction
through it is equal; the checker's label is compared with that.

Negative controls (``functions="interaction"``): the interaction part of every task function,
``v_t . tanh(U_t z_{S_t} + d_t)``, scaled up from at most 0.9 times the additive part's slope to
``interaction_strength`` (4) times it, so the functions are far from additive within a block: a tie-break
of the objective that favours the axes for near-additive functions cannot pass for identifiability.
Every parent keeps its additive term, so the task functions stay non-degenerate.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from sit_causal.metrics import auroc
from sit_causal.selection.align import AlignConfig, linear_energies, rotation_energies, rotation_objective
from sit_causal.selection.gradients import gradient_matrix, whitening
from sit_causal.sim.maps import TargetMaps
from sit_causal.sim.scm import SCMConfig, build_mechanism
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

__all__ = [
    "FORMS",
    "FUNCTIONS",
    "LandscapeConfig",
    "graph_landscape",
    "landscape_statistics",
    "task_gradients",
]

Form = Literal["orthogonal", "linear"]
FORMS: tuple[str, ...] = ("orthogonal", "linear")
FUNCTIONS: tuple[str, ...] = ("simulator", "interaction")


@dataclass(frozen=True)
class LandscapeConfig:
    """Settings of stage 1 (module docstring).

    Arguments:
        family: prior family of the meta-SCM (``gauss-mean``: the rotation-left regime).
        datasets_per_task, samples: the meta-SCM's datasets per task and samples per dataset.
        bootstrap: resamples for the noise of each margin.
        angles: probe angles in ``[pi/12, 5 pi/12]``; shears: probe ``|a|`` values in ``[0.25, 1]``
            (both signs).
        count_eps, edge_threshold: the selection objective's ``eps`` and edge threshold
            (:class:`~sit_causal.selection.align.AlignConfig`).
        loss_degree, loss_samples: the equal-likelihood regressor (least squares on the polynomials of
            this degree; samples per task, split half/half into fit and held-out).
        fd_step: central-difference step on the standardised factors.
        support_tol: energy from which an entry counts as an edge in the equal-likelihood test. The
            gradients are exact, so a non-parent's energy is 0 in the linear form; in the orthogonal form
            the whitened exact solution leaks energies of about ``1e-6``-``1e-5`` (the factors' sample
            within-dataset correlations are not exactly 0), while an edge a rotation adds carries a
            sizeable fraction of a parent's energy.
        interaction_strength: the negative controls' interaction slope bound, in units of the additive
            part's (module docstring).
    """

    family: str = "gauss-mean"
    datasets_per_task: int = 5
    samples: int = 1000
    bootstrap: int = 8
    angles: int = 9
    shears: int = 4
    count_eps: float = AlignConfig.count_eps
    edge_threshold: float = AlignConfig.edge_threshold
    loss_degree: int = 3
    loss_samples: int = 2000
    fd_step: float = 1e-4
    interaction_strength: float = 4.0
    support_tol: float = 1e-4

    def objective(self) -> AlignConfig:
        """The selection objective's settings: the count alone (UIC and distinction terms off)."""
        return AlignConfig(count_eps=self.count_eps, edge_threshold=self.edge_threshold, w_uic=0.0,
                           w_distinction=0.0)


def task_gradients(maps: TargetMaps, latents: np.ndarray, task_id: np.ndarray, step: float) -> np.ndarray:
    """``dg_{task(k)} / dL`` at every sample ``(N, n)`` (central differences of step ``step * scale_i``;
    exactly 0 for a factor the sample's task does not read, since ``task_function`` never reads it)."""
    out = np.zeros_like(latents, dtype=np.float64)
    for t in range(maps.n_tasks):
        rows = np.flatnonzero(task_id == t)
        if rows.size == 0:
            continue
        base = latents[rows]
        for i in np.flatnonzero(maps.adjacency[t]):
            h = step * maps.scale[i]
            up, down = base.copy(), base.copy()
            up[:, i] += h
            down[:, i] -= h
            out[rows, i] = (maps.task_function(up, t) - maps.task_function(down, t)) / (2 * h)
    return out


def interaction_maps(maps: TargetMaps, strength: float) -> TargetMaps:
    """The negative control's task functions (module docstring): the simulator's, with the interaction's
    output weights ``v_t`` scaled so that its slope bound is ``strength`` times the additive part's
    (the simulator caps it at 0.9); same graph, same ``U_t`` (zero outside ``S_t``)."""
    return replace(maps, v=maps.v * (strength / 0.9))


def _grams(grad: np.ndarray, task_id: np.ndarray, m: int) -> np.ndarray:
    """Unit-trace centred gradient statistics ``(m, n, n)`` of the rows of ``grad`` per task."""
    n = grad.shape[1]
    out = np.zeros((m, n, n))
    for t in range(m):
        g = gradient_matrix(grad[task_id == t])
        tr = float(np.trace(g))
        out[t] = g / tr if tr > 0 else g
    return out


def _polar(a: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(a)
    return u @ vt


def _probes(cfg: LandscapeConfig, form: Form) -> np.ndarray:
    if form == "orthogonal":
        return np.linspace(math.pi / 12, 5 * math.pi / 12, cfg.angles)
    mags = np.linspace(0.25, 1.0, cfg.shears)
    return np.concatenate([-mags[::-1], mags])


def _transforms(start: np.ndarray, form: Form, values: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Every probe of every ordered pair: ``(P * len(values) + 1, n, n)`` matrices (the start first) and the
    pair list ``(i, j)`` (orthogonal: ``i < j``, the plane; linear: ordered, row ``i`` gains ``a`` row ``j``)."""
    n = start.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(n) if (i < j if form == "orthogonal" else i != j)]
    mats = [start]
    for i, j in pairs:
        for v in values:
            if form == "orthogonal":
                r = start.copy()
                r[i] = math.cos(v) * start[i] + math.sin(v) * start[j]
                r[j] = -math.sin(v) * start[i] + math.cos(v) * start[j]
            else:
                r = np.eye(n)
                r[i, j] = v
            mats.append(r)
    return np.stack(mats), pairs


def _frame(form: Form, z: np.ndarray, latents: np.ndarray, grad_l: np.ndarray, task_id: np.ndarray,
           dataset_id: np.ndarray, b: np.ndarray, maps: TargetMaps, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(G, start)``: the task statistics in the form's coordinates and the exact solution there."""
    if form == "orthogonal":
        _, wmat = whitening(z, dataset_id)
        k = np.linalg.inv(wmat) @ np.linalg.inv(b).T  # L - const = w K
        grad = grad_l @ k.T
        _, inverse, counts = np.unique(dataset_id, return_inverse=True, return_counts=True)
        sums = np.zeros((counts.size, latents.shape[1]))
        np.add.at(sums, inverse, latents)
        sd = (latents - (sums / counts[:, None])[inverse]).std(axis=0)
        start = _polar((k / sd[None, :]).T)
        return _grams(grad, task_id, m), start
    return _grams(grad_l * maps.scale[None, :], task_id, m), np.eye(z.shape[1])


def _profile(grams: np.ndarray, mats: np.ndarray, form: Form, obj: AlignConfig,
             threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``J`` ``(R,)`` and the edge counts ``(R,)`` (energies ``>= threshold``, default the objective's edge
    threshold) of every matrix."""
    g = torch.as_tensor(grams, dtype=torch.float64)
    t = torch.as_tensor(mats, dtype=torch.float64)
    with torch.no_grad():
        e = rotation_energies(t, g) if form == "orthogonal" else linear_energies(t, g)
        j = rotation_objective(e, obj)
    thr = obj.edge_threshold if threshold is None else threshold
    return j.numpy(), (e.numpy() >= thr).sum(axis=(1, 2))


def _margins(grams: np.ndarray, start: np.ndarray, form: Form, cfg: LandscapeConfig) -> tuple[np.ndarray, list]:
    values = _probes(cfg, form)
    start_mat = start if form == "orthogonal" else np.eye(start.shape[0])
    mats, pairs = _transforms(start_mat, form, values)
    j, _ = _profile(grams, mats, form, cfg.objective())
    prof = j[1:].reshape(len(pairs), len(values)) - j[0]
    return prof.min(axis=1), pairs


def _poly(x: np.ndarray, degree: int) -> np.ndarray:
    """Every monomial of the columns of ``x`` ``(N, k)`` up to ``degree``, and a constant: ``(N, F)``."""
    cols = [np.ones((x.shape[0], 1))]
    for d in range(1, degree + 1):
        for idx in itertools.combinations_with_replacement(range(x.shape[1]), d):
            cols.append(np.prod(x[:, list(idx)], axis=1, keepdims=True))
    return np.concatenate(cols, axis=1)


def _poly_loss(x_fit: np.ndarray, y_fit: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray,
               degree: int) -> np.ndarray:
    """Per-sample held-out squared errors of least squares on the polynomials of degree ``<= degree``.

    The polynomials of degree ``<= d`` in ``u = M s`` are those in ``s`` for any invertible ``M``, so two
    supports related by an invertible map give the same fit: the loss changes only with the information
    the support carries."""
    coef, *_ = np.linalg.lstsq(_poly(x_fit, degree), y_fit, rcond=None)
    return np.square(_poly(x_eval, degree) @ coef - y_eval)


def _equal_likelihood(form: Form, u_of: Any, graph: TaskFactorGraph, grams: np.ndarray, start: np.ndarray,
                      y: np.ndarray, task_id: np.ndarray, cfg: LandscapeConfig,
                      rng: np.random.Generator) -> dict[tuple[int, int], dict[str, Any]]:
    """Edge count and restricted-support held-out loss at the transformed solution of every direction."""
    adj = graph.adjacency
    m, n = adj.shape
    value = math.pi / 4 if form == "orthogonal" else 1.0
    mats, pairs = _transforms(start if form == "orthogonal" else np.eye(n), form, np.array([value]))
    _, counts = _profile(grams, mats, form, cfg.objective(), cfg.support_tol)
    per_task = []
    for t in range(m):
        rows = np.flatnonzero(task_id == t)
        rows = rng.choice(rows, size=min(cfg.loss_samples, rows.size), replace=False)
        per_task.append((rows[: rows.size // 2], rows[rows.size // 2:]))
    exact_u = u_of(mats[0])
    base: dict[int, np.ndarray] = {}
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for k, (i, j) in enumerate(pairs):
        u = u_of(mats[k + 1])
        diffs = []
        for t in range(m):
            if not (adj[t, i] or adj[t, j]):
                continue  # neither learned factor moved for this task: its loss is unchanged
            sup = np.flatnonzero(adj[t])
            fit, ev = per_task[t]
            if t not in base:
                base[t] = _poly_loss(exact_u[fit][:, sup], y[fit], exact_u[ev][:, sup], y[ev], cfg.loss_degree)
            diffs.append(_poly_loss(u[fit][:, sup], y[fit], u[ev][:, sup], y[ev], cfg.loss_degree) - base[t])
        d = np.concatenate(diffs) if diffs else np.zeros(1)
        delta, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
        out[(i, j)] = {"count_change": int(counts[k + 1] - counts[0]), "loss_change": delta, "loss_se": se,
                       "equal": bool(counts[k + 1] == counts[0] and abs(delta) <= 3 * se + 1e-12)}
    return out


def graph_landscape(graph: TaskFactorGraph, seed: int, cfg: LandscapeConfig,
                    functions: str = "simulator") -> list[dict[str, Any]]:
    """Stage 1 on one graph and one meta-SCM seed: one row per (form, factor) (module docstring).

    Row keys: ``form``, ``factor``, ``identifiable`` (the checker's label in that form), ``mixes_with``,
    ``score`` (``min_j margin_ij / sd_ij``), ``margin`` and ``sd`` of the minimising direction, ``partner``,
    ``free`` (some direction through the factor passed the equal-likelihood test), ``equal_directions``.
    """
    if functions not in FUNCTIONS:
        raise ValueError(f"functions must be one of {', '.join(FUNCTIONS)}, got {functions!r}")
    with threadpool_limits(limits=1, user_api="blas"):
        return _graph_landscape(graph, seed, cfg, functions)


def _graph_landscape(graph: TaskFactorGraph, seed: int, cfg: LandscapeConfig, functions: str) -> list[dict[str, Any]]:
    m, n = graph.adjacency.shape
    scm = SCMConfig(n_factors=n, n_tasks=m, datasets_per_task=cfg.datasets_per_task,
                    samples_per_dataset=cfg.samples, family=cfg.family, obs_dim=n, mixing_depth=1, seed=seed)
    mech = build_mechanism(scm, graph=graph)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    maps = mech.targets if functions == "simulator" else interaction_maps(mech.targets, cfg.interaction_strength)
    data = mech.sample(cfg.samples, rng)
    latents, task_id, dataset_id = data.latents, data.task_id, data.dataset_id
    y = maps(latents, task_id) + scm.target_noise * rng.standard_normal(latents.shape[0])
    b = rng.standard_normal((n, n))
    c = rng.standard_normal(n)
    z = latents @ b.T + c
    grad_l = task_gradients(maps, latents, task_id, cfg.fd_step)
    rows: list[dict[str, Any]] = []
    for form in FORMS:
        report = check_uic(graph, ambiguity=form)  # type: ignore[arg-type]
        grams, start = _frame(form, z, latents, grad_l, task_id, dataset_id, b, maps, m)  # type: ignore[arg-type]
        margins, pairs = _margins(grams, start, form, cfg)  # type: ignore[arg-type]
        boot = []
        for _ in range(cfg.bootstrap):
            idx = rng.integers(0, latents.shape[0], latents.shape[0])
            g_b, s_b = _frame(form, z[idx], latents[idx], grad_l[idx], task_id[idx], dataset_id[idx], b, maps, m)  # type: ignore[arg-type]
            boot.append(_margins(g_b, s_b, form, cfg)[0])  # type: ignore[arg-type]
        sd = np.std(np.stack(boot), axis=0, ddof=1)
        if form == "orthogonal":
            _, wmat = whitening(z, dataset_id)
            mu = z.mean(axis=0)

            def u_of(mat: np.ndarray, _w: np.ndarray = wmat, _mu: np.ndarray = mu) -> np.ndarray:
                return ((z - _mu) @ _w) @ mat.T
        else:
            s = (latents - maps.loc) / maps.scale

            def u_of(mat: np.ndarray, _s: np.ndarray = s) -> np.ndarray:
                return _s @ mat.T
        equal = _equal_likelihood(form, u_of, graph, grams, start, y, task_id, cfg, rng)  # type: ignore[arg-type]
        norm = margins / np.maximum(sd, 1e-9)
        for i, verdict in enumerate(report.factors):
            through = [k for k, (a, bb) in enumerate(pairs) if i in ((a, bb) if form == "orthogonal" else (a,))]
            best = min(through, key=lambda k: norm[k])
            eq = [graph.factors[bb if a == i else a] for k, (a, bb) in enumerate(pairs)
                  if k in through and equal[(a, bb)]["equal"]]
            rows.append({"form": form, "factor": graph.factors[i], "identifiable": bool(verdict.identifiable),
                         "mixes_with": list(verdict.mixes_with), "score": float(norm[best]),
                         "margin": float(margins[best]), "sd": float(sd[best]),
                         "partner": graph.factors[pairs[best][1] if pairs[best][0] == i else pairs[best][0]],
                         "free": bool(eq), "equal_directions": eq,
                         "count_change": equal[pairs[best]]["count_change"],
                         "loss_change": equal[pairs[best]]["loss_change"]})
    return rows


def landscape_statistics(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    """Per form: the pooled AUROC of the score for the checker's label, the per-mode AUROC (``None`` where a
    mode holds one label only), and the equal-likelihood agreement (free factors = non-identifiable ones)."""
    out: dict[str, Any] = {}
    for form in FORMS:
        sel = [r for r in rows if r["form"] == form]
        if not sel:
            continue
        lab = np.array([r["identifiable"] for r in sel])
        score = np.array([r["score"] for r in sel])
        free = np.array([r["free"] for r in sel])
        a = auroc(score, lab)
        per_mode = {}
        for mode in modes:
            ms = [r for r in sel if r["mode"] == mode]
            if not ms:
                continue
            ml = np.array([r["identifiable"] for r in ms])
            am = auroc(np.array([r["score"] for r in ms]), ml)
            per_mode[mode] = {"factors": len(ms), "identifiable": int(ml.sum()),
                              "auroc": None if math.isnan(am) else am,
                              "score_median_identifiable": float(np.median([r["score"] for r in ms
                                                                           if r["identifiable"]]))
                              if ml.any() else None,
                              "score_median_not_identifiable": float(np.median([r["score"] for r in ms
                                                                               if not r["identifiable"]]))
                              if (~ml).any() else None}
        out[form] = {
            "factors": len(sel), "identifiable": int(lab.sum()),
            "auroc": None if math.isnan(a) else a,
            "per_mode": per_mode,
            "equal_likelihood": {
                "not_identifiable_free": int(np.sum(~lab & free)), "not_identifiable": int(np.sum(~lab)),
                "identifiable_pinned": int(np.sum(lab & ~free)), "identifiable": int(lab.sum()),
                "agreement": float(np.mean(free == ~lab)),
            },
        }
    return out
