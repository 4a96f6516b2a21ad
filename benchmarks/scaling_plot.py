"""MCC and wall time of the selection step against the number of factors ``n`` (docs/results/scaling.md).

Reads the rows of ``benchmarks/selection_scaling.py`` (exactly linear representations) and the ``select`` rows
of ``benchmarks/selection_speed.py`` on trained representations (one file per ``n``; model from the file name)::

    python benchmarks/scaling_plot.py --linear runs/scaling/linear.json \\
        --trained 10=runs/scaling/select_n10.json 16=runs/scaling/select_n16.json 20=runs/scaling/select_n20.json \\
        --trained-n5 runs/sel/new_sit.json runs/sel/new_ivae.json --out docs/results/figures/scaling.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--linear", required=True)
    ap.add_argument("--trained", nargs="*", default=[], help="N=FILE select rows of trained representations")
    ap.add_argument("--trained-n5", nargs="*", default=[], help="select rows at n = 5 (several graphs)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    linear = json.loads(Path(args.linear).read_text())
    points: dict[str, list[tuple[int, float, float, float]]] = {"sit": [], "ivae": []}
    sources = [(5, f) for f in args.trained_n5]
    sources += [(int(item.split("=")[0]), item.split("=")[1]) for item in args.trained]
    for n, path in sources:
        for row in json.loads(Path(path).read_text())["rows"]:
            model = row["file"].rsplit("_", 1)[1].removesuffix(".npz")
            points[model].append((n, row["mcc"], row["time_s"], row["train_s"]))
    fig, (ax_mcc, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    ns = [r["n"] for r in linear]
    ax_mcc.plot(ns, [r["mcc"] for r in linear], "k-o", label="step on a linear representation")
    ax_time.plot(ns, [r["time_s"] for r in linear], "k-o", label="selection step, linear representation")
    for model, marker, label, color in (("sit", "s", "SIT", "C0"), ("ivae", "^", "ivae-select", "C1")):
        pts = sorted(points[model])
        if not pts:
            continue
        arr = np.array(pts)
        ax_mcc.plot(arr[:, 0], arr[:, 1], marker, color=color, alpha=0.7, label=f"{label} (trained)")
        ax_time.plot(arr[:, 0], arr[:, 2], marker, color=color, alpha=0.7, label=f"{label}: selection step")
        ax_time.plot(arr[:, 0], arr[:, 3], marker, color=color, mfc="none", alpha=0.7,
                     label=f"{label.split('-')[0]}: training")
    ax_mcc.set(xlabel="factors n (tasks 2n)", ylabel="held-out MCC", title="recovery")
    ax_mcc.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax_time.set(xlabel="factors n (tasks 2n)", ylabel="wall time (s), one core", yscale="log", title="time")
    for ax in (ax_mcc, ax_time):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
