"""Shared test setup: offline Hugging Face, one torch thread per test.

The offline variables are set at import time, before any test module imports transformers, so no
test can reach a model hub. Tiny models run several times faster on one thread and do not fight other
jobs for the two CI cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
