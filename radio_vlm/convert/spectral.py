"""Baking spectral-reparametrised weights (`<m>.parametrizations.weight.*`) into plain weights, as the official loader does."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def bake_spectral(
    state: dict[str, torch.Tensor], source: Path, n_power_iterations: int = 1, eps: float = 1e-6
) -> dict[str, torch.Tensor]:
    """Replace `<m>.parametrizations.weight.*` with plain `<m>.weight`, as the official loader bakes them.

    The loader un-parametrises in training mode, so `n_power_iterations` power iterations run first (fixture
    README): u = normalize(W v), v = normalize(W^T u), sigma = u^T W v + eps, W' = W * s / sigma with
    s = softplus(scale) + 0.05 (`_sn_version` 2) or s = scale (version 1); qkv is baked per q/k/v part.
    `args.spectral_reparam=True` uses 1 iteration and eps 1e-6; its dict form says its own.
    """
    originals = [k for k in state if k.endswith(".parametrizations.weight.original")]
    state = dict(state)
    for key in originals:
        module = key.removesuffix(".parametrizations.weight.original")
        weight = state.pop(key).float()
        prefix = f"{module}.parametrizations.weight.0."
        params = {k.removeprefix(prefix): state.pop(k) for k in [k for k in state if k.startswith(prefix)]}
        num_parts = len({k.split(".")[1] for k in params if k.startswith("parts.")})
        parts = weight.chunk(num_parts) if num_parts else [weight]
        baked = []
        for i, part in enumerate(parts):
            sub = f"parts.{i}." if num_parts else ""
            try:
                scale, v, version = params[sub + "scale"], params[sub + "_v"], params.get(sub + "_sn_version")
            except KeyError as err:
                raise ValueError(
                    f"{source}: spectral parametrisation of {module} lacks {sub}{err.args[0]}"
                ) from err
            version = int(version) if version is not None else 2
            if version not in (1, 2):
                raise ValueError(f"{source}: {module} has unsupported spectral _sn_version {version}")
            v = v.float()
            for _ in range(n_power_iterations):
                u = F.normalize(part @ v, dim=0, eps=eps)
                v = F.normalize(part.T @ u, dim=0, eps=eps)
            sigma = u @ part @ v + eps
            s = F.softplus(scale.float()) + 0.05 if version == 2 else scale.float()
            baked.append(part * s.reshape(()) / sigma)
        state[f"{module}.weight"] = torch.cat(baked)
    leftover = [k for k in state if ".parametrizations." in k]
    if leftover:
        raise ValueError(f"{source}: unsupported parametrisation keys, e.g. {leftover[:3]}")
    return state
