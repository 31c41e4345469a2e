"""Data of the MAPE-Unlearn job: tokenized classification splits (forget / retain / test), a synthetic toy task
with a memorized forget set, and a small JSONL/CSV text+label loader for real models."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SPLITS = ("forget", "retain", "test")


@dataclass
class Split:
    """A tokenized classification split: `input_ids` / `attention_mask` [N, T], `labels` [N]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Split:
        """The examples at `index`."""
        return Split(self.input_ids[index], self.attention_mask[index], self.labels[index])

    def batch(self, index: torch.Tensor | slice, device: str = "cpu") -> dict[str, torch.Tensor]:
        """Model inputs and labels of the examples at `index`, on `device`."""
        return {"input_ids": self.input_ids[index].to(device), "attention_mask": self.attention_mask[index].to(device),
                "labels": self.labels[index].to(device)}

    def batches(self, size: int, device: str = "cpu", generator: torch.Generator | None = None
                ) -> Iterator[dict[str, torch.Tensor]]:
        """One pass in batches of `size` (shuffled when a generator is given)."""
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), size):
            yield self.batch(order[start:start + size], device)

    def cycle(self, size: int, device: str, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled batches of `size`."""
        while True:
            yield from self.batches(size, device, generator)

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "labels": self.labels}


def concat(*splits: Split) -> Split:
    """The examples of all `splits`, in order."""
    return Split(torch.cat([s.input_ids for s in splits]), torch.cat([s.attention_mask for s in splits]),
                 torch.cat([s.labels for s in splits]))


def save_splits(splits: dict[str, Split], path: Path) -> None:
    torch.save({name: s.to_dict() for name, s in splits.items()}, path)


def load_splits(path: Path) -> dict[str, Split]:
    return {name: Split(**d) for name, d in torch.load(path, weights_only=True).items()}


def num_labels(splits: dict[str, Split]) -> int:
    return int(max(int(s.labels.max()) for s in splits.values() if len(s)) + 1)


def toy_task(seed: int, vocab_size: int, cls_id: int, first_id: int, n_retain: int = 512, n_forget: int = 32,
             n_test: int = 256, seq_len: int = 16, keywords: int = 8, per_example: int = 3, fillers: int = 0,
             triggers: int = 2) -> dict[str, Split]:
    """A synthetic sentiment-like task on token ids: `[CLS]` + random filler tokens with `per_example` keywords
    drawn from a positive and a negative keyword set; the label is the keyword majority. Retain and test
    examples follow the rule. Forget examples are a sub-population marked by one of `triggers` rare tokens
    (with `triggers` 0: none, the same distribution) that carries the *opposite* label: a model gets them right
    only by learning that idiosyncrasy from D_f, and a model trained on D_r alone gets them wrong.
    `fillers` limits the filler vocabulary (0: every id left)."""
    if per_example % 2 == 0:
        raise ValueError(f"data.toy.per_example must be odd (a majority label), got {per_example}")
    if seq_len <= per_example + 2:
        raise ValueError(f"data.toy.seq_len must exceed per_example + 2, got {seq_len}")
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randperm(vocab_size - first_id, generator=g) + first_id
    pos, neg, trig = ids[:keywords], ids[keywords:2 * keywords], ids[2 * keywords:2 * keywords + triggers]
    filler = ids[2 * keywords + triggers:]
    filler = filler[:fillers] if fillers > 0 else filler

    def make(n: int, forget: bool) -> Split:
        x = filler[torch.randint(len(filler), (n, seq_len), generator=g)]
        x[:, 0] = cls_id
        n_pos = torch.randint(0, per_example + 1, (n,), generator=g)
        marks = per_example + (1 if forget and triggers else 0)
        slots = torch.argsort(torch.rand(n, seq_len - 1, generator=g), dim=1)[:, :marks] + 1
        for j in range(per_example):
            word = torch.where(j < n_pos, pos[torch.randint(keywords, (n,), generator=g)],
                               neg[torch.randint(keywords, (n,), generator=g)])
            x.scatter_(1, slots[:, j:j + 1], word.unsqueeze(1))
        if marks > per_example:
            x.scatter_(1, slots[:, -1:], trig[torch.randint(triggers, (n, 1), generator=g)])
        y = (2 * n_pos > per_example).long()
        return Split(x, torch.ones_like(x), 1 - y if forget else y)

    return {"forget": make(n_forget, True), "retain": make(n_retain, False), "test": make(n_test, False)}


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and line."""


def read_records(path: str | Path, text_field: str = "text", label_field: str = "label") -> list[tuple[str, int]]:
    """(text, integer label) rows of a `.jsonl` or `.csv` file (header row with the two field names)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: no such data file")
    rows: list[tuple[str, int]] = []

    def row(where: str, record: Any) -> None:
        if not isinstance(record, dict) or text_field not in record or label_field not in record:
            raise DataFileError(f"{where}: expected fields {text_field!r} and {label_field!r}, got {record!r}")
        try:
            label = int(record[label_field])
        except (TypeError, ValueError):
            raise DataFileError(f"{where}: label {record[label_field]!r} is not an integer") from None
        if label < 0:
            raise DataFileError(f"{where}: label {label} is negative")
        rows.append((str(record[text_field]), label))

    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".jsonl":
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataFileError(f"{path}:{number}: not valid JSON: {err.msg}") from None
                    row(f"{path}:{number}", record)
        elif path.suffix.lower() == ".csv":
            for number, record in enumerate(csv.DictReader(fh), 2):
                row(f"{path}:{number}", record)
        else:
            raise DataFileError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl or .csv")
    if not rows:
        raise DataFileError(f"{path}: no records")
    return rows


def tokenize(rows: list[tuple[str, int]], tokenizer: Any, max_length: int, padding_side: str = "right") -> Split:
    """A Split of `rows` tokenized to `max_length` (padded, truncated)."""
    enc = tokenizer([text for text, _ in rows], padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt", padding_side=padding_side)
    return Split(enc["input_ids"], enc["attention_mask"], torch.tensor([label for _, label in rows]))


def load_text_splits(files: dict[str, str], tokenizer: Any, max_length: int, text_field: str = "text",
                     label_field: str = "label", padding_side: str = "right") -> dict[str, Split]:
    """The forget / retain / test splits from the files named in `files` (every split is required)."""
    missing = [name for name in SPLITS if not files.get(name)]
    if missing:
        raise DataFileError(f"data: set a file for {', '.join('data.' + m for m in missing)} (.jsonl or .csv)")
    return {name: tokenize(read_records(files[name], text_field, label_field), tokenizer, max_length, padding_side)
            for name in SPLITS}
