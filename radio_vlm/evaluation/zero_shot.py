"""Zero-shot classification through a CLIP/SigLIP adaptor and the teacher's own text tower.

    radio-vlm eval zero-shot --model radio-h/ --adaptor clip --text-tower dfn5b-clip-h/ --val imagenet/val \
        --classnames imagenet --templates openai [--agreement-with-teacher]

Class embeddings are open_clip's recipe (`build_zero_shot_classifier`, as RADIO's zero_shot_imagenet.py):
every template filled with the class name, each text embedding L2-normalised, their mean normalised again.
An image's logits are its normalised adaptor summary times the class embeddings; top-1 / top-5 as usual.

`--text-tower` is the teacher that the adaptor was distilled from, read locally:

- an open_clip folder (open_clip_config.json + weights, as the Hub's open_clip repos and
  `radio-distill save-teacher` write it);
- an open_clip weights file with `--text-tower-arch` (an open_clip model name, e.g. ViT-H-14-378-quickgelu);
- a Hugging Face CLIP or SigLIP folder (config.json + weights + tokenizer files), through transformers.

`--agreement-with-teacher` also runs the teacher's image tower (with its own preprocessing) on the same
images and reports how often student and teacher predict the same class, and the correlation of their logits
across images (x 100): measures of how faithfully the adaptor reproduces the teacher, meaningful even when
the teacher itself is random (a random teacher may predict one class everywhere, which makes agreement
trivial; `teacher_classes_predicted` says so, and the correlation still measures the fidelity).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .common import Run, add_model_flags, percent
from .datasets import (
    ClassifyTransform,
    ImageFolder,
    TransformedImages,
    add_resolution_flag,
    collate_list,
    load_classnames,
    load_templates,
)
from .distributed import EvalContext
from .embed import embed_images

CLASSES_PER_BATCH = 10  # text forwards of 10 classes x all templates, as open_clip's default
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class TextTower:
    """A teacher's text and image towers behind one interface (open_clip or transformers).

    encode_text(texts) -> (N, D) L2-normalised; encode_pixels(pixels) -> (N, D) L2-normalised image
    embeddings of pixels made by `preprocess` (a PIL image -> (3, H, W) tensor with the teacher's own resize
    and normalisation).
    """

    def __init__(self, source: str, model, tokenize, preprocess, kind: str) -> None:
        self.source, self.model, self.tokenize, self.preprocess, self.kind = (
            source,
            model.eval(),
            tokenize,
            preprocess,
            kind,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(texts)
        if self.kind == "open_clip":
            return self.model.encode_text(tokens.to(self.device), normalize=True).float()
        tokens = {key: value.to(self.device) for key, value in tokens.items()}
        return F.normalize(_pooled(self.model.get_text_features(**tokens)).float(), dim=-1)

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device)
        if self.kind == "open_clip":
            return self.model.encode_image(pixels, normalize=True).float()
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    @functools.cached_property
    def embed_dim(self) -> int:
        return int(self.encode_text(["a"]).shape[-1])


def _pooled(output) -> torch.Tensor:
    """get_*_features returns a tensor, or (newer transformers) an output whose pooler_output is the embedding."""
    return getattr(output, "pooler_output", output)


def load_text_tower(
    source: str | Path, arch: str | None = None, device: torch.device | str = "cpu"
) -> TextTower:
    """The teacher behind `--text-tower` (see the module docstring for the accepted layouts)."""
    path = Path(source)
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise ValueError(
                f"--text-tower {path}: open_clip_config.json but no weights file (.safetensors/.bin)"
            )
        return _open_clip_tower(str(path), f"local-dir:{path}", None, device)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf_tower(path, device)
    if path.is_file():
        if arch is None:
            raise ValueError(
                f"--text-tower {path} is a weights file: pass --text-tower-arch with its open_clip model name "
                "(e.g. ViT-H-14-378-quickgelu)"
            )
        return _open_clip_tower(str(path), arch, str(path), device)
    raise ValueError(
        f"--text-tower {path}: expected an open_clip folder (open_clip_config.json + weights), a Hugging Face "
        "CLIP/SigLIP folder (config.json) or an open_clip weights file with --text-tower-arch"
    )


def _open_clip_tower(source: str, name: str, pretrained: str | None, device) -> TextTower:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    return TextTower(source, model, open_clip.get_tokenizer(name), preprocess, "open_clip")


def _hf_tower(path: Path, device) -> TextTower:
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ("clip", "siglip", "siglip2"):
        raise ValueError(
            f"--text-tower {path}: model_type {config.model_type!r} is not a CLIP or SigLIP model (config.json)"
        )
    model = AutoModel.from_pretrained(path).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    siglip = config.model_type != "clip"
    max_length = config.text_config.max_position_embeddings

    def tokenize(texts: list[str]) -> dict:
        # SigLIP was trained on texts padded to max_length (64); CLIP pads to the longest text
        padding = "max_length" if siglip else True
        return tokenizer(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt")

    def preprocess(image) -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return TextTower(str(path), model, tokenize, preprocess, config.model_type)


def zero_shot_classifier(tower: TextTower, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """(D, num_classes) class embeddings: per class, the normalised mean of its normalised template embeddings."""
    columns = []
    for start in tqdm(range(0, len(classnames), CLASSES_PER_BATCH), desc="class embeddings", unit="batch"):
        batch = classnames[start : start + CLASSES_PER_BATCH]
        texts = [template.format(name) for name in batch for template in templates]
        embeddings = tower.encode_text(texts).reshape(len(batch), len(templates), -1).mean(dim=1)
        columns.append(F.normalize(embeddings, dim=-1).T)
    return torch.cat(columns, dim=1)


@torch.inference_mode()
def teacher_embeddings(
    tower: TextTower, paths: list[str], ctx: EvalContext, batch_size: int = 64, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (N, D), valid (N,)) of the teacher's own image tower, this rank's shard gathered."""
    loader = torch.utils.data.DataLoader(
        TransformedImages(paths, tower.preprocess, ctx.shard(len(paths))), batch_size=batch_size,
        num_workers=workers, collate_fn=collate_list,
    )  # fmt: skip
    rows, done = [], []
    for items in tqdm(loader, desc="teacher images", unit="batch", disable=not ctx.is_main):
        good = [item for item in items if item["error"] is None]
        if good:
            rows.append(tower.encode_pixels(torch.stack([item["image"] for item in good])).cpu())
            done += [item["index"] for item in good]
    local = torch.cat(rows) if rows else torch.zeros(0, tower.embed_dim)
    count = len(paths)
    return (
        ctx.gather_rows(local.to(ctx.device), done, count),
        ctx.gather_rows(torch.ones(len(done), dtype=torch.bool, device=ctx.device), done, count),
    )


def logit_correlation(student: torch.Tensor, teacher: torch.Tensor) -> float | None:
    """Mean over classes of the Pearson correlation, across images, of student and teacher logits (N, classes).

    Unlike agreement it does not need the teacher's predictions to vary: a random teacher whose argmax is the
    same class for every image still has image-dependent logits, which a faithful student reproduces."""
    a, b = student - student.mean(0), teacher - teacher.mean(0)
    norms = a.norm(dim=0) * b.norm(dim=0)
    keep = norms > 0
    return ((a * b).sum(0)[keep] / norms[keep]).mean().item() if keep.any() else None


def top_k_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top1 (N,) bool, top5 (N,) bool) of class logits (N, num_classes)."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return top[:, 0] == targets, (top == targets[:, None]).any(dim=1)


def zero_shot_metrics(
    model, adaptor: str, val: ImageFolder, tower: TextTower, classnames: list[str], templates: list[str],
    ctx: EvalContext, resolution: tuple[int, ...] | None = None, agreement: bool = False, batch_size: int = 64,
    workers: int = 0, amp: bool = False,
) -> tuple[dict, list[tuple[str, str]]]:  # fmt: skip
    """The protocol on a model in memory: (metrics, skipped images). `tower` must embed into the adaptor's
    summary width; `agreement` adds the teacher-agreement numbers (see the module docstring)."""
    summary = model.config.adaptors[adaptor]["summary"]
    if summary is None:
        raise ValueError(f"adaptor {adaptor!r} has no summary head; zero-shot needs one")
    if tower.embed_dim != summary["output_dim"]:
        raise ValueError(
            f"--text-tower {tower.source}: its embeddings have {tower.embed_dim} dims but adaptor {adaptor!r} "
            f"outputs {summary['output_dim']}: pass the text tower of the teacher this adaptor was distilled from"
        )
    classifier = zero_shot_classifier(tower, classnames, templates).cpu()
    transform = ClassifyTransform.for_model(model, resolution)
    paths = [p for p, _ in val.samples]
    student, valid, skipped = embed_images(
        model, paths, transform, ctx, adaptor, batch_size, workers, amp, "embed val"
    )
    targets = val.labels
    logits = F.normalize(student, dim=-1) @ classifier
    top1, top5 = top_k_correct(logits[valid], targets[valid])
    total = int(valid.sum())
    metrics = {
        "top1": 100.0 * top1.sum().item() / total,
        "top5": 100.0 * top5.sum().item() / total,
        "num_val": total,
    }
    if agreement:
        teacher, teacher_valid = teacher_embeddings(tower, paths, ctx, batch_size, workers)
        both = valid & teacher_valid
        teacher_logits = teacher[both] @ classifier
        t1, t5 = top_k_correct(teacher_logits, targets[both])
        correlation = logit_correlation(logits[both].double(), teacher_logits.double())
        metrics |= {
            "agreement": 100.0 * (teacher_logits.argmax(1) == logits[both].argmax(1)).double().mean().item(),
            "logit_correlation": None if correlation is None else 100.0 * correlation,
            "teacher_top1": 100.0 * t1.double().mean().item(),
            "teacher_top5": 100.0 * t5.double().mean().item(),
            # a teacher that predicts one class everywhere makes agreement trivial: say how many it uses
            "teacher_classes_predicted": int(teacher_logits.argmax(1).unique().numel()),
        }
    return metrics, skipped


def run_zero_shot(args: argparse.Namespace) -> dict:
    """The command: the protocol on a model folder; returns the metrics.json record."""
    if args.adaptor is None:
        raise ValueError("zero-shot needs --adaptor: the student's CLIP/SigLIP head (e.g. --adaptor clip)")
    run = Run("zero-shot", args)
    val = ImageFolder.scan(args.val, "--val ImageFolder")
    classnames = load_classnames(args.classnames, val.classes)
    templates = load_templates(args.templates)
    tower = load_text_tower(args.text_tower, args.text_tower_arch, run.ctx.device)
    resolution = ClassifyTransform.for_model(run.model, args.resolution and tuple(args.resolution)).resolution
    metrics, skipped = zero_shot_metrics(
        run.model, args.adaptor, val, tower, classnames, templates, run.ctx, resolution,
        args.agreement_with_teacher, args.batch_size, args.workers, args.amp,
    )  # fmt: skip
    run.skipped += skipped
    rows = [("top-1", percent(metrics["top1"])), ("top-5", percent(metrics["top5"]))]
    if args.agreement_with_teacher:
        rows += [("agreement w/ teacher", percent(metrics["agreement"])),
                 ("logit correlation", percent(metrics["logit_correlation"])),
                 ("teacher top-1", percent(metrics["teacher_top1"])),
                 ("teacher classes used", str(metrics["teacher_classes_predicted"]))]  # fmt: skip
    rows.append(("val images", str(metrics["num_val"])))
    settings = {"val": str(args.val), "text_tower": str(args.text_tower), "classnames": args.classnames,
                "templates": args.templates, "num_templates": len(templates), "classes": len(classnames),
                "resolution": list(resolution)}  # fmt: skip
    return run.finish(settings, metrics, rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, "the student's CLIP/SigLIP adaptor whose summary is text-aligned (required)")
    parser.add_argument(
        "--text-tower", required=True, help="the teacher: open_clip folder/file or HF CLIP/SigLIP folder"
    )
    parser.add_argument(
        "--text-tower-arch", default=None, help="open_clip model name when --text-tower is a weights file"
    )
    parser.add_argument("--val", required=True, help="ImageFolder of the images to classify")
    parser.add_argument("--classnames", default="imagenet",
                        help="'imagenet' (shipped), 'folders' (folder names) or a file, one name per line")  # fmt: skip
    parser.add_argument(
        "--templates", default="openai", help="'openai' (80), 'simple' (7) or a file with '{}' per line"
    )
    add_resolution_flag(parser)
    parser.add_argument("--agreement-with-teacher", action="store_true",
                        help="also run the teacher's image tower and report how often both predict the same class")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    run_zero_shot(args)
    return 0
