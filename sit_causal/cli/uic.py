"""``sit-causal check-uic PATH``: the UIC verdict of a task-to-factor graph, with an optional repair.

Exit codes: 0 the UIC holds, 1 it does not, 2 bad input or usage (one line on stderr).
Matrices follow :mod:`sit_causal.theory.graph`: rows = tasks, columns = factors.

``--json`` prints :meth:`~sit_causal.theory.uic.UICReport.to_json` with the violating pairs capped: a graph where
every factor mixes with every other has ``n (n - 1)`` of them (25 million for 5000 factors). At most
``--max-pairs`` (default :data:`DEFAULT_MAX_PAIRS`) pairs are listed under ``"violations"``, and at most as
many entries in all the factors' ``"mixes_with"`` lists (in factor order); ``"pairs_truncated"`` counts the
pairs left out of ``"violations"``, and a factor whose list was cut carries ``"mixes_with_truncated"``, the
number of entries left out. ``n_violations`` and each factor's ``identifiable`` are always exact;
``--all-pairs`` lists everything. Ids are printed through :func:`~sit_causal.inputs.safe_text` in the
human table (the JSON escapes them itself).

Importing this module costs no torch and no scipy: the repair (scipy's MILP) loads only with ``--repair``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import typer

from sit_causal.inputs import UsageFailure, safe_text
from sit_causal.theory.graph import GraphError, TaskFactorGraph, load_graph
from sit_causal.theory.uic import AMBIGUITIES, UICReport, check_uic

if TYPE_CHECKING:
    from sit_causal.theory.repair import RepairProposal

__all__ = ["DEFAULT_MAX_PAIRS", "check_uic_command", "format_repair", "format_report", "report_json",
           "write_report_json"]

DEFAULT_MAX_PAIRS = 1000  # violating pairs listed by --json unless --all-pairs
_MAX_ROWS = 50  # failing factors shown in the human table; --json always has all of them
_MAX_NAMES = 8  # names per cell before "+N more"
_PRETTY_LIMIT = 100_000  # listed items (factors, edges, pairs) up to which --json is indented; beyond, one line


def _names(names: tuple[str, ...] | list[str], limit: int = _MAX_NAMES) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(safe_text(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown}, +{len(names) - limit} more"


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(2)]
    return [f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]


def format_report(report: UICReport) -> str:
    """Human summary: one verdict line, then a table of the failing factors and what they mix with."""
    g = report.graph
    bound = (
        f"Sperner bound: {g.n_factors} factor{'s' if g.n_factors != 1 else ''} need >= {report.min_tasks} "
        f"task{'s' if report.min_tasks != 1 else ''}, the graph has {g.n_tasks}"
        + ("" if report.enough_tasks else ", too few")
    )
    name = "UIC"
    if report.ambiguity != "linear":
        bound = bound.replace("Sperner bound", "distinct-set bound")
        name = f"UIC ({report.ambiguity} form)"
    if report.uic_holds:
        return f"{name} holds: all {g.n_factors} factors are identifiable ({bound})."
    failing = report.failing
    lines = [
        f"{name} fails: {failing.size} of {g.n_factors} factors not identifiable, "
        f"{report.n_violations} violating pair{'s' if report.n_violations != 1 else ''} ({bound}).",
    ]
    header = ("mixes with (every task reading the factor also reads these)" if report.ambiguity == "linear"
              else "mixes with (read by exactly the same tasks)")
    rows = [("factor", "read by tasks", header)]
    for i in failing[:_MAX_ROWS].tolist():
        v = report.factor_verdict(i) if report.mixing_counts[i] <= 10 * _MAX_NAMES else None
        tasks = v.tasks if v else tuple(g.tasks[t] for t in g.adjacency[:, i].nonzero()[0].tolist())
        mixes = v.mixes_with if v else tuple(g.factors[j] for j in report.mixing_indices(i)[:_MAX_NAMES])
        more = int(report.mixing_counts[i]) - len(mixes)
        cell = _names(list(mixes)) + (f", +{more} more" if more > 0 else "")
        rows.append((safe_text(g.factors[i]), _names(list(tasks)) if tasks else "(no task)", cell))
    lines += _table(rows)
    if failing.size > _MAX_ROWS:
        lines.append(f"  ... {failing.size - _MAX_ROWS} more failing factors (--json lists all)")
    return "\n".join(lines)


def format_repair(proposal: RepairProposal) -> str:
    """Human form of a repair proposal."""
    if proposal.method == "none needed":
        return "Repair: none needed."
    quality = "minimal: fewest new tasks, then fewest added edges" if proposal.minimal else "not proven minimal"
    lines = [f"Repair ({proposal.method}, {quality}):"]
    if proposal.new_tasks:
        lines.append(f"  existing tasks are not enough: {proposal.reason}.")
    lines.append(
        f"  add {len(proposal.new_tasks)} new task{'s' if len(proposal.new_tasks) != 1 else ''} and "
        f"{proposal.n_added_edges} edge{'s' if proposal.n_added_edges != 1 else ''} in all"
    )
    lines += [f"  + {safe_text(f)} -> {safe_text(t)}" for f, t in proposal.added_edges[:_MAX_ROWS]]
    if len(proposal.added_edges) > _MAX_ROWS:
        lines.append(f"  ... {len(proposal.added_edges) - _MAX_ROWS} more edges (--json lists all)")
    lines += [f"  + new task {safe_text(t)} reads: {_names(list(fs))}" for t, fs in proposal.new_tasks[:_MAX_ROWS]]
    if len(proposal.new_tasks) > _MAX_ROWS:
        lines.append(f"  ... {len(proposal.new_tasks) - _MAX_ROWS} more new tasks (--json lists all)")
    after = check_uic(proposal.repaired)
    lines.append(f"Re-checked: the UIC {'holds' if after.uic_holds else 'FAILS'} on the repaired graph.")
    return "\n".join(lines)


# ---------------------------------------------------------------------- --json
def _factor_entries(report: UICReport, max_pairs: int | None) -> Iterator[dict[str, Any]]:
    """One ``{"id", "tasks", "mixes_with", "identifiable"}`` per factor, the ``mixes_with`` lists sharing a
    budget of ``max_pairs`` entries (``None``: unlimited); a cut list adds ``"mixes_with_truncated"``."""
    g = report.graph
    budget = max_pairs
    for i in range(g.n_factors):
        count = int(report.mixing_counts[i])
        shown = count if budget is None else min(count, budget)
        mixes = report.mixing_indices(i)[:shown].tolist() if shown else []
        entry: dict[str, Any] = {
            "id": g.factors[i],
            "tasks": [g.tasks[t] for t in np.flatnonzero(g.adjacency[:, i]).tolist()],
            "mixes_with": [g.factors[j] for j in mixes],
            "identifiable": count == 0,
        }
        if shown < count:
            entry["mixes_with_truncated"] = count - shown
        if budget is not None:
            budget -= shown
        yield entry


def _violation_groups(report: UICReport, max_pairs: int | None) -> Iterator[tuple[int, np.ndarray]]:
    """``(a, [b, ...])`` per failing factor ``a``: the first ``max_pairs`` violating pairs (all with
    ``None``) in the order of :meth:`UICReport.iter_violations`, as factor indices."""
    left = max_pairs
    for i in report.failing.tolist():
        if left is not None and left <= 0:
            return
        idx = report.mixing_indices(i)
        if left is not None:
            idx = idx[:left]
            left -= idx.size
        yield i, idx


def _shown_pairs(report: UICReport, max_pairs: int | None) -> int:
    return report.n_violations if max_pairs is None else min(report.n_violations, max_pairs)


def _parts(report: UICReport, repair: dict[str, Any] | None, max_pairs: int | None) -> tuple[dict, dict]:
    """The keys before and after the lists: those of :meth:`UICReport.to_json`, plus ``pairs_truncated``."""
    truncated = report.n_violations - _shown_pairs(report, max_pairs)
    return report.json_head(), {"pairs_truncated": truncated, **report.json_tail(repair)}


def report_json(report: UICReport, repair: dict[str, Any] | None = None,
                max_pairs: int | None = DEFAULT_MAX_PAIRS) -> dict[str, Any]:
    """The ``--json`` object: :meth:`UICReport.to_json` with the pairs capped (module docstring) and
    ``"pairs_truncated"``; ``max_pairs=None`` lists every pair."""
    head, tail = _parts(report, repair, max_pairs)
    names = report.graph.factors
    pairs = [[names[i], names[j]] for i, idx in _violation_groups(report, max_pairs) for j in idx.tolist()]
    return {**head, "factors": list(_factor_entries(report, max_pairs)), "violations": pairs, **tail}


def write_report_json(stream: IO[str], report: UICReport, repair: dict[str, Any] | None = None,
                      max_pairs: int | None = DEFAULT_MAX_PAIRS) -> None:
    """:func:`report_json` written to ``stream`` as one line, one factor at a time, so that memory stays
    ``O(n)`` even with ``--all-pairs`` and ``n (n - 1)`` violations."""
    head, tail = _parts(report, repair, max_pairs)
    stream.write(json.dumps(head)[:-1] + ', "factors": [')
    for k, entry in enumerate(_factor_entries(report, max_pairs)):
        stream.write((", " if k else "") + json.dumps(entry))
    stream.write('], "violations": [')
    quoted = [json.dumps(f) for f in report.graph.factors]
    for k, (i, idx) in enumerate(_violation_groups(report, max_pairs)):
        head_i = f"[{quoted[i]}, "
        stream.write((", " if k else "") + ", ".join(f"{head_i}{quoted[j]}]" for j in idx.tolist()))
    stream.write("], " + json.dumps(tail)[1:] + "\n")


def _read(path: str) -> TaskFactorGraph:
    if path == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageFailure(f"cannot read stdin: {err.__class__.__name__}: {err}") from None
        return load_graph("<stdin>", text=text)
    return load_graph(path)


def check_uic_command(
    path: str = typer.Argument(..., metavar="PATH", help="graph JSON (node-link or matrix form); - reads stdin"),
    as_json: bool = typer.Option(False, "--json", help="print exactly one JSON object on stdout"),
    repair: bool = typer.Option(False, "--repair", help="propose edges (and new tasks if needed) that fix it"),
    ambiguity: str = typer.Option("linear", "--ambiguity",
                                  help="linear: the UIC; orthogonal: the weaker condition for a representation "
                                       "known up to a rotation (only identical task sets mix)"),
    max_pairs: int = typer.Option(DEFAULT_MAX_PAIRS, "--max-pairs", min=0,
                                  help="--json lists at most this many violating pairs (the rest are counted "
                                       "in \"pairs_truncated\")"),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="--json lists every violating pair"),
) -> None:
    """Check the Uniform Identifiability Condition of a task-to-factor graph.

    Exit code 0 if it holds, 1 if it does not, 2 on bad input.
    """
    if ambiguity not in AMBIGUITIES:
        raise UsageFailure(f"unknown --ambiguity {ambiguity!r}; use one of {', '.join(AMBIGUITIES)}")
    if repair and ambiguity != "linear":
        raise UsageFailure("--repair proposes edges for the UIC (--ambiguity linear) only")
    try:
        graph = _read(path)
    except GraphError as err:
        raise UsageFailure(str(err)) from None
    report = check_uic(graph, ambiguity=ambiguity)  # type: ignore[arg-type]
    proposal = None
    if repair:
        from sit_causal.theory.repair import propose_repair  # scipy: only for --repair

        proposal = propose_repair(graph, report)
    if as_json:
        repair_json: dict[str, Any] | None = proposal.to_json() if proposal is not None else None
        cap = None if all_pairs else max_pairs
        listed = graph.n_factors + int(graph.adjacency.sum()) + 2 * _shown_pairs(report, cap)
        if listed <= _PRETTY_LIMIT:
            print(json.dumps(report_json(report, repair_json, cap), indent=2))
        else:
            write_report_json(sys.stdout, report, repair_json, cap)
    else:
        print(format_report(report))
        if proposal is not None:
            print(format_repair(proposal))
    raise typer.Exit(0 if report.uic_holds else 1)
