"""The few collectives the evaluation protocols need, for a single process or ranks started by `torchrun`.

    ctx = EvalContext.from_env(device=None)   # torchrun: one rank per GPU (NCCL), or gloo on CPUs
    mine = ctx.shard(len(dataset))            # this rank's indices: rank, rank + world, ...
    everything = ctx.gather_rows(mine_rows, mine)  # every rank's rows, back in dataset order

Tensors travel on the context's device (NCCL needs CUDA tensors, gloo CPU ones); results come back on the
CPU. A single process (no WORLD_SIZE) never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class EvalContext:
    """Where this process runs: rank, world size and the torch device for its model."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str | None = None) -> EvalContext:
        """Join the `torchrun` group if WORLD_SIZE > 1 (NCCL with CUDA, else gloo); pick the device:
        `device` if given, else this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is not None:
            chosen = torch.device(device)
        elif torch.cuda.is_available():
            chosen = torch.device("cuda", local_rank)
        else:
            chosen = torch.device("cpu")
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        rank = dist.get_rank() if dist.is_initialized() else 0
        return cls(rank=rank, world=dist.get_world_size() if dist.is_initialized() else 1, device=chosen)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """Indices of `count` items this rank handles (strided, so every rank gets a similar mix)."""
        return list(range(self.rank, count, self.world))

    def gather_rows(self, rows: torch.Tensor, indices: list[int], count: int) -> torch.Tensor:
        """(n_rank, ...) rows of items `indices` on each rank -> (count, ...) rows of every item, on the CPU.

        Items no rank produced stay zero (callers track which via their own masks)."""
        out = torch.zeros((count, *rows.shape[1:]), dtype=rows.dtype)
        if self.world == 1:
            out[torch.as_tensor(indices, dtype=torch.long)] = rows.cpu()
            return out
        index = torch.as_tensor(indices, dtype=torch.long)
        sizes = self._all_gather_sizes(len(indices))
        longest = max(sizes)
        padded_rows = rows.new_zeros((longest, *rows.shape[1:]))
        padded_rows[: len(indices)] = rows
        padded_index = torch.full((longest,), -1, dtype=torch.long)
        padded_index[: len(indices)] = index
        all_rows = [torch.empty_like(padded_rows, device=self.device) for _ in range(self.world)]
        all_index = [torch.empty_like(padded_index, device=self.device) for _ in range(self.world)]
        dist.all_gather(all_rows, padded_rows.to(self.device))
        dist.all_gather(all_index, padded_index.to(self.device))
        for size, part_rows, part_index in zip(sizes, all_rows, all_index):
            out[part_index[:size].cpu()] = part_rows[:size].cpu()
        return out

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks (float64)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects: skipped-file lists)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _all_gather_sizes(self, size: int) -> list[int]:
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([size], dtype=torch.long, device=self.device))
        return [int(s.item()) for s in sizes]
