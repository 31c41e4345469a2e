"""SIA: the server-initiated passive relation-inference attack of Hu et al. (WWW'23), as in the authors'
`attack/server_attack.py` (fkge.md section 3.1)."""

from __future__ import annotations

import numpy as np

from attacks.base import Attack, AttackSetup, Scored, ThreatModel, lookup_rows, server_view_of, top_fraction_sweep
from attacks.games import Candidates, make_candidates
from attacks.metrics import Sweep
from attacks.observe import RunView


def relation_features(model: str, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """The "probable relation" vector of each (h, t) pair: t - h (TransE, DistMult), t / h element-wise on complex
    rows (RotatE), and ComplEx's (im_h re_t - re_h im_t) / (re_h re_t + im_h im_t)."""
    h, t = np.asarray(heads, np.float64), np.asarray(tails, np.float64)
    if model in ("transe", "distmult"):
        return t - h
    d = h.shape[1] // 2
    h_re, h_im, t_re, t_im = h[:, :d], h[:, d:], t[:, :d], t[:, d:]
    if model == "rotate":
        quotient = (t_re + 1j * t_im) / np.where(np.abs(h_re + 1j * h_im) > 0, h_re + 1j * h_im, 1e-12)
        return np.concatenate([quotient.real, quotient.imag], axis=1)
    if model == "complex":
        den = h_re * t_re + h_im * t_im
        den = np.where(np.abs(den) > 1e-12, den, 1e-12)
        return (h_im * t_re - h_re * t_im) / den
    raise ValueError(f"SIA has no relation feature for model {model!r}")


def kmeans_scores(features: np.ndarray, centers: np.ndarray, seed: int) -> np.ndarray:
    """Minus the distance of each feature to its k-means centroid, k-means seeded by `centers`."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=len(centers), init=centers, n_init=1, random_state=seed)
    labels = km.fit_predict(features)
    return -np.linalg.norm(features - km.cluster_centers_[labels], axis=1)


class ServerInference(Attack):
    """A semi-honest server clusters the victim's t - h offsets around one known link per relation."""

    name = "sia"
    threat_model = ThreatModel("server", "passive")
    requires = ("victim-uploads",)
    level = "link"
    citation = ("Hu et al., Quantifying and Defending against Privacy Threats on Federated Knowledge Graph "
                "Embedding, WWW'23 (arXiv 2304.02932), server-initiated inference; code Ezraxz/DP-FedE")
    defaults = {"aux_per_relation": 1, "m_start": 0.5, "m_step": 0.05, "m_count": 21}

    def sweep(self) -> Sweep:
        return top_fraction_sweep(self.params)

    def auxiliary(self, view: RunView, setup: AttackSetup) -> tuple[np.ndarray, np.ndarray]:
        """(relations, [k, 2] head/tail pairs): the server's auxiliary knowledge, `aux_per_relation` links of each of
        the victim's relations (drawn from the victim's train triples)."""
        tri = view.truth.clients[setup.victim].global_triples("train")
        tri = tri[tri[:, 0] != tri[:, 2]]
        rng = np.random.default_rng([setup.seed, 31])
        order = rng.permutation(len(tri))
        tri = tri[order]
        rels, first = [], []
        per = int(self.params["aux_per_relation"])
        for r in np.unique(tri[:, 1]):
            idx = np.flatnonzero(tri[:, 1] == r)[:per]
            rels.append(np.full(len(idx), r))
            first.append(idx)
        pick = np.concatenate(first)
        return np.concatenate(rels), tri[pick][:, [0, 2]]

    def candidates(self, view: RunView, setup: AttackSetup) -> Candidates:
        return self._candidates(view, setup, self.auxiliary(view, setup)[1])

    def _candidates(self, view: RunView, setup: AttackSetup, aux_pairs: np.ndarray) -> Candidates:
        """Link candidates without the server's auxiliary links."""
        truth = view.truth
        return make_candidates(truth.dataset, truth.clients, victim=setup.victim, attacker=setup.attacker,
                               level="link", game=setup.game, size=setup.size, seed=setup.seed,
                               canaries=view.cfg.attack.canaries, exclude_pairs=aux_pairs)

    def score(self, view: RunView, setup: AttackSetup, rnd: int) -> Scored:
        aux_rel, aux_pairs = self.auxiliary(view, setup)
        cands = self._candidates(view, setup, aux_pairs)
        ids, table = server_view_of(view, setup.victim, rnd)
        model = view.cfg.model.name
        feats = relation_features(model, lookup_rows(ids, table, cands.heads, "victim rows"),
                                  lookup_rows(ids, table, cands.tails, "victim rows"))
        # clusters: the relations of the member links (as the authors' code does), each seeded by its known link(s)
        victim = view.truth.clients[setup.victim].global_triples("train")
        n = view.truth.dataset.num_entities
        member_pairs = cands.heads[cands.labels] * n + cands.tails[cands.labels]
        member_rels = np.unique(victim[np.isin(victim[:, 0] * n + victim[:, 2], member_pairs), 1])
        if len(member_rels) == 0:  # e.g. canary members: their relations
            member_rels = np.unique(aux_rel)
        aux_feats = relation_features(model, lookup_rows(ids, table, aux_pairs[:, 0], "auxiliary rows"),
                                      lookup_rows(ids, table, aux_pairs[:, 1], "auxiliary rows"))
        centers = np.stack([aux_feats[aux_rel == r].mean(axis=0) for r in member_rels if np.any(aux_rel == r)])
        centers = centers[: max(1, min(len(centers), len(feats)))]
        scores = kmeans_scores(feats, centers, setup.seed)
        return Scored(cands, scores, {"clusters": int(len(centers))})
