"""save_pretrained(export_code=True) / `radio-vlm export`: loading with trust_remote_code, radio_vlm blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from radio_vlm.cli import main
from radio_vlm.convert import convert_official, save_converted
from radio_vlm.models.image_processing_radio import RadioImageProcessor
from radio_vlm.tiny import build_tiny_radio

BLOCKED_LOAD = textwrap.dedent(
    """
    import importlib.abc, sys
    class BlockRadioVlm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "radio_vlm" or name.startswith("radio_vlm."):
                raise ImportError("radio_vlm is blocked in this process")
    sys.meta_path.insert(0, BlockRadioVlm())
    import torch
    from transformers import AutoImageProcessor, AutoModel
    try:
        import radio_vlm  # noqa: F401
        raise SystemExit("radio_vlm was importable")
    except ImportError:
        pass
    for folder in sys.argv[1:]:
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert not type(model).__module__.startswith("radio_vlm"), type(model).__module__
        out = model(torch.load(folder + "/x.pt"))
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert not type(processor).__module__.startswith("radio_vlm"), type(processor).__module__
        inputs = processor([torch.load(folder + "/image.pt")])
        torch.save(
            {"features": out.features, **{"adaptor." + n: a.features for n, a in out.adaptors.items()},
             "pixel_values": inputs["pixel_values"], "processed_features": model(**inputs).features},
            folder + "/y_remote.pt",
        )
    """
)


def run_blocked(*folders: Path) -> None:
    """Load each folder with trust_remote_code in one child process that cannot import radio_vlm; it writes
    <folder>/y_remote.pt from <folder>/x.pt (model input) and <folder>/image.pt (processor input)."""
    env = {**os.environ, "HF_MODULES_CACHE": str(folders[0] / "hf_modules"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_LOAD, *map(str, folders)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_export_code_loads_without_radio_vlm(tmp_path):
    model = build_tiny_radio("tiny-radio")
    model.save_pretrained(tmp_path, export_code=True)
    processor = RadioImageProcessor.from_model_config(model.config)
    processor.save_pretrained(tmp_path, export_code=True)
    assert {"modeling_radio_with_adaptors.py", "adaptors.py", "windowing.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert {"image_processing_radio.py", "image_io.py"} <= {p.name for p in tmp_path.iterdir()}
    assert model.config.auto_map is None  # the in-memory config is left as it was
    assert "auto_map" not in processor.to_dict()  # and so is the processor
    x = torch.rand(1, 3, 32, 48)
    torch.save(x, tmp_path / "x.pt")
    image = torch.rand(3, 40, 56)
    torch.save(image, tmp_path / "image.pt")
    run_blocked(tmp_path)
    remote = torch.load(tmp_path / "y_remote.pt")
    out = model(x)
    torch.testing.assert_close(remote["features"], out.features, rtol=0, atol=0)
    torch.testing.assert_close(remote["adaptor.sam"], out.adaptors["sam"].features, rtol=0, atol=0)
    inputs = processor([image])
    torch.testing.assert_close(remote["pixel_values"], inputs["pixel_values"], rtol=0, atol=0)
    torch.testing.assert_close(remote["processed_features"], model(**inputs).features, rtol=0, atol=0)


def test_cli_export(tmp_path):
    model = build_tiny_radio("tiny-radio")
    model.save_pretrained(tmp_path / "plain")
    RadioImageProcessor.from_model_config(model.config).save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / "modeling_radio_with_adaptors.py").exists()
    assert main(["export", str(tmp_path / "plain"), str(tmp_path / "exported")]) == 0
    config = (tmp_path / "exported" / "config.json").read_text()
    assert '"AutoModel": "modeling_radio_with_adaptors.RadioWithAdaptors"' in config
    assert (tmp_path / "exported" / "modeling_radio_with_adaptors.py").is_file()
    processor_config = (tmp_path / "exported" / "preprocessor_config.json").read_text()
    assert '"AutoImageProcessor": "image_processing_radio.RadioImageProcessor"' in processor_config
    assert (tmp_path / "exported" / "image_processing_radio.py").is_file()


def test_export_code_runs_the_official_families(fixtures_dir, tmp_path):
    """Attention heads (E), the DINOv2 student's SwiGLU + patch bias (F), scaled LN + final norm (H) run from the
    exported code alone, with the same numbers."""
    more = fixtures_dir / "radio_reference_more"
    models = {}
    for source in ("cradio_v4_style.pth.tar", "dinov2_student.pth.tar", "vit_scaled_ln_hf"):
        folder = tmp_path / source.split(".")[0]
        models[folder] = convert_official(more / source)
        save_converted(models[folder], folder, export_code=True)
        assert "vit_variants.py" in {p.name for p in folder.iterdir()}
        side = models[folder].patch_size * 4
        torch.save(torch.rand(1, 3, side, side * 2), folder / "x.pt")
        torch.save(torch.rand(3, side + 5, side * 2), folder / "image.pt")
    run_blocked(*models)
    for folder, model in models.items():
        remote = torch.load(folder / "y_remote.pt")
        with torch.no_grad():
            out = model(torch.load(folder / "x.pt"))
        torch.testing.assert_close(remote["features"], out.features, rtol=0, atol=0)
        for name, head in out.adaptors.items():
            torch.testing.assert_close(remote["adaptor." + name], head.features, rtol=0, atol=0)
