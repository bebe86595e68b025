"""Classification data for k-NN and zero-shot: ImageFolder trees, the official resize rules, class names and
prompt templates.

An ImageFolder is `ROOT/<class>/**/<image>`: one folder per class, classes in sorted folder order (the
torchvision convention, which for ImageNet-1k is the order of the shipped class names). Unreadable images
are not fatal: they come back with an `error` and the protocols skip and count them.

Resolution (`--resolution`), as the official RADIO scripts (examples/common/resize_transform.py):

- one value N: the short side becomes N px, aspect kept; each side is then rounded to the nearest multiple
  of the model's resolution step (no crop);
- two values H W: the image is scaled to cover H x W, each side rounded to a multiple of the step, then
  centre-cropped to H x W (padded with the model's pad colour where the rounding left it short).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..models.image_io import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Built-in data files shipped with the package (radio_vlm/evaluation/data).
CLASSNAME_SETS = {"imagenet": "imagenet_classnames.txt"}
TEMPLATE_SETS = {"openai": "templates_openai.txt", "simple": "templates_simple.txt"}


def package_file(name: str) -> str:
    """Text of a data file shipped in radio_vlm/evaluation/data."""
    return resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ImageFolder:
    """The images of an ImageFolder tree: `samples[i] = (path, label)`, `classes[label]` = folder name."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]

    @classmethod
    def scan(cls, root: str | Path, what: str = "ImageFolder") -> ImageFolder:
        """List `root` (one folder per class). Raises ValueError naming the folder for a missing root, a root
        without class folders, or a class folder without images."""
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{what} {root} is not a folder: pass a folder with one sub-folder per class")
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise ValueError(f"{what} {root} has no class folders: expected {root}/<class>/<image files>")
        samples = []
        for label, name in enumerate(classes):
            files = sorted(_image_files(root / name))
            if not files:
                raise ValueError(
                    f"{what} {root}: class folder {name!r} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                    "add images or remove the folder"
                )
            samples += [(str(f), label) for f in files]
        return cls(root, tuple(classes), tuple(samples))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 class index of every sample."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [
            Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and f[0] != "."
        ]
    return files


def check_same_classes(train: ImageFolder, val: ImageFolder) -> None:
    """The two trees must name the same classes (labels are folder indices)."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(
            f"ImageFolders {train.root} and {val.root} have different classes (only in train: {only_train[:5]}, "
            f"only in val: {only_val[:5]}); both need the same class folders"
        )


class ClassifyTransform:
    """PIL image -> (3, H, W) float32 in [0, 1] by the official rule for `resolution` (see the module docstring).

    `step`: both output sides are multiples of it (the model's `min_resolution_step`); `pad_value`: RGB in
    [0, 1] for the centre-crop mode's padding.
    """

    def __init__(self, resolution: tuple[int, ...], step: int, pad_value: tuple[float, float, float]) -> None:
        if len(resolution) not in (1, 2) or min(resolution) < 1:
            raise ValueError(
                f"--resolution takes one (short side) or two (H W) positive sizes, got {resolution}"
            )
        if len(resolution) == 2 and (resolution[0] % step or resolution[1] % step):
            fix = " ".join(str(max(step, round(r / step) * step)) for r in resolution)
            raise ValueError(
                f"--resolution {resolution[0]} {resolution[1]}: the model needs multiples of {step} px; pass {fix}"
            )
        self.resolution, self.step, self.pad_value = tuple(resolution), step, pad_value

    @classmethod
    def for_model(cls, model, resolution: tuple[int, ...] | None = None) -> ClassifyTransform:
        """The transform for `model`: its resolution step and pad colour; `resolution` (default: its preferred
        resolution (H, W), centre-cropped, as the official scripts' default)."""
        if not resolution:
            if model.preferred_resolution is None:
                raise ValueError("the model config has no preferred_resolution: pass --resolution")
            resolution = tuple(model.preferred_resolution)
        return cls(
            tuple(resolution), model.min_resolution_step, tuple(model.config.backbone_config.norm_mean)
        )

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        if len(self.resolution) == 1:
            scale = self.resolution[0] / min(height, width)
        elif height / width > self.resolution[0] / self.resolution[1]:
            scale = self.resolution[1] / width
        else:
            scale = self.resolution[0] / height
        return tuple(max(self.step, round(side * scale / self.step) * self.step) for side in (height, width))

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        height, width = self._resized(image.height, image.width)
        resized = image.resize((width, height), PIL.Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if len(self.resolution) == 1:
            return pixels.contiguous()
        out_h, out_w = self.resolution
        canvas_h, canvas_w = max(height, out_h), max(width, out_w)
        if (canvas_h, canvas_w) != (height, width):  # centred padding, as PadToSquare before the crop
            canvas = (
                torch.tensor(self.pad_value, dtype=torch.float32).view(3, 1, 1).repeat(1, canvas_h, canvas_w)
            )
            top, left = (canvas_h - height) // 2, (canvas_w - width) // 2
            canvas[:, top : top + height, left : left + width] = pixels
            pixels = canvas
        top, left = round((canvas_h - out_h) / 2.0), round((canvas_w - out_w) / 2.0)
        return pixels[:, top : top + out_h, left : left + out_w].contiguous()


class TransformedImages(torch.utils.data.Dataset):
    """`paths[i]` through `transform`: {"index": i, "image": tensor or None, "error": None or the reason}."""

    def __init__(self, paths: list[str], transform, indices: list[int] | None = None) -> None:
        self.paths, self.transform = paths, transform
        self.indices = list(range(len(paths))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict:
        index = self.indices[item]
        try:
            image = load_image(self.paths[index], f"image file {self.paths[index]}")
        except ValueError as err:  # corrupt or unreadable: skipped and counted by the caller
            return {"index": index, "image": None, "error": str(err)}
        return {"index": index, "image": self.transform(image), "error": None}


def add_resolution_flag(parser) -> None:
    """--resolution, as the official k-NN and zero-shot scripts take it."""
    parser.add_argument("--resolution", type=int, nargs="+", default=None,
                        help="N: short side N px, aspect kept; H W: cover H x W and centre-crop "
                             "(default: the model's preferred resolution, centre-cropped)")  # fmt: skip


def collate_list(items: list) -> list:
    return items


def load_classnames(spec: str, folder_classes: tuple[str, ...]) -> list[str]:
    """Class names for zero-shot, one per class in folder order.

    `spec`: "imagenet" (the shipped ImageNet-1k names), "folders" (the folder names, "_" read as a space)
    or a text file with one name per line (folder order)."""
    if spec == "folders":
        names = [c.replace("_", " ") for c in folder_classes]
    elif spec in CLASSNAME_SETS:
        names = package_file(CLASSNAME_SETS[spec]).splitlines()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"--classnames {spec}: not a file nor one of {sorted(CLASSNAME_SETS)} / 'folders'; pass a text file "
                "with one class name per line, in the folders' sorted order"
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(folder_classes):
        raise ValueError(
            f"--classnames {spec}: {len(names)} names for {len(folder_classes)} class folders; there must be "
            "one name per class folder"
        )
    return names


def load_templates(spec: str) -> list[str]:
    """Prompt templates, each with one "{}" for the class name: "openai" (the 80 OpenAI ImageNet templates),
    "simple" (open_clip's 7) or a text file with one template per line."""
    if spec in TEMPLATE_SETS:
        templates = package_file(TEMPLATE_SETS[spec]).splitlines()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--templates {spec}: not a file nor one of {sorted(TEMPLATE_SETS)}")
        templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(
            f"--templates {spec}: every template needs exactly one '{{}}' for the class name (bad: {bad[:3]})"
        )
    return templates
