"""The student: a `RadioWithAdaptors` whose adaptor heads are made from the teachers it distils.

One head per teacher (AM-RADIO section 3.2): MLP v2 with hidden width = the largest teacher dimension, a
summary head reading that teacher's own CLS token (one CLS per teacher with a summary) and a feature head
mapping every patch token. Training-time CPE is the model's own train mode. Optional: ViTDet window sizes
sampled per step (AM-RADIO section 4, "High-Resolution ViT Student") and spectral reparametrisation of the
backbone's Linear layers (Zhai et al. 2023, as the official v2 code: W * (softplus(scale) + 0.05) / sigma),
baked into plain weights on export.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from distill.config import DistillConfig, GroupConfig
from distill.phi_s import PhiSStandardizer
from distill.teachers import TeacherSpec
from radio_vlm import RadioWithAdaptors, RadioWithAdaptorsConfig
from radio_vlm.tiny import TINY_MODELS

logger = logging.getLogger("distill")
# Parameter-name suffix of the learnable spectral scales (weight decay `student.spectral_weight_decay`).
SPECTRAL_SCALE_SUFFIX = "parametrizations.weight.0.scale"


def student_config(config: DistillConfig, specs: Mapping[str, TeacherSpec]) -> RadioWithAdaptorsConfig:
    """The student's `RadioWithAdaptorsConfig` for the teachers `specs` (name -> spec, config order)."""
    s = config.student
    backbone: dict = {}
    if s.preset is not None:
        if s.preset not in TINY_MODELS:
            raise ValueError(
                f"student.preset: unknown {s.preset!r}; choose one of {sorted(TINY_MODELS)} or null"
            )
        backbone.update(TINY_MODELS[s.preset]["backbone_config"])
    backbone.update(s.backbone)
    with_summary = [t.head for t in config.teachers if specs[t.name].summary is not None]
    # E-RADIO has no CLS token: its one summary (the mean token) feeds every summary head, as officially.
    eradio = backbone.get("model_type") == "eradio"
    if not eradio:
        # One CLS token per teacher with a summary (official cls_token_per_teacher); the summary is all of them.
        backbone["num_cls_tokens"] = max(1, len(with_summary))
        backbone["summary_idxs"] = list(range(len(with_summary))) or [0]
    hidden = max(max(spec.feature_dim, spec.summary_dim or 0) for spec in specs.values())  # AM-RADIO 3.2
    head = {"hidden_dim": hidden, "num_inner": s.num_inner, "mlp_version": s.mlp_version}
    adaptors = {}
    for teacher in config.teachers:
        spec = specs[teacher.name]
        adaptors[teacher.head] = {
            "head_idx": 0 if eradio or teacher.head not in with_summary else with_summary.index(teacher.head),
            "summary": None if spec.summary is None else {**head, "output_dim": spec.summary_dim},
            "feature": {**head, "output_dim": spec.feature_dim},
        }
    resolution = max(g.resolution for g in config.groups)
    return RadioWithAdaptorsConfig(
        backbone_config=backbone,
        adaptors=adaptors,
        preferred_resolution=[resolution, resolution],
        training_cpe=s.training_cpe,
        version="radio-distill",
    )


def build_student(
    config: DistillConfig,
    specs: Mapping[str, TeacherSpec],
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> RadioWithAdaptors:
    """A freshly initialised student (deterministic given `train.seed`), spectral-reparametrised if asked.

    `init_state` (stage 2 from stage 1: `distill.export.init_state(config.student.init_from)`): every tensor
    whose name and shape match is copied before the reparametrisation (backbone and the heads of shared
    teachers); new heads keep their initialisation."""
    model_config = student_config(config, specs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        model = RadioWithAdaptors(model_config)
    if init_state is not None:
        own = model.state_dict()
        matched = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matched, strict=False)
        logger.info(f"student initialised from {config.student.init_from}: {len(matched)}/{len(own)} tensors")
    if config.student.spectral_reparam:
        enable_spectral_reparam(model)
    return model


# ----------------------------------------------------------------------------------------------------------
# Spectral reparametrisation


class SpectralReparam(nn.Module):
    """Parametrisation W -> W * (softplus(scale) + 0.05) / sigma(W) (official RADIO v2 form).

    sigma is u^T W v with u, v from one power-iteration step per training forward (none in eval), as
    torch's spectral_norm. `scale` starts so that the reparametrised weight equals W (init to current norm).
    u, v and sigma stay float32 when the weight is bf16 (`precision: bf16`); the result has W's dtype.
    """

    def __init__(self, weight: torch.Tensor, init_iterations: int = 15) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        generator = torch.Generator().manual_seed(0)
        u = F.normalize(torch.randn(out_features, generator=generator, dtype=weight.dtype), dim=0)
        v = F.normalize(torch.randn(in_features, generator=generator, dtype=weight.dtype), dim=0)
        self.register_buffer("_u", u.to(weight.device))
        self.register_buffer("_v", v.to(weight.device))
        with torch.no_grad():
            for _ in range(init_iterations):
                self._power_iteration(weight)
            sigma = self._sigma(weight)
        # softplus^-1(sigma - 0.05): the initial reparametrised weight is W itself.
        target = (sigma - 0.05).clamp_min(1e-4)
        self.scale = nn.Parameter((target + torch.log(-torch.expm1(-target))).reshape(1, 1))

    @torch.no_grad()
    def _power_iteration(self, weight: torch.Tensor) -> None:
        weight = weight.to(self._u.dtype)
        self._v.copy_(F.normalize(weight.T @ self._u, dim=0, eps=1e-12))
        self._u.copy_(F.normalize(weight @ self._v, dim=0, eps=1e-12))

    def _sigma(self, weight: torch.Tensor) -> torch.Tensor:
        # clones: a later power iteration must not modify tensors saved for this forward's backward
        return torch.dot(self._u.clone(), weight.to(self._u.dtype) @ self._v.clone()) + 1e-6

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """weight (out, in) -> reparametrised weight (out, in), same dtype"""
        if self.training:
            self._power_iteration(weight.detach())
        factor = (F.softplus(self.scale.to(self._u.dtype)) + 0.05) / self._sigma(weight)
        return weight * factor.to(weight.dtype)


def _spectral_linears(model: RadioWithAdaptors) -> list[nn.Linear]:
    """Every Linear of the backbone's blocks (the official code skips only the patch generator)."""
    blocks = model.backbone.encoder if model.is_vit else model.backbone  # E-RADIO: all its Linears
    return [m for m in blocks.modules() if isinstance(m, nn.Linear)]


def enable_spectral_reparam(model: RadioWithAdaptors) -> None:
    for linear in _spectral_linears(model):
        parametrize.register_parametrization(linear, "weight", SpectralReparam(linear.weight.detach()))


@torch.no_grad()
def baked_state_dict(model: RadioWithAdaptors) -> dict[str, torch.Tensor]:
    """The model's state dict with every spectral-parametrised weight replaced by its current (eval-mode)
    value W * s / sigma under the plain `<module>.weight` name."""
    was_training = model.training
    model.eval()
    state = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            state[f"{name}.weight"] = module.weight.detach().clone()
    model.train(was_training)
    return state


def exportable_student(
    model: RadioWithAdaptors,
    phi_s: PhiSStandardizer | None = None,
    heads: Mapping[str, str] | None = None,
) -> RadioWithAdaptors:
    """A plain float32 copy for `save_pretrained`: spectral weights baked, ViTDet off, eval mode, and with
    `phi_s` (the run's PHI-S statistics; `heads` maps teacher -> adaptor head) the inverse standardisation
    folded into the last Linear of every standardised head, so that its outputs are in the teacher's space.

    (A fresh model loaded with the baked weights: deep-copying a parametrised module shares its generated
    class, so removing the parametrisation from the copy would break the original.)
    """
    config = copy.deepcopy(model.config)
    config.vitdet_window_size = config.vitdet_num_global = config.vitdet_num_windowed = None
    plain = RadioWithAdaptors(config)
    plain.load_state_dict(baked_state_dict(model))
    for term in phi_s.dims if phi_s is not None else ():
        teacher, _, kind = term.rpartition("/")
        head = plain.adaptors[heads[teacher]]
        mlp = head.summary if kind == "summary" else head.feature
        phi_s.fold_into(term, [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1])
    return plain.to(next(model.parameters()).device).eval()


# ----------------------------------------------------------------------------------------------------------
# ViTDet window-size sampling


def vitdet_windows(group: GroupConfig, patch_size: int) -> list[int]:
    """The window sizes (patches) of `group.vitdet_window_sizes` that tile the group's patch grid; an error
    when the group asks for windows and none fits."""
    grid = group.resolution // patch_size
    sizes = [w for w in group.vitdet_window_sizes if w > 0 and grid % w == 0]
    if group.vitdet_window_sizes and not sizes:
        raise ValueError(
            f"group {group.name!r}: none of vitdet_window_sizes {group.vitdet_window_sizes} divides the "
            f"{grid}x{grid} patch grid of resolution {group.resolution}; pick divisors of {grid}"
        )
    return sizes


def sample_vitdet(model: RadioWithAdaptors, group: GroupConfig, rng: random.Random) -> int | None:
    """Set the ViTDet window for this step: one of the group's `vitdet_windows`, or global attention when
    the group has none. Returns the window (patches) or None."""
    sizes = vitdet_windows(group, model.patch_size)
    window = rng.choice(sizes) if sizes else None
    model.set_vitdet(window, group.vitdet_num_global)
    return window
