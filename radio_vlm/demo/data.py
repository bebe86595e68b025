"""A synthetic image benchmark in the official GQA / TextVQA / POPE / VQAv2 and LLaVA file formats.

`radio-vlm demo-data --out DIR --seed S` draws small images of varied size and aspect ratio (portrait,
landscape, square), each with a few coloured shapes in left / middle / right slots and a short word rendered
across the top, and writes from them:

    DIR/train/images/*.png               training images (no test image repeats a training scene's content)
    DIR/train/pretrain.json              captions in LLaVA's blip_laion_cc_sbu_558k format
    DIR/train/finetune.json              conversations in LLaVA's llava_v1_5_mix665k format (+ text-only)
    DIR/eval/gqa/...                     testdev_balanced_questions.json + llava_gqa_testdev_balanced.jsonl
    DIR/eval/textvqa/...                 TextVQA_0.5.1_val.json + llava_textvqa_val_v051_ocr.jsonl
    DIR/eval/pope/...                    coco/coco_pope_{adversarial,popular,random}.json + llava_pope_test.jsonl
    DIR/eval/vqav2/...                   v2_mscoco_val2014_{annotations,OpenEnded questions}.json + llava jsonl
    DIR/vision/...                       classification, segmentation and COCO sets for `radio-vlm eval`

The split is honest: a test scene differs from every training scene in its word, shapes, colours, count or
slots (image size and background grey do not count), so a model that memorised the training images gains
nothing on the test sets. Everything is a deterministic function of the seed. Answers depend only on the image (never on the text of
the question alone), so a model that ignores the image scores near chance: the demo's blind baseline.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")  # four that differ at 16 px patches
WORDS = ("cat", "sun", "box", "car", "tree", "fish", "bird", "book")
SLOTS = ("left", "middle", "right")
# (width, height): portrait, landscape and square, all small enough for a CPU demo
SIZES = ((96, 64), (64, 96), (80, 80), (112, 72), (72, 112), (96, 96))
SUFFIX = "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt


@dataclass(frozen=True)
class Scene:
    """What one synthetic image shows: the ground truth every question is generated from."""

    width: int
    height: int
    background: tuple[int, int, int]
    word: str
    objects: tuple[tuple[str, str, str], ...]  # (slot, shape, color), slots distinct, one shape and color

    def shapes(self) -> set[str]:
        return {shape for _, shape, _ in self.objects}

    def content(self) -> tuple:
        """What a model could memorise: the word and every (slot, shape, colour), so the count too; the image
        size and background grey are left out (a resized or re-greyed copy is still the same scene)."""
        return (self.word, self.objects)


# Distinct contents sample_scene can draw: words x slot subsets (3 + 3 + 1) x one shape x one colour.
NUM_CONTENTS = len(WORDS) * 7 * len(SHAPES) * len(COLORS)


def sample_scene(rng: random.Random) -> Scene:
    """1-3 copies of one coloured shape: every question is about a property of the whole image, which a
    tiny LLaVA learns in a CPU budget (telling several different shapes apart by the question, binding,
    takes it thousands of steps more)."""
    width, height = rng.choice(SIZES)
    count = rng.randint(1, 3)
    slots = sorted(rng.sample(SLOTS, count), key=SLOTS.index)
    shapes = [rng.choice(SHAPES)] * count
    colors = [rng.choice(list(COLORS))] * count
    gray = rng.randint(200, 245)
    return Scene(width, height, (gray, gray, gray), rng.choice(WORDS), tuple(zip(slots, shapes, colors)))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        t = r / 3
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def scene_layout(scene: Scene) -> tuple[ImageFont.ImageFont, tuple[float, float], list[tuple]]:
    """Where `render_scene` draws: (font, centre of the word, [(shape, box, color) per object]); the word in the
    top third, the shapes in their slots below it."""
    text_h = scene.height / 3
    font = ImageFont.load_default(size=max(10, int(text_h * 0.8)))
    slot_w = scene.width / len(SLOTS)
    size = min(slot_w, scene.height - text_h) * 0.8
    shapes = []
    for slot, shape, color in scene.objects:
        cx = slot_w * (SLOTS.index(slot) + 0.5)
        cy = text_h + (scene.height - text_h) / 2
        shapes.append((shape, (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2), color))
    return font, (scene.width / 2, text_h / 2), shapes


def render_scene(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    font, text_xy, shapes = scene_layout(scene)
    draw.text(text_xy, scene.word, fill=(20, 20, 20), font=font, anchor="mm")
    for shape, box, color in shapes:
        draw_shape(draw, shape, box, COLORS[color])
    return image


def caption(scene: Scene) -> str:
    parts = [f"a {color} {shape} on the {slot}" for slot, shape, color in scene.objects]
    return f"The word '{scene.word}' above " + ", ".join(parts) + "."


# Question templates shared by the fine-tuning conversations and the test sets, so that a test question is
# phrased as training questions are (a tiny LLM does not generalise across phrasings).
TEXT_QUESTIONS = ("what word is written in the image?", "what does the text say?")
OCR_LINE = "\nReference OCR token: demo, v1"  # LLaVA-1.5's TextVQA prompt line (the demo's fixed OCR tokens)
PRESENCE_QUESTIONS = ("Is there a {}?", "Is there a {} in the image?")  # GQA/VQAv2 form, POPE form


def qa_pairs(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Short-answer questions about one scene, as used for fine-tuning (shuffled): the color of every
    shape, the shape in one slot, the count, the word, and one present and one absent shape; the word and
    the presence questions in each phrasing (reading and matching are the slowest skills to learn)."""
    slot, shape, _ = rng.choice(scene.objects)
    present = rng.choice(sorted(scene.shapes()))
    absent = rng.choice([s for s in SHAPES if s not in scene.shapes()])
    pairs = [(f"What color is the {s}?", c) for s, c in sorted({(s, c) for _, s, c in scene.objects})]
    pairs += [
        (f"What shape is on the {slot}?", shape),
        ("How many shapes are there?", str(len(scene.objects))),
        *((question + rng.choice(["", OCR_LINE]), scene.word) for question in TEXT_QUESTIONS),
        *(
            (question.format(asked), answer)
            for asked, answer in ((present, "yes"), (absent, "no"))
            for question in PRESENCE_QUESTIONS
        ),
    ]
    rng.shuffle(pairs)
    return pairs


class _Writer:
    """Renders new scenes into an image folder. A test set's writer gets the training scenes' contents as
    `exclude` and draws again whenever a scene's content is one of them, so no test image shows a scene a
    training image shows (the honest split: a test scene differs from every training scene in word, shapes,
    colours, count or slots)."""

    def __init__(
        self, folder: Path, rng: random.Random, exclude: set[tuple] | frozenset[tuple] = frozenset()
    ):
        if len(exclude) >= NUM_CONTENTS:
            raise ValueError(
                f"the training images show all {NUM_CONTENTS} possible scene contents, so no test scene can "
                "differ from them: lower num_train"
            )
        self.folder, self.rng, self.exclude = folder, rng, exclude
        self.drawn: list[Scene] = []
        folder.mkdir(parents=True, exist_ok=True)

    def draw(self) -> Scene:
        """The next scene of the stream whose content is not excluded."""
        scene = sample_scene(self.rng)
        while scene.content() in self.exclude:
            scene = sample_scene(self.rng)
        self.drawn.append(scene)
        return scene

    def new(self, name: str) -> Scene:
        """Draw a scene and save its image as `name` in the folder."""
        scene = self.draw()
        render_scene(scene).save(self.folder / name)
        return scene


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _ten(answer: str, rng: random.Random, alternative: str | None = None) -> list[str]:
    """Ten human answers as the VQA datasets have them: mostly the answer, sometimes one dissenter."""
    answers = [answer] * 10
    if alternative is not None and rng.random() < 0.3:
        answers[rng.randrange(10)] = alternative
    return answers


def write_training_set(
    out: Path, rng: random.Random, num_images: int, turns_per_conversation: int = 2
) -> list[Scene]:
    """Returns the training scenes (image i shows scene i), which the test sets must not repeat. Each image's
    questions are split
    into conversations of `turns_per_conversation` turns: short conversations keep every answer close to
    its image, as in the single-turn test prompts (a tiny LLM learns the image path much faster so)."""
    writer = _Writer(out / "images", rng)
    pretrain, finetune = [], []
    for i in range(num_images):
        name = f"train_{i:05d}.png"
        scene = writer.new(name)
        pretrain.append(
            {
                "id": f"pt{i:05d}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
                    {"from": "gpt", "value": caption(scene)},
                ],
            }
        )
        pairs = qa_pairs(scene, rng)
        for c in range(0, len(pairs), turns_per_conversation):
            turns = []
            for k, (question, answer) in enumerate(pairs[c : c + turns_per_conversation]):
                prompt = ("<image>\n" if k == 0 else "") + question + SUFFIX
                turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]
            finetune.append({"id": f"ft{i:05d}_{c}", "image": name, "conversations": turns})
        if i % 10 == 0:  # LLaVA's mix has text-only conversations too
            finetune.append(
                {
                    "id": f"text{i:05d}",
                    "conversations": [
                        {"from": "human", "value": f"Name a color other than {scene.objects[0][2]}."},
                        {"from": "gpt", "value": rng.choice([c for c in COLORS if c != scene.objects[0][2]])},
                    ],
                }
            )
    _dump(out / "pretrain.json", pretrain)
    _dump(out / "finetune.json", finetune)
    return writer.drawn


def write_gqa(out: Path, rng: random.Random, num_questions: int, exclude: set[tuple]) -> None:
    writer = _Writer(out / "images", rng, exclude)
    annotations, questions = {}, []
    for i in range(num_questions):
        image_id = f"n{100000 + i}"
        scene = writer.new(f"{image_id}.jpg")
        slot, shape, color = rng.choice(scene.objects)
        if i % 2 == 0:  # open question: GQA's structural type "query"
            question, answer, structural, semantic = f"What color is the {shape}?", color, "query", "attr"
        else:  # binary question: structural type "verify"
            asked = rng.choice([shape, rng.choice([s for s in SHAPES if s not in scene.shapes()])])
            question, structural, semantic = PRESENCE_QUESTIONS[0].format(asked), "verify", "obj"
            answer = "yes" if asked in scene.shapes() else "no"
        qid = f"{20000000 + i}"
        annotations[qid] = {
            "imageId": image_id,
            "question": question,
            "answer": answer,
            "fullAnswer": f"The answer is {answer}.",
            "isBalanced": True,
            "groups": {"global": None if structural == "verify" else "color", "local": f"{semantic}-{shape}"},
            "types": {"structural": structural, "semantic": semantic, "detailed": f"{semantic}{structural}"},
            "semantic": [],
            "semanticStr": "",
            "annotations": {"question": {}, "answer": {}, "fullAnswer": {}},
            "entailed": [],
            "equivalent": [qid],
        }
        questions.append({"question_id": qid, "image": f"{image_id}.jpg", "text": question + SUFFIX})
    _dump(out / "testdev_balanced_questions.json", annotations)
    _dump_jsonl(out / "llava_gqa_testdev_balanced.jsonl", questions)


def write_textvqa(out: Path, rng: random.Random, num_questions: int, exclude: set[tuple]) -> None:
    writer = _Writer(out / "train_images", rng, exclude)
    data, questions = [], []
    for i in range(num_questions):
        image_id = f"{0xABC000 + i:x}"
        scene = writer.new(f"{image_id}.jpg")
        question = rng.choice(TEXT_QUESTIONS)
        data.append(
            {
                "question": question,
                "image_id": image_id,
                "image_classes": ["text"],
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "image_width": scene.width,
                "image_height": scene.height,
                "answers": _ten(scene.word, rng, alternative=scene.word.upper() + "."),
                "question_tokens": question.rstrip("?").split(),
                "question_id": 30000 + i,
                "set_name": "val",
            }
        )
        # The demo's OCR system finds only the corner watermark: the prompt format is LLaVA-1.5's, but the
        # answer has to come from the pixels.
        text = f"{question}{OCR_LINE}{SUFFIX}"
        questions.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text})
    _dump(
        out / "TextVQA_0.5.1_val.json",
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data},
    )
    _dump_jsonl(out / "llava_textvqa_val_v051_ocr.jsonl", questions)


def write_pope(out: Path, rng: random.Random, num_questions: int, exclude: set[tuple]) -> None:
    """POPE: balanced yes/no questions about object presence, three negative-sampling categories."""
    writer = _Writer(out / "val2014", rng, exclude)
    counts = {s: 0 for s in SHAPES}
    cooccur = {(a, b): 0 for a in SHAPES for b in SHAPES}
    scenes = []
    per_category = num_questions // 3 // 2 * 2
    for i in range(per_category * 3 // 2):
        name = f"COCO_val2014_{500000 + i:012d}.jpg"
        scene = writer.new(name)
        scenes.append((name, scene))
        for shape in scene.shapes():
            counts[shape] += 1
            for other in scene.shapes() - {shape}:
                cooccur[shape, other] += 1
    popular = sorted(SHAPES, key=lambda s: -counts[s])
    llava_rows, qid = [], 0
    for c, category in enumerate(("adversarial", "popular", "random")):
        labels = []
        for name, scene in scenes[c * per_category // 2 : (c + 1) * per_category // 2]:
            absent = [s for s in SHAPES if s not in scene.shapes()]
            if category == "random":
                negative = rng.choice(absent)
            elif category == "popular":
                negative = next(s for s in popular if s in absent)
            else:  # adversarial: the absent shape that co-occurs most often with this image's shapes
                negative = max(absent, key=lambda s: (sum(cooccur[s, p] for p in scene.shapes()), s))
            for obj, label in ((rng.choice(sorted(scene.shapes())), "yes"), (negative, "no")):
                qid += 1
                question = PRESENCE_QUESTIONS[1].format(obj)
                labels.append({"question_id": qid, "image": name, "text": question, "label": label})
                llava_rows.append(
                    {"question_id": qid, "image": name, "text": question + SUFFIX, "category": category}
                )
        _dump_jsonl(
            out / "coco" / f"coco_pope_{category}.json", labels
        )  # POPE's ".json" files are JSON lines
    _dump_jsonl(out / "llava_pope_test.jsonl", llava_rows)


def write_vqav2(out: Path, rng: random.Random, num_questions: int, exclude: set[tuple]) -> None:
    writer = _Writer(out / "val2014", rng, exclude)
    annotations, vqa_questions, llava_rows = [], [], []
    for i in range(num_questions):
        image_id = 700000 + i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        scene = writer.new(name)
        slot, shape, color = rng.choice(scene.objects)
        kind = i % 3
        if kind == 0:
            question, answer, answer_type, qtype = (
                "How many shapes are there?",
                str(len(scene.objects)),
                "number",
                "how many",
            )
            alternative = {"1": "one", "2": "two", "3": "three"}[answer]  # normalises back to the digit
        elif kind == 1:
            question, answer, answer_type, qtype = (
                f"What color is the {shape}?",
                color,
                "other",
                "what color is the",
            )
            alternative = f"{color} color"
        else:
            asked = rng.choice([shape, rng.choice([s for s in SHAPES if s not in scene.shapes()])])
            question, answer_type, qtype = PRESENCE_QUESTIONS[0].format(asked), "yes/no", "is there a"
            answer, alternative = ("yes" if asked in scene.shapes() else "no"), None
        qid = image_id * 10
        answers = _ten(answer, rng, alternative)
        annotations.append(
            {
                "question_type": qtype,
                "multiple_choice_answer": answer,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, a in enumerate(answers)
                ],
                "image_id": image_id,
                "answer_type": answer_type,
                "question_id": qid,
            }
        )
        vqa_questions.append({"image_id": image_id, "question": question, "question_id": qid})
        llava_rows.append(
            {"question_id": qid, "image": name, "text": question + SUFFIX, "category": "default"}
        )
    common = {
        "info": {"description": "radio-vlm synthetic demo"},
        "license": {},
        "data_subtype": "val2014",
        "data_type": "mscoco",
    }
    _dump(out / "v2_mscoco_val2014_annotations.json", {**common, "annotations": annotations})
    _dump(
        out / "v2_OpenEnded_mscoco_val2014_questions.json",
        {**common, "task_type": "Open-Ended", "questions": vqa_questions},
    )
    _dump_jsonl(out / "llava_vqav2_mscoco_val2014.jsonl", llava_rows)


def make_demo_data(
    out: str | Path,
    seed: int = 0,
    num_train: int = 1200,
    num_test: int = 240,
    turns_per_conversation: int = 2,
    num_vision: int = 120,
) -> Path:
    """Write the whole synthetic benchmark under `out`; each part gets its own seeded stream, and no test
    image shows a scene content that a training image shows. DIR/vision holds the sets of
    `radio-vlm eval` (see `vision_data`), `num_vision` validation images for classification."""
    from .vision_data import write_vision_sets

    out = Path(out)
    train = write_training_set(
        out / "train", random.Random(f"{seed}-train"), num_train, turns_per_conversation
    )
    contents = {scene.content() for scene in train}
    write_gqa(out / "eval" / "gqa", random.Random(f"{seed}-gqa"), num_test, contents)
    write_textvqa(out / "eval" / "textvqa", random.Random(f"{seed}-textvqa"), num_test, contents)
    write_pope(out / "eval" / "pope", random.Random(f"{seed}-pope"), num_test, contents)
    write_vqav2(out / "eval" / "vqav2", random.Random(f"{seed}-vqav2"), num_test, contents)
    write_vision_sets(out / "vision", seed, train, out / "train" / "images", contents, num_vision)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--turns-per-conversation", type=int, default=2, help="question turns per fine-tuning conversation"
    )
    parser.add_argument("--num-train", type=int, default=1200, help="training images")
    parser.add_argument(
        "--num-test", type=int, default=240, help="questions per benchmark (>= 200 for the demo)"
    )
    parser.add_argument(
        "--num-vision", type=int, default=120, help="validation images of the classification set (DIR/vision)"
    )


def run(args: argparse.Namespace) -> int:
    out = make_demo_data(
        args.out, args.seed, args.num_train, args.num_test, args.turns_per_conversation, args.num_vision
    )
    print(f"wrote the synthetic benchmark to {out}")
    return 0
