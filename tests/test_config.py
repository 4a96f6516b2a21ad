"""Config: YAML + overrides, unknown keys rejected with a suggestion, round trip, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sit_nlp.training.config import Config, ConfigError, apply_overrides, config_to_dict, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "configs").glob("*.yaml"))


def test_overrides_dotted_and_bare_keys_with_types() -> None:
    cfg = apply_overrides(Config(), ["--train.lr=3e-4", "--max_steps=7", "--model.method=vanilla",
                                     "--dropout=null", "--model.factor_dim=12", "--tensorboard=true"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.max_steps == 7
    assert cfg.model.method == "vanilla" and cfg.model.dropout is None and cfg.model.factor_dim == 12
    assert cfg.train.tensorboard is True


@pytest.mark.parametrize(
    ("override", "message"),
    [("--model.backbne=x", "did you mean 'model.backbone'"), ("--max_step=3", "did you mean 'max_steps'"),
     ("--method=foo", "not one of"), ("--max_steps=1.5", "expected an integer"),
     ("--compile=maybe", "expected true or false"), ("--lr", "must look like"), ("--nonsense.key=1", "unknown")],
)
def test_bad_overrides_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        apply_overrides(Config(), [override])
    assert "\n" not in str(err.value)


def test_unknown_yaml_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"did you mean 'train\.batch_size'"):
        load_config(path)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["--lr=0.02", "--n_factors=4", "--eval_file=null"])
    save_config(cfg, tmp_path / "config.yaml")
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(cfg)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.train.max_steps > 0 and cfg.model.method in ("sit", "vanilla")


def test_cli_bad_key_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    code = run_app(app, "sit-nlp", ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--model.backbne=x"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "did you mean 'model.backbone'" in err
