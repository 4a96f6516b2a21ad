"""The seed runner of the synthetic experiment: every method trained, unmixed and scored on each seed's data.

One run of :class:`~sit_causal.experiments.experiment.SimulateConfig` (the run's graph, its seeds and the
results schema are described in :mod:`sit_causal.experiments.experiment`): for each seed ``s``, a fresh
mechanism and sample draw of the meta-SCM (:func:`sit_causal.sim.scm.generate_train_test` with
``SCMConfig.seed = s``) and a fresh model initialisation (``torch.Generator`` seeded with ``s``) for every
method. Every method sees the same data.

Training (:func:`train_model`): Adam on random mini-batches of the training set (indices from the
seeded generator) on the SIT objective (:class:`sit_causal.objective.ObjectiveConfig`, the weights the
method sets), ``x`` standardised per dimension and ``y`` per task with training statistics,
``x' = (x - mean_x) / (std_x + 1e-8)`` and ``y' = (y - mean_t) / (std_t + 1e-8)`` for task ``t``
(:func:`standardisation`, :func:`to_batch`).
Scoring (:func:`score_representation`) uses the posterior mean (SIT, iVAE) or the bottleneck (multitask) on the
held-out set: MCC (Pearson, Spearman), affine ``R^2``, graph-consistent ``R^2``, the per-factor report,
and for methods with selection masks the learned graph (masks > 0.5; rows = tasks, columns = learned
factors) with its precision/recall against the true graph and its own UIC verdict. All metrics come
from :mod:`sit_causal.metrics`.

Times: ``train_s`` is the wall time of training the method's model (shared by the methods that train the same
model), ``select_s`` that of its selection step (0 without one), ``time_s = train_s + select_s``, and
``select_stages`` the selection step's own split (the task-sparse rotation's ``gradients``, ``search``,
``jacobi``, ``refine``; ``null`` for other steps).

Scheduling: with several workers, every (seed, trained model) pair is one job (the methods that share a
trained model, e.g. ``sit`` and ``taskfree``, run in the job of that model), so the workers stay busy until the
last job; a seed's rows are put together in method order, and saved, once all its jobs have ended.

A factor counts as **recovered** (:func:`factor_recovered`) when its matched absolute Pearson correlation
is at least :data:`~sit_causal.experiments.experiment.RECOVERY_THRESHOLD` (0.9) **and** the residual check
passes: regressing its matched learned factor on all true factors (standardised), no other true factor has a
coefficient of at least ``DEFAULT_MIX_THRESHOLD`` (0.2) times the largest one, i.e. the learned factor is
explained by this true factor alone. ``0.9`` sits between a clean recovery (``> 0.95``) and the correlation of
a factor mixed 1 : 0.5 with one other factor of equal variance (``1 / sqrt(1.25) = 0.89``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sit_causal.executor import Executor, LocalExecutor
from sit_causal.experiments.experiment import (
    RECOVERY_THRESHOLD,
    SimulateConfig,
    SyntheticTrainConfig,
    run_graph,
    run_regime,
    summarise_seeds,
    theory_warnings,
)
from sit_causal.experiments.synthetic import (
    SYNTHETIC_OBJECTIVE,
    Batch,
    SyntheticModel,
    SyntheticModelConfig,
    build_synthetic_model,
    method_configs,
    training_method,
    unmixing_step,
)
from sit_causal.metrics import (
    DEFAULT_MIX_THRESHOLD,
    RecoveryReport,
    affine_r2,
    factor_report,
    graph_consistent_r2,
    graph_recovery,
    mcc,
)
from sit_causal.objective import training_progress
from sit_causal.selection import (
    AlignConfig,
    AlignResult,
    IntersectResult,
    TaskFreeResult,
    align_by_task_sparsity,
    identify_by_intersection,
    identify_without_tasks,
)
from sit_causal.selection.linear import LinearAlignResult, align_linear_by_task_sparsity
from sit_causal.sim.scm import SCMDataset, build_mechanism, generate_train_test
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import UICReport, check_uic
from sit_causal.threads import torch_threads

__all__ = [
    "Unmixing",
    "factor_recovered",
    "model_job",
    "run_seed",
    "run_simulation",
    "score_representation",
    "selection_step",
    "standardisation",
    "to_batch",
    "train_model",
    "trained_models",
]

Unmixing = AlignResult | LinearAlignResult | IntersectResult | TaskFreeResult
"""What a selection step returns: a ``transform`` of the representation (and, except the task-free
control, a learned graph ``adjacency`` ``(m, n)``, rows = tasks)."""


# ---------------------------------------------------------------------- training
def to_batch(data: SCMDataset, x_stats: tuple[np.ndarray, np.ndarray], y_stats: tuple[np.ndarray, np.ndarray]) -> Batch:
    """Tensors of ``data`` with ``x`` standardised by ``x_stats`` ``(mean (x_dim,), std (x_dim,))`` and ``y``
    by the per-task ``y_stats`` ``(mean (m,), std (m,))``; ``y`` becomes ``(N, 1)``."""
    x = (data.x - x_stats[0]) / x_stats[1]
    y = (data.y.astype(np.float64) - y_stats[0][data.task_id]) / y_stats[1][data.task_id]
    return Batch(x=torch.as_tensor(x, dtype=torch.float32), y=torch.as_tensor(y, dtype=torch.float32)[:, None],
                 task_id=torch.as_tensor(data.task_id, dtype=torch.long),
                 dataset_id=torch.as_tensor(data.dataset_id, dtype=torch.long))


def standardisation(data: SCMDataset) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Training-set statistics for :func:`to_batch`: ``x`` mean and std per dimension ``(x_dim,)`` each,
    ``y`` mean and std per task ``(m,)`` each."""
    x_mean, x_std = data.x.mean(0), data.x.std(0) + 1e-8
    m = data.n_tasks
    y = data.y.astype(np.float64)
    counts = np.maximum(np.bincount(data.task_id, minlength=m), 1)
    y_mean = np.bincount(data.task_id, weights=y, minlength=m) / counts
    y_var = np.bincount(data.task_id, weights=(y - y_mean[data.task_id]) ** 2, minlength=m) / counts
    return (x_mean, x_std), (y_mean, np.sqrt(y_var) + 1e-8)


def train_model(
    model: SyntheticModel,
    batch: Batch,
    train: SyntheticTrainConfig,
    generator: torch.Generator,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``batch`` (the whole training set) with Adam; returns the last step's loss terms.

    Mini-batch indices and all sampling noise come from ``generator``; ``on_step(step, terms)`` is called
    after every step (progress bars, logging).
    """
    with torch_threads(train.threads):
        return _train_loop(model, batch, train, generator, on_step)


def _train_loop(model: SyntheticModel, batch: Batch, train: SyntheticTrainConfig, generator: torch.Generator,
                on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, float]:
    opt = torch.optim.Adam(model.param_groups(train.lr), lr=train.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.75 * train.steps)], gamma=0.5)
    n = len(batch)
    full = train.batch_size >= n
    logged: dict[str, float] = {}
    model.train()
    for step in range(train.steps):
        sub = batch if full else batch.index(torch.randint(0, n, (train.batch_size,), generator=generator))
        terms = model.loss_terms(sub, generator)
        loss = model.objective.total(terms, training_progress(step, train.steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        logged = {**{k: float(v.detach()) for k, v in terms.items()}, "total": float(loss.detach())}
        if on_step is not None:
            on_step(step, logged)
    model.eval()
    return logged


# ---------------------------------------------------------------------- evaluation
def factor_recovered(report: RecoveryReport, factor: int, threshold: float = RECOVERY_THRESHOLD) -> bool:
    """Recovered = matched ``|rho| >= threshold`` and the matched learned factor's regression on the true
    factors names this factor alone (see the module docstring)."""
    rec = report.factors[factor]
    if rec.matched_to < 0 or rec.matched_correlation < threshold:
        return False
    return report.learned[rec.matched_to].mixes == (factor,)


def selection_step(method: str, model: SyntheticModel, train_set: SCMDataset, train_batch: Batch,
                   n_tasks: int, seed: int, align: AlignConfig | None = None,
                   linear: bool = False) -> Unmixing | None:
    """The step after training (:func:`sit_causal.experiments.synthetic.unmixing_step`) on the training split's
    representation ``(N, n)``, from :mod:`sit_causal.selection`: the task-sparse rotation (``align``; an
    ablation's switched-off loss stays off there too), or with ``linear`` (the ``linear-left`` regime) the
    task-sparse invertible matrix (:func:`~sit_causal.selection.linear.align_linear_by_task_sparsity`),
    identification by intersection (``intersect``), the task-free control (``taskfree``: dataset ids
    only), or ``None`` for a method without one."""
    step = unmixing_step(method)
    if step is None:
        return None
    z = model.represent(train_batch.x).double().numpy()
    if step == "taskfree":
        return identify_without_tasks(z, train_set.dataset_id)
    y = train_batch.y[:, 0].double().numpy()
    if step == "intersect":
        return identify_by_intersection(z, y, train_set.task_id, n_tasks, seed=seed)
    cfg = AlignConfig() if align is None else align
    obj = model.objective
    cfg = replace(cfg, w_uic=cfg.w_uic if obj.w_uic > 0 or method == "ivae-select" else 0.0,
                  w_distinction=cfg.w_distinction if obj.w_distinction > 0 or method == "ivae-select" else 0.0)
    if linear:
        return align_linear_by_task_sparsity(z, y, train_set.task_id, n_tasks, train_set.dataset_id, cfg, seed=seed)
    return align_by_task_sparsity(z, y, train_set.task_id, n_tasks, train_set.dataset_id, cfg, seed=seed)


def score_representation(model: SyntheticModel, test: SCMDataset, test_batch: Batch, report: UICReport,
                         rng: np.random.Generator, unmix: Unmixing | None = None) -> dict[str, Any]:
    """Score ``model`` on the held-out set (metrics of :mod:`sit_causal.metrics`); see the schema above.

    With ``unmix`` (:func:`selection_step`) the representation is unmixed first, the learned graph is
    the step's (rows = tasks, columns = learned factors) instead of the binarised masks, and
    ``mcc_pearson_before_unmix`` keeps the MCC of the representation the step started from.
    """
    learned = model.represent(test_batch.x).double().numpy()
    before = None
    if unmix is not None:
        before = mcc(test.latents, learned, "pearson").score
        learned = unmix.transform(learned)
    true = test.latents
    rep = factor_report(true, learned, "pearson")
    spear = mcc(true, learned, "spearman")
    split = rng.random(true.shape[0]) < 0.5
    r2 = affine_r2(true, learned, train_mask=split)
    gcr2 = graph_consistent_r2(true, learned, report, rep.mcc.assignment, train_mask=split)
    names = report.graph.factors
    per_factor = []
    for i, verdict in enumerate(report.factors):
        j = int(rep.mcc.assignment[i])
        learned_mixes = [names[k] for k in rep.learned[j].mixes] if j >= 0 else []
        per_factor.append({
            "factor": names[i],
            "matched_corr": float(rep.factors[i].matched_correlation),
            "identifiable_predicted": bool(verdict.identifiable),
            "mixes_with": list(verdict.mixes_with),
            "learned_mixes": learned_mixes,
            "recovered": factor_recovered(rep, i),
        })
    out: dict[str, Any] = {
        "mcc_pearson": rep.mcc.score,
        "mcc_spearman": spear.score,
        "affine_r2": r2.mean,
        "graph_consistent_r2": gcr2.mean,
        "matched_correlation_matrix": rep.mcc.matched_correlation().tolist(),
        "per_factor": per_factor,
        "graph_precision": None, "graph_recall": None, "learned_graph": None, "learned_uic_holds": None,
    }
    # the task-free control reads no task: it has no graph (not even the model's masks)
    masks = None if isinstance(unmix, TaskFreeResult) else model.task_masks()
    if before is not None:
        out["mcc_pearson_before_unmix"] = before
    if isinstance(unmix, IntersectResult):
        out["identified"] = unmix.found.tolist()
    step_graph = getattr(unmix, "adjacency", None)  # the task-free control has no graph
    if masks is not None or step_graph is not None:
        binary = step_graph.astype(int) if step_graph is not None else (masks.numpy() > 0.5).astype(int)
        gr = graph_recovery(binary, report.graph, rep.mcc.assignment)
        out.update(graph_precision=gr.precision, graph_recall=gr.recall, learned_graph=binary.tolist(),
                   learned_uic_holds=bool(check_uic(TaskFactorGraph.from_matrix(binary)).uic_holds))
    return out



# ---------------------------------------------------------------------- the run
def trained_models(methods: Sequence[str]) -> list[str]:
    """The models ``methods`` train (:func:`~sit_causal.experiments.synthetic.training_method`), each once, in
    method order."""
    out: list[str] = []
    for method in methods:
        base = training_method(method)
        if base not in out:
            out.append(base)
    return out


def run_seed(config: SimulateConfig, graph: TaskFactorGraph, seed: int,
             on_step: Callable[[int], None] | None = None,
             describe: Callable[[str], None] | None = None,
             models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every method of ``config`` on the meta-SCM of one seed: the ``results`` rows of that seed.

    ``on_step(k)`` reports ``k`` more training steps done (progress bars); ``describe(text)`` what runs now.
    ``models`` limits the run to the methods that train one of these models (one job of a parallel run);
    every method's row is the same as in a run of all methods.
    """
    report = check_uic(graph)
    train_set, test_set = generate_train_test(config.scm_config(seed), config.test_samples, graph=graph)
    linear = run_regime(config, graph)[0] == "linear-left"
    x_stats, y_stats = standardisation(train_set)
    train_batch = to_batch(train_set, x_stats, y_stats)
    test_batch = to_batch(test_set, x_stats, y_stats)
    trained: dict[str, tuple[SyntheticModel, dict[str, float], float]] = {}
    rows: list[dict[str, Any]] = []
    for method in config.methods:
        base = training_method(method)
        if models is not None and base not in models:
            continue
        if describe is not None:
            describe(f"{method} seed {seed}")
        if base in trained:  # methods that differ only in their selection step share one trained model
            model, terms, train_s = trained[base]
            if on_step is not None:
                on_step(config.train.steps)
        else:
            gen = torch.Generator().manual_seed(seed)
            mcfg, objective = method_configs(
                base, n_factors=graph.n_factors, x_dim=train_set.x.shape[1], n_tasks=graph.n_tasks,
                n_datasets=train_set.n_datasets, **config.overrides)
            model = build_synthetic_model(mcfg, objective, gen)
            t0 = time.perf_counter()
            terms = train_model(model, train_batch, config.train, gen,
                                on_step=None if on_step is None else (lambda s, t: on_step(1)))
            train_s = time.perf_counter() - t0
            trained[base] = (model, terms, train_s)
        if describe is not None and unmixing_step(method) is not None:
            step = "align over GL(n)" if linear and unmixing_step(method) == "align" else unmixing_step(method)
            describe(f"{method} seed {seed} ({step})")
        t0 = time.perf_counter()
        unmix = selection_step(method, model, train_set, train_batch, graph.n_tasks, seed, config.align, linear)
        select_s = time.perf_counter() - t0 if unmix is not None else 0.0
        stages = getattr(unmix, "timings", None) or None
        scores = score_representation(model, test_set, test_batch, report, np.random.default_rng(seed), unmix)
        rows.append({"method": method, "seed": seed, "time_s": train_s + select_s, "train_s": train_s,
                     "select_s": select_s, "select_stages": stages, "final_losses": terms, **scores})
    return rows


def model_job(job: tuple[SimulateConfig, TaskFactorGraph, int, str],
              report: Callable[[int], None]) -> list[dict[str, Any]]:
    """One (seed, trained model) pair as an executor job: ``job = (config, graph, seed, model)``; the rows of the
    methods that train ``model`` (:func:`run_seed` with ``models=(model,)``)."""
    config, graph, seed, model = job
    torch.set_num_threads(config.train.threads)
    return run_seed(config, graph, seed, on_step=report, models=(model,))


def run_simulation(config: SimulateConfig, quiet: bool = False, graph: TaskFactorGraph | None = None,
                   warn_fn: Callable[[str], None] | None = None,
                   done: dict[int, list[dict[str, Any]]] | None = None,
                   on_seed: Callable[[int, list[dict[str, Any]]], None] | None = None,
                   executor: Executor | None = None) -> dict[str, Any]:
    """Run every method on every seed; return the results object (schema in the module docstring).

    ``graph`` overrides :func:`run_graph`; ``warn_fn`` receives each warning line as it is found.
    ``done`` holds the rows of seeds already finished (a resumed run): they are not run again.
    ``on_seed(seed, rows)`` is called as each seed ends (the command saves it at once).
    With one local worker the seeds run one after another in this process; otherwise every (seed, trained
    model) pair is one job of ``executor`` (:mod:`sit_causal.executor`; default: local, ``config.workers``
    processes), and a seed's rows are assembled (and ``on_seed`` called) when its last job ends. Every job is a
    function of its own seed, so the results equal a serial run's (times aside), in seed order, wherever they
    ran.
    """
    graph = run_graph(config) if graph is None else graph
    report = check_uic(graph)
    n_datasets = config.tasks * config.datasets_per_task
    warnings: list[str] = []
    variety = build_mechanism(config.scm_config(config.seed), graph=graph).variety()
    lines = theory_warnings(report, n_datasets, config.family, None if variety.holds else variety.reason)
    regime_name, regime_why = run_regime(config, graph)
    if regime_name == "prior-identifies":
        lines.append(f"regime {regime_name}: {regime_why}")
    for line in lines:
        warnings.append(line)
        if warn_fn is not None:
            warn_fn(line)
    seeds = list(range(config.seed, config.seed + config.seeds))
    by_seed: dict[int, list[dict[str, Any]]] = {s: rows for s, rows in (done or {}).items() if s in seeds}
    todo = [s for s in seeds if s not in by_seed]
    executor = LocalExecutor(config.workers) if executor is None else executor
    serial = isinstance(executor, LocalExecutor) and min(executor.workers, len(todo)) <= 1
    per_seed = len(config.methods) * config.train.steps
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    bar = tqdm(total=per_seed * len(seeds), initial=per_seed * (len(seeds) - len(todo)), disable=quiet,
               file=sys.stderr, desc="simulate", unit="step", mininterval=0.5)

    def finished(seed: int, rows: list[dict[str, Any]]) -> None:
        by_seed[seed] = rows
        if on_seed is not None:
            on_seed(seed, rows)

    try:
        if serial:
            for seed in todo:
                finished(seed, run_seed(config, graph, seed, on_step=bar.update, describe=bar.set_description))
        elif todo:
            models = trained_models(config.methods)
            jobs = [(config, graph, s, model) for s in todo for model in models]
            parts: dict[int, dict[str, list[dict[str, Any]]]] = {s: {} for s in todo}

            def job_done(i: int, rows: list[dict[str, Any]]) -> None:
                _, _, seed, model = jobs[i]
                parts[seed][model] = rows
                if len(parts[seed]) == len(models):  # the seed's last job: its rows in method order
                    by_method = {r["method"]: r for part in parts.pop(seed).values() for r in part}
                    finished(seed, [by_method[m] for m in config.methods])

            weights = [config.train.steps * sum(training_method(m) == job[3] for m in config.methods)
                       for job in jobs]
            bar.set_description(f"{len(todo)} seeds x {len(models)} models on {executor.describe()}")
            executor.run(model_job, jobs, job_done, progress=bar.update, weights=weights)
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    results = [row for seed in seeds for row in by_seed[seed]]
    return {
        "uic_holds": report.uic_holds,
        "graph": graph.to_dict(),
        "identifiable_predicted": report.identifiable_mask.tolist(),
        "regime": regime_name,
        "regime_reason": regime_why,
        "methods": list(config.methods),
        "config": {**config.to_dict(), "model_defaults": SyntheticModelConfig().to_dict(),
                   "objective_defaults": SYNTHETIC_OBJECTIVE.to_dict(),
                   "recovery_threshold": RECOVERY_THRESHOLD, "mix_threshold": DEFAULT_MIX_THRESHOLD},
        "warnings": warnings,
        "summary": summarise_seeds(results, config.methods),
        "results": results,
    }

