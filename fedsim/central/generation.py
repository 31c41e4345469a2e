"""Text generation behind one interface: transformers `generate` (CPU and GPU), scripted responses for
deterministic tests; a vLLM backend can be added to `GENERATORS` for GPU nodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fedsim.registry import Registry


class Generator(Protocol):
    """Completes pre-rendered prompt strings; returns `n` completions per prompt (prompt order, then sample)."""

    def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0) -> list[list[str]]: ...


GENERATORS: Registry[Callable[..., Generator]] = Registry("generator")


@GENERATORS.register("hf")
class HFGenerator:
    """transformers `generate` in batches (left padding); greedy when temperature is 0."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0) -> list[list[str]]:
        import torch

        if n < 1:
            raise ValueError(f"generate: n must be >= 1, got {n}")
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        sample = temperature > 0
        if not sample and n > 1:
            raise ValueError("generate: n > 1 needs temperature > 0 (greedy samples are identical)")
        out: list[list[str]] = []
        torch.manual_seed(seed)
        try:
            for start in range(0, len(prompts), self.batch_size):
                batch = list(prompts[start:start + self.batch_size])
                enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample,
                                          "pad_token_id": tok.pad_token_id, "num_return_sequences": n}
                if sample:
                    kwargs.update(temperature=temperature, top_p=top_p)
                with torch.inference_mode():
                    ids = model.generate(**enc, **kwargs)
                texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=False)
                texts = [strip_padding(t, tok) for t in texts]
                out.extend(texts[i * n:(i + 1) * n] for i in range(len(batch)))
        finally:
            model.train(was_training)
        return out


def strip_padding(text: str, tokenizer: Any) -> str:
    """A decoded completion cut at the end-of-turn token, without pad tokens."""
    if tokenizer.pad_token:
        text = text.replace(tokenizer.pad_token, "")
    eos = tokenizer.eos_token
    if eos and eos in text:
        text = text[: text.index(eos)]
    return text


@GENERATORS.register("scripted")
class ScriptedGenerator:
    """Responses from a function of (prompt, sample index): deterministic stand-in for a model in tests."""

    def __init__(self, respond: Callable[[str, int], str]) -> None:
        self.respond = respond

    def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 64, seed: int = 0) -> list[list[str]]:
        return [[self.respond(p, i) for i in range(n)] for p in prompts]


def make_generator(backend: str, model: Any, tokenizer: Any, **kwargs: Any) -> Generator:
    """The generator `backend` ("hf"; "vllm" when registered) for `model`."""
    if backend == "scripted":
        raise ValueError("the scripted generator takes a response function, not a model")
    return GENERATORS.make(backend, model=model, tokenizer=tokenizer, **kwargs)  # type: ignore[return-value]
