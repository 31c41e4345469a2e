"""The Safe Trigger response format (spec §2.1): parse a response into reasoning T, safety analysis S and final
answer A, assemble them back, and read the analysis' risk verdict.

Canonical forms (the tags are configurable):

    unsafe query:  <think>\\n{T}\\n</think>\\n<safe>\\n{S}\\n</safe>\\n{A}
    general query: <think>\\n{T}\\n</think>\\n{A}

`assemble(parse_response(x)) == x` for every canonical `x` whose parts have no surrounding whitespace, and
`parse_response(assemble(T, S, A))` gives back (T, S, A). Anything else parses with `issues` flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

# Issue flags of a malformed response.
NO_THINK = "no_think"            # the response does not start with the think tag: all of it is the answer
UNCLOSED_THINK = "unclosed_think"  # reasoning never closed: no reasoning, empty answer
UNCLOSED_SAFE = "unclosed_safe"  # analysis opened after the reasoning but never closed: not triggered, empty answer
TAG_IN_THINK = "tag_in_think"    # another tag (e.g. a `<safe>` block) inside the reasoning
EMPTY_SAFE = "empty_safe"        # a well-formed but empty analysis block
STRAY_TAG = "stray_tag"          # a tag in the final answer (e.g. a `<safe>` block after the answer started)


@dataclass(frozen=True)
class Tags:
    """The four tags of the format."""

    think_open: str = "<think>"
    think_close: str = "</think>"
    safe_open: str = "<safe>"
    safe_close: str = "</safe>"

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Tags:
        """Tags from a config section; unknown keys or empty tags raise ValueError."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"tags: unknown keys {unknown}; known: {sorted(known)}")
        tags = cls(**{k: str(v) for k, v in cfg.items()})
        if not all(tags.all()) or len(set(tags.all())) != 4:
            raise ValueError(f"tags: need four distinct non-empty tags, got {tags.all()}")
        return tags

    def all(self) -> tuple[str, str, str, str]:
        """The tags in format order."""
        return (self.think_open, self.think_close, self.safe_open, self.safe_close)


DEFAULT_TAGS = Tags()


@dataclass(frozen=True)
class Parsed:
    """A parsed response: reasoning T (None: no complete think block), analysis S (None: no well-formed `<safe>`
    block right after the reasoning), final answer A, and the issue flags (empty when well formed)."""

    reasoning: str | None
    analysis: str | None
    answer: str
    issues: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Well formed: a closed think block, an optional closed safe block right after it, no stray tags."""
        return not self.issues

    @property
    def triggered(self) -> bool:
        """The response opened and closed a `<safe>` block right after its reasoning."""
        return self.analysis is not None

    @property
    def risk(self) -> bool | None:
        """The analysis' `Risk: yes|no` verdict (None when not triggered or when no verdict is readable)."""
        return parse_risk(self.analysis) if self.analysis is not None else None


def _has_tag(text: str, tags: Tags) -> bool:
    return any(t in text for t in tags.all())


def parse_response(text: str, tags: Tags = DEFAULT_TAGS) -> Parsed:
    """Split `text` into reasoning, analysis and answer; malformed parts become None and are flagged."""
    body = text.lstrip()
    if not body.startswith(tags.think_open):
        answer = body.strip()
        return Parsed(None, None, answer, (NO_THINK, STRAY_TAG) if _has_tag(answer, tags) else (NO_THINK,))
    after_open = body[len(tags.think_open):]
    close = after_open.find(tags.think_close)
    if close < 0:
        return Parsed(None, None, "", (UNCLOSED_THINK,))
    issues: list[str] = []
    reasoning = after_open[:close].strip()
    if _has_tag(reasoning, tags):
        issues.append(TAG_IN_THINK)
    rest = after_open[close + len(tags.think_close):].lstrip()
    analysis: str | None = None
    if rest.startswith(tags.safe_open):
        inner = rest[len(tags.safe_open):]
        end = inner.find(tags.safe_close)
        if end < 0:
            return Parsed(reasoning, None, "", tuple(issues + [UNCLOSED_SAFE]))
        analysis = inner[:end].strip()
        if not analysis:
            issues.append(EMPTY_SAFE)
        rest = inner[end + len(tags.safe_close):]
    answer = rest.strip()
    if _has_tag(answer, tags):
        issues.append(STRAY_TAG)
    return Parsed(reasoning, analysis, answer, tuple(issues))


def assemble(reasoning: str | None, analysis: str | None, answer: str, tags: Tags = DEFAULT_TAGS) -> str:
    """The canonical response string for (T, S, A); `reasoning=None` gives the bare answer."""
    if reasoning is None:
        if analysis is not None:
            raise ValueError("assemble: an analysis block needs a reasoning block before it")
        return answer
    out = f"{tags.think_open}\n{reasoning}\n{tags.think_close}\n"
    if analysis is not None:
        out += f"{tags.safe_open}\n{analysis}\n{tags.safe_close}\n"
    return out + answer


def assemble_parsed(parsed: Parsed, tags: Tags = DEFAULT_TAGS) -> str:
    """`assemble` of a parsed response."""
    return assemble(parsed.reasoning, parsed.analysis, parsed.answer, tags)


_RISK = re.compile(r"\brisk\b\W{0,3}[:：]\W{0,3}(yes|no)\b", re.IGNORECASE)
_GUIDANCE = re.compile(r"\bguidance\b\W{0,3}[:：][ \t*]*(\S[^\n]*)", re.IGNORECASE)


def parse_risk(analysis: str) -> bool | None:
    """The first `Risk: yes|no` verdict of an analysis (markdown emphasis tolerated), or None."""
    match = _RISK.search(analysis)
    return None if match is None else match.group(1).lower() == "yes"


def parse_guidance(analysis: str) -> str | None:
    """The text after the first `Guidance:` of an analysis, or None."""
    match = _GUIDANCE.search(analysis)
    return None if match is None else match.group(1).strip()


def final_answer(text: str, tags: Tags = DEFAULT_TAGS) -> str:
    """What the user reads as the answer: the text after the reasoning (and analysis) blocks."""
    return parse_response(text, tags).answer
