"""OpBoost's messages on Flower's Message API (opboost.md §3.2, §3.7): one ``query.<step>`` per protocol step.

=====================  ============================================  ==============================================
step (message type)    active → passive                              passive → active
=====================  ============================================  ==============================================
``query.schema``       config ``fedsim-config``; arrays ``ids``      config ``schema``: partition-id, names, kinds
                       (``train``, ``test``: int64 row ids)
``query.ranks``        —                                             arrays ``ranks`` (dense ranks, smallest uint),
                                                                     config ``ledger`` (the accountant's report)
``query.split_values`` arrays ``requests`` (int64 ranks)             arrays ``values`` (float64)
``query.split_intervals`` arrays ``thresholds`` (float32, sorted);   arrays ``intervals`` (uint: thresholds <= x)
                       config ``split`` (test only)
=====================  ============================================  ==============================================

Column arrays are keyed ``c<index>`` in the sender's schema order (column names stay in the schema reply). Every
down message carries ``server-round`` = the step number (1–4), which the recorder files each exchange under.

Inference runs on new (test) rows only: interval counts of *training* rows would tell the active party where each
row's raw value lies between the thresholds, at any ε, so passive parties refuse them; the active party evaluates
the training rows on what it legitimately holds (the rank model on the ranks).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

SCHEMA, RANKS, SPLIT_VALUES, SPLIT_INTERVALS = "schema", "ranks", "split_values", "split_intervals"
STEP_ROUND = {SCHEMA: 1, RANKS: 2, SPLIT_VALUES: 3, SPLIT_INTERVALS: 4}
INFERENCE_SPLITS = ("test",)  # splits a passive party answers split-interval queries for


def message_type(step: str) -> str:
    """Flower message type of a protocol step (routed to ``@app.query(step)``)."""
    return f"query.{step}"


def column_record(columns: list[str], arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """``{c<i>: array}`` for the named columns present in ``arrays`` (i = position in ``columns``)."""
    unknown = sorted(set(arrays) - set(columns))
    if unknown:
        raise ValueError(f"arrays for columns outside the schema: {unknown}")
    return ArrayRecord({f"c{i}": Array(np.ascontiguousarray(arrays[c])) for i, c in enumerate(columns) if c in arrays})


def read_columns(msg: Message, record: str, columns: list[str]) -> dict[str, np.ndarray]:
    """Inverse of :func:`column_record`; ValueError naming the record and key when malformed."""
    if not msg.has_content() or record not in msg.content.array_records:
        raise ValueError(f"message lacks the array record {record!r}")
    out = {}
    for key, array in msg.content.array_records[record].items():
        if not (key.startswith("c") and key[1:].isdigit() and int(key[1:]) < len(columns)):
            raise ValueError(f"record {record!r}: key {key!r} names no column of the schema ({len(columns)} columns)")
        out[columns[int(key[1:])]] = array.numpy()
    return out


def config_value(msg: Message, record: str, key: str) -> Any:
    """A value of a config record, or ValueError naming what is missing."""
    if not msg.has_content() or record not in msg.content.config_records:
        raise ValueError(f"message lacks the config record {record!r}")
    if key not in msg.content.config_records[record]:
        raise ValueError(f"config record {record!r} lacks {key!r}")
    return msg.content.config_records[record][key]


def schema_record(partition_id: int, schema: list[dict[str, str]]) -> ConfigRecord:
    """A passive party's schema reply (with the answering process's id, so runs can show where parties ran)."""
    return ConfigRecord({"partition-id": int(partition_id), "names": json.dumps([c["name"] for c in schema]),
                         "kinds": json.dumps([c["kind"] for c in schema]), "process-id": os.getpid()})


def read_schema(msg: Message) -> tuple[int, list[str], list[str]]:
    """(partition id, column names, kinds) of a schema reply."""
    pid = int(config_value(msg, "schema", "partition-id"))
    names = json.loads(str(config_value(msg, "schema", "names")))
    kinds = json.loads(str(config_value(msg, "schema", "kinds")))
    if not (isinstance(names, list) and isinstance(kinds, list) and len(names) == len(kinds)
            and all(isinstance(n, str) for n in names) and all(k in ("numeric", "nominal") for k in kinds)):
        raise ValueError("schema reply: names and kinds must be equally long lists of strings (numeric|nominal)")
    if len(set(names)) != len(names):
        raise ValueError("schema reply: a column name appears twice")
    return pid, names, kinds
