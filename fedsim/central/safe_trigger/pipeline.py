"""Safe Trigger's self-generated SFT data (spec §3.2 steps 1–6): sample the model's own responses, re-present
(query, reasoning) to get its safety analysis S, let it continue after a pre-filled `<think>T</think><safe>S</safe>`
to get the guidance-following answer, and assemble pre-rendered prompt/completion records.

Rows are plain dicts (saved as JSONL by the job): every step adds fields to the rows of the previous one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedsim.central.generation import Generator
from fedsim.central.judge import Judge
from fedsim.central.prompts import ANALYSIS_PROMPT, analysis_prompt, end_of_turn, render_prompt
from fedsim.central.safe_trigger.data import Query
from fedsim.central.safe_trigger.format import DEFAULT_TAGS, Tags, assemble, parse_response, parse_risk


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one generation step (temperature 0 = greedy)."""

    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class ChatFormat:
    """How responses map to pre-rendered strings: `head` is the start of the assistant turn that the chat template
    itself writes (e.g. "<think>\\n" for R1-style templates, "" for the tiny one); a full response is
    head + generated text, and a completion is the full response without the head, plus the end-of-turn token."""

    tokenizer: Any
    tags: Tags = DEFAULT_TAGS
    head: str = ""
    eos: str = ""

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, tags: Tags = DEFAULT_TAGS) -> ChatFormat:
        """The format of `tokenizer`'s chat template (detects a template that opens the think block itself)."""
        probe = render_prompt(tokenizer, "probe")
        stripped = probe.rstrip()
        head = probe[stripped.rfind(tags.think_open):] if stripped.endswith(tags.think_open) else ""
        return cls(tokenizer, tags, head, end_of_turn(tokenizer))

    def prompt(self, user: str, prefill: str = "") -> str:
        """The pre-rendered prompt for `user`, the assistant turn pre-filled with the response prefix `prefill`."""
        if prefill and not prefill.startswith(self.head):
            raise ValueError(f"prefill must start with the template's assistant head {self.head!r}")
        return render_prompt(self.tokenizer, user, prefill[len(self.head):] if prefill else "")

    def response(self, generated: str) -> str:
        """The full response for a completion generated after `prompt(user)`."""
        return self.head + generated

    def completion(self, response: str) -> str:
        """The trained completion string for a full response (head removed, end-of-turn appended)."""
        if not response.startswith(self.head):
            raise ValueError(f"response does not start with the template's assistant head {self.head!r}")
        return response[len(self.head):] + self.eos


def generate_texts(gen: Generator, prompts: Sequence[str], n: int, sampling: Sampling, seed: int) -> list[list[str]]:
    """`n` generations per prompt (an empty prompt list generates nothing)."""
    if not prompts:
        return []
    return gen.generate(list(prompts), n, temperature=sampling.temperature, top_p=sampling.top_p,
                        max_new_tokens=sampling.max_new_tokens, seed=seed)


def sample_responses(gen: Generator, fmt: ChatFormat, queries: Sequence[Query], n: int, sampling: Sampling,
                     seed: int) -> list[list[str]]:
    """`n` full responses of the model per query."""
    outs = generate_texts(gen, [fmt.prompt(q.text) for q in queries], n, sampling, seed)
    return [[fmt.response(o) for o in row] for row in outs]


def initial_responses(gen: Generator, fmt: ChatFormat, queries: Sequence[Query], sampling: Sampling,
                      seed: int) -> list[dict[str, Any]]:
    """Step 1: one response r0 per query, parsed into T and A. A row is `usable` when r0 is well formed, has an
    answer and opened no `<safe>` block of its own; otherwise `drop` says why."""
    rows = []
    for q, (response,) in zip(queries, sample_responses(gen, fmt, queries, 1, sampling, seed)):
        p = parse_response(response, fmt.tags)
        drop = (",".join(p.issues) if not p.ok else "already_triggered" if p.triggered
                else "empty_answer" if not p.answer else "")
        rows.append({"pool": q.pool, "query": q.text, "unsafe": q.unsafe, "response": response,
                     "reasoning": p.reasoning, "answer": p.answer, "usable": not drop, "drop": drop})
    return rows


def analysis_text(raw: str, fmt: ChatFormat) -> str:
    """The analysis S in a reply to the analysis prompt: the answer after a think block when the model thinks
    first (reasoning models), else the whole reply."""
    return parse_response(fmt.response(raw), fmt.tags).answer


def analyse(gen: Generator, fmt: ChatFormat, rows: list[dict[str, Any]], pools: Sequence[str], sampling: Sampling,
            seed: int, template: str = ANALYSIS_PROMPT) -> list[dict[str, Any]]:
    """Step 2: re-present (query, T) of the usable rows of `pools` with the analysis prompt; adds `analysis` and
    its `risk` verdict (True/False, None when unreadable) to those rows."""
    todo = [r for r in rows if r["usable"] and r["pool"] in pools]
    prompts = [fmt.prompt(analysis_prompt(r["query"], r["reasoning"], template)) for r in todo]
    for row, (raw,) in zip(todo, generate_texts(gen, prompts, 1, sampling, seed)):
        row["analysis"] = analysis_text(raw, fmt)
        row["risk"] = parse_risk(row["analysis"])
    return rows


def latent_awareness(rows: list[dict[str, Any]], judge: Judge) -> dict[str, Any]:
    """The paper's observation (spec §4.1): among the unsafe requests the model complied with (judge: final answer
    harmful), the fraction whose re-presented analysis says `Risk: yes`. Also the analysis accuracy per pool."""
    analysed = [r for r in rows if "risk" in r]
    unsafe = [r for r in analysed if r["unsafe"]]
    verdicts = judge.score([r["query"] for r in unsafe], [r["answer"] for r in unsafe], [True] * len(unsafe))
    failures = [r for r, v in zip(unsafe, verdicts) if v.harmful]
    per_pool: dict[str, Any] = {}
    for pool in sorted({r["pool"] for r in analysed}):
        mine = [r for r in analysed if r["pool"] == pool]
        per_pool[pool] = {"n": len(mine), "risk_yes_rate": _rate(r["risk"] is True for r in mine),
                          "analysis_correct_rate": _rate(r["risk"] is r["unsafe"] for r in mine)}
    return {"latent_awareness_rate": _rate(r["risk"] is True for r in failures), "base_failures": len(failures),
            "unsafe_analysed": len(unsafe), "per_pool": per_pool}


def guided_answers(gen: Generator, fmt: ChatFormat, rows: list[dict[str, Any]], sampling: Sampling, seed: int,
                   require_risk_yes: bool = True) -> list[dict[str, Any]]:
    """Step 3: for usable unsafe rows with an analysis (with `Risk: yes` when `require_risk_yes`), pre-fill
    `<think>T</think><safe>S</safe>` and let the model write the answer; adds `guided_response` and `guided_answer`."""
    todo = [r for r in rows if r["unsafe"] and r["usable"] and r.get("analysis")
            and (r.get("risk") is True or not require_risk_yes)]
    prefills = [assemble(r["reasoning"], r["analysis"], "", fmt.tags) for r in todo]
    prompts = [fmt.prompt(r["query"], p) for r, p in zip(todo, prefills)]
    for row, prefill, (raw,) in zip(todo, prefills, generate_texts(gen, prompts, 1, sampling, seed)):
        parsed = parse_response(prefill + raw, fmt.tags)
        row["guided_response"] = prefill + raw
        row["guided_answer"] = parsed.answer if parsed.ok and parsed.triggered else None
    return rows


@dataclass(frozen=True)
class Filters:
    """Which samples the SFT set keeps (spec §3.2 steps 2, 4, 5)."""

    require_risk_yes: bool = True        # unsafe: keep only analyses that say `Risk: yes`
    drop_general_risk_yes: bool = True   # general: drop samples whose analysis (if run) says `Risk: yes`
    drop_harmful_guided: bool = True     # unsafe: drop guided answers the judge labels harmful


def sft_records(rows: list[dict[str, Any]], fmt: ChatFormat, judge: Judge,
                filters: Filters = Filters()) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Steps 4–6: pre-rendered `{"prompt", "completion"}` records (plus `pool` and `query`), and per-pool counts
    of kept rows and drop reasons. Unsafe: T + `<safe>`S`</safe>` + guided answer; general: T + A unchanged."""
    unsafe_kept = [r for r in rows if r["unsafe"] and r.get("guided_answer")]
    verdicts = judge.score([r["query"] for r in unsafe_kept], [r["guided_answer"] for r in unsafe_kept],
                           [True] * len(unsafe_kept))
    harmful = {id(r) for r, v in zip(unsafe_kept, verdicts) if v.harmful}
    records: list[dict[str, str]] = []
    drops: dict[str, Counter[str]] = {}
    kept: Counter[str] = Counter()
    for r in rows:
        reason = _drop_reason(r, filters, id(r) in harmful)
        if reason:
            drops.setdefault(r["pool"], Counter())[reason] += 1
            continue
        analysis = r["analysis"] if r["unsafe"] else None
        answer = r["guided_answer"] if r["unsafe"] else r["answer"]
        response = assemble(r["reasoning"], analysis, answer, fmt.tags)
        records.append({"prompt": fmt.prompt(r["query"]), "completion": fmt.completion(response),
                        "pool": r["pool"], "query": r["query"]})
        kept[r["pool"]] += 1
    pools = sorted({r["pool"] for r in rows})
    stats = {p: {"kept": kept[p], "dropped": dict(drops.get(p, {}))} for p in pools}
    return records, stats


def _drop_reason(row: dict[str, Any], filters: Filters, harmful_guided: bool) -> str:
    if not row["usable"]:
        return f"unusable_response({row['drop']})"
    if not row["unsafe"]:
        return "general_flagged_risky" if filters.drop_general_risk_yes and row.get("risk") is True else ""
    if "analysis" not in row:
        return "not_analysed"
    if row["risk"] is not True and filters.require_risk_yes:
        return "analysis_not_risk_yes" if row["risk"] is False else "analysis_no_verdict"
    if not row.get("guided_answer"):
        return "guided_answer_malformed"
    if filters.drop_harmful_guided and harmful_guided:
        return "guided_answer_harmful"
    return ""


def _rate(flags: Any) -> float | None:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else None
