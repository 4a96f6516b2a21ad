"""``sit-causal check-uic PATH``: the UIC verdict of a task-to-factor graph, with an optional repair.

Exit codes: 0 the UIC holds, 1 it does not, 2 bad input or usage (one line on stderr).
Matrices follow :mod:`sit_causal.graph`: rows = tasks, columns = factors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from sit_causal.cli_helpers import UsageFailure
from sit_causal.graph import GraphError, TaskFactorGraph, load_graph
from sit_causal.repair import RepairProposal, propose_repair
from sit_causal.uic import AMBIGUITIES, UICReport, check_uic

__all__ = ["check_uic_command", "format_repair", "format_report"]

_MAX_ROWS = 50  # failing factors shown in the human table; --json always has all of them
_MAX_NAMES = 8  # names per cell before "+N more"
_PRETTY_LIMIT = 100_000  # factors + violations up to which --json is indented; beyond, it is streamed


def _names(names: tuple[str, ...] | list[str], limit: int = _MAX_NAMES) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
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
        rows.append((g.factors[i], _names(list(tasks)) if tasks else "(no task)", cell))
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
    lines += [f"  + {f} -> {t}" for f, t in proposal.added_edges[:_MAX_ROWS]]
    if len(proposal.added_edges) > _MAX_ROWS:
        lines.append(f"  ... {len(proposal.added_edges) - _MAX_ROWS} more edges (--json lists all)")
    lines += [f"  + new task {t} reads: {_names(list(fs))}" for t, fs in proposal.new_tasks[:_MAX_ROWS]]
    if len(proposal.new_tasks) > _MAX_ROWS:
        lines.append(f"  ... {len(proposal.new_tasks) - _MAX_ROWS} more new tasks (--json lists all)")
    after = check_uic(proposal.repaired)
    lines.append(f"Re-checked: the UIC {'holds' if after.uic_holds else 'FAILS'} on the repaired graph.")
    return "\n".join(lines)


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
    proposal = propose_repair(graph, report) if repair else None
    if as_json:
        repair_json: dict[str, Any] | None = proposal.to_json() if proposal is not None else None
        if graph.n_factors + report.n_violations <= _PRETTY_LIMIT:
            print(json.dumps(report.to_json(repair_json), indent=2))
        else:
            report.write_json(sys.stdout, repair_json)
    else:
        print(format_report(report))
        if proposal is not None:
            print(format_repair(proposal))
    raise typer.Exit(0 if report.uic_holds else 1)
