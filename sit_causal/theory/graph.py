"""The task-to-factor graph: which latent factors each task (target) reads.

One typed object, :class:`TaskFactorGraph`, that every other part of the project uses. Its matrix
``adjacency`` has **rows = tasks, columns = factors**: ``adjacency[t, i]`` is True iff task ``t`` reads
factor ``i`` (the edge ``L_i -> Y_t`` of the meta-SCM). Task ``t``'s parent set is
``S_t = {i : adjacency[t, i]}`` and factor ``i``'s task set is ``C_i = {t : adjacency[t, i]}``.

File formats (both normalised into :class:`TaskFactorGraph` by :func:`load_graph` / :func:`parse_graph`):

1. networkx node-link JSON (``networkx.readwrite.json_graph.node_link_data``): nodes carry
   ``"kind": "latent"`` or ``"kind": "target"``; edges latent -> target are listed under ``"edges"``
   (the legacy key ``"links"`` is accepted, a file with both is rejected).
2. compact matrix JSON that states its orientation::

       {"factors": ["L1", ...], "tasks": ["T1", ...], "adjacency": [[0, 1, ...], ...], "rows": "tasks"}

   ``"rows": "factors"`` gives the transposed matrix.

Every malformed input (an object that repeats a key included) raises :class:`GraphError` with a one-line
message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GraphError",
    "TaskFactorGraph",
    "load_graph",
    "node_link_dict",
    "parse_graph",
    "save_graph",
]


class GraphError(ValueError):
    """A graph input that cannot be understood; ``str(err)`` is one line meant for a user."""


@dataclass(frozen=True, eq=False)
class TaskFactorGraph:
    """A bipartite graph from latent factors to tasks.

    Arguments:
        factors: factor ids, one per column of ``adjacency`` (unique).
        tasks: task ids, one per row of ``adjacency`` (unique).
        adjacency: boolean array of shape ``(n_tasks, n_factors)``; **rows = tasks, columns = factors**;
            ``adjacency[t, i]`` is True iff task ``t`` reads factor ``i``.
    """

    factors: tuple[str, ...]
    tasks: tuple[str, ...]
    adjacency: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        factors = tuple(map(str, self.factors))
        tasks = tuple(map(str, self.tasks))
        adj = np.asarray(self.adjacency)
        if adj.ndim != 2:
            raise GraphError(f"adjacency must be a 2-D matrix, got {adj.ndim} dimension(s)")
        if adj.dtype != bool:
            if adj.size and not np.isin(adj, (0, 1)).all():
                raise GraphError("adjacency must be binary (0/1 or true/false)")
            adj = adj.astype(bool)
        if adj.shape != (len(tasks), len(factors)):
            raise GraphError(
                f"adjacency has shape {adj.shape} but there are {len(tasks)} tasks (rows) "
                f"and {len(factors)} factors (columns)"
            )
        if len(factors) == 0:
            raise GraphError("the graph has no factors")
        unique = []  # one set per id list, built in C: millions of ids cost a fraction of a second
        for kind, ids in (("factor", factors), ("task", tasks)):
            unique.append(set(ids))
            if len(unique[-1]) != len(ids):
                raise GraphError(f"duplicate {kind} id {_first_duplicate(ids)!r}")
        if not unique[0].isdisjoint(unique[1]):
            overlap = unique[0] & unique[1]
            raise GraphError(f"id {sorted(overlap)[0]!r} names both a factor and a task")
        adj = np.array(adj, dtype=bool, order="C", copy=True)  # never freeze the caller's array
        adj.setflags(write=False)
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "adjacency", adj)

    # ------------------------------------------------------------------ basic views
    @property
    def n_factors(self) -> int:
        """Number of factors (columns)."""
        return len(self.factors)

    @property
    def n_tasks(self) -> int:
        """Number of tasks (rows)."""
        return len(self.tasks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskFactorGraph):
            return NotImplemented
        return (
            self.factors == other.factors
            and self.tasks == other.tasks
            and np.array_equal(self.adjacency, other.adjacency)
        )

    def __hash__(self) -> int:
        return hash((self.factors, self.tasks, self.adjacency.tobytes()))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrix(
        cls,
        adjacency: np.ndarray | Sequence[Sequence[int]],
        factors: Sequence[str] | None = None,
        tasks: Sequence[str] | None = None,
    ) -> TaskFactorGraph:
        """Build from a (tasks x factors) 0/1 matrix; default names ``L1..Ln`` and ``T1..Tm``."""
        adj = np.asarray(adjacency)
        if adj.ndim != 2:
            raise GraphError(f"adjacency must be a 2-D matrix, got {adj.ndim} dimension(s)")
        m, n = adj.shape
        factors = [f"L{i + 1}" for i in range(n)] if factors is None else list(factors)
        tasks = [f"T{t + 1}" for t in range(m)] if tasks is None else list(tasks)
        return cls(tuple(factors), tuple(tasks), adj)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """The compact matrix form (rows = tasks), JSON-serialisable."""
        return {
            "factors": list(self.factors),
            "tasks": list(self.tasks),
            "adjacency": self.adjacency.astype(int).tolist(),
            "rows": "tasks",
        }


def _first_duplicate(ids: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for x in ids:
        if x in seen:
            return x
        seen.add(x)
    return None


# ---------------------------------------------------------------------- parsing
def _id(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise GraphError(f"{what} must be a string or integer id, got {type(value).__name__}")
    return str(value)


def _parse_matrix_form(data: dict[str, Any]) -> TaskFactorGraph:
    for key in ("factors", "tasks", "adjacency"):
        if key not in data:
            raise GraphError(f"matrix-form graph is missing the key {key!r}")
    rows = data.get("rows")
    if rows not in ("tasks", "factors"):
        raise GraphError(f"matrix-form graph must state \"rows\": \"tasks\" or \"factors\", got {rows!r}")
    factors, tasks, raw = data["factors"], data["tasks"], data["adjacency"]
    if not isinstance(factors, list) or not isinstance(tasks, list):
        raise GraphError("\"factors\" and \"tasks\" must be lists of ids")
    factors = [_id(f, "factor id") for f in factors]
    tasks = [_id(t, "task id") for t in tasks]
    if not factors:
        raise GraphError("the graph has no factors")
    if not isinstance(raw, list) or not all(isinstance(r, list) for r in raw):
        raise GraphError("\"adjacency\" must be a list of rows (lists)")
    lengths = {len(r) for r in raw}
    if len(lengths) > 1:
        raise GraphError(f"\"adjacency\" is ragged: rows have lengths {sorted(lengths)}")
    for r in raw:
        for v in r:
            if isinstance(v, float) and math.isnan(v):
                raise GraphError("\"adjacency\" contains NaN")
            if isinstance(v, bool):
                continue
            if not isinstance(v, (int, float)) or v not in (0, 1):
                raise GraphError(f"\"adjacency\" must be binary (0/1 or true/false), found {v!r}")
    n_rows, n_cols = (len(tasks), len(factors)) if rows == "tasks" else (len(factors), len(tasks))
    width = lengths.pop() if lengths else 0
    if len(raw) != n_rows or (n_rows and width != n_cols):
        raise GraphError(
            f"\"adjacency\" is {len(raw)} x {width} but rows = {rows} needs {n_rows} x {n_cols} "
            f"({len(tasks)} tasks, {len(factors)} factors)"
        )
    adj = np.array(raw, dtype=float).astype(bool).reshape(n_rows, n_cols)
    if rows == "factors":
        adj = adj.T
    return TaskFactorGraph(tuple(factors), tuple(tasks), adj)


def _parse_node_link(data: dict[str, Any]) -> TaskFactorGraph:
    if "edges" in data and "links" in data:
        raise GraphError("node-link graph has both \"edges\" and \"links\"; keep one")
    edges = data.get("edges", data.get("links"))
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise GraphError("node-link graph needs \"nodes\" and \"edges\" (or \"links\") lists")
    factors: list[str] = []
    tasks: list[str] = []
    seen: set[str] = set()
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node:
            raise GraphError("every node needs an \"id\"")
        nid = _id(node["id"], "node id")
        if nid in seen:
            raise GraphError(f"duplicate node id {nid!r}")
        seen.add(nid)
        kind = node.get("kind")
        if kind == "latent":
            factors.append(nid)
        elif kind == "target":
            tasks.append(nid)
        else:
            raise GraphError(f"node {nid!r} has kind {kind!r}; expected \"latent\" or \"target\"")
    if not factors:
        raise GraphError("the graph has no factors (nodes of kind \"latent\")")
    if not edges:
        if not tasks:  # every edge ends at a task: no task is the real problem
            raise GraphError("the graph has no tasks (nodes of kind \"target\")")
        raise GraphError("the graph has an empty edge list")
    f_index = {f: i for i, f in enumerate(factors)}
    t_index = {t: i for i, t in enumerate(tasks)}
    adj = np.zeros((len(tasks), len(factors)), dtype=bool)
    for edge in edges:
        if not isinstance(edge, dict) or "source" not in edge or "target" not in edge:
            raise GraphError("every edge needs \"source\" and \"target\"")
        src, dst = _id(edge["source"], "edge source"), _id(edge["target"], "edge target")
        for end in (src, dst):
            if end not in seen:
                raise GraphError(f"edge {src!r} -> {dst!r} refers to unknown node {end!r}")
        if src in t_index and dst in t_index:
            raise GraphError(f"edge {src!r} -> {dst!r} runs between two targets")
        if src in t_index:
            raise GraphError(f"edge {src!r} -> {dst!r} leaves a target; edges must run latent -> target")
        if dst in f_index:
            raise GraphError(f"edge {src!r} -> {dst!r} runs between two latents")
        adj[t_index[dst], f_index[src]] = True
    return TaskFactorGraph(tuple(factors), tuple(tasks), adj)


def parse_graph(data: Any) -> TaskFactorGraph:
    """Normalise a decoded JSON object in either supported format into a :class:`TaskFactorGraph`.

    A file must describe at least one factor, at least one task and at least one edge (an empty edge
    list, or an all-zero matrix, is rejected as a likely mistake); graphs built in code may have neither
    edges nor tasks.
    """
    if not isinstance(data, dict):
        raise GraphError(f"a graph must be a JSON object, got {type(data).__name__}")
    if "nodes" in data and "adjacency" in data:
        raise GraphError("ambiguous graph: it has both \"nodes\" (node-link) and \"adjacency\" (matrix form)")
    if "nodes" in data:
        return _parse_node_link(data)
    if "adjacency" in data:
        graph = _parse_matrix_form(data)
        if graph.n_tasks == 0:
            raise GraphError("the graph has no tasks: \"tasks\" is empty")
        if not graph.adjacency.any():
            raise GraphError("the graph has no edges: every \"adjacency\" entry is 0")
        return graph
    raise GraphError(
        "unknown graph format: expected node-link JSON (\"nodes\" and \"edges\") or matrix form "
        "(\"factors\", \"tasks\", \"adjacency\", \"rows\")"
    )


def _reject_constant(token: str) -> float:
    raise GraphError(f"the file contains {token}, which is not valid JSON")


def load_graph(path: str | Path, text: str | None = None) -> TaskFactorGraph:
    """Read a graph file (either format). ``text``, if given, is parsed instead of reading ``path``."""
    if text is None:
        try:
            text = Path(path).read_bytes().decode("utf-8-sig")  # with or without a byte-order mark
        except FileNotFoundError:
            raise GraphError(f"cannot read {path}: no such file") from None
        except IsADirectoryError:
            raise GraphError(f"cannot read {path}: it is a directory") from None
        except UnicodeDecodeError:
            raise GraphError(f"cannot read {path}: not UTF-8 text") from None
        except OSError as err:
            raise GraphError(f"cannot read {path}: {(err.strerror or err.__class__.__name__).lower()}") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise GraphError(f"{path} is empty: a graph is a JSON object (see docs/uic.md)")
    from sit_causal.fileio import DuplicateKeyError, unique_keys

    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except DuplicateKeyError as err:  # JSON would silently keep the last value
        raise GraphError(f"{path}: {err} in a JSON object") from None
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise GraphError(f"{path} is not valid JSON: {err.msg.removesuffix(' at')} at {where}") from None
    except RecursionError:
        raise GraphError(f"{path} is nested too deeply to be a graph") from None
    except GraphError as err:  # NaN / Infinity literals
        raise GraphError(f"{path}: {err}") from None
    try:
        return parse_graph(data)
    except GraphError as err:
        raise GraphError(f"{path}: {err}") from None


def save_graph(graph: TaskFactorGraph, path: str | Path, fmt: str = "matrix") -> None:
    """Write ``graph`` as JSON, ``fmt`` = ``"matrix"`` (compact, rows = tasks) or ``"node-link"``."""
    if fmt == "matrix":
        data = graph.to_dict()
    elif fmt == "node-link":
        data = node_link_dict(graph)
    else:
        raise GraphError(f"unknown graph format {fmt!r}; use 'matrix' or 'node-link'")
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- node-link form
def node_link_dict(graph: TaskFactorGraph) -> dict[str, Any]:
    """The node-link JSON form (as ``json_graph.node_link_data(..., edges="edges")`` writes it):
    factors first (``kind="latent"``), then tasks (``kind="target"``), edges factor -> task in task
    order, then factor order."""
    rows, cols = np.nonzero(graph.adjacency)
    return {
        "directed": True,
        "multigraph": False,
        "graph": {},
        "nodes": [{"id": f, "kind": "latent"} for f in graph.factors]
        + [{"id": t, "kind": "target"} for t in graph.tasks],
        "edges": [
            {"source": graph.factors[i], "target": graph.tasks[t]}
            for t, i in zip(rows.tolist(), cols.tolist(), strict=True)
        ],
    }
