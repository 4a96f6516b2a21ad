"""benchmarks/testbed_families.py: SIT against vanilla on both backbones, paired by seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("testbed_families", REPO / "benchmarks" / "testbed_families.py")
families = importlib.util.module_from_spec(spec)
assert spec.loader is not None
spec.loader.exec_module(families)

# flipped_d accuracy per (backbone, method, seed)
FLIPPED = {("encoder-decoder", "vanilla"): [0.70, 0.68, 0.72], ("encoder-decoder", "sit"): [0.74, 0.60, 0.70],
           ("decoder-only", "vanilla"): [0.66, 0.69, 0.67], ("decoder-only", "sit"): [0.82, 0.71, 0.75]}


def _folder(root: Path, backbone: str, seeds: list[int]) -> Path:
    folder = root / backbone
    for (family, method), values in FLIPPED.items():
        if family != backbone:
            continue
        for seed in seeds:
            run = folder / "runs" / method / f"seed{seed}"
            run.mkdir(parents=True)
            result = {"method": method, "seed": seed, "accuracy": {"flipped_d": values[seed]}}
            if method == "sit":
                result["factors"] = {"mcc": 0.3 + 0.01 * seed}
            (run / "result.json").write_text(json.dumps(result), encoding="utf-8")
    report = {"testbed_seed": 9, "mechanism": "backdoor"}
    if backbone == "decoder-only":  # an encoder-decoder report may predate the key
        report["backbone"] = backbone
    (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
    return folder


def _t_half(x: list[float]) -> float:
    n = len(x)
    return float(stats.t.ppf(0.975, n - 1) * stats.tstd(x) / n ** 0.5)


def test_differences_are_paired_by_seed_and_compared_across_families(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    enc, dec = _folder(tmp_path, "encoder-decoder", [0, 1, 2]), _folder(tmp_path, "decoder-only", [0, 1, 2])
    out = tmp_path / "t.json"
    assert families.main(["--encoder-decoder", str(enc), "--decoder-only", str(dec), "--json", str(out)]) == 0
    row = json.loads(out.read_text(encoding="utf-8"))["rows"]["flipped_d"]
    gain = {f: [100 * (s - v) for s, v in zip(FLIPPED[(f, "sit")], FLIPPED[(f, "vanilla")], strict=True)]
            for f in ("encoder-decoder", "decoder-only")}
    for family, g in gain.items():
        assert row[f"{family}/sit-vanilla"]["mean"] == pytest.approx(sum(g) / 3)
        assert row[f"{family}/sit-vanilla"]["ci95"] == pytest.approx(_t_half(g))
    dd = [d - e for d, e in zip(gain["decoder-only"], gain["encoder-decoder"], strict=True)]
    assert row["decoder-only minus encoder-decoder gain"]["mean"] == pytest.approx(sum(dd) / 3)
    assert row["decoder-only minus encoder-decoder gain"]["ci95"] == pytest.approx(_t_half(dd))
    assert row["decoder-only/vanilla"]["mean"] == pytest.approx(100 * sum(FLIPPED[("decoder-only", "vanilla")]) / 3)
    assert "| flipped_d |" in capsys.readouterr().out


def test_mixed_up_folders_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enc, dec = _folder(tmp_path, "encoder-decoder", [0, 1, 2]), _folder(tmp_path, "decoder-only", [0, 1, 2])
    assert families.main(["--encoder-decoder", str(dec), "--decoder-only", str(enc)]) == 2
    assert "backbone" in capsys.readouterr().err
    assert families.main(["--encoder-decoder", str(enc), "--decoder-only", str(tmp_path / "none")]) == 2
    assert "no report.json" in capsys.readouterr().err
