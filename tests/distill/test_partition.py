"""Rank/teacher partitioning: rank counts, loss scales, and a 2-rank DeepSpeed run whose reduced gradient
equals the intended weighted sum computed in one process without DeepSpeed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.batches import build_sources
from distill.config import GroupConfig, load_config
from distill.evaluate import evaluate_student
from distill.partition import RankPlan, ranks_per_group

WORKER = Path(__file__).with_name("partition_grad_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _worker_module():
    spec = importlib.util.spec_from_file_location("partition_grad_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _group(name, **kw):
    return GroupConfig(name=name, teachers=["t"], resolution=64, batch_size=2, **kw)


def test_ranks_per_group_shares_counts_and_small_worlds():
    assert ranks_per_group([_group("a", rank_share=0.5), _group("b", rank_share=0.5)], 64) == [32, 32]
    assert ranks_per_group([_group("a", ranks=6), _group("b")], 8) == [6, 2]
    assert ranks_per_group([_group("a", rank_share=0.5), _group("b", rank_share=0.5)], 3) in ([2, 1], [1, 2])
    assert ranks_per_group([_group("a"), _group("b")], 1) == [1, 1]  # one process runs both groups
    with pytest.raises(ValueError, match="ranks"):
        ranks_per_group([_group("a", ranks=6), _group("b", ranks=6)], 8)


def test_scales_make_the_update_the_weighted_sum():
    groups = [_group("a", rank_share=0.75, weight=3), _group("b", rank_share=0.25, weight=1)]
    plans = [RankPlan(groups, r, 8, "fixed", 0) for r in range(8)]
    # (1 / world) * sum over ranks of scale = normalised group weight, for every group
    for k, weight in enumerate([0.75, 0.25]):
        total = sum(a.scale for p in plans for a in p.assignments(0) if a.group == k) / 8
        assert total == pytest.approx(weight)
    single = RankPlan(groups, 0, 1, "fixed", 0).assignments(0)
    assert [(a.group, a.scale) for a in single] == [(0, 0.75), (1, 0.25)]
    # every (rank, group) reads its own samples
    seen = [n for r, p in enumerate(plans) for a in p.assignments(0) for n in p.sample_indices(5, a)]
    assert len(seen) == len(set(seen))


@pytest.mark.slow
def test_two_rank_partitioned_gradient_equals_single_process(tmp_path, subprocess_env, free_port):
    out = tmp_path / "grads.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               f"--master_port={free_port()}", str(WORKER), str(out)]  # fmt: skip
    result = subprocess.run(
        command, env=subprocess_env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    saved = torch.load(out, weights_only=True)
    assert saved["world"] == 2 and saved["assignments"] == 1  # each rank ran only its own group
    assert saved["teachers"] == ["tiny_clip", "tiny_dinov2"]  # and held only its own teachers

    worker = _worker_module()
    config = load_config(worker.CONFIG, worker.OVERRIDES)
    module, teachers = worker.build_module(config)
    module.eval()
    total = 0
    for rank in range(2):  # the same samples each rank used, combined as the intended weighted sum
        plan = RankPlan(config.groups, rank, 2, "fixed", config.train.seed)
        for assignment in plan.assignments(0):
            images, targets = worker.group_batch(config, plan, assignment, teachers)
            total = total + plan.weights[assignment.group] * module(images, targets).total
    total.backward()
    reference = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert set(reference) == set(saved["grads"])
    for name, grad in reference.items():
        torch.testing.assert_close(saved["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # both groups matter: the SAM head and the CLIP head both received gradient
    assert saved["grads"]["student.adaptors.sam.feature.fc1.weight"].abs().sum() > 0
    assert saved["grads"]["student.adaptors.clip.summary.fc1.weight"].abs().sum() > 0

    # the evaluation both ranks made of their shares, reduced, is the one-process evaluation of every image
    _, held_out = build_sources(config.data, config.train.seed)
    expected = evaluate_student(
        module.student, teachers, config, held_out, module.loss.balancer, torch.device("cpu")
    )
    assert set(saved["metrics"]["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}
    for name, values in expected["teachers"].items():
        for key, value in values.items():
            got = saved["metrics"]["teachers"][name][key]
            assert got == value if value is None else got == pytest.approx(value, abs=1e-6), (name, key)
