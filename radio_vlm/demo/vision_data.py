"""The demo's vision benchmark for `radio-vlm eval`: the synthetic scenes as a classification ImageFolder,
ADE20k-layout segmentation masks and COCO instances (written by `radio-vlm demo-data` into DIR/vision):

    vision/classify/{train,val}/<shape>/*.png      ImageFolder, class = the scene's shape (k-NN, zero-shot)
    vision/segmentation/images/{training,validation}/*.jpg
    vision/segmentation/annotations/{training,validation}/*.png
    vision/segmentation/classes.txt                background, the shapes, word
    vision/coco/val2017/*.jpg                      one COCO instance per shape (category = the shape)
    vision/coco/annotations/instances_val2017.json

Training splits reuse the LLaVA training scenes; every validation scene is new and differs from each training
scene in content (see `data._Writer`). Segmentation labels follow ADE20k: 0 is ignored (the anti-aliased
fringe of the word), class k is stored as k + 1 (`reduce_zero_label`).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .data import SHAPES, Scene, _Writer, draw_shape, render_scene, scene_layout

SEG_CLASSES = ("background", *SHAPES, "word")
WORD_INK = 128  # text coverage (0..255) above which a pixel is the word; lighter fringe pixels are ignored


def render_labels(scene: Scene) -> np.ndarray:
    """(H, W) uint8 ADE20k-style label of `scene`: 1 + index in SEG_CLASSES, 0 = ignored word fringe."""
    font, text_xy, shapes = scene_layout(scene)
    ink = Image.new("L", (scene.width, scene.height), 0)
    ImageDraw.Draw(ink).text(text_xy, scene.word, fill=255, font=font, anchor="mm")
    ink = np.asarray(ink)
    label = np.full(ink.shape, 1 + SEG_CLASSES.index("background"), dtype=np.uint8)
    label[ink > 0] = 0
    label[ink > WORD_INK] = 1 + SEG_CLASSES.index("word")
    canvas = Image.fromarray(label)
    draw = ImageDraw.Draw(canvas)
    for shape, box, _ in shapes:  # drawn over the word, as in render_scene
        draw_shape(draw, shape, box, 1 + SEG_CLASSES.index(shape))
    return np.asarray(canvas)


def instance_masks(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """[(shape, (H, W) bool mask)] of every object of `scene`, with the geometry `render_scene` draws."""
    _, _, shapes = scene_layout(scene)
    masks = []
    for shape, box, _ in shapes:
        canvas = Image.new("L", (scene.width, scene.height), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, box, 1)
        masks.append((shape, np.asarray(canvas).astype(bool)))
    return masks


def write_classification(
    out: Path, train_scenes: list[Scene], train_images: Path, rng, exclude, num_val: int
):
    """ImageFolder train (the training images, by shape) and val (new scenes, the same number of each shape)."""
    for i, scene in enumerate(train_scenes):
        folder = out / "train" / scene.objects[0][1]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(train_images / f"train_{i:05d}.png", folder / f"train_{i:05d}.png")
    writer = _Writer(out / "val", rng, exclude)
    for i in range(num_val):  # balanced: image i shows SHAPES[i % 4]
        scene = writer.draw()
        while scene.objects[0][1] != SHAPES[i % len(SHAPES)]:
            scene = writer.draw()
        folder = out / "val" / scene.objects[0][1]
        folder.mkdir(exist_ok=True)
        render_scene(scene).save(folder / f"val_{i:05d}.png")


def write_segmentation(out: Path, train_scenes: list[Scene], rng, exclude, num_val: int) -> None:
    """ADE20k layout: the first training scenes and new validation scenes, with their label PNGs."""
    (out / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(name + "\n" for name in SEG_CLASSES))
    split_scenes = {"training": train_scenes}
    writer = _Writer(out / "images" / "validation", rng, exclude)
    for i in range(num_val):
        writer.new(f"seg_val_{i:05d}.jpg")
    split_scenes["validation"] = writer.drawn
    for split, scenes in split_scenes.items():
        images, labels = out / "images" / split, out / "annotations" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        stem = "seg_train" if split == "training" else "seg_val"
        for i, scene in enumerate(scenes):
            if split == "training":
                render_scene(scene).save(images / f"{stem}_{i:05d}.jpg")
            Image.fromarray(render_labels(scene)).save(labels / f"{stem}_{i:05d}.png")


def write_coco(out: Path, rng, exclude, num_images: int) -> None:
    """COCO instances (RLE masks from the shapes' geometry) for new scenes."""
    from pycocotools import mask as coco_mask

    writer = _Writer(out / "val2017", rng, exclude)
    images, annotations = [], []
    for i in range(num_images):
        image_id = 900000 + i
        name = f"{image_id:012d}.jpg"
        scene = writer.new(name)
        images.append({"id": image_id, "file_name": name, "height": scene.height, "width": scene.width})
        for shape, mask in instance_masks(scene):
            rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + SHAPES.index(shape),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": float(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)], "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": 1 + k, "name": shape, "supercategory": "shape"} for k, shape in enumerate(SHAPES)]
    path = out / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_vision_sets(
    out: Path, seed: int, train_scenes: list[Scene], train_images: Path, exclude: set[tuple], num_vision: int
) -> None:
    """The three vision sets under `out`: classification val and COCO of `num_vision` and `num_vision // 2`
    new scenes, segmentation on the first 2 x `num_vision` training scenes and `num_vision // 2` new ones."""
    write_classification(out / "classify", train_scenes, train_images, random.Random(f"{seed}-classify"), exclude,
                         num_vision)  # fmt: skip
    write_segmentation(out / "segmentation", train_scenes[: 2 * num_vision], random.Random(f"{seed}-segmentation"),
                       exclude, num_vision // 2)  # fmt: skip
    write_coco(out / "coco", random.Random(f"{seed}-coco"), exclude, num_vision // 2)
