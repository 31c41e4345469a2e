"""Per-client noise multipliers over rounds: fixed, or DP-Flames' adaptive budget policy.

The paper's policy (fkge.md section 4.5): every `check_per_round` rounds, a client whose
validation MRR gained less than `diff_mrr` since the previous check gets sigma *= decline_mult,
floored at `sigma_min`. Noise is large early (where the attacks are strongest) and shrinks once
utility plateaus. The validation-MRR signal is computed on the clients' validation triples and
its privacy cost is NOT accounted, as in the authors' code; the `schedule` signal is the
data-independent variant (sigma *= decline_mult at every check), which costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedsim.config import PrivacySettings


class NoisePolicy:
    """Holds sigma per partition id and updates it at check rounds."""

    def __init__(
        self, settings: PrivacySettings, partitions: list[int], initial: Mapping[int, float] | None = None
    ) -> None:
        self.settings = settings
        self.adaptive = settings.mode == "dp-flames-adaptive"
        self.sigma = {pid: float((initial or {}).get(pid, settings.noise_multiplier)) for pid in partitions}
        self.last_mrr: dict[int, float] = {}
        self.history: list[dict[str, object]] = []

    def is_check_round(self, server_round: int) -> bool:
        return self.adaptive and server_round % self.settings.check_per_round == 0

    def needs_validation(self, server_round: int) -> bool:
        """The MRR signal needs a validation at every check round."""
        return self.is_check_round(server_round) and self.settings.adaptive_signal == "mrr"

    def _decline(self, pid: int) -> None:
        s = self.settings
        self.sigma[pid] = max(self.sigma[pid] * s.decline_mult, s.sigma_min)

    def observe(self, server_round: int, valid_mrr: Mapping[int, float]) -> dict[int, float]:
        """Apply the policy after round `server_round`; returns the sigmas for the next round."""
        if not self.is_check_round(server_round):
            return dict(self.sigma)
        for pid in sorted(self.sigma):
            if self.settings.adaptive_signal == "schedule":
                self._decline(pid)
                continue
            if pid not in valid_mrr:
                continue  # no (valid) evaluation from this client: keep sigma and the previous MRR
            mrr = float(valid_mrr[pid])
            previous = self.last_mrr.get(pid)
            if previous is not None and mrr - previous < self.settings.diff_mrr:
                self._decline(pid)
            self.last_mrr[pid] = mrr
        self.history.append({"round": server_round, "sigma": dict(self.sigma)})
        return dict(self.sigma)

    def state_dict(self) -> dict[str, object]:
        """The policy's state as JSON-able data (a checkpoint keeps it; `load_state_dict` restores it)."""
        return {
            "sigma": {str(pid): s for pid, s in self.sigma.items()},
            "last_mrr": {str(pid): m for pid, m in self.last_mrr.items()},
            "history": [{"round": h["round"], "sigma": {str(p): s for p, s in h["sigma"].items()}}  # type: ignore[union-attr]
                        for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore what `state_dict` returned (partition ids must be the same)."""
        sigma = {int(pid): float(s) for pid, s in state["sigma"].items()}  # type: ignore[union-attr]
        if set(sigma) != set(self.sigma):
            raise ValueError(f"noise policy state is for partitions {sorted(sigma)}, not {sorted(self.sigma)}")
        self.sigma = sigma
        self.last_mrr = {int(pid): float(m) for pid, m in state["last_mrr"].items()}  # type: ignore[union-attr]
        self.history = [{"round": int(h["round"]), "sigma": {int(p): float(s) for p, s in h["sigma"].items()}}
                        for h in state["history"]]  # type: ignore[union-attr]
