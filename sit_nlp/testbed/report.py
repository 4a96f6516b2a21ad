"""The testbed report: per-method summaries over seeds, the positive-control gate, the claims, tables, figures.

Every function reads the runs' ``result.json`` dicts and the testbed's **split roles** (``testbed.json``'s
``split_roles``): ``aligned`` (the training distribution: ``aligned`` on ``anti-causal``, ``in_distribution``
on ``backdoor``), ``flipped`` (the shortcut reversed: ``flipped`` / ``flipped_d``) and ``balanced`` (the shortcut
independent of the label: ``balanced`` / ``balanced_d``). Accuracies are keyed by split name (``acc/SPLIT``);
``gap`` is the aligned minus the flipped accuracy.

**Positive-control gate** (:func:`gate`, decided before any SIT-vs-vanilla comparison is read):

(a) an oracle that reads only each task's true attributes ``b[S_t]``
    (:func:`sit_nlp.testbed.controls.oracle_accuracy`) reaches the ceiling ``1 - test_label_noise`` within
    the tolerance (``--oracle-tolerance``) on every yes/no split;
(b) vanilla's ``aligned`` accuracy minus its ``flipped`` accuracy, mean over seeds, is at least ``min_gap``
    (:func:`default_min_gap`: 0.15 on ``backdoor``, 0.20 on ``anti-causal``): vanilla did learn the shortcut.

If either fails the report says so and states no SIT-vs-vanilla claim (``claims`` is ``None``).
:func:`build_report` assembles ``report.json``'s content, the markdown table and the gate's line;
:func:`write_report` writes ``report.json``, ``report.md`` (the table, with the few-shot table), ``report.png``
(accuracy per split and method, 95 % CIs) and ``report_map.png`` (the 2-D maps of each method's first seed),
each atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANTI_CAUSAL_ROLES", "SPLIT_ORDER", "build_report", "claims", "columns", "default_min_gap", "fewshot_table",
           "first_seed_maps", "gate", "markdown_table", "past_prior", "plot_report", "split_roles", "summarise_runs",
           "write_report"]

SPLIT_ORDER = ("aligned", "in_distribution", "heldout_sources", "balanced", "balanced_d", "flipped", "flipped_d",
               "flipped_factor", "flipped_cue", "unseen_words", "heldout_datasets", "heldout_tasks")
"""Yes/no test splits of both mechanisms, in the order of every table and figure."""

ANTI_CAUSAL_ROLES = {"aligned": "aligned", "flipped": "flipped", "balanced": "balanced"}
"""The split roles of a testbed whose ``testbed.json`` names none (the ``anti-causal`` mechanism's splits)."""


def split_roles(meta: dict[str, Any]) -> dict[str, str]:
    """The testbed's split roles (``aligned``, ``flipped``, ``balanced``; module docstring) from its
    ``testbed.json``."""
    return dict(meta.get("split_roles") or ANTI_CAUSAL_ROLES)


def _flatten(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, value in result.get("accuracy", {}).items():
        out[f"acc/{split}"] = value
    for split, value in result.get("worst_group", {}).items():
        out[f"worst/{split}"] = value
    if "aligned_minus_flipped" in result:
        out["gap"] = result["aligned_minus_flipped"]
    for key in ("probe_spurious", "probe_spurious_all_factors", "mask_open_fraction"):
        if key in result:
            out[key] = result[key]
    if result.get("factors"):
        out["mcc"] = result["factors"]["mcc"]
    if result.get("graph"):
        for key in ("precision", "recall", "f1"):
            out[f"graph/{key}"] = result["graph"][key]
        out["graph/uic_holds"] = float(result["graph"]["uic_holds"])
    for adaptation, by_k in (result.get("fewshot") or {}).get("accuracy", {}).items():
        for k, value in by_k.items():
            out[f"fewshot/{adaptation}/{k}"] = value
    out["seconds/train"] = result["seconds"]["train"]
    return out


def summarise_runs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and metric: the values over seeds (in seed order), mean and 95 % CI half-width
    (:func:`sit_causal.stats.mean_ci`); paired differences against vanilla."""
    from sit_causal.stats import mean_ci

    by_method: dict[str, dict[int, dict[str, float]]] = {}
    for r in results:
        by_method.setdefault(r["method"], {})[r["seed"]] = _flatten(r)
    summary: dict[str, Any] = {}
    for method, seeds in by_method.items():
        keys = sorted({k for row in seeds.values() for k in row})
        summary[method] = {}
        for key in keys:
            values = [seeds[s][key] for s in sorted(seeds) if key in seeds[s]]
            m, h = mean_ci(values)
            summary[method][key] = {"values": values, "mean": m, "ci95": None if h != h else h}
    paired: dict[str, Any] = {}
    base = by_method.get("vanilla", {})
    ks = sorted({k.rsplit("/", 1)[1] for row in base.values() for k in row if k.startswith("fewshot/finetune/")},
                key=int)
    for method, seeds in by_method.items():
        if method == "vanilla" or not base:
            continue
        common = sorted(set(seeds) & set(base))
        paired[method] = {}
        keys = sorted({k for row in base.values() for k in row if k.startswith(("acc/", "worst/"))})
        pairs = [(key, key) for key in [*keys, "gap"]]
        # few-shot: SIT's selection step, and the same fine-tuning as vanilla's, each against vanilla fine-tuned
        pairs += [(f"fewshot/{a}/{k}", f"fewshot/finetune/{k}") for a in ("select", "finetune") for k in ks]
        for key, base_key in pairs:
            diffs = [seeds[s][key] - base[s][base_key] for s in common if key in seeds[s] and base_key in base[s]]
            if diffs:
                m, h = mean_ci(diffs)
                name = key if key == base_key else f"{key} - vanilla {base_key}"
                paired[method][name] = {"values": diffs, "mean": m, "ci95": None if h != h else h}
    return {"methods": summary, "paired_vs_vanilla": paired}


def gate(oracle: dict[str, float], summary: dict[str, Any], ceiling: float, tolerance: float,
         min_gap: float) -> dict[str, Any]:
    """The positive-control gate (module docstring): ``passed`` and why."""
    low = {s: a for s, a in oracle.items() if a < ceiling - tolerance}
    gaps = summary["methods"].get("vanilla", {}).get("gap", {})
    vanilla_gap = gaps.get("mean")
    seeds_with_gap = sum(g >= min_gap for g in gaps.get("values", []))  # reported: the gate reads the mean
    oracle_ok = not low
    shortcut_ok = vanilla_gap is not None and vanilla_gap >= min_gap
    reasons = []
    if not oracle_ok:
        reasons.append("oracle below the noise ceiling on " + ", ".join(f"{s} ({a:.3f})" for s, a in low.items()))
    if vanilla_gap is None:
        reasons.append("no vanilla run: the shortcut check needs one")
    elif not shortcut_ok:
        reasons.append(f"vanilla aligned - flipped gap {vanilla_gap:.3f} < {min_gap}")
    return {"passed": oracle_ok and shortcut_ok, "oracle": oracle, "ceiling": ceiling, "tolerance": tolerance,
            "oracle_passed": oracle_ok, "vanilla_gap": vanilla_gap, "min_gap": min_gap,
            "vanilla_seeds_with_gap": f"{seeds_with_gap} of {len(gaps.get('values', []))}",
            "shortcut_passed": shortcut_ok, "reasons": reasons}


def past_prior(results: list[dict[str, Any]], prior: dict[str, float], margin: float = 0.05,
               aligned: str = "aligned") -> dict[str, Any]:
    """Per method, which seeds left the label prior: ``aligned`` (the split of that role) accuracy at least
    ``margin`` above the
    majority-label answer's. A run that did not learned nothing, and its ``flipped`` accuracy is the prior's
    (about 0.73 by default), which can look like a win over a run that learned the shortcut.

    Returns ``{method: {"seeds": [...], "past": [bool, ...], "count": "k of n"}}`` (seeds in order)."""
    out: dict[str, Any] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        entry = out.setdefault(r["method"], {"seeds": [], "past": []})
        entry["seeds"].append(r["seed"])
        entry["past"].append(bool(r["accuracy"].get(aligned, 0.0) >= prior.get(aligned, 0.0) + margin))
    for entry in out.values():
        entry["count"] = f"{sum(entry['past'])} of {len(entry['past'])}"
    return out


def claims(summary: dict[str, Any], learned: dict[str, Any] | None = None,
           roles: dict[str, str] | None = None, ceiling_mcc: float | None = None) -> dict[str, Any]:
    """The targets of the SIT-vs-vanilla comparison, each with its verdict (read only when the gate passed).

    * ``flipped_plus_10_points``: SIT minus vanilla on the flipped split, paired by seed, >= 0.10 with a 95 %
      CI excluding 0, and every SIT seed past the label prior (a run that learned nothing scores the prior
      on the flipped split);
    * ``heldout_tasks_at_least_vanilla``, ``8_shot_above_vanilla`` (SIT adapting its selection alone against
      vanilla fine-tuned), ``graph_f1_at_least_0.8``, ``factor_mcc_at_least_0.85`` (beside ``ceiling_mcc``,
      the best reading of the words);
    * ``true_graph_at_least_sit``: the true-graph control (``sit-true-graph``) on the flipped split, paired;
    * ``every_seed_past_prior``: every seed of every method left the label prior.
    """
    methods = summary["methods"]
    if "sit" not in methods or "vanilla" not in methods:
        return {}
    roles = roles or ANTI_CAUSAL_ROLES
    flipped = f"acc/{roles['flipped']}"
    s, v = methods["sit"], methods["vanilla"]
    sit_learned = learned is None or all(learned.get("sit", {}).get("past", [False]))
    paired = summary.get("paired_vs_vanilla", {}).get("sit", {})

    out: dict[str, Any] = {}
    if flipped in paired:
        d = paired[flipped]
        h = d["ci95"] if d["ci95"] is not None else float("nan")
        excludes = bool(d["mean"] - h > 0)
        out["flipped_plus_10_points"] = {"split": roles["flipped"], "difference": d["mean"], "ci95": d["ci95"],
                                         "ci_excludes_0": excludes, "sit_seeds_past_prior": bool(sit_learned),
                                         "met": bool(d["mean"] >= 0.10 and excludes and sit_learned)}
    if "acc/heldout_tasks" in s and "acc/heldout_tasks" in v:
        diff = s["acc/heldout_tasks"]["mean"] - v["acc/heldout_tasks"]["mean"]
        out["heldout_tasks_at_least_vanilla"] = {"difference": diff, "met": bool(diff >= 0)}
    if "fewshot/select/8" in s and "fewshot/finetune/8" in v:
        diff = s["fewshot/select/8"]["mean"] - v["fewshot/finetune/8"]["mean"]
        out["8_shot_above_vanilla"] = {"sit_select": s["fewshot/select/8"]["mean"],
                                       "vanilla_finetune": v["fewshot/finetune/8"]["mean"], "difference": diff,
                                       "met": bool(diff >= 0)}
    if "graph/f1" in s:
        out["graph_f1_at_least_0.8"] = {"f1": s["graph/f1"]["mean"], "met": bool(s["graph/f1"]["mean"] >= 0.8)}
    if "mcc" in s:
        out["factor_mcc_at_least_0.85"] = {"mcc": s["mcc"]["mean"], "ceiling": ceiling_mcc,
                                           "met": bool(s["mcc"]["mean"] >= 0.85)}
    true_graph = methods.get("sit-true-graph", {})
    if flipped in true_graph and flipped in s:
        diffs = [a - b for a, b in zip(true_graph[flipped]["values"], s[flipped]["values"], strict=False)]
        out["true_graph_at_least_sit"] = {"difference": float(np.mean(diffs)), "met": bool(np.mean(diffs) >= 0)}
    if learned:
        out["every_seed_past_prior"] = {"counts": {m: e["count"] for m, e in learned.items()},
                                        "met": all(all(e["past"]) for e in learned.values())}
    return out


def columns(summary: dict[str, Any], roles: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The report table's columns ``(key, heading)``: every yes/no split present (:data:`SPLIT_ORDER`), the
    aligned-minus-flipped gap, the worst group of the balanced split, generation, and the SIT diagnostics."""
    roles = roles or ANTI_CAUSAL_ROLES
    present = {k for metrics in summary["methods"].values() for k in metrics}
    cols = [(f"acc/{s}", s.replace("_", " ")) for s in SPLIT_ORDER if f"acc/{s}" in present]
    cols += [("gap", f"{roles['aligned']} - {roles['flipped']}"),
             (f"worst/{roles['balanced']}", f"worst group ({roles['balanced']})"),
             ("acc/generation", "generation EM"), ("graph/f1", "graph F1"), ("mcc", "factor MCC"),
             ("probe_spurious", "spurious probe")]
    return [c for c in cols if c[0] in present]


def markdown_table(summary: dict[str, Any], oracle: dict[str, float], prior: dict[str, float],
                   roles: dict[str, str] | None = None) -> str:
    """Rows = methods, the oracle and the label prior; columns = :func:`columns`; cells ``mean +/- CI
    half-width`` (95 %, over seeds)."""
    cols = columns(summary, roles)
    head = "| method | " + " | ".join(c for _, c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for method, metrics in summary["methods"].items():
        cells = []
        for key, _ in cols:
            e = metrics.get(key)
            if e is None:
                cells.append("-")
            else:
                h = e["ci95"]
                cells.append(f"{e['mean']:.3f}" + (f" +/- {h:.3f}" if h is not None else ""))
        n = len(next(iter(metrics.values()))["values"]) if metrics else 0
        lines.append(f"| {method} (n = {n}) | " + " | ".join(cells) + " |")
    for name, ref in (("oracle (true factors)", oracle), ("label prior (task majority)", prior)):
        cells = [f"{ref[k.split('/')[1]]:.3f}" if k.startswith("acc/") and k.split("/")[1] in ref else "-"
                 for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fewshot_table(summary: dict[str, Any]) -> str:
    """Held-out-task accuracy after few-shot adaptation: rows = (method, adaptation), columns = ``k``
    (``0``: zero-shot); cells ``mean +/- CI half-width`` over seeds. Empty when no run measured it."""
    rows = []
    ks: set[str] = set()
    for method, metrics in summary["methods"].items():
        by: dict[str, dict[str, Any]] = {}
        for key, e in metrics.items():
            if key.startswith("fewshot/"):
                _, adaptation, k = key.split("/")
                by.setdefault(adaptation, {})[k] = e
                ks.add(k)
        rows.extend((method, a, cells) for a, cells in by.items())
    if not rows:
        return ""
    order = sorted(ks, key=int)
    lines = ["| method | adaptation | " + " | ".join(f"k = {k}" for k in order) + " |",
             "|---|---|" + "---|" * len(order)]
    for method, adaptation, cells in rows:
        out = []
        for k in order:
            e = cells.get(k)
            if k == "0" and e is None:
                e = summary["methods"][method].get("fewshot/zero-shot/0")
            h = e["ci95"] if e else None
            out.append("-" if e is None else f"{e['mean']:.3f}" + (f" +/- {h:.3f}" if h is not None else ""))
        lines.append(f"| {method} | {adaptation} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def first_seed_maps(results: list[dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """The 2-D maps (``map_2d.json``) of each method's lowest seed that has one, by method."""
    maps: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        path = out / "runs" / r["method"] / f"seed{r['seed']}" / "map_2d.json"
        if r["method"] not in maps and path.is_file():
            maps[r["method"]] = json.loads(path.read_text(encoding="utf-8"))
    return maps


def plot_report(summary: dict[str, Any], oracle: dict[str, float], path: Path,
                prior: dict[str, float] | None = None, title: str = "") -> Any:
    """Accuracy per yes/no split for every method: bars at the mean over seeds, error bars the 95 % CI of
    the mean (Student t, :func:`sit_causal.stats.mean_ci`) wherever a method has n >= 2 seeds, none where
    n < 2; the oracle and, when given, the label prior (the task-majority answer's accuracy, what a run that
    learned nothing scores) as markers. The title (``title`` or a default) states n per method and the
    interval. Drawn on a :class:`matplotlib.figure.Figure` (no pyplot state), written atomically to
    ``path``; returns the figure."""
    from matplotlib.figure import Figure

    from sit_causal.plotting import save_figure

    methods = list(summary["methods"])
    splits = [s for s in SPLIT_ORDER if any(f"acc/{s}" in summary["methods"][m] for m in methods)]
    fig = Figure(figsize=(1.6 * len(splits) + 3.2, 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    counts = []
    for j, method in enumerate(methods):
        entries = [summary["methods"][method].get(f"acc/{s}") for s in splits]
        means = np.array([e["mean"] if e else np.nan for e in entries], dtype=float)
        n = max((len(e["values"]) for e in entries if e), default=0)
        counts.append(n)
        xs = np.arange(len(splits)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(xs, means, width, label=f"{method} (n = {n} seed{'' if n == 1 else 's'})")
        with_ci = [i for i, e in enumerate(entries) if e and len(e["values"]) >= 2 and e.get("ci95") is not None]
        if with_ci:
            ax.errorbar(xs[with_ci], means[with_ci], yerr=[entries[i]["ci95"] for i in with_ci], fmt="none",
                        ecolor="black", capsize=2, lw=0.8)
    for reference, color, label in ((oracle, "k", "oracle"), (prior, "0.55", "label prior")):
        if reference is not None:
            ax.scatter(np.arange(len(splits)), [reference.get(s, np.nan) for s in splits], marker="_", s=400,
                       color=color, label=label, zorder=3)
    ax.set_xticks(np.arange(len(splits)), splits, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.set_xlabel("yes/no test split")
    ns = "/".join(map(str, sorted(set(counts)))) or "0"
    if any(c >= 2 for c in counts):
        note = f"n = {ns} seeds per method; error bars: 95 % CI of the mean over seeds (t-interval)"
    else:
        note = f"n = {ns} seed per method: no error bars (a 95 % CI needs n >= 2)"
    ax.set_title(f"{title or 'testbed accuracy per split'}\n{note}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path, dpi=120)
    return fig




def default_min_gap(meta: dict[str, Any]) -> float:
    """Gate (b)'s threshold when none is asked for: 0.15 on a ``backdoor`` testbed, 0.20 on ``anti-causal``."""
    return 0.15 if meta.get("mechanism") == "backdoor" else 0.20


def build_report(data: Path, meta: dict[str, Any], settings: dict[str, Any], oracle: dict[str, float],
                 prior: dict[str, float], controls: dict[str, Any], results: list[dict[str, Any]],
                 oracle_tolerance: float, min_gap: float, wall_seconds: float) -> tuple[dict[str, Any], str, str]:
    """``report.json``'s content, the markdown table and the gate's line.

    ``meta`` is the testbed's ``testbed.json``, ``settings`` the run's settings (copied into the report),
    ``oracle`` and ``prior`` the accuracies per split of the oracle and of the label prior, ``controls`` the
    positive controls of :func:`sit_nlp.testbed.controls.testbed_controls`, ``results`` the runs' results."""
    roles = split_roles(meta)
    summary = summarise_runs(results)
    verdict = gate(oracle, summary, meta["noise_ceiling"], oracle_tolerance, min_gap)
    learned = past_prior(results, prior, aligned=roles["aligned"])
    ceiling = controls["recovery_ceiling"]["mcc"]
    mechanism = meta.get("mechanism", "anti-causal")
    theory = bool(meta.get("theory_applies", False))
    report = {"data": str(data), "testbed_seed": meta["seed"], "mechanism": mechanism, "theory_applies": theory,
              "split_roles": roles, **settings, "gate": verdict, "label_prior": prior, "past_label_prior": learned,
              "controls": controls,
              "claims": claims(summary, learned, roles, ceiling) if verdict["passed"] else None, **summary,
              "wall_seconds": wall_seconds, "runs": results}
    table = markdown_table(summary, oracle, prior, roles)
    table += (f"\nSeeds past the label prior ({roles['aligned']} accuracy >= the prior's + 0.05): "
              + ", ".join(f"{m} {e['count']}" for m, e in learned.items()) + "\n")
    sel = controls["true_factor_selection"]
    mcc = summary["methods"].get("sit", {}).get("mcc")
    table += (f"\nPositive controls: the selection statistic on the true factors selects a graph of F1 {sel['f1']:.3f} "
              f"(coverage graph {sel['coverage_graph']['f1']:.3f}); factor-recovery ceiling (best reading of the "
              f"words) MCC {ceiling:.3f}" + (f", SIT's factor MCC {mcc['mean']:.3f}" if mcc else "") + ".\n")
    inv = controls.get("true_factor_invariant_selection")
    if inv is not None:
        table += (f"The source-reading statistic on the true factors (invariance methods' control) selects a graph "
                  f"of F1 {inv['f1']:.3f}.\n")
    shots = fewshot_table(summary)
    if shots:
        table += "\nFew-shot adaptation on the held-out tasks (accuracy on the records not used to adapt):\n\n" + shots
    scope = ("inside the meta-SCM: SIT's theory applies" if theory
             else "outside the meta-SCM (the shortcut is caused by the label): SIT's theory does not apply")
    gate_line = (f"mechanism {mechanism} ({scope}); backbone {settings.get('backbone', 'encoder-decoder')}; "
                 + ("gate passed" if verdict["passed"] else "gate FAILED: " + "; ".join(verdict["reasons"])
                    + " (no SIT-vs-vanilla claim)"))
    return report, table, gate_line


def write_report(out: Path, report: dict[str, Any], table: str, gate_line: str, oracle: dict[str, float],
                 prior: dict[str, float], results: list[dict[str, Any]]) -> None:
    """``report.json``, ``report.md``, ``report.png`` and ``report_map.png`` in ``out``, each atomically."""
    from sit_causal.fileio import write_text_atomic

    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", f"# testbed report\n\n{gate_line}\n\n{table}")
    plot_report({"methods": report["methods"]}, oracle, out / "report.png", prior,
                title=f"testbed seed {report['testbed_seed']}, {report['mechanism']}, "
                      f"{report.get('backbone', 'encoder-decoder')}: accuracy per split")
    maps = first_seed_maps(results, out)
    if maps:
        from sit_nlp.testbed.evaluation import plot_factor_maps

        plot_factor_maps(maps, out / "report_map.png")
