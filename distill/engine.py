"""The distributed engine behind one small interface: DeepSpeed owns the student (and any learned loss
weights); the training loop only calls `backward`, `step`, `lr`, `save` and `load`.

DeepSpeed settings come from `DistillConfig`: ZeRO stage 0/1/2, bf16 or fp32, gradient accumulation,
gradient clipping; the optimizer is torch AdamW with base lr 1e-3 and a cosine schedule (AM-RADIO section
4), given to DeepSpeed as a client optimizer (no fused-kernel compilation, works on CPU). A single process
needs no launcher: the engine creates a 1-rank process group itself (gloo on CPU, nccl on GPU). Under
`torchrun` or the `deepspeed` launcher it reads RANK / WORLD_SIZE / LOCAL_RANK from the environment.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import DistillConfig


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join (or create) the process group; returns (rank, world_size, local_rank)."""
    import deepspeed

    if "RANK" not in os.environ:  # no launcher: a 1-rank group of our own
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if not torch.cuda.is_available():
        # DeepSpeed's CPU backend otherwise compiles its shared-memory all-reduce kernel (minutes on a fresh
        # machine), which only DeepSpeed-inference uses; training all-reduces through gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank


def param_groups(
    module: nn.Module, weight_decay: float, spectral_decay: float, spectral_suffix: str
) -> list[dict]:
    """AdamW groups: decay on weight matrices, `spectral_decay` on spectral scales, none on the rest."""
    decay, spectral, other = [], [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(spectral_suffix):
            spectral.append(param)
        elif param.ndim >= 2 and "position_embedding" not in name and "cls_register_token" not in name:
            decay.append(param)
        else:
            other.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": spectral, "weight_decay": spectral_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine from 1 to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Engine:
    """DeepSpeed around `module`. `module(...)` runs the forward; `backward(loss)` then `step()` once per
    micro-batch (DeepSpeed applies the optimizer every `grad_accum` micro-batches)."""

    def __init__(self, module: nn.Module, config: DistillConfig, spectral_suffix: str) -> None:
        import deepspeed

        self.config = config
        optim = config.optim
        groups = param_groups(
            module, optim.weight_decay, config.student.spectral_weight_decay, spectral_suffix
        )
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))
        min_ratio = optim.min_lr / optim.lr if optim.lr > 0 else 0.0
        steps, warmup = config.train.max_steps, optim.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_schedule(s, steps, warmup, min_ratio)
        )
        ds_config: dict[str, Any] = {
            # Per-group batch sizes differ and the loop feeds its own batches: DeepSpeed's batch size is
            # only used for its throughput bookkeeping, so a nominal 1 per micro-step.
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": config.distributed.grad_accum,
            "gradient_clipping": optim.grad_clip,
            "zero_optimization": {"stage": config.distributed.zero_stage},
            "bf16": {"enabled": config.distributed.precision == "bf16"},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )

    @property
    def module(self) -> nn.Module:
        """The wrapped module (the student plus the loss balancer)."""
        return self.engine.module

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.config.distributed.precision == "bf16" else torch.float32

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        """Optimizer + scheduler step at the accumulation boundary, otherwise only bookkeeping."""
        self.engine.step()

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float | None:
        """Global gradient norm of the last optimizer step (before clipping)."""
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def full_grads(self) -> dict[str, torch.Tensor]:
        """Every parameter's full (reduced across ranks) gradient, after `backward` and before `step`."""
        from deepspeed.utils import safe_get_full_grad

        grads = {}
        for name, param in self.module.named_parameters():
            grad = safe_get_full_grad(param)
            if grad is not None:
                grads[name] = grad.detach().float().cpu().clone()
        return grads

    def save(self, directory: str | Path, client_state: dict) -> None:
        """Write model, optimizer and scheduler state (every rank writes its ZeRO partition) to `directory`."""
        self.engine.save_checkpoint(
            str(directory), tag="engine", client_state=client_state, save_latest=False
        )

    def load(self, directory: str | Path) -> dict:
        """Restore model, optimizer and scheduler from `directory`; returns the saved client state."""
        path, client_state = self.engine.load_checkpoint(
            str(directory), tag="engine", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"{directory} holds no DeepSpeed checkpoint (tag 'engine')")
        return client_state
