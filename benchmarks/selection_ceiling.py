"""Does the count search fail, or does its objective? The objective at the best rotation against the search's.

On a saved representation of ``benchmarks/selection_speed.py represent`` (whitened as the step whitens it, with
the step's own gradient matrices ``G_t``): the **rotation ceiling** ``R_c``, the orthogonal map of the whitened
held-out representation onto the standardised true factors (Procrustes; no rotation does better), its
objective ``J(R_c)`` before and after Jacobi sweeps from it, and the count search's rotation (16 restarts and
Jacobi sweeps, before the refinement) with its ``J`` and MCC. ``J(search) < J(R_c)`` means the objective, as
estimated, prefers a wrong rotation; ``J(search) > J(R_c)`` that the search missed a better minimum::

    python benchmarks/selection_ceiling.py runs/scaling/cache_n20/g5000_s5000_sit.npz [--count-eps 0.01]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch

from sit_causal.metrics import mcc
from sit_causal.selection.align import (
    AlignConfig,
    jacobi_sweeps,
    optimise_rotation,
    rotation_energies,
    rotation_objective,
    whitened_task_grams,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--count-eps", type=float, default=0.0, help="eps of the edge count (0 = the default)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for path in args.files:
        d = np.load(path)
        base = AlignConfig() if not args.count_eps else replace(AlignConfig(), count_eps=args.count_eps)
        cfg = replace(base, w_uic=base.w_uic if bool(d["uic_on"]) else 0.0,
                      w_distinction=base.w_distinction if bool(d["distinction_on"]) else 0.0)
        seed = int(d["seed"])
        _, _, _, mu, wmat, grams, r2 = whitened_task_grams(d["z_train"], d["y"], d["task_id"], int(d["n_tasks"]),
                                                           d["dataset_id"], cfg, seed)
        w_test = (d["z_test"] - mu) @ wmat
        latents = d["latents_test"]
        u, _, vt = np.linalg.svd(w_test.T @ ((latents - latents.mean(0)) / latents.std(0)))
        ceiling = (u @ vt).T  # rows = factors, columns = w dimensions
        g = torch.as_tensor(grams)
        j_ceiling = float(rotation_objective(rotation_energies(torch.as_tensor(ceiling)[None], g), cfg)[0])
        _, j_ceiling_polished = jacobi_sweeps(ceiling, grams, cfg)
        rots, objectives = optimise_rotation(grams, cfg, seed)
        found, j_found = jacobi_sweeps(rots[int(np.argmin(objectives))], grams, cfg)
        print(json.dumps({
            "file": path, "count_eps": cfg.count_eps, "task_r2_mean": float(np.nanmean(r2)),
            "J_ceiling": j_ceiling, "J_ceiling_after_jacobi": j_ceiling_polished,
            "mcc_ceiling": mcc(latents, w_test @ ceiling.T).score,
            "J_search": j_found, "mcc_search": mcc(latents, w_test @ found.T).score}), flush=True)


if __name__ == "__main__":
    main()
