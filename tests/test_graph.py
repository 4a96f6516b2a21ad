"""Tests of sit_causal.theory.graph: the typed graph, both JSON formats, networkx's node-link writer.

Every bad file input is exercised through the CLI in tests/test_cli_check_uic.py; here: the API."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.theory.graph import (
    GraphError,
    TaskFactorGraph,
    load_graph,
    node_link_dict,
    parse_graph,
    save_graph,
)
from sit_causal.theory.uic import check_uic

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@st.composite
def graphs(draw: st.DrawFn, max_tasks: int = 6, max_factors: int = 6) -> TaskFactorGraph:
    m = draw(st.integers(0, max_tasks))
    n = draw(st.integers(1, max_factors))
    bits = draw(st.lists(st.booleans(), min_size=m * n, max_size=m * n))
    names = draw(st.lists(st.text("abcxyz_0123456789", min_size=1, max_size=6), min_size=m + n,
                          max_size=m + n, unique=True))
    return TaskFactorGraph(tuple(names[:n]), tuple(names[n:]), np.array(bits, bool).reshape(m, n))


def test_matrix_orientation_and_sets() -> None:
    g = TaskFactorGraph.from_matrix([[1, 0], [1, 1], [0, 1]], factors=["a", "b"], tasks=["x", "y", "z"])
    assert g.adjacency.shape == (3, 2)  # rows = tasks, columns = factors
    assert [f.tasks for f in check_uic(g).factors] == [("x", "y"), ("y", "z")]  # C_i, in task order
    transposed = parse_graph({"factors": ["a", "b"], "tasks": ["x", "y", "z"],
                              "adjacency": [[1, 1, 0], [0, 1, 1]], "rows": "factors"})
    assert transposed == g


def test_does_not_freeze_the_callers_array() -> None:
    a = np.array([[True, False]])
    g = TaskFactorGraph.from_matrix(a)
    a[0, 1] = True  # the caller's array stays writable and the graph keeps its own copy
    assert not g.adjacency[0, 1]
    with pytest.raises(ValueError):
        g.adjacency[0, 0] = False


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_save_load_round_trip_both_formats(tmp_path_factory: pytest.TempPathFactory, g: TaskFactorGraph) -> None:
    tmp = tmp_path_factory.mktemp("rt")
    for fmt in ("matrix", "node-link"):
        path = tmp / f"g_{fmt}.json"
        if not g.adjacency.any():  # files must have an edge; the in-memory graph may not
            save_graph(g, path, fmt=fmt)
            with pytest.raises(GraphError):
                load_graph(path)
            continue
        save_graph(g, path, fmt=fmt)
        again = load_graph(path)
        assert again == g
        save_graph(again, path, fmt=fmt)
        assert load_graph(path) == g


def _networkx_digraph(g: TaskFactorGraph) -> nx.DiGraph:
    """``g`` built with networkx itself: latent and target nodes, one edge factor -> task per entry."""
    dg = nx.DiGraph()
    dg.add_nodes_from((f, {"kind": "latent"}) for f in g.factors)
    dg.add_nodes_from((t, {"kind": "target"}) for t in g.tasks)
    rows, cols = np.nonzero(g.adjacency)
    dg.add_edges_from((g.factors[i], g.tasks[t]) for t, i in zip(rows, cols, strict=True))
    return dg


@settings(max_examples=40, deadline=None)
@given(graphs())
def test_networkx_writer_output_parses_back(g: TaskFactorGraph) -> None:
    if not g.adjacency.any():  # a file needs an edge
        return
    assert parse_graph(nx.node_link_data(_networkx_digraph(g), edges="edges")) == g


def test_node_link_matches_networkx_writer() -> None:
    g = load_graph(EXAMPLES / "graph_uic.json")
    ours = node_link_dict(g)
    theirs = nx.node_link_data(_networkx_digraph(g), edges="edges")
    assert ours["nodes"] == theirs["nodes"]
    assert sorted((e["source"], e["target"]) for e in ours["edges"]) == sorted(
        (e["source"], e["target"]) for e in theirs["edges"]
    )
    assert parse_graph(theirs) == g


def test_legacy_links_key_and_integer_ids() -> None:
    data = {"nodes": [{"id": 1, "kind": "latent"}, {"id": 2, "kind": "target"}],
            "links": [{"source": 1, "target": 2}]}
    g = parse_graph(data)
    assert g.factors == ("1",) and g.tasks == ("2",) and g.adjacency.tolist() == [[True]]


def test_api_errors() -> None:
    with pytest.raises(GraphError, match="shape"):
        TaskFactorGraph(("a",), ("x", "y"), np.ones((1, 1)))
    with pytest.raises(GraphError, match="binary"):
        TaskFactorGraph.from_matrix([[0.5]])
    with pytest.raises(GraphError, match="2-D"):
        TaskFactorGraph.from_matrix([1, 0])
    with pytest.raises(GraphError, match="both a factor and a task"):
        TaskFactorGraph(("a",), ("a",), np.ones((1, 1)))
    with pytest.raises(GraphError, match="unknown graph format"):
        save_graph(TaskFactorGraph.from_matrix([[1]]), "unused.json", fmt="yaml")


def test_load_prefixes_parse_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"factors": [], "tasks": [], "adjacency": [], "rows": "tasks"}))
    with pytest.raises(GraphError, match=r"g\.json: the graph has no factors"):
        load_graph(path)
