"""DPO pair construction on scripted samples (spec §2.1 pair policy): unsafe and general queries, skip cases."""

from __future__ import annotations

import pytest

from fedsim.central import toydata
from fedsim.central.generation import ScriptedGenerator
from fedsim.central.judge import make_judge
from fedsim.central.safe_trigger.data import Query
from fedsim.central.safe_trigger.format import assemble
from fedsim.central.safe_trigger.pairs import build_pairs, is_chosen, label_samples, rejected_rank
from fedsim.central.safe_trigger.pipeline import ChatFormat, Sampling, sample_responses

JUDGE = make_judge({})
HARM = toydata.queries("harmful", "train")[0]      # how do i build a pipe bomb?
GOOD = toydata.queries("general", "train")[0]      # how do i bake a loaf of bread?
T_HARM, T_GOOD = toydata.reasoning(HARM), toydata.reasoning(GOOD)
SAFE_YES = toydata.analysis(HARM)
SAFE_NO = "Risk: no - it is fine.\nGuidance: answer helpfully."

# Scripted samples for the unsafe query, by kind.
U_GOOD = assemble(T_HARM, SAFE_YES, toydata.REFUSAL)                    # chosen
U_HARMFUL = assemble(T_HARM, None, toydata.compliant_answer(HARM))     # rejected: harmful, no trigger
U_WRONG = assemble(T_HARM, SAFE_NO, toydata.REFUSAL)                    # rejected: analysis wrong
U_NOTRIG = assemble(T_HARM, None, toydata.REFUSAL)                      # rejected: refuses, but no trigger
U_BROKEN = f"<think>\n{T_HARM}\n</think>\n<safe>\n{SAFE_YES}"           # unclosed: rejected (no trigger)
# ... for the general query.
G_GOOD = assemble(T_GOOD, None, toydata.compliant_answer(GOOD))        # chosen
G_OVER = assemble(T_GOOD, SAFE_NO, toydata.compliant_answer(GOOD))     # rejected: over-triggering
G_OVER_REFUSE = assemble(T_GOOD, SAFE_YES, toydata.REFUSAL)             # rejected first: triggers and refuses
G_REFUSE = assemble(T_GOOD, None, toydata.REFUSAL)                      # neither (not helpful, not triggered)

Q_HARM, Q_GOOD = Query(HARM.text, "harmful"), Query(GOOD.text, "general")


def test_labels_of_scripted_samples() -> None:
    good, harmful, wrong, broken = label_samples(Q_HARM, [U_GOOD, U_HARMFUL, U_WRONG, U_BROKEN], JUDGE)
    assert (good.triggered, good.analysis_correct, good.final_safe, good.well_formed) == (True, True, True, True)
    assert (harmful.triggered, harmful.analysis_correct, harmful.final_safe) == (False, None, False)
    assert (wrong.triggered, wrong.analysis_correct, wrong.final_safe) == (True, False, True)
    assert (broken.triggered, broken.well_formed) == (False, False)
    assert is_chosen(good, True) and not any(is_chosen(x, True) for x in (harmful, wrong, broken))
    assert [rejected_rank(x, True) for x in (good, harmful, wrong, broken)] == [None, 0, 2, 1]
    g_good, g_over, g_refuse = label_samples(Q_GOOD, [G_GOOD, G_OVER, G_REFUSE], JUDGE)
    assert is_chosen(g_good, False) and g_good.helpful and not g_refuse.helpful
    assert [rejected_rank(x, False) for x in (g_good, g_over, g_refuse)] == [None, 1, None]


def test_unsafe_query_prefers_harmful_rejected_and_caps_pairs() -> None:
    samples = [U_NOTRIG, U_GOOD, U_WRONG, U_HARMFUL, U_GOOD]
    out = build_pairs([Q_HARM], [samples], JUDGE, per_query=2)
    assert [(p["chosen"], p["rejected"]) for p in out.pairs] == [(U_GOOD, U_HARMFUL), (U_GOOD, U_NOTRIG)]
    assert out.pairs[0]["rejected_labels"]["final_safe"] is False and out.pairs[0]["chosen_labels"]["triggered"]
    three = build_pairs([Q_HARM], [samples], JUDGE, per_query=5)
    assert [p["rejected"] for p in three.pairs] == [U_HARMFUL, U_NOTRIG, U_WRONG]  # distinct rejected, each once


def test_general_query_rejects_over_triggering_refusals_first() -> None:
    out = build_pairs([Q_GOOD], [[G_OVER, G_REFUSE, G_GOOD, G_OVER_REFUSE]], JUDGE, per_query=2)
    assert [(p["chosen"], p["rejected"]) for p in out.pairs] == [(G_GOOD, G_OVER_REFUSE), (G_GOOD, G_OVER)]


@pytest.mark.parametrize("query, samples, reason", [
    (Q_HARM, [U_GOOD, U_GOOD], "no_rejected"),
    (Q_HARM, [U_HARMFUL, U_WRONG], "no_chosen"),
    (Q_GOOD, [G_GOOD, G_REFUSE], "no_rejected"),
    (Q_GOOD, [G_OVER, G_REFUSE], "no_chosen"),
    (Q_GOOD, [G_REFUSE, "garbage"], "no_chosen_no_rejected"),
    (Q_GOOD, [], "no_samples"),
])
def test_queries_without_a_valid_pair_are_skipped(query: Query, samples: list[str], reason: str) -> None:
    out = build_pairs([query], [samples], JUDGE, per_query=1)
    assert out.pairs == [] and out.skipped == [{"pool": query.pool, "query": query.text, "reason": reason}]
    assert out.stats()["per_pool"][query.pool]["skipped"] == {reason: 1}


def test_pairs_from_a_scripted_generator_are_pre_rendered(tiny_tok) -> None:
    """Samples come from a ScriptedGenerator through the pipeline; pairs carry rendered prompts and completions
    that end with the end-of-turn token."""
    script = {Q_HARM.text: [U_GOOD, U_HARMFUL, U_NOTRIG], Q_GOOD.text: [G_GOOD, G_OVER, G_GOOD]}

    def respond(prompt: str, i: int) -> str:
        query = next(q for q in script if q in prompt)
        return script[query][i]

    fmt = ChatFormat.for_tokenizer(tiny_tok)
    queries = [Q_HARM, Q_GOOD]
    samples = sample_responses(ScriptedGenerator(respond), fmt, queries, 3, Sampling(1.0, 1.0, 8), seed=0)
    out = build_pairs(queries, samples, JUDGE, 1, fmt.prompt, fmt.completion)
    assert len(out.pairs) == 2 and out.skipped == []
    harm, good = out.pairs
    assert harm["prompt"] == f"<|user|>\n{Q_HARM.text}\n<|assistant|>\n"
    assert harm["chosen"] == U_GOOD + "<|end|>" and harm["rejected"] == U_HARMFUL + "<|end|>"
    assert good["chosen"] == G_GOOD + "<|end|>" and good["rejected"] == G_OVER + "<|end|>"
    stats = out.stats()
    assert stats["pairs"] == 2 and stats["per_pool"]["harmful"]["samples"]["trigger_rate"] == pytest.approx(1 / 3)


def test_build_pairs_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="2 queries but 1"):
        build_pairs([Q_HARM, Q_GOOD], [[U_GOOD]], JUDGE)
    with pytest.raises(ValueError, match=">= 1"):
        build_pairs([Q_HARM], [[U_GOOD, U_HARMFUL]], JUDGE, per_query=0)
