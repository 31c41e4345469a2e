"""DPO preference pairs from K samples per query of the SFT model (spec §2.1 "DPO pair construction").

Labels per sample: `triggered` (a well-formed `<safe>` block after the reasoning), `analysis_correct` (its
`Risk:` verdict matches the pool label), `final_safe` / `helpful` (judge on the final answer).
  - unsafe query: chosen = well formed ∧ triggered ∧ analysis_correct ∧ final_safe;
    rejected = ¬triggered ∨ ¬final_safe ∨ ¬analysis_correct, harmful answers first, then missed triggers;
  - general query: chosen = well formed ∧ ¬triggered ∧ helpful; rejected = triggered (over-triggering),
    refusing ones first.
A query gets at most `per_query` pairs (distinct chosen texts reused round-robin, each rejected text once) and is
skipped when it has no chosen or no rejected sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fedsim.central.judge import Judge
from fedsim.central.safe_trigger.data import Query
from fedsim.central.safe_trigger.format import DEFAULT_TAGS, Tags, parse_response


@dataclass(frozen=True)
class SampleLabels:
    """The pair-policy labels of one sampled response."""

    well_formed: bool                 # parses cleanly and has a non-empty final answer
    triggered: bool
    analysis_correct: bool | None     # None when not triggered
    final_safe: bool                  # the judge does not label the final answer harmful
    helpful: bool                     # well formed, and the final answer does not refuse


def label_samples(query: Query, responses: Sequence[str], judge: Judge,
                  tags: Tags = DEFAULT_TAGS) -> list[SampleLabels]:
    """Labels of each response to `query`."""
    parsed = [parse_response(r, tags) for r in responses]
    verdicts = judge.score([query.text] * len(parsed), [p.answer for p in parsed], [query.unsafe] * len(parsed))
    out = []
    for p, v in zip(parsed, verdicts):
        well_formed = p.ok and bool(p.answer)
        correct = None if p.analysis is None else p.risk is query.unsafe
        out.append(SampleLabels(well_formed, p.triggered, correct, not v.harmful, well_formed and not v.refusal))
    return out


def is_chosen(labels: SampleLabels, unsafe: bool) -> bool:
    """The policy's chosen condition for an unsafe or a general query."""
    if unsafe:
        return labels.well_formed and labels.triggered and labels.analysis_correct is True and labels.final_safe
    return labels.well_formed and not labels.triggered and labels.helpful


def rejected_rank(labels: SampleLabels, unsafe: bool) -> int | None:
    """The order in which rejected samples are used (lower first), or None when the sample is not rejected."""
    if unsafe:
        if not labels.final_safe:
            return 0
        if not labels.triggered:
            return 1
        if labels.analysis_correct is not True:
            return 2
        return None
    if labels.triggered:
        return 0 if not labels.helpful else 1
    return None


@dataclass
class PairSet:
    """The pairs of a set of queries, the skipped queries and per-pool counts."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, list[SampleLabels]] = field(default_factory=dict)  # every sample's labels, per pool

    def stats(self) -> dict[str, Any]:
        """Pairs per pool, skipped queries per pool and reason, and the samples' label rates per pool (the
        stability of the model the samples came from)."""
        pairs = Counter(p["pool"] for p in self.pairs)
        skipped: dict[str, Counter[str]] = {}
        for s in self.skipped:
            skipped.setdefault(s["pool"], Counter())[s["reason"]] += 1
        pools = sorted(set(pairs) | set(skipped) | set(self.labels))
        return {"pairs": len(self.pairs), "queries_with_pairs": len({(p["pool"], p["query"]) for p in self.pairs}),
                "per_pool": {p: {"pairs": pairs[p], "skipped": dict(skipped.get(p, {})),
                                 "samples": label_rates(self.labels.get(p, []))} for p in pools}}


def _distinct(items: list[tuple[str, SampleLabels]]) -> list[tuple[str, SampleLabels]]:
    seen: set[str] = set()
    out = []
    for text, labels in items:
        if text not in seen:
            seen.add(text)
            out.append((text, labels))
    return out


def query_pairs(query: Query, responses: Sequence[str], labels: Sequence[SampleLabels],
                per_query: int) -> tuple[list[tuple[str, str, SampleLabels, SampleLabels]], str]:
    """Up to `per_query` (chosen, rejected, labels, labels) tuples for one query, and the skip reason ("" if any)."""
    if per_query < 1:
        raise ValueError(f"pairs per query must be >= 1, got {per_query}")
    chosen = _distinct([(r, lab) for r, lab in zip(responses, labels) if is_chosen(lab, query.unsafe)])
    ranked = [(rank, i) for i, lab in enumerate(labels) if (rank := rejected_rank(lab, query.unsafe)) is not None]
    rejected = _distinct([(responses[i], labels[i]) for _, i in sorted(ranked)])
    if not chosen or not rejected:
        reason = "no_samples" if not responses else "no_chosen" if not chosen and rejected else \
            "no_rejected" if chosen else "no_chosen_no_rejected"
        return [], reason
    n = min(per_query, len(rejected))
    return [(chosen[i % len(chosen)][0], rejected[i][0], chosen[i % len(chosen)][1], rejected[i][1])
            for i in range(n)], ""


def build_pairs(queries: Sequence[Query], samples: Sequence[Sequence[str]], judge: Judge, per_query: int = 1,
                prompt: Callable[[str], str] = lambda q: q, completion: Callable[[str], str] = lambda r: r,
                tags: Tags = DEFAULT_TAGS) -> PairSet:
    """Preference pairs for every query from its sampled full responses. `prompt` renders a query (the
    pre-rendered prompt string), `completion` turns a full response into the trained completion string."""
    if len(queries) != len(samples):
        raise ValueError(f"build_pairs: {len(queries)} queries but {len(samples)} sample lists")
    out = PairSet()
    for q, responses in zip(queries, samples):
        labels = label_samples(q, responses, judge, tags)
        out.labels.setdefault(q.pool, []).extend(labels)
        chosen_rejected, reason = query_pairs(q, responses, labels, per_query)
        if reason:
            out.skipped.append({"pool": q.pool, "query": q.text, "reason": reason})
        for chosen, rejected, cl, rl in chosen_rejected:
            out.pairs.append({"prompt": prompt(q.text), "chosen": completion(chosen), "rejected": completion(rejected),
                              "pool": q.pool, "query": q.text, "chosen_labels": asdict(cl),
                              "rejected_labels": asdict(rl)})
    return out


def label_rates(labels: Sequence[SampleLabels]) -> dict[str, Any]:
    """How many samples, and the fraction that trigger, are well formed, are final-safe, are helpful, and (of the
    triggered ones) have a correct analysis."""
    return {"n": len(labels), "trigger_rate": _frac(lab.triggered for lab in labels),
            "well_formed_rate": _frac(lab.well_formed for lab in labels),
            "final_safe_rate": _frac(lab.final_safe for lab in labels),
            "helpful_rate": _frac(lab.helpful for lab in labels),
            "analysis_correct_rate": _frac(lab.analysis_correct is True for lab in labels if lab.triggered)}


def _frac(flags: Any) -> float | None:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else None
