"""`radio-vlm export SRC OUT`: re-save a converted model with its code, for `trust_remote_code` users.

OUT then loads with `AutoModel.from_pretrained(OUT, trust_remote_code=True)` where `radio_vlm` is not
installed. The image processor, when SRC has its config, is re-saved with its code too (AutoImageProcessor).
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROCESSOR_FILE = "preprocessor_config.json"


def export_model(src: str | Path, out: str | Path) -> Path:
    """Load the `RadioWithAdaptors` folder `src` and save it to `out` with code files and `auto_map`."""
    from .models.image_processing_radio import RadioImageProcessor
    from .models.modeling_radio_with_adaptors import RadioWithAdaptors

    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: pass a folder written by `radio-vlm convert`")
    model = RadioWithAdaptors.from_pretrained(src)
    model.save_pretrained(out, export_code=True)
    if (src / PROCESSOR_FILE).is_file():
        RadioImageProcessor.from_pretrained(src).save_pretrained(out, export_code=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="a RadioWithAdaptors folder (from `radio-vlm convert` or save_pretrained)"
    )
    parser.add_argument("out", help="output folder: weights, config with auto_map, model code files")


def run(args: argparse.Namespace) -> int:
    out = export_model(args.src, args.out)
    print(f"exported to {out}; load with AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
