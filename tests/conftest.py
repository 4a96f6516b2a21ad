"""Shared test setup: offline Hugging Face, one torch thread per test.

The offline variables are set at import time, before any test module imports transformers, so no
test can reach a model hub. Tiny models run several times faster on one thread and do not fight other
jobs for the two CI cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run every test with ``torch.set_num_threads(1)`` (restored afterwards); no-op without torch loaded."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny mixture (invented BIG-bench-schema fixture) built into train/validation/heldout JSONL."""
    from sit_nlp.data.mixture import build_mixture, load_mixture, write_mixture

    out = tmp_path_factory.mktemp("data") / "tiny"
    return write_mixture(build_mixture(load_mixture(REPO / "configs" / "mixtures" / "tiny.yaml")), out)


@pytest.fixture
def tiny_checkpoint(tiny_data: Path) -> Callable[[Path, str], Path]:
    """Factory: an untrained tiny-BART run (``ROOT/METHOD/final``) saved like a real checkpoint."""

    def make(root: Path, method: str) -> Path:
        from sit_nlp.model.backbones import load_backbone
        from sit_nlp.model.config import ModelConfig
        from sit_nlp.model.seq2seq import Seq2SeqSIT
        from sit_nlp.training.checkpoint import save_trained
        from sit_nlp.training.config import Config

        backbone = load_backbone("tiny-bart", dropout=0.0)
        cfg = Config()
        cfg.model = ModelConfig(backbone="tiny-bart", method=method, n_factors=4, latent_hidden=16,
                                source_max_len=12)
        cfg.data.train_file = str(tiny_data / "train.jsonl")
        cfg.data.max_source_len, cfg.data.max_target_len, cfg.data.max_instruction_len = 64, 12, 16
        save_trained(Seq2SeqSIT(cfg.model, backbone, cfg.loss), cfg, backbone.tokenizer, root / method / "final")
        return root / method

    return make


def run_cli(module: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the typer app ``module.main`` on ``argv`` in this process: (exit code, stdout, stderr)."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out, err = capsys.readouterr()
    return int(stop.value.code or 0), out, err
