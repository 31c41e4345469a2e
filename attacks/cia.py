"""CIA: the client-initiated active "reverse-tail" attack of Hu et al. (WWW'23), as in the authors'
`attack/client_attack.py` (`reverse_tail`, `compute_s2`) (fkge.md section 3.3). The poisoning itself happens during
the run, in the attacker's ClientApp (`clients.attacker`, `attack.active = "cia"`); this plugin does the inference."""

from __future__ import annotations

from attacks.base import Attack, AttackSetup, Scored, ThreatModel, lookup_rows, server_view_of
from attacks.cip import attacker_relation_rows, ratio_sweep
from attacks.games import Candidates, make_candidates
from attacks.metrics import Sweep
from attacks.observe import MissingRecords, RunView
from attacks.scoring import DISTANCE_MODELS, distance, ratio
from fedsim.config import ExperimentConfig
from fedsim.kg.datasets import KGDataset
from fedsim.kg.partition import ClientKG


def poisoned_candidates(cfg: ExperimentConfig, dataset: KGDataset, clients: list[ClientKG]) -> Candidates:
    """The candidate triples whose tails a run's CIA attacker negates (its attack settings decide them)."""
    a = cfg.attack
    return make_candidates(dataset, clients, victim=a.victim, attacker=a.attacker, level="triple", game=a.active_game,
                           size=a.active_candidates, seed=cfg.seed, canaries=a.canaries)


class ClientActiveInference(Attack):
    """The attacker negates its candidate tails' rows in one upload and watches which tails the victim pulls back."""

    name = "cia"
    threat_model = ThreatModel("client", "active")
    requires = ("attacker-uploads", "attacker-broadcasts", "attacker-view")
    level = "triple"
    citation = ("Hu et al., Quantifying and Defending against Privacy Threats on Federated Knowledge Graph "
                "Embedding, WWW'23 (arXiv 2304.02932), client-initiated active inference; code Ezraxz/DP-FedE")
    defaults = {"cmp_round": 1, "threshold_start": 1.0, "threshold_step": 0.04, "threshold_count": 20}

    def sweep(self) -> Sweep:
        return ratio_sweep(self.params)

    def poisoned_round(self, view: RunView) -> int:
        a = view.cfg.attack
        if a.active != "cia":
            raise MissingRecords(f"{view.path}: the run did not perform the active attack (run it with "
                                 "attack.active = 'cia' and attack.attacker set)")
        return a.active_round

    def observed_round(self, view: RunView, rnd: int) -> int:
        """CIA reads the global table `cmp_round` rounds after the poisoned round, whatever round was asked."""
        return self.poisoned_round(view) + int(self.params["cmp_round"])

    def candidates(self, view: RunView, setup: AttackSetup) -> Candidates:
        a = view.cfg.attack
        if setup.game != a.active_game or setup.attacker != a.attacker or setup.victim != a.victim:
            raise ValueError(
                f"this run's CIA attacker {a.attacker} poisoned the tails of victim {a.victim}'s {a.active_game!r} "
                f"game; asked for attacker {setup.attacker}, victim {setup.victim}, game {setup.game!r}")
        return poisoned_candidates(view.cfg, view.truth.dataset, view.truth.clients)

    def score(self, view: RunView, setup: AttackSetup, rnd: int) -> Scored:
        cands = self.candidates(view, setup)
        cfg = view.cfg
        r0 = self.poisoned_round(view)
        # s1: the attacker's poisoned table of round r0 (what it received, overwritten by what it uploaded)
        ids, poisoned = server_view_of(view, setup.attacker, r0)
        rel = attacker_relation_rows(view, setup.attacker, cands.relations, r0)
        s1 = distance(cfg, lookup_rows(ids, poisoned, cands.heads, "poisoned table"), rel,
                      lookup_rows(ids, poisoned, cands.tails, "poisoned table"))
        # s2: the global table cmp_round rounds later
        g_ids, g_rows = view.global_after(setup.attacker, r0 + int(self.params["cmp_round"]))
        rel2 = attacker_relation_rows(view, setup.attacker, cands.relations, r0 + int(self.params["cmp_round"]))
        s2 = distance(cfg, lookup_rows(g_ids, g_rows, cands.heads, "global rows"), rel2,
                      lookup_rows(g_ids, g_rows, cands.tails, "global rows"))
        scores = ratio(s1, s2) if cfg.model.name in DISTANCE_MODELS else s1 - s2
        return Scored(cands, scores, {"poisoned_round": r0})
