"""Per-image RADIO outputs for a list of images, and the `radio-vlm features` command.

    radio-vlm features photos/*.jpg --model converted/ --adaptor clip --out feats.safetensors

The safetensors file holds, for image i (its index in the command line, unreadable images skipped):

    "{i}/summary"     (C,) float32   the summary vector (absent when the adaptor has no summary head)
    "{i}/features"    (T, D) float32 dense features, T = h*w tokens in row-major order over the grid
    "{i}/grid_hw"     (2,) int64     the feature grid (h, w)
    "{i}/image_size"  (2,) int64     the image's resized size (height, width) in px, before padding

and metadata (strings): "paths" (JSON list, index -> file), "skipped" (JSON list of [file, error]),
"model", "source" ("backbone" or the adaptor name), "long_edge", "device", "dtype".

The model runs on `--device` (default: CUDA when available) in `--dtype` (bf16 / fp16 / fp32, default fp32);
the features are saved as float32 whatever the dtype.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import PIL.Image
import torch
from tqdm import tqdm

from .models.image_io import load_image
from .models.image_processing_radio import RadioImageProcessor

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_device() -> str:
    """CUDA when a GPU is there, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(path: str | Path, device: str | None = None, dtype: str = "fp32"):
    """`AutoModel` + `AutoImageProcessor` from a model folder (the processor is derived from the model's
    config when the folder has no preprocessor_config.json). The model is loaded in `dtype` (a key of
    `DTYPES`) on `device` (default `default_device()`). Returns (model in eval mode, processor)."""
    from transformers import AutoImageProcessor, AutoModel

    import radio_vlm  # noqa: F401  (registers the Auto classes)

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model folder {path} has no config.json: pass a folder written by save_pretrained or `radio-vlm convert`"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    device = device or default_device()
    model = AutoModel.from_pretrained(path, dtype=DTYPES[dtype]).to(device).eval()
    if (path / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(path)
    else:
        print(
            f"note: {path} has no preprocessor_config.json; using the model config's resolution settings",
            file=sys.stderr,
        )
        processor = RadioImageProcessor.from_model_config(model.config)
    return model, processor


@torch.inference_mode()
def encode_images(
    model,
    processor: RadioImageProcessor,
    images: list[PIL.Image.Image | torch.Tensor],
    adaptor: str | None = None,
    long_edge: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> list[dict]:
    """Run `model` on each image (packed batches of `batch_size` differently sized images on ViT backbones,
    one at a time otherwise) and return one dict per image:

        summary (C,) or None, features (T, D) float32, grid_hw (h, w) of the features,
        token_px (pixels per feature token side), image_size (height, width) resized, before padding.

    `adaptor` picks an adaptor head's outputs instead of the backbone's.
    """
    if adaptor is not None and adaptor not in model.adaptors:
        raise ValueError(f"the model has no adaptor {adaptor!r}; it has {sorted(model.adaptors) or 'none'}")
    upsample = 1
    if adaptor is not None:
        head = model.config.adaptors[adaptor]["feature"]
        upsample = head["upsample_factor"] if head else 1
    packed = getattr(model, "is_vit", True)
    step = batch_size if packed else 1
    weight = next(model.parameters())
    results = []
    for start in tqdm(range(0, len(images), step), desc="images", unit="batch", disable=not progress):
        inputs = processor(images[start : start + step], long_edge=long_edge, pack=packed)
        grids = inputs["image_grid_hw"]
        pixel_values = inputs["pixel_values"].to(weight.device, weight.dtype)
        out = model(pixel_values, image_grid_hw=grids.to(weight.device)) if packed else model(pixel_values)
        source = out if adaptor is None else out.adaptors[adaptor]
        tokens = (grids.prod(-1) * upsample**2).tolist()
        features = source.features.float().cpu()
        per_image = features.split(tokens) if packed else [features[0]]
        for index, (grid, size, feats) in enumerate(
            zip(grids.tolist(), inputs["image_sizes"].tolist(), per_image)
        ):
            results.append(
                {
                    "summary": None if source.summary is None else source.summary[index].float().cpu(),
                    "features": feats,
                    "grid_hw": (grid[0] * upsample, grid[1] * upsample),
                    "token_px": processor.patch_size // upsample,
                    "image_size": tuple(size),
                }
            )
    return results


# ----------------------------------------------------------------- `radio-vlm features`


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every subcommand that runs `load_model_and_processor` + `encode_images`."""
    parser.add_argument(
        "--model", required=True, help="folder with a RadioWithAdaptors (config.json + weights)"
    )
    parser.add_argument(
        "--adaptor", default=None, help="use this adaptor's summary/features instead of the backbone's"
    )
    parser.add_argument(
        "--long-edge", type=int, default=None, help="resize the long edge to N px (default: the processor's)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="precision the model runs in (default fp32)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="images per packed forward (default 8)")


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    images, paths, skipped = [], [], []
    for path in args.images:
        try:
            images.append(load_image(path, f"image file {path}"))
            paths.append(path)
        except ValueError as err:  # a bad file is reported and skipped, the rest still run
            print(f"skipped: {err}", file=sys.stderr)
            skipped.append([path, str(err)])
    if not images:
        print(f"error: none of the {len(args.images)} images could be read", file=sys.stderr)
        return 1
    model, processor = load_model_and_processor(args.model, args.device, args.dtype)
    encoded = encode_images(
        model, processor, images, args.adaptor, args.long_edge, args.batch_size, progress=True
    )
    tensors = {}
    for index, item in enumerate(encoded):
        if item["summary"] is not None:
            tensors[f"{index}/summary"] = item["summary"].contiguous()
        tensors[f"{index}/features"] = item["features"].contiguous()
        tensors[f"{index}/grid_hw"] = torch.tensor(item["grid_hw"], dtype=torch.long)
        tensors[f"{index}/image_size"] = torch.tensor(item["image_size"], dtype=torch.long)
    metadata = {
        "paths": json.dumps(paths),
        "skipped": json.dumps(skipped),
        "model": str(args.model),
        "source": args.adaptor or "backbone",
        "long_edge": str(args.long_edge or processor.long_edge),
        "device": str(next(model.parameters()).device),
        "dtype": args.dtype,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out, metadata=metadata)
    first = encoded[0]
    summary_shape = None if first["summary"] is None else tuple(first["summary"].shape)
    print(
        f"wrote {out}: {len(encoded)} images ({len(skipped)} skipped); image 0: summary {summary_shape}, features {tuple(first['features'].shape)}"
    )
    return 0
