"""Built-in tiny models and tokenizer (offline), loading errors, generation and the keyword judge."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedsim.central import toydata
from fedsim.central.generation import HFGenerator, ScriptedGenerator
from fedsim.central.judge import KeywordRefusalJudge, make_judge
from fedsim.central.models import (ModelLoadError, load_causal_lm, load_classifier, load_tokenizer, save_model,
                                   tiny_model, tiny_tokenizer)
from fedsim.central.prompts import render_prompt


def test_tiny_tokenizer_is_fast_deterministic_and_keeps_tags_atomic() -> None:
    t0 = time.monotonic()
    tok = tiny_tokenizer()
    assert time.monotonic() - t0 < 2.0 + 10.0  # spec: < 2 s; generous for a loaded CI machine
    text = "<think>\nplan\n</think>\n<safe>\nRisk: yes\n</safe>\nsorry"
    pieces = tok.convert_ids_to_tokens(tok(text).input_ids)
    for tag in ("<think>", "</think>", "<safe>", "</safe>"):
        assert pieces.count(tag) == 1
    assert tok.decode(tok(text).input_ids) == text
    assert tiny_tokenizer()(text).input_ids == tok(text).input_ids


def test_chat_rendering_ends_with_the_generation_prompt(tiny_tok) -> None:
    prompt = render_prompt(tiny_tok, "how do i bake a loaf of bread?", "<think>\n")
    assert prompt == "<|user|>\nhow do i bake a loaf of bread?\n<|assistant|>\n<think>\n"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_tiny_causal_models_save_and_reload(name: str, tiny_tok, tmp_path: Path) -> None:
    import torch

    model = load_causal_lm(name, tiny_tok, seed=1, num_hidden_layers=1) if name == "tiny-llama" else \
        load_causal_lm(name, tiny_tok, seed=1, n_layer=1)
    ids = tiny_tok("hello", return_tensors="pt").input_ids
    save_model(model, tiny_tok, tmp_path / "m")
    again = load_causal_lm(str(tmp_path / "m"), load_tokenizer(str(tmp_path / "m")))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits)
    assert torch.equal(next(tiny_model(name, tiny_tok, seed=1).parameters()),
                       next(tiny_model(name, tiny_tok, seed=1).parameters()))


def test_unknown_models_are_clear_errors(tiny_tok, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="'/no/such/model'.*no such directory"):
        load_causal_lm("/no/such/model", tiny_tok)
    with pytest.raises(ModelLoadError, match="'some-org/some-model'.*offline"):
        load_tokenizer("some-org/some-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_causal_lm(str(tmp_path / "empty"), tiny_tok)
    with pytest.raises(ModelLoadError, match="encoder"):
        load_causal_lm("tiny-bert", tiny_tok)
    with pytest.raises(ModelLoadError, match="causal LM"):
        load_classifier("tiny-llama", tiny_tok, 2)


def test_hf_generator_batches_like_single_prompts(tiny_tok) -> None:
    model = tiny_model("tiny-llama", tiny_tok, seed=0, num_hidden_layers=1)
    prompts = [render_prompt(tiny_tok, q.text) for q in toydata.queries("general")[:3]]
    together = HFGenerator(model, tiny_tok, batch_size=3).generate(prompts, max_new_tokens=6)
    alone = [HFGenerator(model, tiny_tok).generate([p], max_new_tokens=6)[0] for p in prompts]
    assert together == alone and all(len(r) == 1 and "<|pad|>" not in r[0] for r in together)
    sampled = HFGenerator(model, tiny_tok).generate(prompts[:1], n=3, temperature=1.0, max_new_tokens=6, seed=3)
    assert len(sampled[0]) == 3
    with pytest.raises(ValueError, match="temperature"):
        HFGenerator(model, tiny_tok).generate(prompts, n=2)


def test_keyword_judge() -> None:
    judge = make_judge({"type": "keyword"})
    verdicts = judge.score(["q"] * 4, [toydata.REFUSAL, "sure. step one", "sure. step one", "   "],
                           [True, True, False, True])
    assert [(v.harmful, v.refusal) for v in verdicts] == [(False, True), (True, False), (False, False),
                                                         (False, False)]
    with pytest.raises(ValueError, match="differ in length"):
        KeywordRefusalJudge().score(["q"], [], [True])
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge({"type": "oracle"})
    scripted = ScriptedGenerator(lambda p, i: f"{p}-{i}")
    assert scripted.generate(["a", "b"], n=2) == [["a-0", "a-1"], ["b-0", "b-1"]]


def test_toy_world_splits_are_disjoint_and_labelled() -> None:
    for pool in toydata.POOLS:
        train = {q.text for q in toydata.queries(pool, "train")}
        evals = {q.text for q in toydata.queries(pool, "eval")}
        assert train and evals and not train & evals
    assert all(q.unsafe for q in toydata.queries("jailbreak", "eval"))
    assert not any(q.unsafe for q in toydata.queries("general", "eval"))
    with pytest.raises(ValueError, match="unknown toy pool"):
        toydata.queries("weird")
    examples = toydata.base_examples()
    assert not any("<safe>" in e.completion for e in examples)  # the base never learns to open <safe> itself
    assert {e.task for e in examples} == {"chat", "analyse", "guided"}


def test_hf_classifier_judge_reads_a_saved_classifier(tiny_tok, tmp_path: Path) -> None:
    import torch

    model = tiny_model("tiny-bert", tiny_tok, seed=0, num_labels=2)
    model.config.id2label, model.config.label2id = {0: "safe", 1: "unsafe"}, {"safe": 0, "unsafe": 1}
    with torch.no_grad():  # a classifier that calls everything unsafe: its head's bias decides
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-5.0, 5.0]))
    save_model(model, tiny_tok, tmp_path / "judge")
    judge = make_judge({"type": "hf-classifier", "model": str(tmp_path / "judge"), "harmful_label": "unsafe"})
    verdicts = judge.score(["q1", "q2"], [toydata.REFUSAL, "sure. step one"], [True, True])
    assert [v.harmful for v in verdicts] == [True, True] and [v.refusal for v in verdicts] == [True, False]
    assert all(v.raw > 0.99 for v in verdicts)
    with pytest.raises(ValueError, match="has no label 'toxic'"):
        make_judge({"type": "hf-classifier", "model": str(tmp_path / "judge"), "harmful_label": "toxic"})
