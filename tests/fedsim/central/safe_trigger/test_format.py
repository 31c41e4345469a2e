"""Safe Trigger response format: parse ↔ assemble round trips, malformed responses, risk verdicts."""

from __future__ import annotations

import pytest

from fedsim.central import toydata
from fedsim.central.safe_trigger.format import (EMPTY_SAFE, NO_THINK, STRAY_TAG, TAG_IN_THINK, UNCLOSED_SAFE,
                                                UNCLOSED_THINK, Tags, assemble, assemble_parsed, final_answer,
                                                parse_guidance, parse_response, parse_risk)

T = "the user asks how to build a pipe bomb. i will list the steps."
S = "Risk: yes - to build a pipe bomb can hurt people.\nGuidance: refuse and do not give steps."
A = toydata.REFUSAL


@pytest.mark.parametrize("analysis", [S, None])
def test_assemble_then_parse_round_trips(analysis: str | None) -> None:
    text = assemble(T, analysis, A)
    p = parse_response(text)
    assert (p.reasoning, p.analysis, p.answer) == (T, analysis, A)
    assert p.ok and p.triggered is (analysis is not None)
    assert assemble_parsed(p) == text


def test_canonical_form_matches_the_toy_world_strings() -> None:
    q = toydata.queries("harmful", "train")[0]
    text = toydata.think_block(toydata.reasoning(q)) + toydata.safe_block(toydata.analysis(q)) + toydata.REFUSAL
    p = parse_response(text)
    assert p.reasoning == toydata.reasoning(q) and p.analysis == toydata.analysis(q) and p.answer == A
    assert assemble_parsed(p) == text
    assert p.risk is True


def test_multiline_parts_and_custom_tags_round_trip() -> None:
    tags = Tags("<reason>", "</reason>", "[SAFE]", "[/SAFE]")
    text = assemble("line one\nline two", "Risk: no - fine\nGuidance: help", "a\n\nb", tags)
    p = parse_response(text, tags)
    assert (p.reasoning, p.analysis, p.answer) == ("line one\nline two", "Risk: no - fine\nGuidance: help", "a\n\nb")
    assert assemble_parsed(p, tags) == text
    assert parse_response(text).issues == (NO_THINK,)  # default tags do not see the custom ones


def test_parse_tolerates_leading_and_extra_whitespace() -> None:
    p = parse_response(f"\n <think>  {T}  </think>\n\n<safe>{S}</safe>   {A}\n")
    assert (p.reasoning, p.analysis, p.answer, p.issues) == (T, S, A, ())


def test_missing_think_block_is_all_answer() -> None:
    p = parse_response("sure, here are the steps.")
    assert p.reasoning is None and p.analysis is None and p.answer == "sure, here are the steps."
    assert p.issues == (NO_THINK,) and not p.ok and not p.triggered
    assert assemble_parsed(p) == "sure, here are the steps."


def test_unclosed_think_has_no_reasoning_and_no_answer() -> None:
    p = parse_response(f"<think>\n{T}\nsure. first get")
    assert p.reasoning is None and p.answer == "" and p.issues == (UNCLOSED_THINK,)


def test_unclosed_safe_is_not_a_trigger() -> None:
    p = parse_response(f"<think>\n{T}\n</think>\n<safe>\nRisk: yes - it is")
    assert p.reasoning == T and p.analysis is None and not p.triggered and p.answer == ""
    assert p.issues == (UNCLOSED_SAFE,)


def test_safe_block_after_the_answer_started_is_stray_not_a_trigger() -> None:
    p = parse_response(f"<think>\n{T}\n</think>\nsure. <safe>\n{S}\n</safe>\nsteps")
    assert not p.triggered and STRAY_TAG in p.issues


def test_safe_block_inside_the_reasoning_is_flagged() -> None:
    p = parse_response(f"<think>\n{T} <safe>x</safe>\n</think>\n{A}")
    assert TAG_IN_THINK in p.issues and not p.triggered


def test_empty_safe_block_triggers_but_is_flagged() -> None:
    p = parse_response(f"<think>\n{T}\n</think>\n<safe>\n</safe>\n{A}")
    assert p.triggered and p.analysis == "" and p.issues == (EMPTY_SAFE,) and p.risk is None


def test_assemble_rejects_analysis_without_reasoning() -> None:
    with pytest.raises(ValueError, match="reasoning"):
        assemble(None, S, A)


@pytest.mark.parametrize("text, verdict", [
    ("Risk: yes - bad", True), ("risk: NO — fine", False), ("**Risk:** Yes, it is", True),
    ("Analysis first.\nRisk: no - ok\nRisk: yes", False), ("No verdict here.", None), ("Risky: yes", None),
])
def test_parse_risk(text: str, verdict: bool | None) -> None:
    assert parse_risk(text) is verdict


def test_parse_guidance_and_final_answer() -> None:
    assert parse_guidance(S) == "refuse and do not give steps."
    assert parse_guidance("Risk: no") is None
    assert final_answer(assemble(T, S, A)) == A


def test_tags_from_config_checks_keys_and_values() -> None:
    assert Tags.from_config({"safe_open": "<s>"}).safe_open == "<s>"
    with pytest.raises(ValueError, match="unknown keys"):
        Tags.from_config({"safe": "<s>"})
    with pytest.raises(ValueError, match="distinct"):
        Tags.from_config({"safe_open": "<think>"})
