"""A known-truth instruction-tuning testbed drawn from the package's meta-SCM (``sit-nlp testbed build``).

The meta-SCM (docs/design.md section 2), rendered into text by :mod:`sit_nlp.testbed.grammar`:

* ``D``: the dataset. Every training task has ``len(spurious_rates)`` datasets; each dataset ``d`` has its
  own natural parameters ``eta_d`` of a conditionally factorial exponential family
  (:mod:`sit_causal.sim.expfam`, ``gauss-mean`` by default: ``L_i | d ~ N(mu_di, 1)``).
* ``L in R^6``: drawn from ``p(L | D = d)``; the sentence is ``f(L)``, the grammar.
* The task graph ``A`` (rows = training tasks, columns = factors) is a random graph satisfying the UIC
  (:func:`sit_causal.sim.graph_generators.uic_graph`, checked with :func:`sit_causal.theory.uic.check_uic`);
  ``graph.json`` holds it in the compact matrix form that ``sit-causal check-uic`` reads.
* ``Y_t = g_t(L[S_t])`` flipped with probability ``label_noise`` (yes/no tasks, :func:`grammar.yesno_label`),
  or the words of ``S_t`` (generation tasks).

**Spurious correlations through the dataset variable.** In dataset ``d`` of yes/no task ``t`` one factor
``s_t`` outside ``S_t`` agrees with the (observed) label at the dataset's rate ``r_d``: after ``L`` and
``Y`` are drawn, ``L_s`` is redrawn from ``p(L_s | D = d)`` restricted to the half-line whose sign gives
``b_s = Y`` (with probability ``r_d``) or ``b_s = 1 - Y``: the backdoor ``L_s <- D -> Y`` the meta-SCM
names. The task's own factors predict the observed label only up to the label noise, so in training the
shortcut (``r_d`` up to 0.95) is worth more than the causal route (``1 - label_noise``). A second shortcut is
in the wording: an instruction opens with ``CUE_WORDS[y]`` for the label ``y`` with probability
``cue_rate`` (else the other cue).

Splits (``heldout.jsonl`` holds all test splits; every record names its split in ``extra["split"]``):

=====================  ==========================================================================
``aligned``            training tasks and datasets, shortcut rates as in training (clean labels)
``balanced``           the spurious factor and the cue independent of the label (rate 0.5)
``flipped``            both shortcuts reversed (rate ``1 - r_d``, cue rate ``1 - cue_rate``)
``flipped_factor``     only the spurious factor reversed (the cue independent of the label)
``flipped_cue``        only the cue reversed (the spurious factor independent of the label)
``unseen_words``       balanced, every factor written with its class's unseen word
``heldout_datasets``   training tasks on new datasets whose factor means are shifted by ``dataset_shift``
``heldout_tasks``      new yes/no tasks reading new subsets of the factors (balanced)
``generation``         the generation tasks on new samples of their datasets (exact match)
=====================  ==========================================================================

Test labels carry ``test_label_noise`` (0 by default): the ceiling of a model that reads the true
factors is ``1 - test_label_noise``. Every record keeps its true factor values (``extra["factors"]``,
``L``), attributes (``bits``), dataset (``dataset_id``) and, for yes/no tasks, the spurious factor, whether
it agrees with the label, and the cue.

:func:`write_testbed` writes into its folder (``--out``): ``train.jsonl``, ``validation.jsonl``,
``heldout.jsonl``, ``graph.json``, ``testbed.json`` (the configuration and every drawn parameter: tasks, factor
sets, polarities, spurious factors, rates, dataset means), ``model/`` (:mod:`sit_nlp.testbed.backbone`: a
word-level tokenizer over the grammar's vocabulary, a ``PreTrainedTokenizerFast``, and a randomly initialised
BART sized by ``model_*``, loadable offline by ``sit-nlp train --model.backbone=OUT/model``) and
``model-decoder/`` (the same tokenizer and a random Llama-shaped causal LM of the same width and depth, for
``testbed run --backbone decoder-only``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sit_causal.fileio import load_yaml, write_text_atomic
from sit_nlp.data.records import InstructionRecord
from sit_nlp.testbed import grammar
from sit_nlp.testbed.grammar import FACTORS

__all__ = ["MECHANISMS", "TestbedConfig", "TestbedError", "build_testbed", "load_testbed_config", "write_testbed"]

YES_NO = ("yes", "no")
MECHANISMS: tuple[str, ...] = ("backdoor", "anti-causal")
"""``backdoor``: the spurious factor correlates with the causal ones through the data source (inside the
meta-SCM, :mod:`sit_nlp.testbed.backdoor`); ``anti-causal``: it is drawn from the noisy label (Colored
MNIST's recipe, outside the meta-SCM: a stress test no likelihood method can pass)."""
_OPTIONAL = {"n_generation_tasks": int, "label_noise": float, "train_per_dataset": int, "validation_per_dataset": int}
SHORTCUT_SPLITS: tuple[tuple[str, str, str], ...] = (
    ("aligned", "train", "train"), ("balanced", "half", "half"), ("flipped", "flip", "flip"),
    ("flipped_factor", "flip", "half"), ("flipped_cue", "half", "flip"), ("unseen_words", "half", "half"),
)
"""Test splits of the training tasks: (name, spurious-factor rate, cue rate), each ``train`` (as in the
training datasets), ``flip`` (reversed) or ``half`` (independent of the label)."""


class TestbedError(ValueError):
    """A bad testbed configuration; ``str(err)`` is one line."""

    __test__ = False


@dataclass
class TestbedConfig:
    """Sizes and rates of the testbed (``--config FILE``: a YAML mapping of any subset of these keys)."""

    __test__ = False  # not a pytest test class despite its name

    mechanism: str = "backdoor"  # "backdoor" (inside the meta-SCM) or "anti-causal" (a label-caused shortcut)
    n_yesno_tasks: int = 4  # training yes/no tasks (rows of the graph)
    n_generation_tasks: int | None = None  # training generation tasks (rows of the graph; None: 4 backdoor, 2)
    n_heldout_tasks: int = 2  # new yes/no tasks over new factor subsets
    spurious_rates: list[float] = field(default_factory=lambda: [0.95, 0.85])  # anti-causal: one source per rate
    sources_per_task: int = 8  # backdoor: training sources per task
    test_sources: int = 4  # backdoor: new sources per task and test split
    tie: float = 2.0  # backdoor: |mean| of the tied factors in a source (the strength of the backdoor)
    ambiguity: float = 0.2  # backdoor: probability that a factor's word is its ambiguous word
    label_noise: float | None = None  # training labels flipped with this probability (None: 0.05 backdoor, 0.25)
    test_label_noise: float = 0.0
    cue_rate: float = 0.8  # anti-causal: the instruction cue agrees with the label at this rate in training
    family: str = "gauss-mean"  # sit_causal.sim.expfam family of p(L | D) (backdoor: gauss-mean)
    mean_range: float = 1.0  # dataset means mu_di ~ U[-mean_range, mean_range]
    dataset_shift: float = 1.0  # anti-causal held-out datasets: means shifted by +/- this
    train_per_dataset: int | None = None  # records per training source (None: 150 backdoor, 600 anti-causal)
    validation_per_dataset: int | None = None  # (None: 10 backdoor, 40 anti-causal)
    test_per_task: int = 200  # per task and test split
    max_task_factors: int = 2  # a yes/no task reads at most this many factors
    model_d: int = 64  # random BART: width, layers (encoder = decoder), heads, feed-forward width
    model_layers: int = 2
    model_heads: int = 4
    model_ffn: int = 128
    model_max_positions: int = 128
    # std of the random BART's initial weights: at BART's own 0.02 a 64-wide model's cross-attention starts
    # nearly uniform and vanilla training can settle into a decoder that ignores the input (measured: target
    # NLL stuck at the label prior's for 3000 steps on 2 of 2 seeds of one testbed; learned by step 400 at 0.1)
    model_init_std: float = 0.1

    @property
    def resolved_label_noise(self) -> float:
        if self.label_noise is not None:
            return self.label_noise
        return 0.05 if self.mechanism == "backdoor" else 0.25

    def __post_init__(self) -> None:
        backdoor = self.mechanism == "backdoor"
        if self.train_per_dataset is None:
            self.train_per_dataset = 150 if backdoor else 600
        if self.n_generation_tasks is None:
            self.n_generation_tasks = 4 if backdoor else 2
        if self.validation_per_dataset is None:
            self.validation_per_dataset = 10 if backdoor else 40

    def check(self) -> TestbedConfig:
        if self.mechanism not in MECHANISMS:
            raise TestbedError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.mechanism == "backdoor" and self.family != "gauss-mean":
            raise TestbedError("the backdoor mechanism ties the sources' means: it needs family gauss-mean")
        for key in ("sources_per_task", "test_sources"):
            if getattr(self, key) < 2:
                raise TestbedError(f"{key} must be >= 2 (one source each way), got {getattr(self, key)}")
        if not 0 <= self.ambiguity < 1:
            raise TestbedError(f"ambiguity must be in [0, 1), got {self.ambiguity}")
        if not 0 <= self.tie <= 4:
            raise TestbedError(f"tie must be in [0, 4], got {self.tie}")
        for key in ("n_yesno_tasks", "train_per_dataset", "validation_per_dataset", "test_per_task", "model_d",
                    "model_layers", "model_heads", "model_ffn", "model_max_positions", "max_task_factors"):
            if getattr(self, key) < 1:
                raise TestbedError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("n_generation_tasks", "n_heldout_tasks"):
            if getattr(self, key) < 0:
                raise TestbedError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.spurious_rates or not all(0.5 <= r <= 1 for r in self.spurious_rates):
            raise TestbedError(f"spurious_rates must be a non-empty list of rates in [0.5, 1], "
                               f"got {self.spurious_rates}")
        for key, value in (("label_noise", self.resolved_label_noise), ("test_label_noise", self.test_label_noise)):
            if not 0 <= value < 0.5:
                raise TestbedError(f"{key} must be in [0, 0.5), got {value}")
        if not 0.5 <= self.cue_rate <= 1:
            raise TestbedError(f"cue_rate must be in [0.5, 1], got {self.cue_rate}")
        if self.mean_range <= 0 or self.dataset_shift < 0:
            raise TestbedError("mean_range must be > 0 and dataset_shift >= 0")
        if not 0 < self.model_init_std <= 1:
            raise TestbedError(f"model_init_std must be in (0, 1], got {self.model_init_std}")
        if self.model_d % self.model_heads:
            raise TestbedError(f"model_heads={self.model_heads} does not divide model_d={self.model_d}")
        from sit_causal.sim.expfam import FAMILY_NAMES

        if self.family not in FAMILY_NAMES:
            raise TestbedError(f"family {self.family!r} is not one of {', '.join(FAMILY_NAMES)}")
        m = self.n_yesno_tasks + self.n_generation_tasks
        from sit_causal.theory.uic import max_factors_for_tasks

        if max_factors_for_tasks(m) < len(FACTORS):
            raise TestbedError(f"{m} training tasks cannot satisfy the UIC for {len(FACTORS)} factors; "
                               "use at least 4 (yes/no + generation)")
        return check_testbed_sizes(self)


MAX_TESTBED_RECORDS = 2_000_000  # ~1 KB each as JSONL; a build writes ~20,000 records a second on one core
_SIZE_LIMITS = {"n_yesno_tasks": 1000, "n_generation_tasks": 1000, "n_heldout_tasks": 1000, "sources_per_task": 1000,
                "test_sources": 1000, "model_d": 4096,
                "model_layers": 48, "model_heads": 64, "model_ffn": 16384, "model_max_positions": 4096}


def check_testbed_sizes(cfg: TestbedConfig) -> TestbedConfig:
    """Finite rates, bounded shapes, the mechanism's task counts, and the number of records estimated before
    any work: a testbed beyond :data:`MAX_TESTBED_RECORDS` is refused at once with the estimate
    (:class:`TestbedError`)."""
    import math

    for key in ("resolved_label_noise", "test_label_noise", "cue_rate", "mean_range", "dataset_shift", "tie",
                "ambiguity"):
        if not math.isfinite(getattr(cfg, key)):
            raise TestbedError(f"{key.replace('resolved_', '')} must be a finite number, got {getattr(cfg, key)}")
    for key, high in _SIZE_LIMITS.items():
        if getattr(cfg, key) > high:
            raise TestbedError(f"{key} must be <= {high}, got {getattr(cfg, key)}")
    if cfg.mechanism == "backdoor" and (cfg.n_yesno_tasks, cfg.n_generation_tasks) != (4, 4):
        raise TestbedError("the backdoor mechanism's task graph needs n_yesno_tasks: 4 and n_generation_tasks: 4, "
                           f"got {cfg.n_yesno_tasks} and {cfg.n_generation_tasks}")  # found here, before any work
    tasks = cfg.n_yesno_tasks + cfg.n_generation_tasks
    sources = cfg.sources_per_task if cfg.mechanism == "backdoor" else len(cfg.spurious_rates)
    records = (tasks * sources * (cfg.train_per_dataset + cfg.validation_per_dataset)
               + (cfg.n_yesno_tasks + cfg.n_heldout_tasks) * 8 * cfg.test_per_task)
    if records > MAX_TESTBED_RECORDS:
        raise TestbedError(f"the testbed would hold ~{records:.3g} records (~{records / 1e6:.3g} GB, about "
                           f"{records / 20_000 / 60:.3g} min to build); at most {MAX_TESTBED_RECORDS:.0e}: lower "
                           "train_per_dataset, test_per_task or the task counts")
    return cfg


def load_testbed_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TestbedConfig:
    """The defaults, updated from a YAML mapping (unknown keys and bad values: :class:`TestbedError`), then from
    ``overrides`` (command-line options, which win over the file)."""
    if path is None:
        return TestbedConfig(**(overrides or {})).check()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8-sig")) or {}
    except FileNotFoundError:
        raise TestbedError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:  # a duplicate key included
        raise TestbedError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TestbedError(f"{path}: not a readable YAML file ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise TestbedError(f"{path}: expected a mapping of testbed keys")
    known = {f.name: f for f in dataclasses.fields(TestbedConfig)}
    defaults, values = TestbedConfig(), dict(overrides or {})
    for key, value in raw.items():
        if key not in known:
            raise TestbedError(f"{path}: unknown testbed key {key!r} (known: {', '.join(known)})")
        default = _OPTIONAL[key]() if key in _OPTIONAL else getattr(defaults, key)
        if value is None and key in _OPTIONAL:
            values[key] = None
            continue
        if isinstance(default, bool) or (isinstance(default, int) and not isinstance(default, bool)):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, list):
            ok = isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            value = [float(v) for v in value] if ok else value
        else:
            ok = isinstance(value, str)
        if not ok:
            raise TestbedError(f"{path}: {key} has the wrong type ({type(value).__name__})")
        values.setdefault(key, value)
    cfg = TestbedConfig(**values)
    return cfg.check()


# ---------------------------------------------------------------------- the draw
@dataclass
class _Task:
    name: str
    kind: str  # "yesno" or "generation"
    factors: list[int]
    polarity: list[int]
    spurious: int | None
    instructions: list[str] = field(default_factory=list)


def _backdoor_graph(cfg: TestbedConfig, rng: np.random.Generator) -> np.ndarray:
    """The backdoor testbed's task graph ``(m, 6)`` (rows = yes/no tasks, then generation tasks): every yes/no
    task reads **one** factor (never ``number``, which the text never hides), so where its word is ambiguous
    the text says nothing of its label; the generation tasks read pairs that make the graph satisfy the UIC.
    With 4 yes/no tasks on factors ``y1..y4`` and the two other factors ``e, f``, the 4 generation tasks read
    ``{e, y_a}, {e, y_b}, {f, y_c}, {f, y_d}`` (a random matching)."""
    n = len(FACTORS)
    if cfg.n_yesno_tasks != 4 or cfg.n_generation_tasks != 4:
        raise TestbedError("the backdoor mechanism's task graph needs n_yesno_tasks: 4 and n_generation_tasks: 4")
    number = FACTORS.index("number")
    yes = sorted(int(i) for i in rng.choice([i for i in range(n) if i != number], size=4, replace=False))
    rest = [i for i in range(n) if i not in yes]
    adj = np.zeros((8, n), dtype=int)
    for t, i in enumerate(yes):
        adj[t, i] = 1
    for k, i in enumerate(rng.permutation(yes)):
        adj[4 + k, rest[k // 2]] = 1
        adj[4 + k, int(i)] = 1
    return adj


def _draw_tasks(cfg: TestbedConfig, rng: np.random.Generator) -> tuple[list[_Task], list[_Task], Any]:
    """Training tasks (the UIC graph's rows: yes/no first, then generation) and held-out yes/no tasks."""
    from sit_causal.sim.graph_generators import uic_graph
    from sit_causal.theory.graph import TaskFactorGraph
    from sit_causal.theory.uic import check_uic

    n, m_y, m_g = len(FACTORS), cfg.n_yesno_tasks, cfg.n_generation_tasks
    names = [f"yesno_{k + 1}" for k in range(m_y)] + [f"generate_{k + 1}" for k in range(m_g)]
    if cfg.mechanism == "backdoor":
        adj = _backdoor_graph(cfg, rng)
    else:
        for _ in range(2000):
            adj = np.asarray(uic_graph(n, m_y + m_g, rng).adjacency)
            sizes = adj.sum(axis=1)
            if np.all(sizes[:m_y] <= min(cfg.max_task_factors, n - 1)) and np.all(sizes[m_y:] <= 3):
                break
        else:  # pragma: no cover - the defaults succeed at once
            raise TestbedError("could not draw a UIC graph whose yes/no tasks leave a factor for the shortcut")
    graph = TaskFactorGraph.from_matrix(adj, factors=list(FACTORS), tasks=names)
    if not check_uic(graph).uic_holds:  # pragma: no cover - uic_graph's contract
        raise TestbedError("the drawn task graph does not satisfy the UIC")
    tasks = []
    for t, name in enumerate(names):
        factors = [int(i) for i in np.flatnonzero(adj[t])]
        if t < m_y:
            outside = [i for i in range(n) if i not in factors]
            tasks.append(_Task(name, "yesno", factors, [int(p) for p in rng.integers(0, 2, len(factors))],
                               int(rng.choice(outside))))
        else:
            tasks.append(_Task(name, "generation", factors, [], None))
    seen = {tuple(t.factors) for t in tasks}
    heldout: list[_Task] = []
    candidates = [i for i in range(n) if cfg.mechanism != "backdoor" or FACTORS[i] != "number"]
    while len(heldout) < cfg.n_heldout_tasks:
        size = int(rng.integers(2, max(2, min(cfg.max_task_factors, n - 1)) + 1))
        factors = sorted(int(i) for i in rng.choice(candidates, size=size, replace=False))
        if tuple(factors) in seen:
            continue
        seen.add(tuple(factors))
        heldout.append(_Task(f"heldout_{len(heldout) + 1}", "yesno", factors,
                             [int(p) for p in rng.integers(0, 2, size)], None))
    return tasks, heldout, graph


def _redraw_sign(family: Any, eta: np.ndarray, latents: np.ndarray, column: int, want: np.ndarray,
                 rng: np.random.Generator, dataset_id: np.ndarray) -> None:
    """Redraw ``latents[k, column]`` from ``p(L_column | D = dataset_id[k])`` until ``1[L > 0] = want[k]``
    (rejection sampling from the family itself), in place."""
    todo = np.flatnonzero((latents[:, column] > 0).astype(int) != want)
    for _ in range(10_000):
        if todo.size == 0:
            return
        draw = family.sample(eta, rng, dataset_id=dataset_id[todo])[:, column]
        ok = (draw > 0).astype(int) == want[todo]
        latents[todo[ok], column] = draw[ok]
        todo = todo[~ok]
    raise TestbedError("could not plant the spurious factor (a dataset mean is too extreme)")  # pragma: no cover


def _records(task: _Task, split: str, latents: np.ndarray, dataset_id: np.ndarray, dataset_names: list[str],
             rng: np.random.Generator, family: Any, eta: np.ndarray, *, noise: float, rate: np.ndarray | None,
             cue_rate: float | None, unseen: bool = False, prefix: str = "",
             ambiguous: np.ndarray | None = None) -> list[InstructionRecord]:
    """Render ``latents`` ``(N, 6)`` of one task into records; ``rate`` ``(N,)``: the spurious agreement rate
    of each sample's dataset (yes/no tasks; ``latents`` is modified in place by the planting)."""
    n = latents.shape[0]
    extra_common: dict[str, Any] = {"split": split}
    if task.kind == "yesno":
        clean = grammar.yesno_label((latents > 0).astype(int), task.factors, task.polarity)
        labels = np.where(rng.random(n) < noise, 1 - clean, clean)
        spurious = task.spurious
        if rate is not None and spurious is not None:
            agree = rng.random(n) < rate
            want = np.where(agree, labels, 1 - labels)
            _redraw_sign(family, eta, latents, spurious, want, rng, dataset_id)
        cue = None
        if cue_rate is not None:
            cue = np.where(rng.random(n) < cue_rate, labels, 1 - labels)
    words = grammar.factor_words(latents, unseen=unseen, ambiguous=ambiguous)
    bits = (latents > 0).astype(int)
    n_templates = len(task.instructions) if task.kind == "generation" else len(grammar.YESNO_TEMPLATES)
    template = rng.integers(0, n_templates, n)
    out = []
    for k in range(n):
        extra = {**extra_common, "factors": [round(float(v), 5) for v in latents[k]], "bits": bits[k].tolist(),
                 "dataset_id": int(dataset_id[k])}
        if ambiguous is not None:
            extra["ambiguous"] = [FACTORS[i] for i in np.flatnonzero(ambiguous[k])]
        if task.kind == "yesno":
            cue_word = grammar.CUE_WORDS[int(cue[k])] if cue is not None else None
            instruction = grammar.yesno_instruction(int(template[k]), task.factors, task.polarity, cue_word)
            output = YES_NO[0] if labels[k] else YES_NO[1]
            extra.update(label=int(labels[k]), clean_label=int(clean[k]), cue=cue_word)
            if task.spurious is not None:
                extra.update(spurious_factor=FACTORS[task.spurious],
                             spurious_agrees=bool(bits[k, task.spurious] == labels[k]))
            options: tuple[str, ...] | None = YES_NO
        else:
            instruction = task.instructions[int(template[k])]
            output = grammar.generation_target(words[k], task.factors)
            options = None
        out.append(InstructionRecord(
            task=task.name, instruction=instruction, input=grammar.render_sentence(words[k]), output=output,
            id=f"{prefix}{split}-{task.name}-{k}", category=task.kind, dataset=dataset_names[int(dataset_id[k])],
            options=options, extra=extra,
        ))
    return out


def draw_start(cfg: TestbedConfig, seed: int) -> tuple[np.random.Generator, np.random.Generator, list[_Task],
                                                       list[_Task], Any]:
    """What every mechanism draws first from ``seed``: independent streams for the graph, the sources'
    parameters and the samples (``SeedSequence(seed).spawn(3)``), the tasks (generation tasks with their
    instructions) and the graph. Returns ``(rng_param, rng_samples, tasks, heldout_tasks, graph)``."""
    graph_seq, param_seq, sample_seq = np.random.SeedSequence(seed).spawn(3)
    tasks, heldout, graph = _draw_tasks(cfg, np.random.default_rng(graph_seq))
    for t in tasks:
        if t.kind == "generation":
            t.instructions = [grammar.generation_instruction(j, t.factors)
                              for j in range(len(grammar.GENERATION_TEMPLATES))]
    return np.random.default_rng(param_seq), np.random.default_rng(sample_seq), tasks, heldout, graph


def build_testbed(cfg: TestbedConfig, seed: int) -> dict[str, Any]:
    """Draw the testbed: ``{"train", "validation", "heldout"}`` record lists, ``"graph"`` (a
    :class:`sit_causal.theory.graph.TaskFactorGraph`, rows = training tasks) and ``"meta"`` (JSON-ready)."""
    from sit_causal.sim.expfam import get_family

    if cfg.mechanism == "backdoor":
        from sit_nlp.testbed.backdoor import build_backdoor

        drawn = build_backdoor(cfg, seed)
        drawn["meta"]["config"] = dataclasses.asdict(cfg)
        return drawn

    rng_param, rng, tasks, heldout, graph = draw_start(cfg, seed)
    family = get_family(cfg.family, mean_range=cfg.mean_range) if cfg.family == "gauss-mean" else get_family(cfg.family)
    rates = list(cfg.spurious_rates)
    n_train_ds = len(rates)
    # datasets: n_train_ds per training task, then one shifted dataset per training yes/no task, then one per
    # held-out task; eta rows = datasets, columns = factors
    n_ds = len(tasks) * n_train_ds + cfg.n_yesno_tasks + len(heldout)
    eta = family.sample_natural_params(n_ds, len(FACTORS), rng_param)
    train_ds = {t.name: list(range(j * n_train_ds, (j + 1) * n_train_ds)) for j, t in enumerate(tasks)}
    base = len(tasks) * n_train_ds
    shifted = {t.name: base + j for j, t in enumerate(tasks[: cfg.n_yesno_tasks])}
    shift = cfg.dataset_shift * rng_param.choice([-1.0, 1.0], size=(cfg.n_yesno_tasks, len(FACTORS)))
    if cfg.family == "gauss-mean":
        eta[base: base + cfg.n_yesno_tasks, :, 0] += shift
    held_ds = {t.name: base + cfg.n_yesno_tasks + j for j, t in enumerate(heldout)}
    names = [""] * n_ds
    for t in tasks:
        for r, d in enumerate(train_ds[t.name]):
            names[d] = f"{t.name}/d{r + 1}"
    for t, d in shifted.items():
        names[d] = f"{t}/shifted"
    for t, d in held_ds.items():
        names[d] = f"{t}/d1"

    def draw(datasets: list[int], per: int) -> tuple[np.ndarray, np.ndarray]:
        ds = np.repeat(np.asarray(datasets), per)
        return family.sample(eta, rng, dataset_id=ds), ds

    train, validation, test = [], [], []
    for t in tasks:
        ds = train_ds[t.name]
        rate_of = {d: rates[r] for r, d in enumerate(ds)}
        for split, per, store in (("train", cfg.train_per_dataset, train),
                                  ("validation", cfg.validation_per_dataset, validation)):
            lat, did = draw(ds, per)
            rate = np.array([rate_of[d] for d in did]) if t.kind == "yesno" else None
            store += _records(t, split, lat, did, names, rng, family, eta, noise=cfg.resolved_label_noise, rate=rate,
                              cue_rate=cfg.cue_rate if t.kind == "yesno" else None)
        per_ds = -(-cfg.test_per_task // len(ds))
        if t.kind == "generation":
            lat, did = draw(ds, per_ds)
            test += _records(t, "generation", lat, did, names, rng, family, eta, noise=0.0, rate=None, cue_rate=None)
            continue
        # (split, spurious factor, cue): "train" = the training rate, "flip" = reversed, "half" = independent
        for split, factor_mode, cue_mode in SHORTCUT_SPLITS:
            lat, did = draw(ds, per_ds)
            train_rate = np.array([rate_of[d] for d in did])
            rate = {"train": train_rate, "flip": 1 - train_rate, "half": np.full(len(did), 0.5)}[factor_mode]
            cue = {"train": cfg.cue_rate, "flip": 1 - cfg.cue_rate, "half": 0.5}[cue_mode]
            test += _records(t, split, lat, did, names, rng, family, eta, noise=cfg.test_label_noise, rate=rate,
                             cue_rate=cue, unseen=split == "unseen_words")
        lat, did = draw([shifted[t.name]], cfg.test_per_task)
        test += _records(t, "heldout_datasets", lat, did, names, rng, family, eta, noise=cfg.test_label_noise,
                         rate=np.full(len(did), 0.5), cue_rate=0.5)
    for t in heldout:
        lat, did = draw([held_ds[t.name]], cfg.test_per_task)
        test += _records(t, "heldout_tasks", lat, did, names, rng, family, eta, noise=cfg.test_label_noise, rate=None,
                         cue_rate=0.5)
    meta = {
        "seed": seed, "mechanism": "anti-causal", "theory_applies": False, "config": dataclasses.asdict(cfg),
        "factors": list(FACTORS),
        "split_roles": {"aligned": "aligned", "flipped": "flipped", "balanced": "balanced"},
        "tasks": [_task_json(t) for t in tasks], "heldout_tasks": [_task_json(t) for t in heldout],
        "datasets": names, "dataset_means": family.moment_params(eta).get("mean", eta[..., 0]).round(4).tolist(),
        "noise_ceiling": 1.0 - cfg.test_label_noise, "splits": sorted({r.extra["split"] for r in test}),
    }
    return {"train": train, "validation": validation, "heldout": test, "graph": graph, "meta": meta}


def _task_json(t: _Task) -> dict[str, Any]:
    return {"name": t.name, "kind": t.kind, "factors": [FACTORS[i] for i in t.factors],
            "polarity": t.polarity, "spurious": FACTORS[t.spurious] if t.spurious is not None else None}


def write_testbed(cfg: TestbedConfig, seed: int, out: Path) -> dict[str, Any]:
    """Build and write everything into ``out`` (a fresh ``out.tmp`` folder renamed at the end)."""
    from sit_causal.fileio import replace_directory
    from sit_causal.theory.graph import save_graph
    from sit_nlp.data.records import write_records
    from sit_nlp.model.backbones import quiet_transformers
    from sit_nlp.testbed.backbone import (
        DECODER_FOLDER,
        build_testbed_decoder,
        build_testbed_model,
        build_tokenizer,
        vocabulary,
    )

    drawn = build_testbed(cfg, seed)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        counts = {split: write_records(drawn[split], tmp / f"{split}.jsonl")
                  for split in ("train", "validation", "heldout")}
        save_graph(drawn["graph"], tmp / "graph.json")
        words = vocabulary(drawn["train"] + drawn["validation"] + drawn["heldout"])
        tokenizer = build_tokenizer(words)
        model = build_testbed_model(cfg, len(tokenizer), seed)
        decoder = build_testbed_decoder(cfg, len(tokenizer), seed)
        with quiet_transformers():
            model.save_pretrained(tmp / "model")
            decoder.save_pretrained(tmp / DECODER_FOLDER)
        tokenizer.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / DECODER_FOLDER)
        meta = {**drawn["meta"], "counts": counts, "vocabulary_size": len(tokenizer),
                "model_parameters": int(sum(p.numel() for p in model.parameters())),
                "decoder_parameters": int(sum(p.numel() for p in decoder.parameters()))}
        write_text_atomic(tmp / "testbed.json", json.dumps(meta, indent=1) + "\n")
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
