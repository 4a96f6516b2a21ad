"""Tests of stage 1 of the theory check (:mod:`sit_causal.experiments.landscape`) and the general-linear energies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sit_causal.experiments.landscape import LandscapeConfig, graph_landscape, landscape_statistics
from sit_causal.selection.align import linear_energies, rotation_energies
from sit_causal.theory.graph import TaskFactorGraph

# T1 reads L1, L2; T2 reads L2; T3 reads L3, L4. The UIC: L1 (C_1 inside C_2) and the block L3, L4 mix;
# the orthogonal form: only the block (identical task sets) mixes.
GRAPH = TaskFactorGraph.from_matrix([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
LABELS = {"linear": [False, True, False, False], "orthogonal": [True, True, False, False]}
SMALL = LandscapeConfig(datasets_per_task=4, samples=300, bootstrap=3, angles=5, shears=2, loss_samples=600)


def test_linear_energies_reduce_to_rotation_energies_and_see_shears() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    g = g @ g.transpose(1, 2)
    g = g / torch.einsum("tii->t", g)[:, None, None]
    q, _ = torch.linalg.qr(torch.randn(2, 4, 4, generator=gen, dtype=torch.float64))
    assert torch.allclose(linear_energies(q, g), rotation_energies(q, g))
    # a task reading factor 0 only: the shear u_1 = s_1 + a s_0 leaves it reading factor 0 alone, while
    # u_0 = s_0 + a s_1 makes it read both
    one = torch.zeros(1, 4, 4, dtype=torch.float64)
    one[0, 0, 0] = 1.0
    shear_10, shear_01 = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    shear_10[1, 0], shear_01[0, 1] = 0.7, 0.7
    e = linear_energies(torch.stack([shear_10, shear_01]), one)
    assert (e[0, 0] > 1e-12).sum() == 1 and (e[1, 0] > 1e-12).sum() == 2
    assert torch.allclose(e.sum(dim=2), torch.ones(2, 1, dtype=torch.float64))


@pytest.mark.parametrize("functions", ["simulator", "interaction"])
def test_margins_and_equal_likelihood_follow_each_form(functions: str) -> None:
    rows = graph_landscape(GRAPH, 3, SMALL, functions)
    for form in ("linear", "orthogonal"):
        sel = [r for r in rows if r["form"] == form]
        assert [r["identifiable"] for r in sel] == LABELS[form]
        pos = [r["score"] for r in sel if r["identifiable"]]
        neg = [r["score"] for r in sel if not r["identifiable"]]
        assert min(pos) > max(neg)  # every move of an identifiable factor costs more than a free one
        assert [r["free"] for r in sel] == [not lab for lab in LABELS[form]]
    block = [r for r in rows if r["factor"] == "L3"]
    assert all("L4" in r["equal_directions"] for r in block)  # the block's rotation/shear keeps the likelihood
    stats = landscape_statistics([{**r, "mode": "fixed"} for r in rows], ["fixed"])
    assert stats["linear"]["auroc"] == 1.0 and stats["orthogonal"]["auroc"] == 1.0
    assert stats["linear"]["equal_likelihood"]["agreement"] == 1.0


def test_unknown_function_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="functions"):
        graph_landscape(GRAPH, 0, SMALL, "quadratic")


def test_stage_is_a_function_of_its_seed() -> None:
    a = graph_landscape(GRAPH, 5, SMALL)
    b = graph_landscape(GRAPH, 5, SMALL)
    assert [r["score"] for r in a] == [r["score"] for r in b]
    assert np.isfinite([r["score"] for r in a]).all()
