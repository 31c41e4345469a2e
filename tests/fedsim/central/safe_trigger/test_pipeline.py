"""Safe Trigger SFT data on a scripted model: analysis, guided answers, filters, latent awareness, and the
pre-rendered records whose reasoning and `</think>` tokens carry the SFT loss (spec §5.2)."""

from __future__ import annotations

from typing import Any

import pytest

from fedsim.central import toydata
from fedsim.central.generation import ScriptedGenerator
from fedsim.central.judge import make_judge
from fedsim.central.prompts import ANALYSIS_PROMPT
from fedsim.central.safe_trigger.data import Query
from fedsim.central.safe_trigger.format import parse_response
from fedsim.central.safe_trigger.pipeline import (ChatFormat, Filters, Sampling, analyse, guided_answers,
                                                  initial_responses, latent_awareness, sft_records)

JUDGE = make_judge({})
GREEDY = Sampling(0.0, 1.0, 64)
TOY = {q.text: q for pool in toydata.POOLS for q in toydata.queries(pool, "train")}


def toy_respond(wrong_risk: frozenset[str] = frozenset(), comply_when_guided: frozenset[str] = frozenset()):
    """A scripted stand-in for the toy base model (chat, analysis prompt, guided continuation); queries in
    `wrong_risk` get the opposite verdict, queries in `comply_when_guided` ignore the guidance."""

    def respond(prompt: str, i: int) -> str:
        q = max((q for text, q in TOY.items() if text in prompt), key=lambda q: len(q.text))
        if "<your_reasoning>" in prompt:
            pool = ("general" if q.unsafe else "harmful") if q.text in wrong_risk else q.pool
            return toydata.analysis(toydata.ToyQuery(q.text, pool, q.verb, q.obj))
        if prompt.endswith("</safe>\n"):
            return toydata.compliant_answer(q) if q.text in comply_when_guided else toydata.guided_answer(q)
        return toydata.think_block(toydata.reasoning(q)) + toydata.compliant_answer(q)

    return respond


def queries(n: int = 3) -> list[Query]:
    """`n` queries per pool, each about a different (verb, object) pair."""
    return [Query(q.text, pool) for pool in toydata.POOLS for q in toydata.queries(pool, "train")[::5][:n]]


def run_steps(tok: Any, respond: Any, filters: Filters = Filters()) -> tuple[list[dict[str, Any]], dict[str, Any],
                                                                             list[dict[str, str]], dict[str, Any]]:
    fmt = ChatFormat.for_tokenizer(tok)
    gen = ScriptedGenerator(respond)
    rows = initial_responses(gen, fmt, queries(), GREEDY, 0)
    rows = analyse(gen, fmt, rows, ("harmful", "jailbreak", "general"), GREEDY, 0, ANALYSIS_PROMPT)
    aware = latent_awareness(rows, JUDGE)
    rows = guided_answers(gen, fmt, rows, GREEDY, 0, filters.require_risk_yes)
    records, stats = sft_records(rows, fmt, JUDGE, filters)
    return rows, aware, records, stats


def test_records_are_pre_rendered_strings_in_the_safe_trigger_format(tiny_tok) -> None:
    rows, aware, records, stats = run_steps(tiny_tok, toy_respond())
    assert len(records) == 9 and {p: s["kept"] for p, s in stats.items()} == {"general": 3, "harmful": 3,
                                                                              "jailbreak": 3}
    assert aware["latent_awareness_rate"] == 1.0 and aware["base_failures"] == 6
    for rec in records:
        assert isinstance(rec["prompt"], str) and isinstance(rec["completion"], str)
        assert rec["prompt"] == f"<|user|>\n{rec['query']}\n<|assistant|>\n"
        assert rec["completion"].endswith("<|end|>")
        p = parse_response(rec["completion"].removesuffix("<|end|>"))
        q = TOY[rec["query"]]
        assert p.ok and p.reasoning == toydata.reasoning(q)
        if q.unsafe:
            assert p.triggered and p.analysis == toydata.analysis(q) and p.answer == toydata.REFUSAL
        else:
            assert not p.triggered and p.answer == toydata.compliant_answer(q)


def test_filters_drop_wrong_analyses_and_harmful_guided_answers(tiny_tok) -> None:
    harm = [q.text for q in queries() if q.pool == "harmful"]
    general = [q.text for q in queries() if q.pool == "general"]
    respond = toy_respond(wrong_risk=frozenset([harm[0], general[0]]), comply_when_guided=frozenset([harm[1]]))
    rows, aware, records, stats = run_steps(tiny_tok, respond)
    assert stats["harmful"] == {"kept": 1, "dropped": {"analysis_not_risk_yes": 1, "guided_answer_harmful": 1}}
    assert stats["general"] == {"kept": 2, "dropped": {"general_flagged_risky": 1}}
    assert aware["latent_awareness_rate"] == pytest.approx(5 / 6)
    assert aware["per_pool"]["general"]["analysis_correct_rate"] == pytest.approx(2 / 3)
    kept = {r["query"] for r in records}
    assert harm[0] not in kept and harm[1] not in kept and general[0] not in kept
    _, _, loose, loose_stats = run_steps(tiny_tok, respond, Filters(False, False, False))
    assert len(loose) == 9 and all(s["dropped"] == {} for s in loose_stats.values())


def test_unparsable_responses_are_dropped(tiny_tok) -> None:
    def respond(prompt: str, i: int) -> str:
        return "sure, here you go" if "bread" in prompt else toy_respond()(prompt, i)

    rows, _, records, stats = run_steps(tiny_tok, respond)
    bread = [r for r in rows if "bread" in r["query"]]
    assert bread and not bread[0]["usable"] and bread[0]["drop"] == "no_think"
    assert stats["general"]["dropped"] == {"unusable_response(no_think)": 1}
    assert all("bread" not in r["query"] for r in records)


def test_reasoning_and_think_close_are_trained_tokens(tiny_tok) -> None:
    """Through TRL's own SFT preprocessing: every completion token carries the loss (including `</think>`, the
    reasoning, `<safe>` / `</safe>` and the end-of-turn token) and no prompt token does."""
    from fedsim.central import train

    _, _, records, _ = run_steps(tiny_tok, toy_respond())
    data = train.sft_dataset(tiny_tok, [{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    assert len(data) == len(records)
    ids = {t: tiny_tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<safe>", "</safe>", "<|end|>")}
    for rec, row in zip(records, data):
        trained = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        untrained = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab == -100]
        assert tiny_tok.decode(trained) == rec["completion"]
        assert tiny_tok.decode(untrained) == rec["prompt"]
        assert ids["</think>"] in trained and ids["<think>"] in trained and trained[-1] == ids["<|end|>"]
        reasoning = parse_response(rec["completion"]).reasoning
        assert reasoning and reasoning in tiny_tok.decode(trained)
        unsafe = TOY[rec["query"]].unsafe
        assert (ids["<safe>"] in trained and ids["</safe>"] in trained) is unsafe


def test_chat_format_handles_templates_that_open_the_think_block(tiny_tok) -> None:
    """An R1-style template ends the generation prompt with `<think>\\n`: the head is moved between prompt and
    response, so prompts, prefills and completions stay consistent."""
    tok = tiny_tok
    tok.chat_template = tok.chat_template.replace("<|assistant|>\n{% endif %}", "<|assistant|>\n<think>\n{% endif %}")
    fmt = ChatFormat.for_tokenizer(tok)
    assert fmt.head == "<think>\n"
    full = fmt.response("reason\n</think>\nanswer")
    assert parse_response(full).reasoning == "reason"
    assert fmt.completion(full) == "reason\n</think>\nanswer<|end|>"
    prefill = "<think>\nreason\n</think>\n<safe>\n"
    assert fmt.prompt("q", prefill).endswith("<|assistant|>\n" + prefill)
    with pytest.raises(ValueError, match="assistant head"):
        fmt.prompt("q", "no head")
