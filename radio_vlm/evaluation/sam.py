"""RADIO as a drop-in SAM image encoder: COCO instance mIoU from ground-truth box prompts.

    radio-vlm eval sam --model radio-h/ --adaptor sam --sam-checkpoint sam_vit_h_4b8939.pth --coco coco/ \
        [--agreement-with-teacher]

segment_anything's `Sam` keeps its prompt encoder, mask decoder and the neck of its image encoder; the ViT
before the neck is replaced by RADIO's `sam` adaptor features (the paper distils SAM's features before the
neck), brought to SAM's embedding grid (64x64 for a 1024 px input) by bilinear resizing when RADIO's grid
differs. The image goes through SAM's own pipeline (longest side to its input size, padded square) with
RADIO's normalisation, as the official `RADIOVenc` example does (sam.pixel_mean/std = RADIO's x 255).

Protocol (EfficientViT-SAM's box-prompted COCO evaluation, AM-RADIO Table 8): every annotation with area
>= 1 is one prompt (its xywh box as xyxy); SAM predicts three masks and the one with the highest predicted
IoU is kept; IoU with the annotation's mask (pycocotools) in percent; mIoU = mean over instances, also per
COCO area range (small < 32^2 <= medium < 96^2 <= large). `--agreement-with-teacher` runs SAM's own
encoder on the same prompts: the mIoU between student-driven and teacher masks (two empty masks agree),
and the teacher's own mIoU for reference.

SAM checkpoints: an official file (sam_vit_{h,l,b}_*.pth: the architecture from `--sam-arch`, or read from
the encoder's width), or a folder with sam_config.json + model.safetensors as `save_sam` (and
`radio-distill save-teacher`) write it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models.image_io import load_image
from .common import Run, add_model_flags, autocast, percent
from .distributed import EvalContext

# ImageEncoderViT arguments of the released SAMs (segment_anything/build_sam.py, _build_sam).
SAM_IMAGE = {"img_size": 1024, "patch_size": 16, "window_size": 14, "out_chans": 256}
SAM_ARCHS: dict[str, dict] = {
    "vit_h": {
        **SAM_IMAGE,
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "global_attn_indexes": (7, 15, 23, 31),
    },
    "vit_l": {
        **SAM_IMAGE,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "global_attn_indexes": (5, 11, 17, 23),
    },
    "vit_b": {
        **SAM_IMAGE,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "global_attn_indexes": (2, 5, 8, 11),
    },
}
# Fixed for every size in _build_sam.
SAM_ENCODER_FIXED = {"mlp_ratio": 4, "qkv_bias": True, "use_rel_pos": True}
SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
CONFIG_FILE, WEIGHTS_FILE = "sam_config.json", "model.safetensors"
# COCO area ranges (px^2), as EfficientViT-SAM's get_iou_metric
AREA_RANGES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}


def build_sam(encoder: Mapping):
    """segment_anything's `Sam` wired as its `_build_sam`, at any size.

    `encoder`: ImageEncoderViT arguments (img_size, patch_size, embed_dim, depth, num_heads, window_size,
    global_attn_indexes, out_chans). The prompt encoder and mask decoder take SAM's own hyper-parameters
    (two-way transformer depth 2, MLP 2048, 8 heads; IoU head 3 x 256; 3 multimask outputs) at width
    `out_chans`, so `build_sam(SAM_ARCHS["vit_h"])` is exactly `sam_model_registry["vit_h"]()` and a tiny
    encoder gives a tiny SAM. Random weights; eval mode.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    width, size = encoder["out_chans"], encoder["img_size"]
    grid = size // encoder["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            **SAM_ENCODER_FIXED, **encoder, norm_layer=partial(nn.LayerNorm, eps=1e-6)
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=width,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=width, mlp_dim=2048, num_heads=8),
            transformer_dim=width,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    return sam.eval()


def save_sam(sam, encoder: Mapping, out: str | Path) -> Path:
    """Write `sam` as a folder `load_sam` reads: sam_config.json ({"encoder": ...}) + model.safetensors."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps({"encoder": {k: v for k, v in encoder.items()}}, indent=1))
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(out / WEIGHTS_FILE))
    return out


def load_sam(checkpoint: str | Path, arch: str | None = None):
    """(Sam in eval mode, its encoder arguments) from an official checkpoint file or a `save_sam` folder."""
    from ..convert import read_state_dict

    path = Path(checkpoint)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(
                f"--sam-checkpoint {path}: a folder needs {CONFIG_FILE} and {WEIGHTS_FILE} (see save_sam)"
            )
        encoder = json.loads((path / CONFIG_FILE).read_text())["encoder"]
        path = path / WEIGHTS_FILE
    elif not path.is_file():
        raise ValueError(
            f"--sam-checkpoint {path} does not exist: pass a sam_vit_*.pth file or a save_sam folder"
        )
    else:
        encoder = None
    state = read_state_dict(path)
    if encoder is None:
        if arch is None:
            width = state.get("image_encoder.patch_embed.proj.weight")
            by_width = {spec["embed_dim"]: name for name, spec in SAM_ARCHS.items()}
            if width is None or width.shape[0] not in by_width:
                raise ValueError(
                    f"--sam-checkpoint {path}: not a full SAM checkpoint of vit_h/l/b; pass --sam-arch"
                )
            arch = by_width[width.shape[0]]
        encoder = SAM_ARCHS[arch]
    sam = build_sam(encoder)
    try:
        sam.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise ValueError(
            f"--sam-checkpoint {path}: does not match the SAM architecture {dict(encoder)} ({first.strip()}); "
            "pass the matching --sam-arch"
        ) from err
    return sam, dict(encoder)


class RadioSamEncoder(nn.Module):
    """SAM's image encoder interface (`img_size`, (B, 3, S, S) normalised input -> (B, out_chans, g, g)) on RADIO.

    Input is normalised with RADIO's mean/std (the Sam holding this encoder has pixel_mean/std = RADIO's x 255),
    so un-normalising gives RADIO's [0, 1] input. RADIO runs at `resolution` px (SAM's input size by default),
    its `adaptor` features are resized to SAM's `grid` when they differ, and SAM's `neck` maps them.
    """

    def __init__(
        self, radio, neck: nn.Module, img_size: int, grid: int, resolution: int, adaptor: str
    ) -> None:
        super().__init__()
        self.radio, self.neck, self.img_size, self.grid = radio, neck, img_size, grid
        self.resolution, self.adaptor = resolution, adaptor
        backbone = radio.config.backbone_config
        self.register_buffer("mean", torch.tensor(backbone.norm_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.norm_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        if pixels.shape[-1] != self.resolution:
            pixels = F.interpolate(pixels, size=(self.resolution,) * 2, mode="bilinear", antialias=True)
        pixels = pixels.to(next(self.radio.parameters()).dtype)
        features = self.radio(pixels, feature_fmt="NCHW").adaptors[self.adaptor].features
        if features.shape[-2:] != (self.grid, self.grid):
            features = F.interpolate(
                features.float(), size=(self.grid,) * 2, mode="bilinear", align_corners=False
            )
        return self.neck(features.to(next(self.neck.parameters()).dtype))


def student_sam(teacher, radio, adaptor: str, resolution: int | None):
    """A `Sam` sharing `teacher`'s neck, prompt encoder and mask decoder, with RADIO in place of its ViT."""
    from segment_anything.modeling import Sam

    encoder = teacher.image_encoder
    head = radio.config.adaptors[adaptor]["feature"]
    neck_in = encoder.neck[0].in_channels
    if head is None or head["output_dim"] != neck_in:
        width = None if head is None else head["output_dim"]
        raise ValueError(
            f"adaptor {adaptor!r} gives {width} feature channels but the SAM checkpoint's neck takes {neck_in}: "
            "pass the SAM the adaptor was distilled from (--sam-checkpoint)"
        )
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    step = radio.min_resolution_step
    resolution = resolution or encoder.img_size
    if resolution % step:
        raise ValueError(f"--resolution {resolution}: the model needs a multiple of {step} px")
    backbone = radio.config.backbone_config
    return Sam(
        image_encoder=RadioSamEncoder(radio, encoder.neck, encoder.img_size, grid, resolution, adaptor),
        prompt_encoder=teacher.prompt_encoder,
        mask_decoder=teacher.mask_decoder,
        pixel_mean=[255.0 * v for v in backbone.norm_mean],
        pixel_std=[255.0 * v for v in backbone.norm_std],
    ).eval()


def load_coco(annotations: Path, images: Path, max_images: int | None = None) -> list[dict]:
    """[{"id", "path", "height", "width", "anns": [annotation with area >= 1, ...]}] of the images with
    annotations, in id order. Raises ValueError naming the file and id for an image missing from `images`."""
    from pycocotools.coco import COCO

    if not annotations.is_file():
        raise ValueError(
            f"COCO annotation file {annotations} not found (--coco DIR expects DIR/annotations/instances_<split>.json)"
        )
    coco = COCO(str(annotations))
    orphans = sorted({a["image_id"] for a in coco.dataset.get("annotations", [])} - set(coco.imgs))
    if orphans:
        raise ValueError(
            f"{annotations}: annotations refer to image id {orphans[0]} that its images list lacks"
        )
    entries = []
    for image_id in sorted(coco.imgs):
        anns = [a for a in coco.imgToAnns.get(image_id, []) if a["area"] >= 1]
        if anns:
            info = coco.imgs[image_id]
            entries.append({"id": image_id, "path": images / info["file_name"], "height": info["height"],
                            "width": info["width"], "anns": anns, "coco": coco})  # fmt: skip
    missing = [e for e in entries if not e["path"].is_file()]
    if missing:
        raise ValueError(
            f"{annotations}: image id {missing[0]['id']} ({missing[0]['path'].name}) is not in {images} "
            f"({len(missing)} of {len(entries)} images missing); pass the folder the file_name entries are in (--images)"
        )
    return entries[:max_images] if max_images else entries


def mask_iou(a: np.ndarray, b: np.ndarray, empty: float = 0.0) -> float:
    """IoU in percent of two boolean masks; `empty` when both are empty."""
    union = np.count_nonzero(a | b)
    return empty if union == 0 else 100.0 * np.count_nonzero(a & b) / union


def box_masks(predictor, image: np.ndarray, boxes_xyxy: np.ndarray, chunk: int = 64) -> np.ndarray:
    """(N, H, W) bool: SAM's best-of-three mask (highest predicted IoU) for each box, as EfficientViT-SAM."""
    predictor.set_image(image)
    out = []
    for start in range(0, len(boxes_xyxy), chunk):
        boxes = torch.as_tensor(
            boxes_xyxy[start : start + chunk], dtype=torch.float32, device=predictor.device
        )
        boxes = predictor.transform.apply_boxes_torch(boxes, image.shape[:2])
        masks, scores, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True)
        best = scores.argmax(dim=1)
        out.append(masks[torch.arange(len(best)), best].cpu().numpy())
    predictor.reset_image()
    return np.concatenate(out)


@torch.inference_mode()
def sam_metrics(
    model, teacher, entries: list[dict], ctx: EvalContext, adaptor: str = "sam", resolution: int | None = None,
    agreement: bool = False, amp: bool = False,
) -> tuple[dict, list[tuple[str, str]]]:  # fmt: skip
    """The protocol on a model in memory and a SAM `teacher` (its neck, prompt encoder and mask decoder are
    reused): (metrics, skipped images). `entries` from `load_coco`; each rank evaluates its share."""
    from segment_anything import SamPredictor

    teacher = teacher.to(ctx.device)
    student = student_sam(teacher, model, adaptor, resolution).to(ctx.device)
    predictors = {"student": SamPredictor(student)}
    if agreement:
        predictors["teacher"] = SamPredictor(teacher)
    results, skipped = [], []
    mine = [entries[i] for i in ctx.shard(len(entries))]
    for entry in tqdm(mine, desc="sam images", unit="img", disable=not ctx.is_main):
        try:
            image = np.asarray(load_image(entry["path"], f"image file {entry['path']}"))
        except ValueError as err:
            skipped.append((str(entry["path"]), str(err)))
            continue
        if image.shape[:2] != (entry["height"], entry["width"]):
            raise ValueError(
                f"COCO image id {entry['id']} is {entry['width']}x{entry['height']} px in the annotations but "
                f"{entry['path']} is {image.shape[1]}x{image.shape[0]}: the images do not belong to these annotations"
            )
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in entry["anns"])])
        with autocast(ctx.device, amp):
            masks = {name: box_masks(p, image, boxes) for name, p in predictors.items()}
        for k, ann in enumerate(entry["anns"]):
            truth = entry["coco"].annToMask(ann).astype(bool)
            row = {"area": float(ann["area"]), "iou": mask_iou(masks["student"][k], truth)}
            if agreement:
                row["teacher_iou"] = mask_iou(masks["teacher"][k], truth)
                row["agreement"] = mask_iou(masks["student"][k], masks["teacher"][k], empty=100.0)
            results.append(row)
    results = [r for part in ctx.gather_objects(results) for r in part]
    skipped = [s for part in ctx.gather_objects(skipped) for s in part]
    if not results:
        raise ValueError("no COCO instance could be evaluated (every image unreadable?)")
    metrics = {"miou": _mean(results, "iou"), "num_instances": len(results), "num_images": len(entries)}
    metrics |= {f"miou_{name}": _mean([r for r in results if low <= r["area"] < high], "iou")
                for name, (low, high) in AREA_RANGES.items()}  # fmt: skip
    if agreement:
        metrics |= {
            "agreement_miou": _mean(results, "agreement"),
            "teacher_miou": _mean(results, "teacher_iou"),
        }
    return metrics, skipped


def run_sam(args: argparse.Namespace) -> dict:
    """The command: the protocol on a model folder; returns the metrics.json record."""
    args.adaptor = args.adaptor or "sam"
    run = Run("sam", args)
    annotations = (
        Path(args.annotations)
        if args.annotations
        else Path(args.coco) / "annotations" / f"instances_{args.split}.json"
    )
    images = Path(args.images) if args.images else Path(args.coco) / args.split
    entries = load_coco(annotations, images, args.max_images)
    teacher, _ = load_sam(args.sam_checkpoint, args.sam_arch)
    metrics, skipped = sam_metrics(run.model, teacher, entries, run.ctx, args.adaptor, args.resolution,
                                   args.agreement_with_teacher, args.amp)  # fmt: skip
    run.skipped += skipped
    rows = [("mIoU", percent(metrics["miou"]))] + [
        (f"mIoU {n}", percent(metrics[f"miou_{n}"])) for n in AREA_RANGES
    ]
    if args.agreement_with_teacher:
        rows += [
            ("agreement mIoU", percent(metrics["agreement_miou"])),
            ("teacher mIoU", percent(metrics["teacher_miou"])),
        ]
    rows.append(("instances", str(metrics["num_instances"])))
    settings = {"annotations": str(annotations), "images": str(images), "sam_checkpoint": str(args.sam_checkpoint),
                "resolution": args.resolution or teacher.image_encoder.img_size, "multimask": "best of 3 by predicted IoU"}  # fmt: skip
    return run.finish(settings, metrics, rows)


def _mean(rows: list[dict], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, "the adaptor distilled from SAM's encoder (default sam)")
    parser.add_argument(
        "--sam-checkpoint", required=True, help="sam_vit_*.pth, or a folder with sam_config.json"
    )
    parser.add_argument("--sam-arch", choices=sorted(SAM_ARCHS), default=None,
                        help="architecture of an official checkpoint file (default: read from its width)")  # fmt: skip
    parser.add_argument(
        "--coco", default=None, help="COCO root: annotations/instances_<split>.json and <split>/"
    )
    parser.add_argument("--split", default="val2017", help="COCO split name (default val2017)")
    parser.add_argument("--annotations", default=None, help="instances JSON (instead of --coco)")
    parser.add_argument("--images", default=None, help="image folder of --annotations (instead of --coco)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="px RADIO sees (default: SAM's input size, 1024 for the released SAMs)")  # fmt: skip
    parser.add_argument(
        "--max-images", type=int, default=None, help="evaluate only the first N images (by id)"
    )
    parser.add_argument("--agreement-with-teacher", action="store_true",
                        help="also run SAM's own encoder: mIoU between student-driven and teacher masks")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.coco is None and (args.annotations is None or args.images is None):
        raise ValueError("pass --coco DIR, or --annotations FILE with --images DIR")
    run_sam(args)
    return 0
