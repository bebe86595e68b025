"""Distillation losses against hand-computed values and slow obvious implementations; each balancer's behaviour."""

import math

import pytest
import torch

from distill.losses import (
    AdaLossBalancer,
    DistillLoss,
    PhiSBalancer,
    UncertaintyBalancer,
    build_balancer,
    feature_loss,
    loss_terms,
    summary_loss,
)
from distill.phi_s import hadamard_matrix
from distill.teachers import TeacherOutput


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_summary_loss_hand_computed():
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    teacher = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    loss, cos = summary_loss(student, teacher)
    expected_cos = (1.0 + 1.0 / math.sqrt(2.0)) / 2.0
    assert cos.item() == pytest.approx(expected_cos, abs=1e-6)
    assert loss.item() == pytest.approx(1.0 - expected_cos, abs=1e-6)


def _bilinear_slow(grid: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """(h, w, D) -> (out_h, out_w, D), half-pixel centres (align_corners=False), edge-clamped."""
    h, w, _ = grid.shape
    rows = []
    for i in range(out_h):
        row = []
        for j in range(out_w):
            y = min(max((i + 0.5) * h / out_h - 0.5, 0.0), h - 1)
            x = min(max((j + 0.5) * w / out_w - 0.5, 0.0), w - 1)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            top = grid[y0, x0] * (1 - dx) + grid[y0, x1] * dx
            bottom = grid[y1, x0] * (1 - dx) + grid[y1, x1] * dx
            row.append(top * (1 - dy) + bottom * dy)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def _feature_loss_slow(student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    """Per-token loops: resize the smaller square grid, then 0.9 (1 - mean cos) + 0.1 mean smooth-L1."""
    size = max(student.shape[1], teacher.shape[1])
    cos_sum, l1_sum, tokens, elements = 0.0, 0.0, 0, 0
    for b in range(student.shape[0]):
        s = _bilinear_slow(student[b], size, size) if student.shape[1] < size else student[b]
        t = _bilinear_slow(teacher[b], size, size) if teacher.shape[1] < size else teacher[b]
        for i in range(size):
            for j in range(size):
                u, v = s[i, j].double(), t[i, j].double()
                cos_sum += float(u @ v / (u.norm() * v.norm()))
                tokens += 1
                for d in (u - v).abs().tolist():
                    l1_sum += 0.5 * d * d if d < 1.0 else d - 0.5
                    elements += 1
    cos = cos_sum / tokens
    return 0.9 * (1.0 - cos) + 0.1 * l1_sum / elements, cos


@pytest.mark.parametrize("student_side,teacher_side", [(2, 3), (4, 3), (3, 3)])
def test_feature_loss_matches_slow_reference(student_side, teacher_side):
    student = torch.randn(2, student_side * student_side, 5, generator=_gen(0)) * 2  # (B, T, D): NLC
    teacher = torch.randn(2, teacher_side, teacher_side, 5, generator=_gen(1)) * 2
    loss, cos = feature_loss(student, teacher)
    expected_loss, expected_cos = _feature_loss_slow(student.view(2, student_side, student_side, 5), teacher)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-5)
    assert cos.item() == pytest.approx(expected_cos, abs=1e-5)


def test_feature_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a square grid; pass student_grid_hw"):
        feature_loss(torch.zeros(1, 6, 4), torch.zeros(1, 2, 3, 4))
    loss, _ = feature_loss(torch.ones(1, 6, 4), torch.ones(1, 2, 3, 4), student_grid_hw=(2, 3))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="output_dim must equal the teacher's feature_dim"):
        feature_loss(torch.zeros(1, 4, 8), torch.zeros(1, 2, 2, 4))


class _Out:
    def __init__(self, summary, features):
        self.summary, self.features = summary, features


def _student_and_teachers(requires_grad: bool = True):
    g = _gen(2)
    student = {
        "clip": _Out(torch.randn(3, 6, generator=g), torch.randn(3, 16, 8, generator=g)),
        "sam": _Out(None, torch.randn(3, 16, 8, generator=g)),
        "dino": _Out(torch.randn(3, 4, generator=g), torch.randn(3, 16, 8, generator=g)),
    }
    for out in student.values():
        for t in (out.summary, out.features):
            if t is not None:
                t.requires_grad_(requires_grad)
    teachers = {
        "clip": TeacherOutput(torch.randn(3, 6, generator=g), torch.randn(3, 3, 3, 8, generator=g)),
        "sam": TeacherOutput(None, torch.randn(3, 8, 8, 8, generator=g)),
    }
    return student, teachers


def test_distill_loss_naive_total_is_weighted_sum_of_terms():
    weights = loss_terms({"clip": (1.0, 2.0), "sam": (0.0, 0.5), "dino": (1.0, 1.0)})
    assert weights == {"clip/summary": 1.0, "clip/features": 2.0, "sam/features": 0.5, "dino/summary": 1.0,
                       "dino/features": 1.0}  # fmt: skip
    criterion = DistillLoss(build_balancer("naive", weights))
    student, teachers = _student_and_teachers()
    out = criterion(student, teachers)  # dino's teacher is not in this rank's group: skipped
    assert set(out.components) == {"clip/summary", "clip/features", "sam/features"}
    expected = (
        summary_loss(student["clip"].summary, teachers["clip"].summary)[0]
        + 2.0 * feature_loss(student["clip"].features, teachers["clip"].features)[0]
        + 0.5 * feature_loss(student["sam"].features, teachers["sam"].features)[0]
    )
    torch.testing.assert_close(out.total, expected)
    assert out.cosine["clip/summary"].item() == pytest.approx(
        torch.nn.functional.cosine_similarity(student["clip"].summary, teachers["clip"].summary).mean().item()
    )
    out.total.backward()
    assert student["clip"].features.grad is not None and student["dino"].features.grad is None


def test_uncertainty_weights_learn_inverse_loss():
    balancer = UncertaintyBalancer({"a": 1.0, "b": 1.0})
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.5)}
    assert balancer.weights(losses)["a"].item() == pytest.approx(1.0)  # starts as naive
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.3)
    for _ in range(150):
        optimizer.zero_grad()
        balancer(losses).backward()
        optimizer.step()
    # min over s of exp(-s) L + s is at s = log L: the weight exp(-s) becomes 1 / L.
    weights = balancer.weights(losses)
    assert weights["a"].item() == pytest.approx(0.25, rel=1e-2)
    assert weights["b"].item() == pytest.approx(2.0, rel=1e-2)


def test_adaloss_weight_tracks_inverse_running_loss_and_resumes():
    balancer = AdaLossBalancer({"a": 1.0, "b": 2.0})
    balancer({"a": torch.tensor(1.0), "b": torch.tensor(0.5)})  # first value initialises the mean
    balancer({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})
    running_a = 0.99 * 1.0 + 0.01 * 2.0
    assert balancer.running_mean("a").item() == pytest.approx(running_a)
    weights = balancer.weights({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})
    assert weights["a"].item() == pytest.approx(1.0 / running_a, rel=1e-6)
    assert weights["b"].item() == pytest.approx(2.0 / 0.5, rel=1e-6)
    for _ in range(2000):  # a constant loss: the mean converges to it
        balancer({"a": torch.tensor(4.0)})
    assert balancer.weights({"a": torch.tensor(4.0)})["a"].item() == pytest.approx(0.25, rel=1e-3)

    restored = AdaLossBalancer({"a": 1.0, "b": 2.0})
    restored.load_state_dict(balancer.state_dict())
    assert restored.running_mean("a").item() == balancer.running_mean("a").item()
    restored.eval()  # evaluation does not move the running means
    restored({"a": torch.tensor(100.0)})
    assert restored.running_mean("a").item() == balancer.running_mean("a").item()


def test_hadamard_matrices_for_teacher_dims():
    for dim in (12, 20, 24, 32, 36, 768, 1024, 1152, 1280, 1536):
        h = hadamard_matrix(dim)
        torch.testing.assert_close(h @ h.T, torch.eye(dim, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(h.abs(), torch.full_like(h, dim**-0.5))
    with pytest.raises(ValueError, match="no Hadamard matrix of order 52"):
        hadamard_matrix(52)


def test_phi_s_standardises_targets_and_round_trips_through_safetensors(tmp_path):
    dim = 24
    mixing = torch.randn(dim, dim, generator=_gen(3)) * torch.linspace(0.05, 4.0, dim)
    features = (torch.randn(64, 5, 5, dim, generator=_gen(4)) @ mixing.T + 3.0).reshape(64, 5, 5, dim)
    summary = torch.randn(64, 12, generator=_gen(5)) * 7.0 - 2.0
    weights = {"clip/summary": 1.0, "clip/features": 1.0}
    balancer = build_balancer("phi_s", weights, dims={"clip/summary": 12, "clip/features": dim})
    with pytest.raises(RuntimeError, match="not fitted"):
        balancer.normalize_target("clip/features", features)
    for chunk in range(4):  # statistics over several batches
        balancer.observe(
            "clip", summary[chunk * 16 : (chunk + 1) * 16], features[chunk * 16 : (chunk + 1) * 16]
        )
    balancer.fit()
    standardised = balancer.normalize_target("clip/features", features).reshape(-1, dim).double()
    torch.testing.assert_close(standardised.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-4, rtol=0)
    # PHI-S: every dimension gets the same (unit) variance, unlike per-channel standardisation of x.
    variance = standardised.var(0, unbiased=False)
    torch.testing.assert_close(variance, torch.ones(dim, dtype=torch.float64), atol=1e-3, rtol=0)
    round_trip = balancer.denormalize("clip/features", balancer.normalize_target("clip/features", features))
    torch.testing.assert_close(round_trip, features, atol=1e-4, rtol=1e-4)

    path = str(tmp_path / "phi_s.safetensors")
    balancer.save_statistics(path)
    reloaded = PhiSBalancer(weights, dims={"clip/summary": 12, "clip/features": dim})
    reloaded.load_statistics(path)
    torch.testing.assert_close(
        reloaded.normalize_target("clip/summary", summary), balancer.normalize_target("clip/summary", summary)
    )


def test_phi_s_warns_naming_the_teacher_when_the_covariance_is_rank_deficient(caplog):
    dim = 32
    balancer = build_balancer(
        "phi_s", {"big/features": 1.0, "ok/summary": 1.0}, dims={"big/features": dim, "ok/summary": 4}
    )
    balancer.observe("big", None, torch.randn(1, 4, 5, dim, generator=_gen(1)))  # 20 vectors for 32 dims
    balancer.observe("ok", torch.randn(50, 4, generator=_gen(2)), None)
    assert balancer.observed() == {"big/features": 20, "ok/summary": 50}
    with caplog.at_level("WARNING"):
        balancer.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        len(warnings) == 1
        and "teacher 'big' features covariance has rank 19 < 32 (from 20 vectors)" in warnings[0]
    )


def test_phi_s_folded_into_a_linear_layer_equals_denormalising_its_output():
    from torch import nn

    dim = 12
    balancer = build_balancer("phi_s", {"t/features": 1.0}, dims={"t/features": dim})
    mixing = torch.randn(dim, dim, generator=_gen(6)) * torch.linspace(0.1, 3.0, dim)
    balancer.observe("t", None, torch.randn(500, dim, generator=_gen(7)) @ mixing.T + 5.0)
    balancer.fit()
    for upsample in (1, 4):  # a feature head with upsampling emits 4 blocks of D channels per token
        linear = nn.Linear(8, dim * upsample)
        x = torch.randn(10, 8, generator=_gen(8))
        with torch.no_grad():
            expected = balancer.denormalize("t/features", linear(x).reshape(10, upsample, dim)).reshape(
                10, -1
            )
        balancer.standardizer.fold_into("t/features", linear)
        with torch.no_grad():
            torch.testing.assert_close(linear(x), expected, atol=1e-4, rtol=1e-5)


def test_unknown_balancer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss balancing method 'ada'"):
        build_balancer("ada", {"a": 1.0})


def test_uncertainty_gives_absent_terms_zero_gradients():
    balancer = UncertaintyBalancer({"a": 1.0, "b": 1.0})
    balancer({"a": torch.tensor(2.0)}).backward()  # this rank's group has no "b" teacher
    assert balancer.log_vars["b"].grad is not None and balancer.log_vars["b"].grad.item() == 0.0
    assert balancer.log_vars["a"].grad.item() == pytest.approx(1.0 - 2.0)  # d/ds (exp(-s) L + s) at s=0


def _adaloss_rank(rank: int, world_size: int, init_file: str, results: dict) -> None:
    from distill.engine import Collectives

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    collectives = Collectives(rank, world_size, rank, torch.device("cpu"), "gloo")
    balancer = AdaLossBalancer({"a": 1.0, "b": 1.0}, reduce_sum=collectives.all_reduce_sum)
    losses = [{"a": torch.tensor(2.0)}, {"a": torch.tensor(4.0), "b": torch.tensor(5.0)}][rank]
    balancer(losses)
    results[rank] = (balancer.running_mean("a").item(), balancer.running_mean("b").item())
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_adaloss_running_means_agree_across_partitioned_ranks(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _adaloss_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, start_method="fork"
        )
        # "a" is averaged over both ranks, "b" comes from the only rank that has it; both ranks agree.
        assert dict(results) == {0: (3.0, 5.0), 1: (3.0, 5.0)}
