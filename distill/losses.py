"""Distillation losses (AM-RADIO section 3.4) and loss balancing (section 3.4.1).

Terms are named "<teacher>/summary" and "<teacher>/features":

    L_summary  = sum_i lambda_i * (1 - cos(y_i, z_i))                                     (eq. 2)
    L_features = sum_i gamma_i * (0.9 * (1 - cos) + 0.1 * smooth-L1)(h_i, t_i)             (eq. 3)

with the smaller of the student's and teacher's feature grids bilinearly resized to the larger
(section 4, "Student/Teacher Resolution Mismatch"). A `LossBalancer` turns the per-term losses into the
total: `naive` (fixed lambda/gamma, the paper's default), `uncertainty` (learned log-variances, Kendall
et al. 2018), `adaloss` (weights inversely proportional to running loss averages, Hu et al. 2019,
momentum 0.99 as in the paper), `phi_s` (fixed weights, teacher targets standardised by PHI-S).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from distill.phi_s import PhiSEstimator, PhiSStandardizer

if TYPE_CHECKING:
    from distill.config import TeacherConfig
    from distill.teachers import TeacherSpec

PHI_S_FILE = "phi_s.safetensors"  # a phi_s run's statistics, in its run directory
# Sum of a tensor over every rank (`distill.engine.Collectives.all_reduce_sum`); None in a single process.
ReduceSum = Callable[[torch.Tensor], torch.Tensor]

# AM-RADIO eq. 3: "alpha = 0.9 and beta = 0.1 to mostly rely on the empirically better cosine distance,
# but to also match vector magnitudes".
FEATURE_COS_WEIGHT = 0.9
FEATURE_SMOOTH_L1_WEIGHT = 0.1


def summary_loss(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine distance of (B, C) vectors -> (loss = 1 - mean cos, mean cos), scalars."""
    cos = F.cosine_similarity(student, teacher, dim=-1).mean()
    return 1.0 - cos, cos.detach()


def _as_grid(features: torch.Tensor, grid_hw: tuple[int, int] | None, what: str) -> torch.Tensor:
    """(B, T, D) or (B, h, w, D) -> (B, h, w, D); a (B, T, D) grid is square unless grid_hw says otherwise."""
    if features.ndim == 4:
        return features
    if features.ndim != 3:
        raise ValueError(f"{what} features must be (B, T, D) or (B, h, w, D), got {tuple(features.shape)}")
    batch, tokens, dim = features.shape
    if grid_hw is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{what} features have {tokens} tokens, not a square grid; pass student_grid_hw")
        grid_hw = (side, side)
    if grid_hw[0] * grid_hw[1] != tokens:
        raise ValueError(f"{what} features have {tokens} tokens but grid_hw={grid_hw}")
    return features.reshape(batch, grid_hw[0], grid_hw[1], dim)


def _resize_grid(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w, D) -> (B, H, W, D), bilinear (align_corners=False)."""
    if features.shape[1:3] == size:
        return features
    nchw = F.interpolate(features.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return nchw.permute(0, 2, 3, 1)


def feature_loss(
    student: torch.Tensor, teacher: torch.Tensor, student_grid_hw: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student (B, T, D) or (B, h, w, D) vs teacher (B, h', w', D) -> (0.9 cos distance + 0.1 smooth-L1,
    mean token cos). Both grids are brought to the larger size, (max(h, h'), max(w, w')), bilinearly."""
    student = _as_grid(student, student_grid_hw, "student")
    teacher = _as_grid(teacher, None, "teacher")
    if student.shape[0] != teacher.shape[0] or student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} differ in "
            f"batch or dim; the adaptor's output_dim must equal the teacher's feature_dim"
        )
    size = (max(student.shape[1], teacher.shape[1]), max(student.shape[2], teacher.shape[2]))
    student, teacher = _resize_grid(student, size), _resize_grid(teacher, size)
    cos = F.cosine_similarity(student, teacher, dim=-1).mean()
    smooth_l1 = F.smooth_l1_loss(student, teacher, beta=1.0)
    loss = FEATURE_COS_WEIGHT * (1.0 - cos) + FEATURE_SMOOTH_L1_WEIGHT * smooth_l1
    return loss, cos.detach()


# ----------------------------------------------------------------------------------------------------------
# Balancers: one interface, one small class per method.


class LossBalancer(nn.Module):
    """Combines per-term losses into the total. `base_weights` maps term -> lambda_i / gamma_i.

    `weights(losses)` gives the effective multiplier of each present term (for logging; may carry
    gradients), `forward(losses)` the differentiable total, `normalize_target` the target transform
    (identity except for PHI-S). Terms absent from `losses` (teachers of other rank groups) are skipped.
    """

    def __init__(self, base_weights: Mapping[str, float]) -> None:
        super().__init__()
        self.base_weights = {term: float(w) for term, w in base_weights.items()}

    def weights(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {term: torch.as_tensor(self.base_weights[term]) for term in losses}

    def regularizer(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        return 0.0

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        weights = self.weights(losses)
        total = sum(weights[term].to(loss) * loss for term, loss in losses.items())
        return total + self.regularizer(losses)

    def normalize_target(self, term: str, target: torch.Tensor) -> torch.Tensor:
        return target


class NaiveBalancer(LossBalancer):
    """Fixed weights: the paper's choice (gamma_i = 1; lambda_CLIP = lambda_DINO = 1, lambda_SAM = 0)."""


class UncertaintyBalancer(LossBalancer):
    """Kendall et al.: total = sum_i w_i (exp(-s_i) L_i + s_i) with learned s_i = log sigma_i^2 (init 0).

    The minimum over s_i is at s_i = log L_i, so the effective weight w_i exp(-s_i) tends to w_i / L_i.
    The `log_vars` parameters must be given to the optimizer with the student's.
    """

    def __init__(self, base_weights: Mapping[str, float]) -> None:
        super().__init__(base_weights)
        # shape (1,), not (): DeepSpeed's parameter broadcast views every parameter as bytes, which a
        # 0-dim tensor cannot do
        self.log_vars = nn.ParameterDict({term: nn.Parameter(torch.zeros(1)) for term in self.base_weights})

    def weights(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {term: self.base_weights[term] * torch.exp(-self.log_vars[term][0]) for term in losses}

    def regularizer(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor | float:
        # Absent terms (other rank groups' teachers) enter with weight 0, so every log-variance gets a
        # (zero) gradient on every rank and data-parallel engines see no unused parameters.
        absent = sum(0.0 * value[0] for term, value in self.log_vars.items() if term not in losses)
        return sum(self.base_weights[term] * self.log_vars[term][0] for term in losses) + absent


class AdaLossBalancer(LossBalancer):
    """Hu et al. (AdaLoss): w_i = base_i / (running mean of L_i), so every term contributes ~base_i.

    The running mean starts at the first observed loss and is updated with `momentum` (0.99, AM-RADIO
    3.4.1) in training mode only; it is a float64 buffer, saved and restored with the balancer's state_dict.
    With `reduce_sum` (distributed runs) every rank must call `forward` each step: the step's loss of each
    term is averaged over the ranks that computed it, so all ranks hold the same running means (and rank
    0's checkpoint holds every group's terms).
    """

    def __init__(
        self,
        base_weights: Mapping[str, float],
        momentum: float = 0.99,
        eps: float = 1e-8,
        reduce_sum: ReduceSum | None = None,
    ) -> None:
        super().__init__(base_weights)
        self.momentum, self.eps, self.reduce_sum = momentum, eps, reduce_sum
        for term in self.base_weights:
            self.register_buffer(f"running/{term}", torch.zeros((), dtype=torch.float64))
            self.register_buffer(f"seen/{term}", torch.zeros((), dtype=torch.bool))

    def running_mean(self, term: str) -> torch.Tensor:
        return getattr(self, f"running/{term}")

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.training:
            for term, value in self._step_losses(losses).items():
                running, seen = self.running_mean(term), getattr(self, f"seen/{term}")
                value = value.to(running)
                running.copy_(torch.where(seen, self.momentum * running + (1 - self.momentum) * value, value))
                seen.fill_(True)
        return super().forward(losses)

    def _step_losses(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This step's loss per term, averaged over the ranks that computed it (all terms of the run)."""
        if self.reduce_sum is None:
            return {term: loss.detach() for term, loss in losses.items()}
        terms = list(self.base_weights)  # same order on every rank: built from the same config
        stats = torch.zeros(2, len(terms), dtype=torch.float64)
        for i, term in enumerate(terms):
            if term in losses:
                stats[0, i], stats[1, i] = losses[term].detach().double(), 1.0
        stats = self.reduce_sum(stats)
        return {term: stats[0, i] / stats[1, i] for i, term in enumerate(terms) if stats[1, i] > 0}

    def weights(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for term, loss in losses.items():
            running = self.running_mean(term) if getattr(self, f"seen/{term}") else loss.detach().double()
            out[term] = (self.base_weights[term] / (running + self.eps)).float()
        return out


class PhiSBalancer(LossBalancer):
    """Fixed weights on PHI-S-standardised targets (`distill.phi_s`).

    Before training, feed teacher outputs of the first batches to `observe(teacher, output)` and call
    `fit()` (all ranks together when distributed); `save_statistics`/`load_statistics` keep them with the
    run. `denormalize(term, x)` maps a student head's standardised prediction back to teacher space.
    """

    def __init__(self, base_weights: Mapping[str, float], dims: Mapping[str, int]) -> None:
        super().__init__(base_weights)
        missing = set(self.base_weights) - set(dims)
        if missing:
            raise ValueError(f"phi_s balancing needs the output dim of every term; missing {sorted(missing)}")
        self.dims = {term: dims[term] for term in self.base_weights}
        self.standardizer = PhiSStandardizer(self.dims)
        self._estimator: PhiSEstimator | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.standardizer.fitted)

    def observe(self, teacher: str, summary: torch.Tensor | None, features: torch.Tensor) -> None:
        """Accumulate statistics of one teacher batch: summary (B, C) or None, features (B, h, w, D)."""
        if self._estimator is None:
            self._estimator = PhiSEstimator(self.dims)
        for term, values in ((f"{teacher}/summary", summary), (f"{teacher}/features", features)):
            if values is not None and term in self.dims:
                self._estimator.update(term, values)

    def observed(self) -> dict[str, int]:
        """Vectors observed so far on this rank, per term (0 before the first `observe`)."""
        counts = self._estimator.count if self._estimator is not None else {}
        return {term: int(counts.get(term, 0)) for term in self.dims}

    def fit(self, reduce_sum: ReduceSum | None = None) -> None:
        """Fit the statistics from everything observed (on every rank, when `reduce_sum` is given)."""
        if self._estimator is None:
            raise RuntimeError("phi_s: call observe(...) on teacher outputs before fit()")
        self.standardizer.set_statistics(self._estimator.finalize(reduce_sum))
        self._estimator = None

    def normalize_target(self, term: str, target: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(
                "phi_s: statistics are not fitted; run observe()/fit() or load_statistics() first"
            )
        return self.standardizer.normalize(term, target)

    def denormalize(self, term: str, prediction: torch.Tensor) -> torch.Tensor:
        return self.standardizer.denormalize(term, prediction)

    def save_statistics(self, path: str) -> None:
        save_file({k: v.contiguous().cpu() for k, v in self.standardizer.state_dict().items()}, path)

    def load_statistics(self, path: str) -> None:
        state = load_file(path)
        missing = set(self.standardizer.state_dict()) - set(state)
        if missing:
            raise ValueError(
                f"{path}: PHI-S statistics lack {sorted(missing)}; was it written for these teachers?"
            )
        self.standardizer.load_state_dict(state)


BALANCERS = ("naive", "uncertainty", "adaloss", "phi_s")


def build_balancer(
    method: str,
    base_weights: Mapping[str, float],
    dims: Mapping[str, int] | None = None,
    momentum: float = 0.99,
    reduce_sum: ReduceSum | None = None,
) -> LossBalancer:
    """The balancer called `method` (one of BALANCERS); `dims` (term -> D) is needed for phi_s,
    `reduce_sum` (the run's all-reduce) by adaloss in distributed runs."""
    if method == "naive":
        return NaiveBalancer(base_weights)
    if method == "uncertainty":
        return UncertaintyBalancer(base_weights)
    if method == "adaloss":
        return AdaLossBalancer(base_weights, momentum=momentum, reduce_sum=reduce_sum)
    if method == "phi_s":
        if dims is None:
            raise ValueError("phi_s balancing needs dims: {term: output dim}")
        return PhiSBalancer(base_weights, dims)
    raise ValueError(f"unknown loss balancing method {method!r}; choose one of {BALANCERS}")


# ----------------------------------------------------------------------------------------------------------
# The distillation loss over all teachers of a batch


@dataclass
class LossOutput:
    """total: scalar to backpropagate; components/cosine/weights: per term ("<teacher>/summary"|"/features")."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]  # unweighted term losses (detached)
    cosine: dict[str, torch.Tensor]  # mean cosine similarity student vs target (detached)
    weights: dict[str, torch.Tensor]  # effective weights the balancer applied (detached)


def teacher_terms(
    teachers: Sequence[TeacherConfig], specs: Mapping[str, TeacherSpec]
) -> tuple[dict[str, float], dict[str, int]]:
    """({term: weight}, {term: output dim}) of a run's teachers; a teacher without a summary (SAM) has no
    summary term, and zero weights drop their term."""
    weights = loss_terms(
        {t.name: (t.summary_weight if specs[t.name].summary else 0.0, t.feature_weight) for t in teachers}
    )
    dims = {f"{n}/summary": s.summary_dim for n, s in specs.items() if s.summary_dim}
    dims |= {f"{n}/features": s.feature_dim for n, s in specs.items()}
    return weights, {term: dims[term] for term in weights}


def loss_terms(teacher_weights: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """{teacher: (lambda, gamma)} -> {term: weight}, dropping zero weights (e.g. SAM's summary)."""
    terms = {}
    for teacher, (summary_weight, feature_weight) in teacher_weights.items():
        if summary_weight:
            terms[f"{teacher}/summary"] = float(summary_weight)
        if feature_weight:
            terms[f"{teacher}/features"] = float(feature_weight)
    return terms


class DistillLoss(nn.Module):
    """Summary + feature losses over the teachers present in a batch, combined by `balancer`."""

    def __init__(self, balancer: LossBalancer) -> None:
        super().__init__()
        self.balancer = balancer

    def forward(
        self,
        student: Mapping[str, object],
        teachers: Mapping[str, object],
        student_grid_hw: tuple[int, int] | None = None,
    ) -> LossOutput:
        """student: {teacher: adaptor output with .summary (B, C) | None and .features (B, T, D)};
        teachers: {teacher: TeacherOutput with .summary (B, C) | None and .features (B, h, w, D)}.
        Only teachers in `teachers` contribute (a rank sees its group's teachers)."""
        losses, cosine = {}, {}
        for name, target in teachers.items():
            if name not in student:
                raise KeyError(f"teacher {name!r} has no student adaptor; adaptors: {sorted(student)}")
            prediction = student[name]
            term = f"{name}/summary"
            if term in self.balancer.base_weights:
                if prediction.summary is None or target.summary is None:
                    raise ValueError(f"{term} has a weight but the student or teacher gives no summary")
                goal = self.balancer.normalize_target(term, target.summary)
                losses[term], cosine[term] = summary_loss(prediction.summary, goal)
            term = f"{name}/features"
            if term in self.balancer.base_weights:
                goal = self.balancer.normalize_target(term, target.features)
                losses[term], cosine[term] = feature_loss(prediction.features, goal, student_grid_hw)
        if not losses:
            raise ValueError(
                f"no loss terms for teachers {sorted(teachers)}: every weight is zero or unknown"
            )
        total = self.balancer(losses)
        weights = {term: w.detach() for term, w in self.balancer.weights(losses).items()}
        return LossOutput(total, {k: v.detach() for k, v in losses.items()}, cosine, weights)
