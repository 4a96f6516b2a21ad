"""``sit-causal simulate``: generate meta-SCM data, train SIT and the baselines, score the recovery.

One run = one task-to-factor graph (from ``--graph`` or drawn with ``--graph-mode`` from ``--seed``) and,
for each of ``--seeds`` seeds ``s = seed, seed+1, ...``, a fresh mechanism and sample draw of the meta-SCM
(:func:`sit_causal.scm.generate_train_test` with ``SCMConfig.seed = s``: prior parameters, mixing ``f``,
targets ``g_t``, training samples from stream 0, held-out samples from stream 1) and a fresh model
initialisation (``torch.Generator`` seeded with ``s``) for every method. Every method sees the same data.

Training (:func:`train_model`): Adam on random mini-batches of the training set (indices from the
seeded generator), ``x`` standardised per dimension and ``y`` per task with training statistics.
Scoring (:func:`evaluate`) uses the posterior mean (SIT, iVAE) or the bottleneck (multitask) on the
held-out set: MCC (Pearson, Spearman), affine ``R^2``, graph-consistent ``R^2``, the per-factor report,
and for methods with selection masks the learned graph (masks > 0.5; rows = tasks, columns = learned
factors) with its precision/recall against the true graph and its own UIC verdict. All metrics come
from :mod:`sit_causal.metrics`.

A factor counts as **recovered** (:func:`factor_recovered`) when its matched absolute Pearson correlation
is at least :data:`RECOVERY_THRESHOLD` (0.9) **and** the residual check passes: regressing its matched
learned factor on all true factors (standardised), no other true factor has a coefficient of at least
``DEFAULT_MIX_THRESHOLD`` (0.2) times the largest one, i.e. the learned factor is explained by this true
factor alone. ``0.9`` sits between a clean recovery (``> 0.95``) and the correlation of a factor mixed
1 : 0.5 with one other factor of equal variance (``1 / sqrt(1.25) = 0.89``).

``results.json`` schema (the keys the issue requires, plus diagnostics)::

    {"uic_holds": bool, "graph": {compact matrix form}, "config": {...}, "warnings": [str],
     "identifiable_predicted": [bool per factor], "summary": [{"method", "mcc_pearson_mean", ...}],
     "results": [{"method": str, "seed": int, "mcc_pearson": float, "mcc_spearman": float,
                  "affine_r2": float, "graph_consistent_r2": float, "time_s": float,
                  "graph_precision": float | null, "graph_recall": float | null,
                  "learned_graph": [[0/1]] | null, "learned_uic_holds": bool | null,
                  "matched_correlation_matrix": [[float]], "final_losses": {...},
                  "per_factor": [{"factor": str, "matched_corr": float, "identifiable_predicted": bool,
                                  "mixes_with": [str], "learned_mixes": [str], "recovered": bool}]}]}
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from tqdm import tqdm

from sit_causal.align import AlignConfig, AlignResult, align_by_task_sparsity
from sit_causal.cli_helpers import UsageFailure, warn
from sit_causal.expfam import FAMILY_NAMES, get_family
from sit_causal.graph import GraphError, TaskFactorGraph, load_graph
from sit_causal.graph_generators import generate_graph, parse_graph_mode
from sit_causal.intersect import IntersectResult, identify_by_intersection
from sit_causal.metrics import (
    DEFAULT_MIX_THRESHOLD,
    RecoveryReport,
    affine_r2,
    factor_report,
    graph_consistent_r2,
    graph_recovery,
    mcc,
)
from sit_causal.models import (
    METHODS,
    Batch,
    ModelConfig,
    SyntheticModel,
    build_model,
    training_method,
    unmixing_step,
)
from sit_causal.scm import SCMConfig, SCMDataset, build_mechanism, generate_train_test
from sit_causal.uic import UICReport, check_uic

__all__ = [
    "RECOVERY_THRESHOLD",
    "SimulateConfig",
    "TrainConfig",
    "evaluate",
    "factor_recovered",
    "format_mean_sd",
    "format_table",
    "resolve_graph",
    "run_seed",
    "run_simulation",
    "simulate_command",
    "standardisation",
    "summarise",
    "theory_warnings",
    "to_batch",
    "train_model",
    "unmix_representation",
]

PROG = "sit-causal"
DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
"""``--workers`` default of ``simulate`` and ``validate``: one process per core, at most two."""
RECOVERY_THRESHOLD = 0.9


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method.

    Arguments:
        steps: Adam steps.
        batch_size: mini-batch size (``>= N`` means full batch).
        lr: Adam learning rate (halved for the last quarter of training).
        threads: ``torch.set_num_threads`` during training (1 leaves a core to other jobs).
    """

    steps: int = 1500
    batch_size: int = 2048
    lr: float = 5e-3
    threads: int = 1


@dataclass
class SimulateConfig:
    """Everything ``sit-causal simulate`` needs (the CLI options).

    ``samples`` is per dataset (training); ``test_samples`` per dataset (held out, same mechanism);
    ``datasets_per_task`` datasets belong to each task (``K = tasks * datasets_per_task``).
    ``model_overrides`` are :class:`~sit_causal.models.ModelConfig` fields applied to every method.
    ``workers`` processes run the seeds in parallel (each with ``train.threads`` torch threads).
    """

    factors: int = 5
    tasks: int = 8
    family: str = "gauss-mean"
    graph_path: str | None = None
    graph_mode: str = "uic"
    seeds: int = 5
    seed: int = 0
    samples: int = 1000
    test_samples: int = 500
    datasets_per_task: int = 5
    obs_dim: int | None = None
    methods: tuple[str, ...] = METHODS
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    workers: int = 1
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def scm_config(self, seed: int) -> SCMConfig:
        """The meta-SCM of seed ``seed`` (``obs_dim`` defaults to ``2 n``)."""
        return SCMConfig(n_factors=self.factors, n_tasks=self.tasks, datasets_per_task=self.datasets_per_task,
                         samples_per_dataset=self.samples, family=self.family,
                         obs_dim=self.obs_dim or 2 * self.factors, seed=seed, graph_mode=self.graph_mode)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["methods"] = list(self.methods)
        return out


# ---------------------------------------------------------------------- graph and warnings
def resolve_graph(config: SimulateConfig) -> TaskFactorGraph:
    """The run's graph: ``config.graph_path`` if given, else ``generate_graph(graph_mode, ...)`` with a
    generator seeded by ``config.seed``. Raises :class:`~sit_causal.graph.GraphError` or ``ValueError``."""
    if config.graph_path is not None:
        return load_graph(config.graph_path)
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    return generate_graph(config.graph_mode, config.factors, config.tasks, rng)


def theory_warnings(report: UICReport, n_datasets: int, family: str, variety_reason: str | None = None) -> list[str]:
    """One line per condition of the theory that fails for this run (empty list: the theory applies).

    * the UIC (every mixing set empty; :func:`sit_causal.uic.check_uic`);
    * the iVAE variety condition: at least ``n k + 1`` datasets (``k`` sufficient statistics of the prior
      family) with natural parameters varying in every direction (``variety_reason`` from
      :func:`sit_causal.expfam.variety_condition` when it was checked on the drawn parameters).
    """
    out: list[str] = []
    if not report.uic_holds:
        mixed = [f"{f.id} mixes with {'+'.join(f.mixes_with) if f.mixes_with else '(read by no task)'}"
                 for f in report.factors if not f.identifiable]
        orth = check_uic(report.graph, ambiguity="orthogonal")
        still = [f"{f.id} with {'+'.join(f.mixes_with) if f.mixes_with else '(read by no task)'}"
                 for f in orth.factors if not f.identifiable]
        out.append("the graph violates the UIC, so these factors are not predicted identifiable: "
                   + "; ".join(mixed) + " (under the orthogonal ambiguity of SIT's selection step, only "
                   + ("identical task sets mix: " + "; ".join(still) if still else "identical task sets mix: none")
                   + ")")
    k = get_family(family).k
    need = report.graph.n_factors * k + 1
    if n_datasets < need:
        out.append(f"too few datasets for the prior's variety: {n_datasets} < n*k + 1 = "
                   f"{report.graph.n_factors}*{k} + 1 = {need} ({family}); the prior cannot identify the factors")
    elif variety_reason is not None:
        out.append(f"the iVAE variety condition fails: {variety_reason}")
    return out


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
    train: TrainConfig,
    generator: torch.Generator,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``batch`` (the whole training set) with Adam; returns the last step's loss terms.

    Mini-batch indices and all sampling noise come from ``generator``; ``on_step(step, terms)`` is called
    after every step (progress bars, logging).
    """
    old_threads = torch.get_num_threads()
    torch.set_num_threads(train.threads)
    try:
        return _train_loop(model, batch, train, generator, on_step)
    finally:
        torch.set_num_threads(old_threads)


def _train_loop(model: SyntheticModel, batch: Batch, train: TrainConfig, generator: torch.Generator,
                on_step: Callable[[int, dict[str, float]], None] | None) -> dict[str, float]:
    opt = torch.optim.Adam(model.param_groups(train.lr), lr=train.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.75 * train.steps)], gamma=0.5)
    n = len(batch)
    full = train.batch_size >= n
    terms: dict[str, float] = {}
    model.train()
    for step in range(train.steps):
        sub = batch if full else batch.index(torch.randint(0, n, (train.batch_size,), generator=generator))
        loss, terms = model.loss(sub, step / max(1, train.steps - 1), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, terms)
    model.eval()
    return terms


# ---------------------------------------------------------------------- evaluation
def factor_recovered(report: RecoveryReport, factor: int, threshold: float = RECOVERY_THRESHOLD) -> bool:
    """Recovered = matched ``|rho| >= threshold`` and the matched learned factor's regression on the true
    factors names this factor alone (see the module docstring)."""
    rec = report.factors[factor]
    if rec.matched_to < 0 or rec.matched_correlation < threshold:
        return False
    return report.learned[rec.matched_to].mixes == (factor,)


def unmix_representation(method: str, model: SyntheticModel, train_set: SCMDataset, train_batch: Batch,
                         n_tasks: int, seed: int, align: AlignConfig | None = None
                         ) -> AlignResult | IntersectResult | None:
    """The step after training (:func:`sit_causal.models.unmixing_step`) on the training split's
    representation ``(N, n)`` and targets: task-sparse alignment (:mod:`sit_causal.align`; the ablations
    switch their loss off there too), identification by intersection (:mod:`sit_causal.intersect`), or
    ``None`` for a method without one."""
    step = unmixing_step(method)
    if step is None:
        return None
    z = model.represent(train_batch.x).double().numpy()
    y = train_batch.y[:, 0].double().numpy()
    if step == "intersect":
        return identify_by_intersection(z, y, train_set.task_id, n_tasks, seed=seed)
    cfg = AlignConfig() if align is None else align
    # an ablation's switched-off loss stays off in the selection step too
    cfg = replace(cfg, w_uic=cfg.w_uic if model.config.w_uic > 0 else 0.0,
                  w_distinction=cfg.w_distinction if model.config.w_distinction > 0 else 0.0)
    return align_by_task_sparsity(z, y, train_set.task_id, n_tasks, train_set.dataset_id, cfg, seed=seed)


def evaluate(model: SyntheticModel, test: SCMDataset, test_batch: Batch, report: UICReport,
             rng: np.random.Generator, unmix: AlignResult | IntersectResult | None = None) -> dict[str, Any]:
    """Score ``model`` on the held-out set (metrics of :mod:`sit_causal.metrics`); see the schema above.

    With ``unmix`` (:func:`unmix_representation`) the representation is unmixed first, the learned graph is
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
    masks = model.task_masks()
    if before is not None:
        out["mcc_pearson_before_unmix"] = before
    if isinstance(unmix, IntersectResult):
        out["identified"] = unmix.found.tolist()
    if masks is not None or unmix is not None:
        binary = unmix.adjacency.astype(int) if unmix is not None else (masks.numpy() > 0.5).astype(int)
        gr = graph_recovery(binary, report.graph, rep.mcc.assignment)
        out.update(graph_precision=gr.precision, graph_recall=gr.recall, learned_graph=binary.tolist(),
                   learned_uic_holds=bool(check_uic(TaskFactorGraph.from_matrix(binary)).uic_holds))
    return out


# ---------------------------------------------------------------------- the run
def summarise(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of every scalar metric, per method."""
    keys = ("mcc_pearson", "mcc_spearman", "affine_r2", "graph_consistent_r2", "graph_precision",
            "graph_recall", "time_s")
    out = []
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        entry: dict[str, Any] = {"method": method, "n_seeds": len(rows)}
        for key in keys:
            vals = [r[key] for r in rows if r.get(key) is not None]
            entry[f"{key}_mean"] = float(np.mean(vals)) if vals else None
            entry[f"{key}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
        out.append(entry)
    return out


def format_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"mean +/- sd"`` of ``values`` (sample sd, ``ddof = 1``; 0 for a single value): how every benchmark
    prints a quantity over seeds."""
    a = np.asarray(values, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return f"{a.mean():.{digits}f} +/- {sd:.{digits}f}"


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """The table printed by ``simulate``: one row per method, mean +/- sd over seeds."""
    def cell(entry: dict[str, Any], key: str) -> str:
        m, s = entry[f"{key}_mean"], entry[f"{key}_sd"]
        return "-" if m is None else f"{m:.3f} +/- {s:.3f}"

    head = ["method", "MCC pearson", "MCC spearman", "affine R2", "graph P", "graph R", "time s"]
    rows = [[e["method"], cell(e, "mcc_pearson"), cell(e, "mcc_spearman"), cell(e, "affine_r2"),
             cell(e, "graph_precision"), cell(e, "graph_recall"),
             f"{e['time_s_mean']:.1f}"] for e in summary]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    return "\n".join(lines)


def run_seed(config: SimulateConfig, graph: TaskFactorGraph, seed: int,
             on_step: Callable[[int], None] | None = None,
             describe: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every method of ``config`` on the meta-SCM of one seed: the ``results`` rows of that seed.

    ``on_step(k)`` reports ``k`` more training steps done (progress bars); ``describe(text)`` what runs now.
    """
    report = check_uic(graph)
    train_set, test_set = generate_train_test(config.scm_config(seed), config.test_samples, graph=graph)
    x_stats, y_stats = standardisation(train_set)
    train_batch = to_batch(train_set, x_stats, y_stats)
    test_batch = to_batch(test_set, x_stats, y_stats)
    trained: dict[str, tuple[SyntheticModel, dict[str, float], float]] = {}
    rows: list[dict[str, Any]] = []
    for method in config.methods:
        base = training_method(method)
        if describe is not None:
            describe(f"{method} seed {seed}")
        if base in trained:  # sit-joint / sit-intersect reuse this seed's sit model (same config and seed)
            model, terms, elapsed = trained[base]
            if on_step is not None:
                on_step(config.train.steps)
        else:
            gen = torch.Generator().manual_seed(seed)
            mcfg = ModelConfig.for_method(
                base, n_factors=graph.n_factors, x_dim=train_set.x.shape[1], n_tasks=graph.n_tasks,
                n_datasets=train_set.n_datasets, **config.model_overrides)
            model = build_model(mcfg, gen)
            t0 = time.perf_counter()
            terms = train_model(model, train_batch, config.train, gen,
                                on_step=None if on_step is None else (lambda s, t: on_step(1)))
            elapsed = time.perf_counter() - t0
            trained[base] = (model, terms, elapsed)
        if describe is not None and unmixing_step(method) is not None:
            describe(f"{method} seed {seed} ({unmixing_step(method)})")
        t0 = time.perf_counter()
        unmix = unmix_representation(method, model, train_set, train_batch, graph.n_tasks, seed, config.align)
        elapsed += time.perf_counter() - t0
        scores = evaluate(model, test_set, test_batch, report, np.random.default_rng(seed), unmix)
        rows.append({"method": method, "seed": seed, "time_s": elapsed, "final_losses": terms, **scores})
    return rows


def _seed_worker(args: tuple[SimulateConfig, TaskFactorGraph, int]) -> list[dict[str, Any]]:
    """One seed in a worker process (``--workers``): torch threads as configured, no progress output."""
    config, graph, seed = args
    torch.set_num_threads(config.train.threads)
    return run_seed(config, graph, seed)


def run_simulation(config: SimulateConfig, quiet: bool = False, graph: TaskFactorGraph | None = None,
                   warn_fn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every method on every seed; return the results object (schema in the module docstring).

    ``graph`` overrides :func:`resolve_graph`; ``warn_fn`` receives each warning line as it is found.
    With ``config.workers > 1`` the seeds run in that many processes (``spawn``); every seed is a function
    of its own seed, so the results equal a serial run's (times aside), in seed order.
    """
    graph = resolve_graph(config) if graph is None else graph
    report = check_uic(graph)
    n_datasets = config.tasks * config.datasets_per_task
    warnings: list[str] = []
    variety = build_mechanism(config.scm_config(config.seed), graph=graph).variety()
    for line in theory_warnings(report, n_datasets, config.family, None if variety.holds else variety.reason):
        warnings.append(line)
        if warn_fn is not None:
            warn_fn(line)
    seeds = list(range(config.seed, config.seed + config.seeds))
    workers = max(1, min(config.workers, len(seeds)))
    total = len(config.methods) * config.seeds * config.train.steps
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.train.threads)
    bar = tqdm(total=total, disable=quiet, file=sys.stderr, desc="simulate", unit="step", mininterval=0.5)
    results: list[dict[str, Any]] = []
    try:
        if workers == 1:
            for seed in seeds:
                results += run_seed(config, graph, seed, on_step=bar.update, describe=bar.set_description)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            bar.set_description(f"{len(seeds)} seeds on {workers} workers")
            ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch has started threads
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for rows in pool.map(_seed_worker, [(config, graph, seed) for seed in seeds]):
                    results += rows
                    bar.update(len(config.methods) * config.train.steps)
    finally:
        bar.close()
        torch.set_num_threads(old_threads)
    return {
        "uic_holds": report.uic_holds,
        "graph": graph.to_dict(),
        "identifiable_predicted": report.identifiable_mask.tolist(),
        "config": {**config.to_dict(), "model_defaults": ModelConfig().to_dict(),
                   "recovery_threshold": RECOVERY_THRESHOLD, "mix_threshold": DEFAULT_MIX_THRESHOLD},
        "warnings": warnings,
        "summary": summarise(results, config.methods),
        "results": results,
    }


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------- CLI body
def simulate_command(
    factors: int | None = typer.Option(None, "--factors", help="latent factors n [default: 5, or the graph's]"),
    tasks: int | None = typer.Option(None, "--tasks", help="tasks m [default: 8, or the graph's]"),
    family: str = typer.Option("gauss-mean", "--family", help=f"prior family: {', '.join(FAMILY_NAMES)}"),
    graph: str | None = typer.Option(None, "--graph", metavar="FILE", help="task-to-factor graph JSON"),
    graph_mode: str = typer.Option("uic", "--graph-mode", help="random graph: uic, bernoulli:P, block, nested"),
    seeds: int = typer.Option(5, "--seeds", help="number of seeds (data and model draws)"),
    seed: int = typer.Option(0, "--seed", help="first seed (also draws the random graph)"),
    samples: int = typer.Option(1000, "--samples", help="training samples per dataset"),
    datasets_per_task: int = typer.Option(5, "--datasets-per-task", help="datasets of each task"),
    methods: str = typer.Option(",".join(METHODS), "--methods", help="comma-separated methods"),
    steps: int = typer.Option(TrainConfig.steps, "--steps", help="Adam steps per model"),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", help="mini-batch size"),
    lr: float = typer.Option(TrainConfig.lr, "--lr", help="Adam learning rate"),
    threads: int = typer.Option(1, "--threads", help="torch threads per worker"),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers",
                                help="processes running seeds in parallel (min(2, CPU count))"),
    align_restarts: int = typer.Option(AlignConfig.restarts, "--align-restarts",
                                       help="random rotations of the selection step (sit, ablations)"),
    align_steps: int = typer.Option(AlignConfig.refine_iterations, "--align-steps",
                                    help="steps of the selection step's refinement (0 = count search only)"),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="write results.json and PNG plots here"),
    as_json: bool = typer.Option(False, "--json", help="print the results object as one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> int:
    """Train SIT and the baselines on data from the meta-SCM, several seeds: table, results.json, plots.

    Bad options are one line on stderr and exit code 2; conditions under which the theory cannot hold
    (a UIC-violating graph, too few datasets for the prior's variety) run with a one-line warning.
    """
    for name, value, low in (("--seeds", seeds, 1), ("--samples", samples, 1), ("--steps", steps, 1),
                             ("--batch-size", batch_size, 1), ("--datasets-per-task", datasets_per_task, 1),
                             ("--threads", threads, 1), ("--workers", workers, 1), ("--seed", seed, 0),
                             ("--align-restarts", align_restarts, 1),
                             ("--align-steps", align_steps, 0)):
        if value < low:
            raise UsageFailure(f"{name} must be >= {low}, got {value}")
    for name, value in (("--factors", factors), ("--tasks", tasks)):
        if value is not None and value < 1:
            raise UsageFailure(f"{name} must be >= 1, got {value}")
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageFailure(f"--lr must be a positive number, got {lr}")
    if family not in FAMILY_NAMES:
        raise UsageFailure(f"unknown --family {family!r}; choose one of {', '.join(FAMILY_NAMES)}")
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    bad = [m for m in chosen if m not in METHODS]
    if not chosen or bad:
        raise UsageFailure(f"unknown method {bad[0] if bad else methods!r} in --methods; "
                           f"choose from {', '.join(METHODS)}")
    try:
        parse_graph_mode(graph_mode)
    except ValueError as err:
        raise UsageFailure(f"--graph-mode: {err}") from None
    graph_obj: TaskFactorGraph | None = None
    if graph is not None:
        try:
            graph_obj = load_graph(graph)
        except GraphError as err:
            raise UsageFailure(str(err)) from None
        if factors is not None and factors != graph_obj.n_factors:
            raise UsageFailure(f"--factors {factors} does not match the {graph_obj.n_factors} factors of {graph}")
        if tasks is not None and tasks != graph_obj.n_tasks:
            raise UsageFailure(f"--tasks {tasks} does not match the {graph_obj.n_tasks} tasks of {graph}")
        factors, tasks = graph_obj.n_factors, graph_obj.n_tasks
    factors = 5 if factors is None else factors
    tasks = 8 if tasks is None else tasks
    config = SimulateConfig(factors=factors, tasks=tasks, family=family, graph_path=graph, graph_mode=graph_mode,
                            seeds=seeds, seed=seed, samples=samples, datasets_per_task=datasets_per_task,
                            methods=chosen, train=TrainConfig(steps=steps, batch_size=batch_size, lr=lr,
                                                              threads=threads),
                            workers=workers,
                            align=AlignConfig().with_budget(align_restarts, align_steps))
    if graph_obj is None:
        try:
            graph_obj = resolve_graph(config)
        except (GraphError, ValueError) as err:
            raise UsageFailure(f"cannot build a {graph_mode} graph with {factors} factors and {tasks} tasks: "
                               f"{err}") from None
    results = run_simulation(config, quiet=quiet, graph=graph_obj, warn_fn=lambda line: warn(PROG, line))
    results = _json_safe(results)
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        from sit_causal.simulate_plots import plot_matched_correlation, plot_per_factor_recovery

        plot_matched_correlation(results, out_dir / "matched_correlation.png")
        plot_per_factor_recovery(results, out_dir / "per_factor_recovery.png")
    if as_json:
        print(json.dumps(results))
    else:
        verdict = "holds" if results["uic_holds"] else "is violated"
        print(f"graph: {factors} factors, {tasks} tasks, the UIC {verdict}; {seeds} seed(s)")
        print(format_table(results["summary"]))
        if out is not None:
            print(f"wrote {Path(out) / 'results.json'} and plots")
    return 0
