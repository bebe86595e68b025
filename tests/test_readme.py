"""The README's usage runs as written: its Python block and its `radio-vlm` commands, with the official
fixture checkpoint standing in for NVIDIA's weights and generated photos for the user's."""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import PIL.Image
import torch

from radio_vlm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _usage_blocks() -> tuple[str, list[list[str]]]:
    section = README.read_text().split("## Using it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)  # (language, body) in order
    python = next(body for lang, body in blocks if lang == "python")
    shell = next(body for lang, body in blocks if lang == "")
    commands = [
        shlex.split(line.split("#", 1)[0]) for line in shell.splitlines() if line.startswith("radio-vlm ")
    ]
    return python, commands


def test_readme_usage_runs_as_written(fixtures_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    photos = {"photos/a.jpg": (640, 480), "photos/b.jpg": (480, 640), "photo.jpg": (500, 375)}
    for k, (name, size) in enumerate(photos.items()):
        PIL.Image.effect_mandelbrot(size, (-2 + k * 0.1, -1.2, 1, 1.2), 60).convert("RGB").save(name)
    official = str(fixtures_dir / "radio_reference" / "vit_cpe_adaptors.pth.tar")

    python, commands = _usage_blocks()
    assert [c[1] for c in commands] == ["convert", "features", "visualize", "export"]
    for command in commands:
        args = [official if a == "radio_v2.5-h.pth.tar" else a for a in command[1:]]
        args = [p for a in args for p in (sorted(glob.glob(a)) if "*" in a else [a])]
        assert main(args) == 0, command

    namespace = {
        "img_640x480": PIL.Image.open("photos/a.jpg"),
        "img_480x640": PIL.Image.open("photos/b.jpg"),
    }
    exec(compile(python, "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.summary.shape[0] == 2 and out.adaptors["clip"].summary.shape[0] == 2
    grids = namespace["inputs"]["image_grid_hw"].tolist()
    assert grids[0] == grids[1][::-1]  # aspect kept: landscape and portrait grids are transposed
    assert out.features.shape[0] == sum(h * w for h, w in grids)  # packed: every image's patch tokens
    assert torch.isfinite(out.adaptors["sam"].features).all()
    for produced in ("converted/config.json", "feats.safetensors", "pca.png", "exported/config.json"):
        assert Path(produced).is_file(), produced
