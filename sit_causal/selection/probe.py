"""The selection statistic on a given representation: how much a per-task probe loses when a factor is removed.

The selection step of a trained sequence model (:mod:`sit_nlp.model.task_graph`) reads each factor channel's
contribution to the task's target likelihood. This module computes the same kind of statistic on any
representation ``z`` ``(N, n)`` (rows = samples, columns = factors), e.g. the **true** factors of a testbed
before any training: it shows what the selection step selects when the factors are perfect, so a wrong
graph can be told apart from a wrong representation.

For each task ``t`` a small probe ``f_t`` (a two-layer MLP, full-batch AdamW, seeded) predicts the task's
targets from the standardised ``z``: ``K`` categorical outputs per sample (``targets`` ``(N, K)``, class ids;
``-1`` where an output does not apply), each with ``classes[k]`` classes, summed cross-entropy. The probe is
fit on a seeded half of the task's samples; on the other half, the **removal effect** of factor ``j`` is the
change of a sample's NLL when ``z_j`` is replaced by its mean, ``delta_kj = NLL_k(z_{j <- mean}) - NLL_k(z)``,
per output; ``max(0, mean_k delta_kj)`` normalised over the factors gives each output's shares, and the task's
energy ``E_tj`` is the mean of its outputs' shares (each output counts the same, whatever its number of
classes), so every row sums to 1.

Why exact removal and not the sequence model's first-order form ``(dNLL/dz_j * z_j)^2``: a testbed's labels
are step functions of ``L_j`` at 0, where the first-order change is blind (large gradients only where
``z_j`` is near 0, small ``z_j`` gradients elsewhere), and the squared per-sample form is dominated by the
label-noise samples a probe memorises. The mean removal effect on held-out samples is the probe's
permutation-style importance: ~0 for a factor the task does not need once the others are known.
The coverage graph and its repair to the UIC then follow :mod:`sit_causal.selection.graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sit_causal.selection.graph import GraphRepair, graph_from_energies, repair_to_uic
from sit_causal.threads import torch_threads

__all__ = ["ProbeConfig", "ProbeSelection", "removal_effects", "select_with_probes"]


@dataclass(frozen=True)
class ProbeConfig:
    """Per-task probes of :func:`removal_effects`: width, full-batch AdamW steps, rate and weight decay."""

    hidden: int = 32
    steps: int = 800
    lr: float = 3e-2
    weight_decay: float = 0.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.steps < 1 or not self.lr > 0 or self.threads < 1:
            raise ValueError("ProbeConfig: hidden, steps, threads >= 1 and lr > 0 required")


@dataclass(frozen=True)
class ProbeSelection:
    """What :func:`select_with_probes` found: ``energies`` ``(m, n)`` (rows = tasks, each sums to 1), the
    ``coverage_graph`` and the ``repair`` (its ``adjacency`` is the selected graph)."""

    energies: np.ndarray
    coverage_graph: np.ndarray
    repair: GraphRepair

    @property
    def adjacency(self) -> np.ndarray:
        return self.repair.adjacency


def removal_effects(z: np.ndarray, targets: np.ndarray, task_id: np.ndarray, n_tasks: int,
                    classes: Sequence[int], seed: int = 0, config: ProbeConfig | None = None) -> np.ndarray:
    """Energies ``E`` ``(m, n)`` (rows = tasks, columns = factors; module docstring): the mean removal
    effect of each factor on its task's held-out NLL, clipped at 0 and normalised per row (a row with no
    positive effect, or a task with no sample, is uniform).

    Arguments:
        z: ``(N, n)`` representation (standardised inside, per column).
        targets: ``(N, K)`` class ids of ``K`` categorical outputs, ``-1`` where an output does not apply.
        task_id: ``(N,)`` task of each sample in ``[0, n_tasks)``.
        n_tasks: ``m``.
        classes: ``(K,)`` number of classes of each output.
        seed: seeds every probe's initialisation and its fit / held-out split.
        config: probe sizes (:class:`ProbeConfig`).
    """
    cfg = config or ProbeConfig()
    z = np.asarray(z, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    task_id = np.asarray(task_id, dtype=np.int64)
    if z.ndim != 2 or targets.ndim != 2 or targets.shape[0] != z.shape[0] or task_id.shape != (z.shape[0],):
        raise ValueError("z must be (N, n), targets (N, K) and task_id (N,)")
    if targets.shape[1] != len(classes) or np.any(targets >= np.asarray(classes)[None, :]):
        raise ValueError("targets must hold class ids below classes[k] (or -1)")
    n = z.shape[1]
    sd = z.std(0)
    zs = (z - z.mean(0)) / np.where(sd > 0, sd, 1.0)  # a factor's mean is 0 here
    energies = np.full((n_tasks, n), 1.0 / n)
    offsets = np.concatenate([[0], np.cumsum(classes)]).astype(int)
    with torch_threads(cfg.threads):
        for t in range(n_tasks):
            rows = np.flatnonzero(task_id == t)
            used = [k for k in range(len(classes)) if rows.size and np.any(targets[rows, k] >= 0)]
            if rows.size < 4 or not used:
                continue
            g = torch.Generator().manual_seed(int(seed) * 7919 + t)
            order = torch.randperm(rows.size, generator=g).numpy()
            fit, held = rows[order[: rows.size // 2]], rows[order[rows.size // 2:]]
            probe = nn.Sequential(nn.Linear(n, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(),
                                  nn.Linear(cfg.hidden, int(offsets[-1])))
            with torch.no_grad():
                for p in probe.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(1, p.shape[-1]) ** 0.5))

            def nll(x: torch.Tensor, y: torch.Tensor, probe: nn.Module = probe, used: list[int] = used) -> torch.Tensor:
                """Per-sample, per-output cross-entropy ``(N, len(used))`` (0 where an output does not apply)."""
                logits = probe(x)
                return torch.stack([nn.functional.cross_entropy(logits[:, offsets[k]: offsets[k + 1]],
                                                                y[:, k].clamp_min(0), reduction="none") * (y[:, k] >= 0)
                                    for k in used], dim=1)

            x_fit = torch.as_tensor(zs[fit], dtype=torch.float32)
            y_fit = torch.as_tensor(targets[fit], dtype=torch.long)
            opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for _ in range(cfg.steps):
                opt.zero_grad()
                nll(x_fit, y_fit).sum(1).mean().backward()
                opt.step()
            x = torch.as_tensor(zs[held], dtype=torch.float32)
            y = torch.as_tensor(targets[held], dtype=torch.long)
            effect = np.zeros((n, len(used)))  # rows = factors, columns = the task's outputs
            with torch.no_grad():
                base = nll(x, y)
                for j in range(n):
                    removed = x.clone()
                    removed[:, j] = 0.0
                    effect[j] = (nll(removed, y) - base).mean(0).clamp_min(0).numpy()
            # every output of the task counts the same, whatever its number of classes
            totals = effect.sum(0)
            shares = effect[:, totals > 0] / totals[totals > 0]
            if shares.size:
                energies[t] = shares.mean(1)
    return energies


def select_with_probes(z: np.ndarray, targets: np.ndarray, task_id: np.ndarray, n_tasks: int,
                       classes: Sequence[int], coverage: float = 0.8, seed: int = 0,
                       config: ProbeConfig | None = None) -> ProbeSelection:
    """The selection step on ``z`` with per-task probes: energies (:func:`removal_effects`), the
    ``coverage`` graph and its repair to the UIC (rows = tasks, columns = factors)."""
    energies = removal_effects(z, targets, task_id, n_tasks, classes, seed=seed, config=config)
    initial = graph_from_energies(energies, coverage)
    return ProbeSelection(energies=energies, coverage_graph=initial, repair=repair_to_uic(initial, energies))
