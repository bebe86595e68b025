"""Rank/teacher partitioning (AM-RADIO section 4): which group of teachers each rank runs, and how much
its gradient counts.

Groups (teachers, student resolution, per-rank batch) get ranks by explicit count or share. The intended
update of one step is the weighted sum over groups of each group's mean-over-its-samples gradient,

    g = sum_k w_k * grad(mean loss of group k),   w_k = weight_k / sum(weight),

whatever the number of ranks each group has. Data-parallel engines average gradients over the `world`
ranks, so a rank running group k scales its loss by `world * w_k / n_k` (n_k = ranks running k): then
(1/world) * sum_ranks = sum_k w_k * (1/n_k) sum_{ranks of k} grad = g. With fewer ranks than groups (a
single process, say) every rank runs every group each step and the same formula holds.

With `group_sampling: weighted` each rank instead draws one group per step with probability w_k (seeded by
(seed, step, rank)) and is not rescaled: the expected update is g.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from distill.config import GroupConfig


def ranks_per_group(groups: list[GroupConfig], world_size: int) -> list[int]:
    """How many ranks run each group (fixed assignment), summing to `world_size` (or all ranks run all
    groups when there are fewer ranks than groups)."""
    if world_size < len(groups):
        return [world_size] * len(groups)
    counts: list[float | None] = [None] * len(groups)
    for i, g in enumerate(groups):
        if g.ranks is not None:
            counts[i] = g.ranks
        elif g.rank_share is not None:
            counts[i] = g.rank_share * world_size
    fixed = sum(c for c in counts if c is not None)
    free = [i for i, c in enumerate(counts) if c is None]
    for i in free:  # groups without a count or share split the remaining ranks evenly
        counts[i] = max(world_size - fixed, 0) / len(free)
    floors = [max(1, math.floor(c)) for c in counts]
    # largest remainder, so shares like 0.5/0.5 of 3 ranks still cover every rank
    order = sorted(range(len(groups)), key=lambda i: counts[i] - math.floor(counts[i]), reverse=True)
    k = 0
    while sum(floors) < world_size:
        floors[order[k % len(order)]] += 1
        k += 1
    if sum(floors) != world_size:
        raise ValueError(
            f"groups ask for {[g.ranks if g.ranks is not None else g.rank_share for g in groups]} ranks "
            f"(counts or shares), which gives {floors} = {sum(floors)} ranks, but the job has {world_size}: "
            f"fix groups.*.ranks / groups.*.rank_share"
        )
    return floors


@dataclass(frozen=True)
class Assignment:
    """One group a rank runs in a micro-step: the group's index, the loss scale, and the rank's slot among
    the ranks running that group (to pick disjoint samples)."""

    group: int
    scale: float
    slot: int
    num_slots: int


class RankPlan:
    """Which groups `rank` runs at each step, with their loss scales."""

    def __init__(
        self, groups: list[GroupConfig], rank: int, world_size: int, sampling: str, seed: int
    ) -> None:
        if sampling not in ("fixed", "weighted"):
            raise ValueError(f"distributed.group_sampling must be 'fixed' or 'weighted', got {sampling!r}")
        self.groups, self.rank, self.world_size, self.sampling, self.seed = (
            groups,
            rank,
            world_size,
            sampling,
            seed,
        )
        total = sum(g.weight for g in groups)
        self.weights = [g.weight / total for g in groups]
        self.counts = ranks_per_group(groups, world_size)
        if world_size < len(groups):
            self.members = [list(range(world_size)) for _ in groups]
        else:
            starts = [sum(self.counts[:i]) for i in range(len(groups))]
            self.members = [list(range(s, s + c)) for s, c in zip(starts, self.counts)]

    def assignments(self, step: int) -> list[Assignment]:
        """The groups this rank runs at optimizer step `step`."""
        if self.sampling == "weighted":
            rng = random.Random(f"{self.seed}/{step}/{self.rank}")
            k = rng.choices(range(len(self.groups)), weights=self.weights)[0]
            return [Assignment(k, 1.0, self.rank, self.world_size)]
        return [
            Assignment(
                k, self.world_size * self.weights[k] / self.counts[k], members.index(self.rank), len(members)
            )
            for k, members in enumerate(self.members)
            if self.rank in members
        ]

    def possible_groups(self) -> list[int]:
        """Groups this rank may run at some step (all of them when sampling by weight)."""
        if self.sampling == "weighted":
            return list(range(len(self.groups)))
        return [a.group for a in self.assignments(0)]

    def ranks_holding(self, teacher: str) -> list[int]:
        """The ranks that may run a group with `teacher` (and so have it loaded), in rank order."""
        if self.sampling == "weighted":
            return list(range(self.world_size))
        groups = [k for k, g in enumerate(self.groups) if teacher in g.teachers]
        return sorted({r for k in groups for r in self.members[k]})

    def describe(self) -> str:
        parts = [
            f"{g.name}: {n} rank(s) x {g.batch_size} img @ {g.resolution}px, weight {w:.3g}"
            for g, n, w in zip(self.groups, self.counts, self.weights)
        ]
        return f"{self.sampling} groups over {self.world_size} rank(s): " + "; ".join(parts)

    def sample_indices(self, micro_step: int, assignment: Assignment) -> list[int]:
        """Global sample indices of this rank's batch for `assignment` at micro-step `micro_step`: every
        (rank, group) of a micro-step reads a disjoint slice, and consecutive micro-steps follow each other,
        so the data position is a function of the step alone (resume needs nothing else)."""
        batch = self.groups[assignment.group].batch_size
        if self.sampling == "weighted":
            width = max(g.batch_size for g in self.groups)
            start = micro_step * self.world_size * width + assignment.slot * width
            return list(range(start, start + batch))
        sizes = [len(m) * g.batch_size for m, g in zip(self.members, self.groups)]
        start = micro_step * sum(sizes) + sum(sizes[: assignment.group]) + assignment.slot * batch
        return list(range(start, start + batch))
