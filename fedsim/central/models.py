"""Models and tokenizers of the central jobs: real ones by local path or hub name, or built-in `tiny-*`
models made offline (a byte-level BPE tokenizer trained on the toy world's text with `<think>`,
`</think>`, `<safe>`, `</safe>` atomic, and tiny random Llama / GPT-2 / BERT configs)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

TINY_MODELS = ("tiny-llama", "tiny-gpt2", "tiny-bert")
SPECIAL_TOKENS = ("<|pad|>", "<|user|>", "<|assistant|>", "<|end|>", "<think>", "</think>", "<safe>", "</safe>",
                  "[CLS]", "[SEP]", "[MASK]")
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TINY_VOCAB = 640
# Sizes of the built-in models; `tiny_model(..., **overrides)` changes any of them.
TINY_SIZES: dict[str, dict[str, int]] = {
    "tiny-llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 256},
    "tiny-gpt2": {"n_embd": 64, "n_inner": 128, "n_layer": 4, "n_head": 4, "n_positions": 256},
    "tiny-bert": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "max_position_embeddings": 128},
}


class ModelLoadError(ValueError):
    """A model or tokenizer that cannot be loaded; the message names it and says why."""


def is_tiny(name: str) -> bool:
    return str(name) in TINY_MODELS


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from fedsim.central.toydata import corpus_lines

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sorted(set(corpus_lines())), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """The built-in tokenizer (deterministic: trained on the toy world's text, well under a second)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        pad_token="<|pad|>", eos_token="<|end|>", bos_token="<|user|>", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", additional_special_tokens=["<think>", "</think>", "<safe>", "</safe>", "<|assistant|>"],
        padding_side="left", model_max_length=256,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(name: str, tokenizer: Any, seed: int = 0, num_labels: int = 2, **overrides: int) -> Any:
    """A randomly initialised built-in model (seeded, in eval mode like `from_pretrained`) sized by
    `TINY_SIZES[name]` plus `overrides`."""
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)

    if name not in TINY_SIZES:
        raise ModelLoadError(f"unknown tiny model {name!r}; built-in: {', '.join(TINY_MODELS)}")
    sizes = {**TINY_SIZES[name], **overrides}
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(seed)
    if name == "tiny-llama":
        cfg = LlamaConfig(**sizes, **ids, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).eval()
    if name == "tiny-gpt2":
        cfg = GPT2Config(**sizes, **ids, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return GPT2LMHeadModel(cfg).eval()
    cfg = BertConfig(**sizes, **ids, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


def _check_source(name_or_path: str) -> None:
    """A clear error for a name that is neither tiny, nor a local model directory, nor reachable on the Hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model {name_or_path!r}: directory has no config.json (not a saved model)")
        return
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    if looks_like_path or offline:
        why = "no such directory" if looks_like_path else "the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1)"
        raise ModelLoadError(f"model {name_or_path!r}: not a built-in tiny model ({', '.join(TINY_MODELS)}) and not "
                             f"a local model directory; {why}")


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model (tiny, local directory or hub name); left padding, a pad token."""
    if is_tiny(name_or_path):
        return tiny_tokenizer()
    _check_source(str(name_or_path))
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"tokenizer of {name_or_path!r} cannot be loaded: {err}") from err
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, tokenizer: Any, seed: int = 0, device: str = "cpu",
                   dtype: str | None = None, **tiny_overrides: int) -> Any:
    """A causal LM: `tiny-llama` / `tiny-gpt2` (random, seeded) or `from_pretrained` on a path or hub name."""
    if is_tiny(name_or_path):
        if name_or_path == "tiny-bert":
            raise ModelLoadError("tiny-bert is an encoder; a causal LM job needs tiny-llama or tiny-gpt2")
        return tiny_model(name_or_path, tokenizer, seed, **tiny_overrides).to(device)
    return _from_pretrained("AutoModelForCausalLM", name_or_path, device, dtype)


def load_classifier(name_or_path: str, tokenizer: Any, num_labels: int | None, seed: int = 0, device: str = "cpu",
                    dtype: str | None = None, **tiny_overrides: int) -> Any:
    """A sequence classifier: `tiny-bert` (random, seeded) or `from_pretrained` on a path or hub name."""
    if is_tiny(name_or_path):
        if name_or_path != "tiny-bert":
            raise ModelLoadError(f"{name_or_path} is a causal LM; a classifier job needs tiny-bert or a real encoder")
        return tiny_model(name_or_path, tokenizer, seed, num_labels=num_labels or 2, **tiny_overrides).to(device)
    labels = {"num_labels": num_labels} if num_labels else {}  # None: keep the saved head
    return _from_pretrained("AutoModelForSequenceClassification", name_or_path, device, dtype, **labels)


def _from_pretrained(auto: str, name_or_path: str, device: str, dtype: str | None, **kwargs: Any) -> Any:
    import torch
    import transformers

    _check_source(str(name_or_path))
    cls = getattr(transformers, auto)
    try:
        model = cls.from_pretrained(name_or_path, dtype=getattr(torch, dtype) if dtype else "auto", **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {name_or_path!r} cannot be loaded: {err}") from err
    return model.to(device)


def save_model(model: Any, tokenizer: Any, directory: Path) -> Path:
    """Save `model` and `tokenizer` so that `load_*(str(directory))` loads them back."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
