"""KGE score functions of FedE (spec fkge.md section 2.4) (the torch side; shapes and init live in fedsim.kg.shapes)."""

from __future__ import annotations

import math

import torch

from fedsim.kg.shapes import MODEL_NAMES, entity_dim, init_range, init_table, relation_dim

__all__ = ["MODEL_NAMES", "Interaction", "init_range", "init_table", "make_interaction"]


class Interaction:
    """A KGE score s(h, r, t) broadcasting over leading dims: h, t [..., entity_dim], r [..., relation_dim]."""

    def __init__(self, name: str, hidden_dim: int, gamma: float = 10.0, epsilon: float = 2.0) -> None:
        """Set up model `name` (one of MODEL_NAMES)."""
        if name not in MODEL_NAMES:
            raise ValueError(f"unknown KGE model {name!r}; choices: {', '.join(MODEL_NAMES)}")
        if int(hidden_dim) < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.name = name
        self.hidden_dim = int(hidden_dim)
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.rho = init_range(self.hidden_dim, self.gamma, self.epsilon)
        self._pykeen = _pykeen_module(name)

    def __repr__(self) -> str:
        """Readable summary."""
        return f"Interaction({self.name!r}, hidden_dim={self.hidden_dim}, gamma={self.gamma}, epsilon={self.epsilon})"

    def entity_dim(self) -> int:
        """Width of an entity row: 2*hidden for ComplEx and RotatE ([re || im])."""
        return entity_dim(self.name, self.hidden_dim)

    def relation_dim(self) -> int:
        """Width of a relation row: 2*hidden for ComplEx only (RotatE relations are hidden_dim phases)."""
        return relation_dim(self.name, self.hidden_dim)

    def score(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Scores [...] for broadcastable h [..., d_e], r [..., d_r], t [..., d_e]; higher is more plausible."""
        if self.name == "transe":
            # pykeen TransEInteraction(p=1) = -||h + r - t||_1, so gamma + that is the spec formula.
            return self.gamma + self._pykeen(h, r, t)
        if self.name == "distmult":
            # pykeen DistMultInteraction = sum(h * r * t), exactly the spec formula.
            return self._pykeen(h, r, t)
        d = self.hidden_dim
        if self.name == "complex":
            # pykeen ComplExInteraction = Re(sum h * r * conj(t)) on complex tensors; our rows are [re || im].
            return self._pykeen(
                torch.complex(h[..., :d], h[..., d:]),
                torch.complex(r[..., :d], r[..., d:]),
                torch.complex(t[..., :d], t[..., d:]),
            )
        # RotatE: pykeen 1.11.1's RotatEInteraction returns -||h*r - t||_2 over the complex vector (an L2 norm of the
        # moduli), whereas FedE's formula is gamma - sum_k |h_k e^{i theta_k} - t_k| (an L1 sum of the moduli), so we
        # compute the spec formula here ourselves.
        theta = r / (self.rho / math.pi)
        cos, sin = torch.cos(theta), torch.sin(theta)
        h_re, h_im = h[..., :d], h[..., d:]
        diff_re = h_re * cos - h_im * sin - t[..., :d]
        diff_im = h_re * sin + h_im * cos - t[..., d:]
        squared = diff_re * diff_re + diff_im * diff_im
        # |z| with a zero (not NaN) gradient at z = 0; much faster than vector_norm over a stacked re/im axis
        modulus = torch.where(squared > 0, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0.0)
        return self.gamma - modulus.sum(dim=-1)


    def score_all(
        self, h: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor, max_elements: int = 1 << 24
    ) -> torch.Tensor:
        """Scores [b, n] of every (h[i], r[i], candidates[j]) for h [b, d_e], r [b, d_r], candidates [n, d_e].

        The same function as `score`, computed with cdist / matmul where the formula allows (ranking against all
        candidates would otherwise materialise a [b, n, d] tensor); RotatE falls back to candidate chunks of at most
        `max_elements` intermediate elements.
        """
        d = self.hidden_dim
        if self.name == "transe":
            return self.gamma - torch.cdist((h + r).unsqueeze(0), candidates.unsqueeze(0), p=1).squeeze(0)
        if self.name == "distmult":
            return (h * r) @ candidates.T
        if self.name == "complex":
            h_re, h_im, r_re, r_im = h[..., :d], h[..., d:], r[..., :d], r[..., d:]
            hr = torch.cat([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], dim=-1)
            return hr @ candidates.T  # Re(sum hr * conj(t)) = hr_re . t_re + hr_im . t_im
        chunk = max(1, max_elements // max(1, h.shape[0] * d))
        if torch.is_grad_enabled() and (h.requires_grad or r.requires_grad or candidates.requires_grad):
            hh, rr = h.unsqueeze(1), r.unsqueeze(1)
            starts = range(0, len(candidates), chunk)
            parts = [self.score(hh, rr, candidates[c : c + chunk].unsqueeze(0)) for c in starts]
            return torch.cat(parts, dim=1)
        # no autograd: rotate the heads once, then in-place |hr - t| per candidate chunk (same operation order as score)
        theta = r / (self.rho / math.pi)
        cos, sin = torch.cos(theta), torch.sin(theta)
        hr_re = (h[..., :d] * cos - h[..., d:] * sin).unsqueeze(1)
        hr_im = (h[..., :d] * sin + h[..., d:] * cos).unsqueeze(1)
        parts = []
        for c in range(0, len(candidates), chunk):
            diff_re = hr_re - candidates[c : c + chunk, :d].unsqueeze(0)
            diff_im = hr_im - candidates[c : c + chunk, d:].unsqueeze(0)
            diff_re.mul_(diff_re).add_(diff_im.mul_(diff_im)).sqrt_()
            parts.append(self.gamma - diff_re.sum(dim=-1))
        return torch.cat(parts, dim=1)


def _pykeen_module(name: str) -> torch.nn.Module | None:
    """The stateless pykeen interaction module used for `name`, if its output matches the spec formula."""
    if name == "rotate":
        return None
    from pykeen.nn.modules import ComplExInteraction, DistMultInteraction, TransEInteraction  # slow import

    if name == "transe":
        return TransEInteraction(p=1)
    if name == "distmult":
        return DistMultInteraction()
    return ComplExInteraction()


def make_interaction(name: str, hidden_dim: int, gamma: float = 10.0, epsilon: float = 2.0) -> Interaction:
    """Build the Interaction for model `name` (one of MODEL_NAMES)."""
    return Interaction(name, hidden_dim, gamma=gamma, epsilon=epsilon)
