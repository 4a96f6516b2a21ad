"""Plots: the dataset overview renders and marks non-identifiable factors."""

from __future__ import annotations

from pathlib import Path

from sit_causal.experiments.report import plot_dataset, plot_graph
from sit_causal.sim.scm import SCMConfig, generate
from sit_causal.theory.graph import TaskFactorGraph


def test_plot_dataset_writes_a_png(tmp_path: Path) -> None:
    ds = generate(SCMConfig(n_factors=4, n_tasks=4, datasets_per_task=2, samples_per_dataset=100))
    fig = plot_dataset(ds, tmp_path / "d.png", factors=[0, 3])
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 3


def test_plot_graph_marks_mixed_factors_red() -> None:
    from matplotlib.figure import Figure

    graph = TaskFactorGraph.from_matrix([[1, 1, 0], [0, 1, 1]])  # L2 ⊇ ... : L1 and L3 are contained in L2
    ax = Figure().subplots()
    plot_graph(graph, ax)
    colors = [label.get_color() for label in ax.get_xticklabels()]
    assert colors[0] == "tab:red" and colors[2] == "tab:red" and colors[1] != "tab:red"
    assert "fails" in ax.get_title()
