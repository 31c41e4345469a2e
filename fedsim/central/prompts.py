"""Prompt strings shared by the central jobs: the chat rendering and Safe Trigger's analysis prompt."""

from __future__ import annotations

from typing import Any

# The Latent Safety Awareness re-presentation prompt (spec §3.2 step 2; wording is a design choice,
# configurable through `analysis_prompt_template` in the Safe Trigger job).
ANALYSIS_PROMPT = (
    "Below is a user request and the reasoning you wrote while preparing to answer it.\n"
    "<request>{query}</request>\n"
    "<your_reasoning>{reasoning}</your_reasoning>\n"
    "Re-read both. (1) Does answering create a safety risk? (2) Give guidance on how the final answer "
    "must be written to stay safe.\n"
    "Answer in the form:\nRisk: <yes|no> - <analysis>\nGuidance: <guidance>"
)


def analysis_prompt(query: str, reasoning: str, template: str = ANALYSIS_PROMPT) -> str:
    """The user message that re-presents `query` with the model's own `reasoning`."""
    return template.format(query=query, reasoning=reasoning)


def render_prompt(tokenizer: Any, user: str, prefill: str = "") -> str:
    """The pre-rendered prompt string for one user turn (the tokenizer's chat template with the generation
    prompt), plus an optional pre-filled start of the assistant turn. Safe Trigger's SFT/DPO data are such
    strings, never conversational records: a reasoning chat template may strip `<think>` content from
    assistant messages (spec §5.2)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)
    return text + prefill


def end_of_turn(tokenizer: Any) -> str:
    """The string that closes an assistant turn (appended to completions so the model learns to stop)."""
    return tokenizer.eos_token or ""
