"""What an adversary saw in a recorded run: per-round uploads and broadcasts from the message record, the malicious
client's own view (its relation tables), the accountant's epsilon, and, for scoring only, the ground truth."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import ExperimentConfig, from_dict
from fedsim.kg.datasets import KGDataset
from fedsim.kg.partition import ClientKG
from fedsim.record import RecordedRun, RecordError, open_run
from fedsim.rundir import RunDir

__all__ = ["RECORDS", "GroundTruth", "MissingRecords", "RunView", "view_path"]

ROWS_IDS, ROWS_VALUES = "rows/entity-ids", "rows/entity-rows"
VIEW_DIR = "attacker"  # <run dir>/attacker: the malicious client's own view (one-machine runtimes)

#: Record kinds an attack can need, and what each one is.
RECORDS = {
    "victim-uploads": "the victim's uploaded entity rows (train replies from the victim's node)",
    "attacker-broadcasts": "the global entity rows the server sent the attacker (train/evaluate messages to its node)",
    "attacker-uploads": "the attacker's own uploads (train replies from the attacker's node)",
    "attacker-view": "the attacker's private relation tables (kept by its ClientApp; run with attack.attacker set)",
}


class MissingRecords(LookupError):
    """An attack asked for records a run does not have."""


@dataclass(frozen=True)
class GroundTruth:
    """The dataset and the experiment's clients (canaries injected): used to score attacks, never to run them."""

    dataset: KGDataset
    clients: list[ClientKG]


def view_path(cfg: ExperimentConfig, run_dir: str | os.PathLike[str]) -> Path:
    """Where the attacker's view of this run is: `<run dir>/attacker` when present (a moved run directory keeps
    working), else the node's `attack.view_dir`."""
    local = Path(run_dir) / VIEW_DIR
    return local if local.is_dir() or not cfg.attack.view_dir else Path(cfg.attack.view_dir)


class RunView:
    """Read access to one recorded run, per partition id and round."""

    def __init__(self, run_dir: str | os.PathLike[str], verify: bool = True) -> None:
        self.path = Path(run_dir)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise MissingRecords(f"{self.path} is not a run directory (no config.json)")
        try:
            self.cfg: ExperimentConfig = from_dict(json.loads(config_file.read_text()))
        except (ValueError, TypeError) as err:
            raise MissingRecords(f"{config_file}: unreadable experiment config: {err}") from err
        self._verify = verify
        self._record: RecordedRun | None = None
        self.nodes = self._node_map()

    # -- record ----------------------------------------------------------------------------
    @property
    def record(self) -> RecordedRun:
        if self._record is None:
            if not (self.path / "record" / "manifest.jsonl").is_file():
                why = " (runtime.mode 'local' keeps no record; use 'sim' or 'deploy-local')" \
                    if self.cfg.runtime.mode == "local" else ""
                raise MissingRecords(f"{self.path} has no message record{why}")
            self._record = open_run(self.path, verify=self._verify)
        return self._record

    def _node_map(self) -> dict[int, tuple[int, ...]]:
        """partition id -> its node ids (several when the run was resumed: nodes re-register under new ids),
        from result.json, else from the recorded registrations."""
        result = self.path / "result.json"
        if result.is_file():
            clients = json.loads(result.read_text()).get("clients", {})
            if clients:
                return {int(pid): tuple(int(n) for n in info.get("node_ids") or [info["node_id"]])
                        for pid, info in clients.items()}
        out: dict[int, tuple[int, ...]] = {}
        try:
            for entry in self.record.entries(kind="query", direction="up"):
                pid = entry.metrics.get("metrics", {}).get("partition-id")
                if pid is not None and int(entry.node_id) not in out.get(int(pid), ()):
                    out[int(pid)] = (*out.get(int(pid), ()), int(entry.node_id))
        except MissingRecords:
            return {}
        return out

    def node(self, pid: int) -> tuple[int, ...]:
        """The node ids partition `pid` had in this run (one, unless the run was resumed)."""
        if pid not in self.nodes:
            raise MissingRecords(f"{self.path}: partition {pid} never registered (known: {sorted(self.nodes)})")
        return self.nodes[pid]

    def train_rounds(self) -> list[int]:
        return sorted({e.round for e in self.record.entries(kind="train", direction="up")})

    def _rows(self, pid: int, rnd: int, kind: str | tuple[str, ...], direction: str) -> tuple[np.ndarray, np.ndarray]:
        entries = self.record.entries(round=rnd, node_id=list(self.node(pid)), kind=kind, direction=direction)
        entries = [e for e in entries if any(s.logical_key == ROWS_IDS for s in e.array_specs)]
        if not entries:
            raise MissingRecords(f"{self.path}: no {kind} {direction} message with rows for partition {pid} in round {rnd}")
        arrays = entries[0].arrays()
        return np.asarray(arrays[ROWS_IDS]), np.asarray(arrays[ROWS_VALUES])

    def upload(self, pid: int, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """(entity ids, rows) partition `pid` uploaded in round `rnd`."""
        return self._rows(pid, rnd, "train", "up")

    def received(self, pid: int, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """(entity ids, global rows) the server sent `pid` for training in round `rnd` (the table after rnd - 1)."""
        return self._rows(pid, rnd, "train", "down")

    def global_after(self, pid: int, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """(entity ids, global rows) for `pid`'s entities after round `rnd`'s aggregation, as `pid` received them."""
        try:
            return self.received(pid, rnd + 1)
        except MissingRecords:
            return self._rows(pid, rnd, "evaluate", "down")

    # -- the attacker's own view -----------------------------------------------------------------
    def view_file(self, rnd: int) -> Path:
        return view_path(self.cfg, self.path) / f"round-{rnd:05d}.npz"

    @functools.lru_cache(maxsize=8)
    def _view(self, rnd: int) -> dict[str, np.ndarray]:
        path = self.view_file(rnd)
        if not path.is_file():
            raise MissingRecords(f"{self.path}: the attacker's view of round {rnd} ({path}) does not exist")
        try:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise RecordError(f"{path}: unreadable attacker view: {err}") from err

    def relations(self, rnd: int) -> np.ndarray:
        """The attacker's relation table (its local relation ids) after its training in round `rnd`."""
        return self._view(rnd)["relations"]

    def honest_upload(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) the attacker computed in round `rnd` before any poisoning (kept at the active round)."""
        view = self._view(rnd)
        if "honest-ids" not in view:
            raise MissingRecords(f"{self.path}: the attacker kept no honest upload for round {rnd}")
        return view["honest-ids"], view["honest-rows"]

    # -- requirements ------------------------------------------------------------------------
    def missing(self, needs: tuple[str, ...], rnd: int, victim: int, attacker: int) -> list[str]:
        """The needed record kinds this run lacks at round `rnd` (each with the reason)."""
        out = []
        for need in needs:
            try:
                if need == "victim-uploads":
                    self.upload(victim, rnd)
                elif need == "attacker-uploads":
                    self.upload(self._attacker(attacker), rnd)
                elif need == "attacker-broadcasts":
                    self.global_after(self._attacker(attacker), rnd)
                elif need == "attacker-view":
                    self.relations(rnd)
                    if self._attacker(attacker) != self.cfg.attack.attacker:
                        raise MissingRecords(f"the run kept the view of partition {self.cfg.attack.attacker}, "
                                             f"not of {attacker}")
                else:
                    raise MissingRecords(f"unknown record kind {need!r}; known: {', '.join(RECORDS)}")
            except (MissingRecords, RecordError) as err:
                out.append(f"{need} ({RECORDS.get(need, '?')}): {err}")
        return out

    def _attacker(self, attacker: int) -> int:
        if attacker < 0:
            raise MissingRecords("no attacker client: set --attacker or the run's attack.attacker")
        return attacker

    # -- privacy ------------------------------------------------------------------------------
    @functools.cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """The run's per-round rows (a torn last line of a killed run is left out)."""
        return RunDir(self.path).read_jsonl("metrics.jsonl")

    def epsilon(self, pid: int, rnd: int) -> float | None:
        """Partition `pid`'s accountant epsilon after round `rnd` (None without DP)."""
        for row in self.metrics:
            if row.get("round") == rnd and row.get("privacy"):
                spent = row["privacy"].get(str(pid))
                return None if spent is None else float(spent["epsilon"])
        return None

    def rounds_at_epsilon(self, pid: int, levels: list[float]) -> dict[float, int]:
        """For each level, the first round at which `pid`'s epsilon reaches it (levels never reached are left out)."""
        out: dict[float, int] = {}
        for row in sorted(self.metrics, key=lambda r: r.get("round", 0)):
            spent = (row.get("privacy") or {}).get(str(pid))
            if spent is None:
                continue
            for level in levels:
                if level not in out and float(spent["epsilon"]) >= level:
                    out[level] = int(row["round"])
        return out

    def test_mrr(self) -> float | None:
        result = self.path / "result.json"
        if not result.is_file():
            return None
        test = json.loads(result.read_text()).get("test") or {}
        return test.get("mrr")

    # -- ground truth (for scoring) -----------------------------------------------------------------
    @functools.cached_property
    def truth(self) -> GroundTruth:
        from fedsim.kg.canaries import experiment_clients
        from fedsim.kg.datasets import load_dataset

        dataset = load_dataset(self.cfg.data.dataset, self.cfg.data.data_dir)
        return GroundTruth(dataset, experiment_clients(self.cfg, dataset))
