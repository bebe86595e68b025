"""The distributed engine behind one small interface: DeepSpeed owns the student (and any learned loss
weights); the training loop only calls `backward`, `step`, `lr`, `save` and `load`, and every collective of
distill/ goes through `Collectives` (`engine.collectives`), whose tensors live on the run's device (CUDA under
NCCL, CPU under gloo). No other module of distill/ calls `torch.distributed`.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from distill.config import DistillConfig

T = TypeVar("T")


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and ask)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Collectives:
    """The run's process group: who this process is, its device, and the only collectives distill/ uses.

    Every rank must make the same calls in the same order. The group always exists (a 1-rank group without
    a launcher), and the calls run even with one rank, so a 1-GPU run exercises NCCL like a 64-GPU one.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # where the student, teachers and every collective tensor live
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all ranks, as a new tensor on `tensor`'s device (reduced on `device`)."""
        reduced = tensor.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(reduced)
        return reduced.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] (picklable objects: small state, not tensors of data)."""
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 alone; every rank returns its result, or raises its error, so a failure on
        rank 0 (a bad data index, say) stops every rank instead of leaving them waiting in a collective."""
        outcome: tuple[bool, Any] | None = None
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as error:  # handed to every rank, raised below
                outcome = (False, error)
        ok, value = self.broadcast_object(outcome)
        if not ok:
            raise value
        return value

    def barrier(self) -> None:
        if self.backend == "nccl":
            torch.distributed.barrier(device_ids=[self.device.index])
        else:
            torch.distributed.barrier()


def init_distributed(backend: str | None = None, device: str | None = None) -> Collectives:
    """Join (or create) the process group. `device` defaults to cuda:LOCAL_RANK when CUDA is available,
    else cpu; `backend` to nccl on CUDA, gloo on CPU."""
    import deepspeed

    if "RANK" not in os.environ:  # no launcher: a 1-rank group of our own
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    run_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if run_device.type == "cuda":
        run_device = torch.device("cuda", local_rank if run_device.index is None else run_device.index)
        torch.cuda.set_device(run_device)
    backend = backend or ("nccl" if run_device.type == "cuda" else "gloo")
    if run_device.type != "cuda":
        # DeepSpeed's CPU backend otherwise compiles its shared-memory all-reduce kernel (minutes on a fresh
        # machine), which only DeepSpeed-inference uses; training all-reduces through gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend)
    return Collectives(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank,
                       run_device, torch.distributed.get_backend())  # fmt: skip


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


def floating_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every floating-point buffer of `module` (AdaLoss running means, PHI-S mean/rotation,
    spectral-norm u/v, the input conditioner's mean/std), by name."""
    return {name: b.detach().clone() for name, b in module.named_buffers() if b.is_floating_point()}


def restore_buffer_dtypes(module: nn.Module, saved: dict[str, torch.Tensor]) -> list[str]:
    """Put back every buffer in `saved` whose dtype changed (a bf16 cast of the whole module), with its
    saved values, on the buffer's current device; returns the names restored."""
    restored = []
    for name, buffer in list(module.named_buffers()):
        if name in saved and buffer.dtype != saved[name].dtype:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            owner._buffers[leaf] = saved[name].to(buffer.device)
            restored.append(name)
    return restored


class Engine:
    """DeepSpeed around `module`. `module(...)` runs the forward; `backward(loss)` then `step()` once per
    micro-batch (DeepSpeed applies the optimizer every `grad_accum` micro-batches).

    With `precision: bf16` parameters are bf16 (float32 master weights in DeepSpeed's optimizer) and every
    buffer keeps the dtype it was built with: running statistics lose too much in bf16. DeepSpeed releases
    with deepspeedai/DeepSpeed#8066 leave buffers alone; older ones cast the whole module, undone here.
    """

    def __init__(
        self, module: nn.Module, config: DistillConfig, spectral_suffix: str, collectives: Collectives
    ) -> None:
        import deepspeed

        self.config, self.collectives = config, collectives
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
        buffers = floating_buffers(module)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        restore_buffer_dtypes(self.engine.module, buffers)

    @property
    def module(self) -> nn.Module:
        """The wrapped module (the student plus the loss balancer)."""
        return self.engine.module

    @property
    def device(self) -> torch.device:
        return self.collectives.device

    @property
    def dtype(self) -> torch.dtype:
        """The student's compute dtype (its parameters' dtype)."""
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
