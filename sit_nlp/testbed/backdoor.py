"""The ``backdoor`` mechanism: the paper's meta-SCM in text, its spurious correlation through the data source.

Inside the meta-SCM (docs/design.md, "The testbed and the meta-SCM"):

* ``D``: the data source. Every training task has ``sources_per_task`` sources (8 by default, so the
  prior ``p(L | D)`` has the variety its identifiability needs); each source ``d`` has its own means
  ``mu_d`` of the conditionally factorial ``gauss-mean`` family, ``L_i | d ~ N(mu_di, 1)``: **within a source
  the factors are independent**.
* **The tie.** Source ``d`` of yes/no task ``t`` has a direction ``c_d in {-1, +1}`` (half the sources each
  way). Its causal factors' means point the way that makes the label true, ``mu_di = c_d * tie * (2 p_ti - 1)``
  for ``i in S_t`` (polarity ``p_ti``), and the task's spurious factor ``s_t`` (outside ``S_t``) gets
  ``mu_ds = c_d * tie * sigma_t`` (a sign ``sigma_t`` per task); every mean is jittered by ``U[-0.25, 0.25]``
  and the other factors' means are ``U[-mean_range, mean_range]``. Pooled over the task's sources, ``L_s``
  and ``L_c`` correlate (``tie^2 / (1 + tie^2)`` before the jitter): the backdoor ``L_s <- D -> L_c -> Y_t``.
* ``Y_t = g_t(L[S_t])`` (:func:`grammar.yesno_label`) flipped with probability ``label_noise``, independent
  of everything: given ``L[S_t]`` the label is independent of ``L_s`` and ``D``.
* **Observation noise.** Each factor with words of its own is written with probability ``ambiguity`` with its
  ambiguous word (:data:`grammar.AMBIGUOUS`), independent of everything. Where a causal factor's word is
  ambiguous, the text does not say its sign, and the spurious factor (through ``D``) does: a model that reads
  ``L_s`` gains in training, and loses where the tie is reversed.

No cue word: the instruction's wording is the task's (three paraphrases), the same in every source.

Test splits of the training yes/no tasks (test labels carry ``test_label_noise``):

=====================  ==========================================================================
``in_distribution``    new samples of the training sources
``heldout_sources``    ``test_sources`` new sources per task, tied as in training
``flipped_d``          new sources with the tie reversed (``mu_ds = -c_d * tie * sigma_t``)
``balanced_d``         new sources whose spurious mean is 0 (``L_s`` independent of ``c_d``)
``heldout_tasks``      new yes/no tasks over new factor subsets, on new untied sources
``generation``         the generation tasks on new samples of their training sources (exact match)
=====================  ==========================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sit_nlp.testbed.grammar import FACTORS

__all__ = ["BACKDOOR_SPLITS", "build_backdoor", "observation_mask"]

BACKDOOR_SPLITS: tuple[tuple[str, str], ...] = (
    ("in_distribution", "train"), ("heldout_sources", "tied"), ("flipped_d", "flipped"), ("balanced_d", "untied"),
)
"""Test splits of the training yes/no tasks: (name, which sources: the training ones, or new ones ``tied`` as
in training, ``flipped``, or ``untied``)."""

JITTER = 0.25


def observation_mask(n: int, ambiguity: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, 6)`` bool: which factor words are ambiguous (never ``number``, which has no word of its own)."""
    mask = rng.random((n, len(FACTORS))) < ambiguity
    mask[:, FACTORS.index("number")] = False
    return mask


def _task_means(task: Any, directions: np.ndarray, tie: float, sigma: int, spurious_mode: str,
                mean_range: float, rng: np.random.Generator) -> np.ndarray:
    """Means ``(K, 6)`` of ``K`` sources of a yes/no task (rows = sources, columns = factors)."""
    k = len(directions)
    means = rng.uniform(-mean_range, mean_range, (k, len(FACTORS)))
    for i, p in zip(task.factors, task.polarity, strict=True):
        means[:, i] = directions * tie * (2 * p - 1) + rng.uniform(-JITTER, JITTER, k)
    if task.spurious is not None:
        s = task.spurious
        if spurious_mode == "untied":
            means[:, s] = rng.uniform(-JITTER, JITTER, k)
        else:
            sign = -1.0 if spurious_mode == "flipped" else 1.0
            means[:, s] = sign * directions * tie * sigma + rng.uniform(-JITTER, JITTER, k)
    return means


def _directions(k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` source directions, half ``+1`` and half ``-1`` (one more ``+1`` when ``k`` is odd), shuffled."""
    return rng.permutation(np.where(np.arange(k) < (k + 1) // 2, 1.0, -1.0))


def build_backdoor(cfg: Any, seed: int) -> dict[str, Any]:
    """Draw the ``backdoor`` testbed (module docstring): the same outputs as
    :func:`sit_nlp.testbed.build.build_testbed`."""
    from sit_nlp.testbed.build import _records, _task_json, draw_start

    rng_param, rng, tasks, heldout, graph = draw_start(cfg, seed)
    sigma = {t.name: int(rng_param.choice([-1, 1])) for t in tasks if t.kind == "yesno"}
    k_train, k_test = cfg.sources_per_task, cfg.test_sources
    means: list[np.ndarray] = []  # one (K, 6) block per group of sources
    names: list[str] = []
    directions: list[float] = []
    sources: dict[tuple[str, str], list[int]] = {}

    def add(task: Any, split: str, block: np.ndarray, dirs: np.ndarray) -> None:
        start = sum(len(b) for b in means)
        means.append(block)
        sources[(task.name, split)] = list(range(start, start + len(block)))
        label = "d" if split == "train" else f"{split}-d"
        names.extend(f"{task.name}/{label}{r + 1}" for r in range(len(block)))
        directions.extend(float(x) for x in dirs)

    for t in tasks:
        if t.kind == "generation":
            add(t, "train", rng_param.uniform(-cfg.mean_range, cfg.mean_range, (k_train, len(FACTORS))),
                np.zeros(k_train))
            continue
        dirs = _directions(k_train, rng_param)
        add(t, "train", _task_means(t, dirs, cfg.tie, sigma[t.name], "tied", cfg.mean_range, rng_param), dirs)
        for split, mode in BACKDOOR_SPLITS[1:]:
            dirs = _directions(k_test, rng_param)
            add(t, split, _task_means(t, dirs, cfg.tie, sigma[t.name], mode, cfg.mean_range, rng_param), dirs)
    for t in heldout:
        add(t, "heldout_tasks", rng_param.uniform(-cfg.mean_range, cfg.mean_range, (k_test, len(FACTORS))),
            np.zeros(k_test))
    from sit_causal.sim.expfam import get_family

    family = get_family("gauss-mean", mean_range=cfg.mean_range)
    eta = family.natural_params(mean=np.concatenate(means))  # (sources, 6, 1)

    def draw(datasets: list[int], per: int) -> tuple[np.ndarray, np.ndarray]:
        ds = np.repeat(np.asarray(datasets), per)
        return family.sample(eta, rng, dataset_id=ds), ds

    def render(task: Any, split: str, datasets: list[int], per: int, noise: float) -> list[Any]:
        lat, did = draw(datasets, per)
        hidden = observation_mask(len(did), cfg.ambiguity, rng)
        records = _records(task, split, lat, did, names, rng, family, eta, noise=noise, rate=None, cue_rate=None,
                           ambiguous=hidden)
        if task.kind == "yesno" and task.spurious is not None:
            for r in records:
                label = r.extra["label"]
                bit = r.extra["bits"][task.spurious]
                r.extra["spurious_agrees"] = bool(bit == (label if sigma[task.name] > 0 else 1 - label))
        return records

    train, validation, test = [], [], []
    for t in tasks:
        ds = sources[(t.name, "train")]
        train += render(t, "train", ds, cfg.train_per_dataset, cfg.resolved_label_noise)
        validation += render(t, "validation", ds, cfg.validation_per_dataset, cfg.resolved_label_noise)
        if t.kind == "generation":
            test += render(t, "generation", ds, -(-cfg.test_per_task // len(ds)), 0.0)
            continue
        for split, _ in BACKDOOR_SPLITS:
            group = sources[(t.name, "train" if split == "in_distribution" else split)]
            test += render(t, split, group, -(-cfg.test_per_task // len(group)), cfg.test_label_noise)
    for t in heldout:
        group = sources[(t.name, "heldout_tasks")]
        test += render(t, "heldout_tasks", group, -(-cfg.test_per_task // len(group)), cfg.test_label_noise)
    meta = {
        "seed": seed, "mechanism": "backdoor", "theory_applies": True, "factors": list(FACTORS),
        "tasks": [{**_task_json(t), "spurious_sign": sigma.get(t.name)} for t in tasks],
        "heldout_tasks": [_task_json(t) for t in heldout], "datasets": names, "dataset_directions": directions,
        "dataset_means": np.concatenate(means).round(4).tolist(), "noise_ceiling": 1.0 - cfg.test_label_noise,
        "split_roles": {"aligned": "in_distribution", "flipped": "flipped_d", "balanced": "balanced_d"},
        "splits": sorted({r.extra["split"] for r in test}),
    }
    return {"train": train, "validation": validation, "heldout": test, "graph": graph, "meta": meta}
