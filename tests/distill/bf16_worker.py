"""Subprocess worker for test_engine.py: `python bf16_worker.py DIR` builds the tiny config's DeepSpeed engine in
bf16 with spectral reparametrisation, for the AdaLoss and the PHI-S balancer, checks that the float buffers
(AdaLoss running means, PHI-S mean/rotation, spectral u/v) keep their dtype at engine start, trains two steps,
checkpoints, restores into a fresh engine and checks the dtypes and values again. Prints "ok adaloss phi_s".
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from distill.checkpoint import load_checkpoint, save_checkpoint
from distill.config import load_config
from distill.engine import Engine, init_distributed
from distill.losses import DistillLoss, PhiSBalancer, build_balancer, teacher_terms
from distill.student import SPECTRAL_SCALE_SUFFIX, build_student
from distill.teachers import get_teacher_spec, load_teacher
from distill.train import DistillModule

CONFIG = Path(__file__).resolve().parents[2] / "configs/distill/tiny.yaml"
# buffer name pieces -> the dtype they must keep
KEPT = {"running/": torch.float64, "standardizer.": torch.float32, "._u": torch.float32, "._v": torch.float32}


def build(config, comm, teachers) -> Engine:
    specs = {t.name: get_teacher_spec(t.name) for t in config.teachers}
    weights, dims = teacher_terms(config.teachers, specs)
    balancer = build_balancer(config.loss.balancer, weights, dims, reduce_sum=comm.all_reduce_sum)
    if isinstance(balancer, PhiSBalancer):
        for name, teacher in teachers.items():
            target = teacher(torch.rand(8, 3, teacher.spec.resolution, teacher.spec.resolution))
            balancer.observe(name, target.summary, target.features)
        balancer.fit(comm.all_reduce_sum)
    module = DistillModule(
        build_student(config, specs), DistillLoss(balancer), {t.name: t.head for t in config.teachers}
    )
    return Engine(module, config, SPECTRAL_SCALE_SUFFIX, comm)


def kept_buffers(engine: Engine) -> dict[str, torch.Tensor]:
    buffers = {
        n: b for n, b in engine.module.named_buffers() if any(k in n for k in KEPT) and "fitted" not in n
    }
    for name, buffer in buffers.items():
        expected = next(dtype for key, dtype in KEPT.items() if key in name)
        assert buffer.dtype == expected, f"{name}: {buffer.dtype}, expected {expected}"
    return {n: b.clone() for n, b in buffers.items()}


def main(out: Path) -> None:
    comm = init_distributed("gloo")
    done = []
    for balancer in ("adaloss", "phi_s"):
        config = load_config(CONFIG, ["distributed.precision=bf16", "student.spectral_reparam=true",
                                      f"loss.balancer={balancer}", "groups.0.batch_size=4"])  # fmt: skip
        teachers = {t.name: load_teacher(get_teacher_spec(t.name), "cpu") for t in config.teachers}
        engine = build(config, comm, teachers)
        assert {p.dtype for p in engine.module.parameters()} == {torch.bfloat16}  # really bf16 compute
        start = kept_buffers(engine)
        assert any("._u" in n for n in start) and any(
            k in n for n in start for k in ("running/", "standardizer.")
        )
        engine.train()
        for _ in range(2):
            images = torch.rand(4, 3, 64, 64)
            targets = {
                n: t(torch.rand(4, 3, t.spec.resolution, t.spec.resolution)) for n, t in teachers.items()
            }
            engine.backward(engine(images.to(engine.dtype), targets).total)
            engine.step()
        trained = kept_buffers(engine)
        assert any(not torch.equal(start[n], trained[n]) for n in start if "._u" in n)  # power iterations ran
        save_checkpoint(out / balancer, 2, engine, engine.module.student.state_dict(), {"step": 2})
        fresh = build(config, comm, teachers)
        load_checkpoint(out / balancer / "checkpoints/step-00000002", fresh)
        resumed = kept_buffers(fresh)
        for name, value in trained.items():
            assert torch.equal(resumed[name], value), f"{name} changed through the checkpoint"
        done.append(balancer)
    print("ok " + " ".join(done))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
