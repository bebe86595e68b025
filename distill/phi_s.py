"""PHI-S teacher standardisation (Ranzinger et al. 2024, "PHI-S: Distribution Balancing for Label-Free
Multi-Teacher Distillation").

Each teacher output x (D-dim) is mapped to y = (x - mean) @ tx.T with tx = (1 / alpha) H U^T, where
Sigma = U diag(lambda) U^T is the output covariance, H a normalised Hadamard matrix (H H^T = I) and
alpha = sqrt(mean(lambda)). The rotation U^T decorrelates, H spreads the variance equally over every
dimension, so every output dimension of y has unit variance: diag(H diag(lambda) H^T) = mean(lambda).
This is the `FeatureNormalizer(mean, tx)` form of the official RADIO code (`examples/common/phi_s.py`).

Statistics are accumulated over the first batches of a run (`PhiSEstimator`), all-reduced across ranks,
and saved with the run (safetensors). At export the inverse map is folded into the last Linear of each
affected adaptor head (`PhiSStandardizer.fold_into`), so an exported student predicts in teacher space.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cache

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i), chi the quadratic character mod prime q; (q, q) of 0/+-1."""
    squares = {(k * k) % q for k in range(1, q)}
    chi = torch.tensor([0] + [1 if k in squares else -1 for k in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _bordered_jacobsthal(q: int, sign: float) -> torch.Tensor:
    """[[0, 1^T], [sign * 1, Q]], (q + 1, q + 1): Paley's core (sign -1) or conference matrix (sign +1)."""
    ones = torch.ones(1, q, dtype=torch.float64)
    top = torch.cat([torch.zeros(1, 1, dtype=torch.float64), ones], 1)
    return torch.cat([top, torch.cat([sign * ones.T, _jacobsthal(q)], 1)], 0)


@cache
def _hadamard_pm1(n: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order n (H H^T = n I), or None when these constructions have none:
    Sylvester doubling, Paley I (n = q + 1, q = 3 mod 4 prime), Paley II (n = 2 (q + 1), q = 1 mod 4 prime)."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if n % 2 == 0 and (half := _hadamard_pm1(n // 2)) is not None:
        return torch.cat([torch.cat([half, half], 1), torch.cat([half, -half], 1)], 0)
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return _bordered_jacobsthal(n - 1, -1.0) + torch.eye(n, dtype=torch.float64)
    q = n // 2 - 1
    if n % 2 == 0 and _is_prime(q) and q % 4 == 1:
        plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)  # replaces each +-1 entry
        zero = torch.tensor(
            [[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64
        )  # replaces each 0 (the diagonal)
        return torch.kron(_bordered_jacobsthal(q, 1.0), plus) + torch.kron(
            torch.eye(q + 1, dtype=torch.float64), zero
        )
    return None


def hadamard_matrix(dim: int) -> torch.Tensor:
    """Normalised Hadamard matrix (dim, dim), float64, orthogonal with entries +-1/sqrt(dim)."""
    matrix = _hadamard_pm1(dim)
    if matrix is None:
        raise ValueError(
            f"no Hadamard matrix of order {dim} from the Sylvester/Paley constructions; PHI-S needs one for "
            f"each standardised output dimension (all of 2^k, 12*2^k, 20*2^k, 36*2^k work, e.g. 768, 1024, 1152, "
            f"1280, 1536); use another balancing method for this teacher"
        )
    return matrix / dim**0.5


def phi_s_transform(mean: torch.Tensor, covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) -> (mean (D,), tx (D, D)) with y = (x - mean) @ tx.T; float64."""
    eigvals, eigvecs = torch.linalg.eigh(covariance.double())
    alpha = eigvals.clamp_min(0).mean().sqrt()
    if alpha <= 0:
        raise ValueError("PHI-S: the teacher output has zero variance; estimate on more (and varied) images")
    tx = hadamard_matrix(covariance.shape[0]) @ eigvecs.T / alpha
    return mean.double(), tx


class PhiSEstimator:
    """Accumulates per-term first and second moments of teacher outputs in float64, on the outputs' device.

    `dims` maps every term of the run ("<teacher>/summary", "<teacher>/features") to its D, so that ranks
    holding different teachers still all-reduce tensors of the same shapes.
    """

    def __init__(self, dims: Mapping[str, int]) -> None:
        self.dims = dict(dims)
        self.count = dict.fromkeys(self.dims, 0)
        self.total: dict[str, torch.Tensor] = {}
        self.outer: dict[str, torch.Tensor] = {}

    def update(self, term: str, values: torch.Tensor) -> None:
        """values: (..., D) teacher outputs; every leading position counts as one sample."""
        flat = values.detach().reshape(-1, values.shape[-1]).to(torch.float64)
        if term not in self.total:
            dim = self.dims[term]
            self.total[term] = torch.zeros(dim, dtype=torch.float64, device=flat.device)
            self.outer[term] = torch.zeros(dim, dim, dtype=torch.float64, device=flat.device)
        self.count[term] += flat.shape[0]
        self.total[term] += flat.sum(0)
        self.outer[term] += flat.T @ flat

    def finalize(
        self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Sum the moments over ranks with `reduce_sum` (the run's all-reduce; None in one process) and
        return {term: (mean, tx)} in float64 on the CPU. A rank-deficient covariance (fewer independent
        vectors than dimensions) is logged as a warning naming the teacher."""
        result = {}
        for term, dim in self.dims.items():
            count = torch.tensor(float(self.count[term]), dtype=torch.float64)
            total = self.total.get(term, torch.zeros(dim, dtype=torch.float64))
            outer = self.outer.get(term, torch.zeros(dim, dim, dtype=torch.float64))
            if reduce_sum is not None:
                count, total, outer = reduce_sum(count), reduce_sum(total), reduce_sum(outer)
            count, total, outer = int(count.item()), total.cpu(), outer.cpu()
            if count < 2:
                raise ValueError(
                    f"PHI-S: term {term!r} saw {count} samples while estimating statistics; run more "
                    f"estimation batches through the groups that hold this teacher"
                )
            mean = total / count
            covariance = outer / count - torch.outer(mean, mean)
            # LayerNorm'd outputs (CLIP's ln_post, DINOv2's final norm) always lack one direction; fewer
            # independent vectors than that means too few (or too similar) images
            rank = int(torch.linalg.matrix_rank(covariance, hermitian=True))
            if rank < dim - 1:
                teacher, _, kind = term.rpartition("/")
                logger.warning(
                    f"PHI-S: teacher {teacher!r} {kind} covariance has rank {rank} < {dim} (from {count} "
                    f"vectors); its standardisation is poorly estimated: raise loss.phi_s_samples_per_dim "
                    f"or use varied images"
                )
            result[term] = phi_s_transform(mean, covariance)
        return result


class PhiSStandardizer(nn.Module):
    """Applies fitted PHI-S transforms to teacher targets; buffers `<term>/mean` (D,) and `<term>/tx` (D, D)."""

    def __init__(self, dims: Mapping[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)
        for term, d in self.dims.items():
            self.register_buffer(f"{term}/mean", torch.zeros(d))
            self.register_buffer(f"{term}/tx", torch.eye(d))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def set_statistics(self, stats: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for term, (mean, tx) in stats.items():
            getattr(self, f"{term}/mean").copy_(mean)
            getattr(self, f"{term}/tx").copy_(tx)
        self.fitted.fill_(True)

    def normalize(self, term: str, values: torch.Tensor) -> torch.Tensor:
        """values (..., D) -> (values - mean) @ tx.T, same shape."""
        mean, tx = getattr(self, f"{term}/mean"), getattr(self, f"{term}/tx")
        return (values - mean.to(values.dtype)) @ tx.to(values.dtype).T

    def _inverse(self, term: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean (D,), inverse of tx (D, D)) in float64: x = y @ inverse.T + mean."""
        mean, tx = getattr(self, f"{term}/mean"), getattr(self, f"{term}/tx")
        return mean.double(), torch.linalg.inv(tx.double())

    def denormalize(self, term: str, values: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: maps a student's standardised prediction back to the teacher's space."""
        mean, inverse = self._inverse(term)
        return values @ inverse.to(values).T + mean.to(values)

    @torch.no_grad()
    def fold_into(self, term: str, linear: nn.Linear) -> None:
        """Fold `denormalize(term, .)` into `linear`, the last layer of the head predicting `term`:
        W' = inverse @ W, b' = inverse @ b + mean, per D-channel block (an upsampling head emits u*u
        blocks of D channels per token). Computed in float64."""
        mean, inverse = (t.to(linear.weight.device) for t in self._inverse(term))
        dim = mean.shape[0]
        if linear.out_features % dim or linear.bias is None:
            raise ValueError(
                f"PHI-S {term}: cannot fold into {linear} (needs a bias and a multiple of {dim} outputs)"
            )
        weight = linear.weight.double().reshape(-1, dim, linear.in_features)
        bias = linear.bias.double().reshape(-1, dim)
        linear.weight.copy_((inverse @ weight).reshape(linear.weight.shape))
        linear.bias.copy_((bias @ inverse.T + mean).reshape(-1))
