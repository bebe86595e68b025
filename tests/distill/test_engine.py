"""The engine's interface: every collective of distill/ goes through `Collectives`, with tensors on the run's
device; a failure on rank 0 reaches every rank; bf16 leaves the float32/float64 buffers alone, at engine start
and after a resume (a real DeepSpeed engine in a subprocess)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.engine import Collectives, floating_buffers, restore_buffer_dtypes

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("bf16_worker.py")


def _distributed_uses(path: Path) -> list[str]:
    """`torch.distributed` / `deepspeed.comm` references (attribute chains and imports) in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in (
                ("torch", "distributed"),
                ("deepspeed", "comm"),
                ("deepspeed", "init_distributed"),
            ):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [
                f"{path.name}:{node.lineno} import {n}"
                for n in names
                if n.startswith(("torch.distributed", "deepspeed.comm"))
            ]
    return found


def test_only_the_engine_calls_torch_distributed():
    uses = {p.name: _distributed_uses(p) for p in (REPO / "distill").glob("*.py")}
    assert uses.pop("engine.py"), "the engine itself must hold the collectives"
    assert not [u for found in uses.values() for u in found]


def test_the_rule_sees_a_collective_outside_the_engine(tmp_path):
    bad = tmp_path / "loop.py"
    bad.write_text("import torch\nimport torch.distributed as dist\ntorch.distributed.all_reduce(x)\n")
    assert len(_distributed_uses(bad)) == 2


class _Recorder:
    """Stands in for a torch.distributed collective: records where its tensors are, then stops."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __call__(self, name: str):
        def collective(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            self.calls.append((name, tensors[0].device if tensors else kwargs))
            raise _Stop

        return collective


class _Stop(Exception):
    pass


def test_helpers_put_their_tensors_on_the_engine_device(monkeypatch):
    recorder = _Recorder()
    for name in ("all_reduce", "broadcast_object_list", "barrier"):
        monkeypatch.setattr(torch.distributed, name, recorder(name))
    # "meta" stands for a device that is not the CPU (a GPU under NCCL) on a machine without one
    collectives = Collectives(0, 2, 1, torch.device("meta"), "gloo")
    with pytest.raises(_Stop):
        collectives.all_reduce_sum(torch.ones(3, dtype=torch.float64))  # a CPU tensor from the loop
    with pytest.raises(_Stop):
        collectives.broadcast_object({"step": 1})
    nccl = Collectives(0, 2, 1, torch.device("cuda", 1), "nccl")  # barrier on the rank's own GPU
    with pytest.raises(_Stop):
        nccl.barrier()
    assert recorder.calls == [
        ("all_reduce", torch.device("meta")),
        ("broadcast_object_list", {"src": 0, "device": torch.device("meta")}),
        ("barrier", {"device_ids": [1]}),
    ]


def _rank(rank: int, world: int, init_file: str, results: dict) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    collectives = Collectives(rank, world, rank, torch.device("cpu"), "gloo")
    total = collectives.all_reduce_sum(torch.tensor([rank + 1.0, 10.0], dtype=torch.float64))
    gathered = collectives.all_gather_object({"rank": rank})

    def fails_on_main():
        raise FileNotFoundError("data.index files.txt: 3 of 1000 entries checked do not exist")

    try:
        collectives.on_main(fails_on_main)
        error = None
    except FileNotFoundError as err:
        error = str(err)
    results[rank] = (total.tolist(), gathered, error, collectives.on_main(lambda: "built by rank 0"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_collectives_on_two_gloo_ranks_and_an_error_on_rank_0_reaches_every_rank(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(2, str(tmp_path / "init"), results), nprocs=2, start_method="fork")
        results = dict(results)
    message = "data.index files.txt: 3 of 1000 entries checked do not exist"
    for rank in (0, 1):
        assert results[rank] == ([3.0, 20.0], [{"rank": 0}, {"rank": 1}], message, "built by rank 0")


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.inner = nn.Module()
        self.inner.register_buffer("running", torch.tensor(0.123456789, dtype=torch.float64))
        self.register_buffer("u", torch.randn(3))
        self.register_buffer("count", torch.tensor(7))


def test_buffers_cast_with_the_module_are_restored_with_their_values():
    module = _WithBuffers()
    saved = floating_buffers(module)
    module.bfloat16()  # what older DeepSpeed releases did to the whole module under bf16
    assert restore_buffer_dtypes(module, saved) == ["u", "inner.running"]
    assert module.u.dtype == torch.float32 and module.inner.running.dtype == torch.float64
    assert module.inner.running.item() == 0.123456789 and torch.equal(module.u, saved["u"])
    assert module.linear.weight.dtype == torch.bfloat16 and module.count.dtype == torch.int64


@pytest.mark.slow
def test_bf16_engine_keeps_float_buffers_at_start_and_after_resume(tmp_path, subprocess_env):
    result = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], env=subprocess_env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = result.stdout.strip().splitlines()[-1]
    assert report == "ok adaloss phi_s", result.stdout[-2000:]
