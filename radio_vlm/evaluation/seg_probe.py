"""Linear-probe semantic segmentation on frozen features (AM-RADIO section 5.3; the official mmseg config,
reimplemented without MMSeg).

    radio-vlm eval seg-probe --model radio-h/ --data ade20k/ --format ade20k --out runs/probe [--steps 160000]

Head: BatchNorm -> 1x1 conv on the frozen (backbone or `--adaptor`) features, logits bilinearly upsampled
to the label size, cross-entropy ignoring 255 (the official BNHead). AdamW lr 1e-3, no weight decay, batch 16,
linear warm-up then poly decay (power 1) to 0 (radio_linear_8xb2-80k_ade20k-512x512.py, warm-up 1500 of 80k
steps, kept as the same fraction). Training views as mmseg's ADE20k pipeline: random resize of the scale
(4 crop, crop) by 0.5-2x keeping the aspect, a random crop whose largest class covers < 75% when possible
(10 tries), horizontal flip, padding to the crop (image 0, label 255); photometric distortion is not applied.
Evaluation: resize to the scale (4 crop, crop), "slide" windows of the crop with stride 2/3 of it, averaged
logits resized to the original label, a confusion matrix (torchmetrics) over the whole set: per-class IoU,
mIoU = mean over classes present in labels or predictions, aAcc.

Data layouts (`--format`):

- ade20k: images/{training,validation}/*.jpg and annotations/{...}/*.png; label 0 is "other" and ignored,
  the rest shift down by one (reduce_zero_label), 150 classes;
- voc: JPEGImages/*.jpg, SegmentationClass/*.png (palette indices), ImageSets/Segmentation/{train,val}.txt;
  21 classes, 255 ignored.

A DATA/classes.txt (one name per line) replaces the format's class list, e.g. for a custom data set.
Checkpoints (OUT/probe_checkpoint.pt) every `--save-every` steps: `--resume` continues the same run exactly
(every training view is a function of the seed and its position in the run).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models.image_io import load_image
from .common import Run, add_model_flags, autocast, format_table, percent
from .datasets import package_file

IGNORE_INDEX = 255
CHECKPOINT = "probe_checkpoint.pt"
# Warm-up share of the official schedule: LinearLR over 1500 of 80k iterations.
WARMUP_FRACTION = 1500 / 80000
CAT_MAX_RATIO, CROP_TRIES = 0.75, 10  # mmseg RandomCrop


@dataclass(frozen=True)
class SegFormat:
    images: str  # folder of the images, {split} filled in
    labels: str  # folder of the label PNGs
    image_suffix: str
    split_list: str | None  # file listing the split's ids (VOC), else every image of the folder
    reduce_zero_label: bool
    classes: str  # shipped class-name file
    splits: tuple[str, str]  # (train, val)


FORMATS = {
    "ade20k": SegFormat("images/{split}", "annotations/{split}", ".jpg", None, True, "ade20k_classes.txt",
                        ("training", "validation")),
    "voc": SegFormat("JPEGImages", "SegmentationClass", ".jpg", "ImageSets/Segmentation/{split}.txt", False,
                     "voc_classes.txt", ("train", "val")),
}  # fmt: skip


def class_names(root: Path, fmt: SegFormat) -> list[str]:
    """DATA/classes.txt when present, else the format's shipped names."""
    custom = root / "classes.txt"
    text = custom.read_text(encoding="utf-8") if custom.is_file() else package_file(fmt.classes)
    return [line.strip() for line in text.splitlines() if line.strip()]


def list_pairs(root: Path, fmt: SegFormat, split: str) -> list[tuple[str, str]]:
    """(image, label) paths of one split; ValueError naming what is missing."""
    images, labels = root / fmt.images.format(split=split), root / fmt.labels.format(split=split)
    if fmt.split_list is not None:
        listing = root / fmt.split_list.format(split=split)
        if not listing.is_file():
            raise ValueError(
                f"--data {root}: split file {listing} not found ({split} split of the VOC layout)"
            )
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    else:
        if not images.is_dir():
            raise ValueError(
                f"--data {root}: image folder {images} not found (expected the {split} split here)"
            )
        ids = sorted(
            p.name[: -len(fmt.image_suffix)] for p in images.iterdir() if p.name.endswith(fmt.image_suffix)
        )
    if not ids:
        raise ValueError(f"--data {root}: no {fmt.image_suffix} images in {images}")
    pairs = [(str(images / f"{i}{fmt.image_suffix}"), str(labels / f"{i}.png")) for i in ids]
    missing = [label for _, label in pairs if not os.path.isfile(label)]
    if missing:
        raise ValueError(
            f"--data {root}: label {missing[0]} not found ({len(missing)} of {len(pairs)} labels missing)"
        )
    return pairs


def read_label(path: str, reduce_zero_label: bool, num_classes: int) -> np.ndarray:
    """(H, W) uint8 class indices, 255 = ignore; ValueError naming the file for values beyond the classes."""
    with PIL.Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"label {path}: mode {image.mode} is not a class-index image (L or P PNG); colour-coded masks must "
                "be converted to class indices first"
            )
        label = np.asarray(image).astype(np.int64)
    if reduce_zero_label:  # ADE20k: 0 ("other") ignored, classes 1..150 -> 0..149
        label = np.where(label == 0, 256, label) - 1
        label[label == 254] = IGNORE_INDEX
        label[label == 255] = IGNORE_INDEX
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(label[bad][0]) + (1 if reduce_zero_label else 0)
        raise ValueError(
            f"label {path}: value {value} is beyond the {num_classes} classes (valid "
            f"{'1..' + str(num_classes) if reduce_zero_label else '0..' + str(num_classes - 1)}, "
            f"{'0' if reduce_zero_label else '255'} = ignored): check --format, or list the classes in DATA/classes.txt"
        )
    return label.astype(np.uint8)


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv keep-ratio rescale: the largest size with long side <= max(scale) and short side <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
    h, w = size
    image = np.asarray(PIL.Image.fromarray(image).resize((w, h), PIL.Image.BILINEAR))
    if label is not None:
        label = np.asarray(PIL.Image.fromarray(label).resize((w, h), PIL.Image.NEAREST))
    return image, label


class ProbeTrainViews(torch.utils.data.Dataset):
    """Training view number k (a pure function of the seed and k, so a resumed run sees the same views):
    {"image": (3, c, c) float in [0, 1], "label": (c, c) int64} or {"error": message} for a bad label."""

    def __init__(self, pairs, crop: int, seed: int, reduce_zero_label: bool, num_classes: int) -> None:
        self.pairs, self.crop, self.seed = pairs, crop, seed
        self.reduce_zero_label, self.num_classes = reduce_zero_label, num_classes
        self._epoch, self._order = -1, None

    def __len__(self) -> int:  # views are indexed by the sampler, without end
        return 2**62

    def _index(self, k: int) -> int:
        epoch, position = divmod(k, len(self.pairs))
        if epoch != self._epoch:  # one permutation per epoch, as an infinite shuffled sampler
            self._epoch, self._order = (
                epoch,
                np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs)),
            )
        return int(self._order[position])

    def __getitem__(self, k: int) -> dict:
        rng = np.random.default_rng([self.seed, 1, k])
        skipped = []
        for attempt in range(len(self.pairs)):
            image_path, label_path = self.pairs[self._index(k + attempt)]
            try:
                image = np.asarray(load_image(image_path, f"image file {image_path}"))
            except ValueError as err:  # unreadable: skipped, counted, another image takes its place
                skipped.append((image_path, str(err)))
                continue
            try:
                label = read_label(label_path, self.reduce_zero_label, self.num_classes)
            except ValueError as err:
                return {"error": str(err)}
            if label.shape != image.shape[:2]:
                return {"error": f"label {label_path} is {label.shape[1]}x{label.shape[0]} px but its image is "
                                 f"{image.shape[1]}x{image.shape[0]}"}  # fmt: skip
            return {**self._view(image, label, rng), "skipped": skipped}
        return {"error": f"none of the {len(self.pairs)} training images could be read"}

    def _view(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
        c = self.crop
        ratio = rng.uniform(0.5, 2.0)
        size = rescale_size(*image.shape[:2], (int(4 * c * ratio), int(c * ratio)))
        image, label = _resize(image, label, size)
        top = left = 0
        for _ in range(CROP_TRIES):  # mmseg RandomCrop with cat_max_ratio
            top = int(rng.integers(0, max(size[0] - c, 0) + 1))
            left = int(rng.integers(0, max(size[1] - c, 0) + 1))
            counts = np.bincount(label[top : top + c, left : left + c].ravel(), minlength=256)[:IGNORE_INDEX]
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < CAT_MAX_RATIO:
                break
        image, label = image[top : top + c, left : left + c], label[top : top + c, left : left + c]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        pixels = torch.zeros(3, c, c)
        target = torch.full((c, c), IGNORE_INDEX, dtype=torch.long)
        h, w = label.shape
        pixels[:, :h, :w] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0).permute(
            2, 0, 1
        )
        target[:h, :w] = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        return {"image": pixels, "label": target}


def collate_views(items: list[dict]) -> dict:
    errors = [item["error"] for item in items if "error" in item]
    if errors:
        return {"error": errors[0]}
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.stack([item["label"] for item in items]),
        "skipped": [s for item in items for s in item["skipped"]],
    }


class LinearProbe(nn.Module):
    """BatchNorm + 1x1 conv (the official BNHead): (B, C, h, w) features -> (B, num_classes, h, w) logits."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(features))


def probe_lr(step: int, steps: int, warmup: int, base: float) -> float:
    """Linear warm-up from 1e-6 x base over `warmup` steps, then poly (power 1) decay to 0 at `steps`."""
    if step < warmup:
        return base * (1e-6 + (1 - 1e-6) * step / warmup)
    return base * max(0.0, 1 - (step - warmup) / max(1, steps - warmup))


@dataclass
class ProbeSettings:
    """How the probe is trained and evaluated (the official config's values where it has them)."""

    steps: int = 2000  # training steps (the paper: 160k)
    batch_size: int = 16  # crops per step (official: 8 GPUs x 2)
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.0  # AdamW (official: 0)
    warmup_steps: int | None = None  # linear warm-up (default: 1500/80000 of steps, as official)
    crop_size: int = 512  # training crop, slide window and (4 x crop, crop) resize scale
    save_every: int = 1000  # steps between checkpoints (with an output folder)
    resume: bool = False  # continue from OUT/probe_checkpoint.pt
    seed: int = 0  # probe initialisation and every training view
    workers: int = 0  # DataLoader workers
    amp: bool = False  # bf16 autocast of the frozen model

    @property
    def stride(self) -> int:
        return max(1, int(self.crop_size * 2 / 3))


@dataclass
class ProbeJob:
    """One probe: the frozen model and its feature source, the settings, where checkpoints go (None: nowhere),
    and the unreadable images met on the way."""

    model: nn.Module
    adaptor: str | None
    settings: ProbeSettings
    device: torch.device
    out: Path | None = None
    skipped: list = field(default_factory=list)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float32 frozen features of (B, 3, H, W) pixels, padded to the model's step."""
        pixels = pad_to(pixels, self.model.min_resolution_step).to(
            self.device, next(self.model.parameters()).dtype
        )
        with torch.no_grad(), autocast(self.device, self.settings.amp):
            out = self.model(pixels, feature_fmt="NCHW")
            features = out.features if self.adaptor is None else out.adaptors[self.adaptor].features
        return features.float()


def pad_to(pixels: torch.Tensor, step: int) -> torch.Tensor:
    """Pad (B, 3, H, W) bottom/right with zeros to multiples of `step` (the mmseg data preprocessor's pad 0)."""
    h, w = pixels.shape[-2:]
    return F.pad(pixels, (0, -w % step, 0, -h % step))


@torch.enable_grad()  # the probe learns even when called under no_grad (distill's end-of-run evaluation)
def train_probe(job: ProbeJob, probe: LinearProbe, train_pairs, fmt: SegFormat, num_classes: int) -> None:
    cfg = job.settings
    optimizer = torch.optim.AdamW(
        probe.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay
    )
    start = 0
    checkpoint = job.out / CHECKPOINT if job.out is not None else None
    if cfg.resume and checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        print(f"resumed the probe from {checkpoint} at step {start}")
    if start >= cfg.steps:
        return
    warmup = round(cfg.steps * WARMUP_FRACTION) if cfg.warmup_steps is None else cfg.warmup_steps
    views = ProbeTrainViews(train_pairs, cfg.crop_size, cfg.seed, fmt.reduce_zero_label, num_classes)
    loader = torch.utils.data.DataLoader(
        views, batch_size=cfg.batch_size, sampler=range(start * cfg.batch_size, cfg.steps * cfg.batch_size),
        num_workers=cfg.workers, collate_fn=collate_views,
    )  # fmt: skip
    probe.train()
    bar = tqdm(total=cfg.steps, initial=start, desc="probe", unit="step")
    t0, losses = time.perf_counter(), []
    for step, batch in enumerate(loader, start):
        if "error" in batch:
            raise ValueError(batch["error"])
        job.skipped += batch["skipped"]
        for group in optimizer.param_groups:
            group["lr"] = probe_lr(step, cfg.steps, warmup, cfg.lr)
        logits = probe(job.features(batch["image"]))
        logits = F.interpolate(logits, size=batch["label"].shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, batch["label"].to(job.device), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        bar.update(1)
        if done % 10 == 0 or done == cfg.steps:
            rate = (done - start) * cfg.batch_size / (time.perf_counter() - t0)
            bar.set_postfix_str(f"loss={np.mean(losses[-10:]):.4f} lr={group['lr']:.2e} img/s={rate:.1f}")
        if checkpoint is not None and (done % cfg.save_every == 0 or done == cfg.steps):
            partial = checkpoint.with_suffix(".partial")
            torch.save(
                {"step": done, "probe": probe.state_dict(), "optimizer": optimizer.state_dict()}, partial
            )
            partial.replace(checkpoint)  # atomic: a kill leaves the previous checkpoint
    bar.close()
    print(f"probe: {cfg.steps - start} steps, final loss {np.mean(losses[-10:]):.4f}")


@torch.no_grad()
def slide_logits(job: ProbeJob, probe: LinearProbe, pixels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, H, W) logits of one (3, H, W) image: crop windows with stride 2/3 of the crop, averaged."""
    crop, stride = job.settings.crop_size, job.settings.stride
    height, width = pixels.shape[-2:]
    logits = torch.zeros(num_classes, height, width, device=job.device)
    count = torch.zeros(1, height, width, device=job.device)
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            window = pixels[None, :, y1:y2, x1:x2]
            out = probe(job.features(window))
            out = F.interpolate(out, size=pad_to(window, job.model.min_resolution_step).shape[-2:], mode="bilinear",
                                align_corners=False)  # fmt: skip
            logits[:, y1:y2, x1:x2] += out[0, :, : y2 - y1, : x2 - x1].float()
            count[:, y1:y2, x1:x2] += 1
    return logits / count


def evaluate_probe(
    job: ProbeJob, probe: LinearProbe, val_pairs, fmt: SegFormat, num_classes: int
) -> torch.Tensor:
    """(num_classes, num_classes) confusion matrix (rows = labels) over the validation set."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX).to(job.device)
    probe.eval()
    scale = (4 * job.settings.crop_size, job.settings.crop_size)
    for image_path, label_path in tqdm(val_pairs, desc="probe eval", unit="img"):
        try:
            image = np.asarray(load_image(image_path, f"image file {image_path}"))
        except ValueError as err:
            job.skipped.append((image_path, str(err)))
            continue
        label = read_label(label_path, fmt.reduce_zero_label, num_classes)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} px but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        resized, _ = _resize(image, None, rescale_size(*image.shape[:2], scale))
        pixels = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        logits = slide_logits(job, probe, pixels.to(job.device), num_classes)
        logits = F.interpolate(logits[None], size=label.shape, mode="bilinear", align_corners=False)[0]
        target = torch.from_numpy(label.astype(np.int64)).to(job.device)
        confusion.update(logits.argmax(0).flatten(), target.flatten())
    return confusion.compute().double().cpu()


def iou_from_confusion(confusion: torch.Tensor) -> dict:
    """Per-class IoU and accuracy (None for a class absent from labels and predictions), mIoU over the rest, aAcc."""
    hits = confusion.diag()
    labelled, predicted = confusion.sum(1), confusion.sum(0)
    union = labelled + predicted - hits
    iou = torch.where(union > 0, hits / union.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64))
    acc = torch.where(
        labelled > 0, hits / labelled.clamp(min=1), torch.tensor(float("nan"), dtype=torch.float64)
    )
    present = ~torch.isnan(iou)
    return {
        "miou": 100.0 * iou[present].mean().item() if present.any() else None,
        "aacc": 100.0 * hits.sum().item() / max(labelled.sum().item(), 1),
        "iou": [None if math.isnan(v) else 100.0 * v for v in iou.tolist()],
        "acc": [None if math.isnan(v) else 100.0 * v for v in acc.tolist()],
    }


def seg_probe_metrics(
    model, data: str | Path, data_format: str, settings: ProbeSettings, device: torch.device,
    adaptor: str | None = None, out: Path | None = None,
) -> tuple[dict, list[tuple[str, str]], LinearProbe]:  # fmt: skip
    """Train and evaluate a probe on a model in memory: (metrics, skipped images, the probe)."""
    root, fmt = Path(data), FORMATS[data_format]
    names = class_names(root, fmt)
    train_pairs, val_pairs = (list_pairs(root, fmt, split) for split in fmt.splits)
    head = model.config.adaptors[adaptor]["feature"] if adaptor else None
    if adaptor and head is None:
        raise ValueError(f"adaptor {adaptor!r} has no feature head (--adaptor)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        probe = LinearProbe(head["output_dim"] if head else model.embed_dim, len(names)).to(device)
    job = ProbeJob(model, adaptor, settings, device, out)
    train_probe(job, probe, train_pairs, fmt, len(names))
    scores = iou_from_confusion(evaluate_probe(job, probe, val_pairs, fmt, len(names)))
    per_class = {name: {"iou": i, "acc": a} for name, i, a in zip(names, scores["iou"], scores["acc"])}
    metrics = {"miou": scores["miou"], "aacc": scores["aacc"], "per_class": per_class,
               "num_train": len(train_pairs), "num_val": len(val_pairs)}  # fmt: skip
    return metrics, job.skipped, probe


def run_seg_probe(args: argparse.Namespace) -> dict:
    """The command: the protocol on a model folder; returns the metrics.json record."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("seg-probe trains one probe in one process: run it without torchrun")
    run = Run("seg-probe", args)
    settings = ProbeSettings(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, crop_size=args.crop_size, save_every=args.save_every, resume=args.resume,
        seed=args.seed, workers=args.workers, amp=args.amp,
    )  # fmt: skip
    metrics, skipped, probe = seg_probe_metrics(
        run.model, args.data, args.format, settings, run.ctx.device, args.adaptor, run.out
    )
    run.skipped += skipped
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(run.out / "probe.safetensors"))
    per_class = metrics["per_class"]
    rows = [(n, f"{percent(v['iou'])} / {percent(v['acc'])}") for n, v in per_class.items()]
    print(format_table("per-class IoU / acc", rows))
    settings_record = {"data": str(args.data), "format": args.format, "classes": len(per_class),
                       "steps": settings.steps, "batch_size": settings.batch_size, "lr": settings.lr,
                       "crop_size": settings.crop_size, "stride": settings.stride,
                       "features": args.adaptor or "backbone"}  # fmt: skip
    rows = [("mIoU", percent(metrics["miou"])), ("aAcc", percent(metrics["aacc"])), ("steps", str(settings.steps)),
            ("val images", str(metrics["num_val"]))]  # fmt: skip
    return run.finish(settings_record, metrics, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, "probe this adaptor's features instead of the backbone's", batch_size=16)
    parser.add_argument("--data", required=True, help="data root in the --format layout")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="ade20k", help="data layout and label convention"
    )
    parser.add_argument(
        "--steps", type=int, default=2000, help="training steps (default 2000; the paper: 160000)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument(
        "--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0, as official)"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=None, help="linear warm-up steps (default 1500/80000 of --steps)"
    )
    parser.add_argument(
        "--crop-size", type=int, default=512, help="training crop and slide window in px (default 512)"
    )
    parser.add_argument(
        "--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/probe_checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    run_seg_probe(args)
    return 0
