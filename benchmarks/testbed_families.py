"""The testbed on both model families: one table of SIT against vanilla on the encoder-decoder and on the
decoder-only backbone, from two ``sit-nlp testbed run`` folders on the same testbed.

Per split (percent): each method's mean with its 95 % t interval over seeds on each backbone; the paired
SIT-minus-vanilla difference on each backbone (paired by seed: the same ``train.seed``, so the same data
order); and the difference of those differences, decoder-only minus encoder-decoder, paired by seed (does
the family change what SIT gains?). Also each SIT run's factor MCC and learned-graph F1. Seeds present in
both folders only::

    .venv/bin/python benchmarks/testbed_families.py --encoder-decoder runs/bd_9137 --decoder-only runs/bdd_9137 \\
        --json docs/results/data/testbed_families.json

The two folders must hold runs of the same testbed (``report.json``'s ``testbed_seed`` and ``mechanism``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sit_causal.fileio import write_text_atomic
from sit_causal.stats import difference_ci, mean_ci

SPLITS = ("in_distribution", "heldout_sources", "balanced_d", "flipped_d", "heldout_tasks", "aligned", "balanced",
          "flipped")
EXTRA = (("factor MCC", ("factors", "mcc")), ("graph F1", ("graph", "f1")))


def load_runs(folder: Path) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
    """``(report.json, {method: {seed: result}})`` of one ``testbed run`` folder."""
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("runs/*/seed*/result.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        runs.setdefault(r["method"], {})[int(r["seed"])] = r
    return report, runs


def _value(result: dict[str, Any], key: str) -> float | None:
    if key in SPLITS:
        v = result.get("accuracy", {}).get(key)
        return None if v is None else 100.0 * v
    for label, path in EXTRA:
        if key == label:
            node: Any = result
            for p in path:
                node = node.get(p) if isinstance(node, dict) else None
            return None if node is None else 100.0 * float(node)
    return None


def _cell(values: list[float]) -> dict[str, Any]:
    mean, half = mean_ci(values) if len(values) > 1 else (values[0], float("nan"))
    return {"n": len(values), "mean": mean, "ci95": half}


def compare(enc: dict[str, dict[int, dict[str, Any]]], dec: dict[str, dict[int, dict[str, Any]]],
            methods: tuple[str, str] = ("vanilla", "sit")) -> dict[str, Any]:
    """Per key (split or SIT measure): each family's cells, the SIT - vanilla difference per family, and the
    decoder-only minus encoder-decoder difference of those differences, all paired by seed."""
    base, sit = methods
    seeds = sorted(set(enc.get(base, {})) & set(enc.get(sit, {})) & set(dec.get(base, {})) & set(dec.get(sit, {})))
    if len(seeds) < 2:
        raise ValueError(f"fewer than 2 seeds with {base} and {sit} on both backbones (found {seeds})")
    out: dict[str, Any] = {"seeds": seeds, "rows": {}}
    for key in (*SPLITS, *(label for label, _ in EXTRA)):
        row: dict[str, Any] = {}
        gains: dict[str, list[float]] = {}
        for family, runs in (("encoder-decoder", enc), ("decoder-only", dec)):
            per = {m: [_value(runs[m][s], key) for s in seeds] for m in methods}
            for m, vals in per.items():
                if all(v is not None for v in vals):
                    row[f"{family}/{m}"] = _cell([float(v) for v in vals])
            if all(v is not None for m in methods for v in per[m]):
                a, b = [float(v) for v in per[sit]], [float(v) for v in per[base]]
                d, h = difference_ci(a, b, paired=True)
                row[f"{family}/{sit}-{base}"] = {"n": len(seeds), "mean": d, "ci95": h}
                gains[family] = [x - y for x, y in zip(a, b, strict=True)]
        if len(gains) == 2:
            d, h = difference_ci(gains["decoder-only"], gains["encoder-decoder"], paired=True)
            row["decoder-only minus encoder-decoder gain"] = {"n": len(seeds), "mean": d, "ci95": h}
        if row:
            out["rows"][key] = row
    return out


def markdown(table: dict[str, Any]) -> str:
    """The comparison as a markdown table: rows = splits and SIT measures, columns = the cells of
    :func:`compare` (mean +/- 95 % CI half-width, percent)."""
    cols = ["encoder-decoder/vanilla", "encoder-decoder/sit", "encoder-decoder/sit-vanilla", "decoder-only/vanilla",
            "decoder-only/sit", "decoder-only/sit-vanilla", "decoder-only minus encoder-decoder gain"]
    lines = ["| metric (%) | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for key, row in table["rows"].items():
        cells = []
        for c in cols:
            e = row.get(c)
            sign = "+" if c.endswith(("sit-vanilla", "gain")) else ""
            cells.append("-" if e is None else f"{e['mean']:{sign}.1f} +/- {e['ci95']:.1f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(n = {len(table['seeds'])} paired seeds: {table['seeds']})\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-decoder", type=Path, required=True, help="a testbed run folder (BART)")
    parser.add_argument("--decoder-only", type=Path, required=True, help="a testbed run folder (--backbone decoder)")
    parser.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    for flag, folder in (("--encoder-decoder", args.encoder_decoder), ("--decoder-only", args.decoder_only)):
        if not (folder / "report.json").is_file():
            print(f"testbed_families: {flag} {folder}: no report.json (run `sit-nlp testbed run` first)",
                  file=sys.stderr)
            return 2
    enc_report, enc = load_runs(args.encoder_decoder)
    dec_report, dec = load_runs(args.decoder_only)
    same = ("testbed_seed", "mechanism")
    if any(enc_report.get(k) != dec_report.get(k) for k in same):
        print(f"testbed_families: the folders hold runs of different testbeds ({', '.join(same)} differ)",
              file=sys.stderr)
        return 2
    enc_backbone = enc_report.get("backbone", "encoder-decoder")  # reports written before --backbone existed
    if dec_report.get("backbone") != "decoder-only" or enc_backbone != "encoder-decoder":
        print("testbed_families: --decoder-only must hold decoder-only runs and --encoder-decoder encoder-decoder "
              "runs (report.json's backbone)", file=sys.stderr)
        return 2
    try:
        table = compare(enc, dec)
    except ValueError as err:
        print(f"testbed_families: {err}", file=sys.stderr)
        return 2
    table |= {"testbed_seed": enc_report["testbed_seed"], "mechanism": enc_report["mechanism"],
              "encoder_decoder": str(args.encoder_decoder), "decoder_only": str(args.decoder_only)}
    print(markdown(table))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
