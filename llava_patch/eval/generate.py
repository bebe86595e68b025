"""`radio-llava generate`: answer a LLaVA question file with a RADIO-LLaVA model, as LLaVA-1.5 evaluates.

    radio-llava generate --model ckpt/finetune --question-file llava_gqa_testdev_balanced.jsonl \\
        --image-folder gqa/images --answers-file answers/gqa.jsonl [--num-chunks 8 --chunk-idx 3] [--batch-size 8]

Follows llava/eval/model_vqa_loader.py: the prompt is the `vicuna_v1` template with one user turn
"<image>\\n{text}" (the question file's text already ends with the short-answer instruction) and ends with
"ASSISTANT:"; greedy decoding (`--temperature 0`), at most 128 new tokens, output decoded without special
tokens and stripped. Each line written is `{question_id, prompt, text, answer_id, model_id, metadata}`, with
`prompt` the question file's text (TextVQA scoring reads the question back from it).

Beyond LLaVA (batch size 1, no resume):
- `--batch-size` > 1 batches questions with left padding; images of different sizes share the batch (the
  processor pads them, the vision tower crops each back), so answers equal batch-size-1 answers. Batches are
  made of questions whose images cost about the same number of tokens (sizes read from the image headers
  first), so a batch pads little; the answers file is put back in question order when the chunk is done.
- The decoder writes into a static KV cache (preallocated, one write per token) instead of transformers'
  default dynamic cache, which copies the whole cache of every layer at every token (`torch.cat`): the copy
  costs as much per row as the attention itself, so batching could not amortise it.
- Images are read and processed in `--num-workers` DataLoader workers (4 as in model_vqa_loader.py, or the
  number of CPUs if fewer), a few batches ahead of the model, so decoding and resizing stay off the critical
  path.
- Resumable: questions already in `--answers-file` are skipped, and a half-written last line (a run killed
  mid-write) is cut off and its question answered again, so a re-run leaves no duplicate and no gap.
- Chunk k of n is the contiguous slice LLaVA's `get_chunk` gives (size ceil(N / n)); where LLaVA fails on a
  chunk index past the last non-empty slice (few questions, many chunks), the chunk here is just empty.
- A missing image is reported with its path and the question file line before any generation starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from llava_patch.conversation import IMAGE_TAG, get_template
from llava_patch.eval.io import EvalInputError, check_question_id, read_jsonl
from radio_vlm.models.image_io import image_size, load_image

CONV_MODE = "vicuna_v1"  # scripts/v1_5/eval/*.sh pass --conv-mode vicuna_v1
MAX_NEW_TOKENS = 128  # model_vqa_loader.py default
NUM_WORKERS = min(4, os.cpu_count() or 1)  # model_vqa_loader.py's DataLoader has 4


@dataclass(frozen=True)
class Question:
    """One line of a LLaVA question file."""

    question_id: int | str
    image: str  # file name relative to --image-folder
    text: str  # the question, already with LLaVA's answer-format instruction
    line: int


def load_questions(path: str | Path) -> list[Question]:
    questions = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("text"), str)
            or not isinstance(row.get("image"), str)
        ):
            raise EvalInputError(f"{where}: a LLaVA question needs question_id, image (file name) and text")
        if "question_id" not in row:
            raise EvalInputError(f"{where}: no question_id")
        questions.append(
            Question(check_question_id(row["question_id"], where), row["image"], row["text"], number)
        )
    return questions


def chunk_slice(num_items: int, num_chunks: int, chunk_idx: int) -> slice:
    """Items of chunk `chunk_idx`: LLaVA's split_list / get_chunk (contiguous, ceil(N / n) per chunk)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(
            f"--chunk-idx {chunk_idx} must be in 0..{num_chunks - 1} (--num-chunks {num_chunks})"
        )
    size = math.ceil(num_items / num_chunks)
    return slice(min(chunk_idx * size, num_items), min((chunk_idx + 1) * size, num_items))


def answered_question_ids(path: Path) -> set:
    """Question ids already in an answers file; a half-written last line is cut off the file.

    Any other unreadable line is an error naming it: the file is not one this command wrote.
    """
    if not path.is_file():
        return set()
    data = path.read_bytes()
    lines = data.split(b"\n")
    last = max((i for i, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    done, offset = set(), 0
    for number, raw in enumerate(lines, start=1):
        is_last = number == last
        if raw.strip():
            try:
                done.add(json.loads(raw)["question_id"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                if not is_last:
                    raise EvalInputError(
                        f"{path}:{number}: not an answer line; delete the file or pass another --answers-file"
                    ) from None
                with open(path, "r+b") as f:  # the interrupted write: drop it, its question is redone
                    f.truncate(offset)
                break
        offset += len(raw) + 1
    else:
        if data and not data.endswith(b"\n"):  # a complete last line whose newline was not written yet
            with open(path, "ab") as f:
                f.write(b"\n")
    return done


def build_prompt(question_text: str, conv_mode: str = CONV_MODE) -> str:
    """LLaVA-1.5's generation prompt: "<system> USER: <image>\\n{text} ASSISTANT:"."""
    return get_template(conv_mode).render([(0, IMAGE_TAG + "\n" + question_text), (1, None)])


def model_name(model_path: str) -> str:
    """LLaVA's get_model_name_from_path: the last folder, prefixed by its parent for checkpoint-N folders."""
    parts = Path(model_path.rstrip("/")).parts
    return f"{parts[-2]}_{parts[-1]}" if parts[-1].startswith("checkpoint-") and len(parts) > 1 else parts[-1]


def group_by_image_tokens(questions: list[Question], image_folder: str | Path, processor) -> list[Question]:
    """`questions` ordered by their image's token count, then prompt length (stable): consecutive batches hold
    images of about the same cost, so left padding wastes little prefill and attention.

    An image whose header cannot be read is an error naming the question, before any generation.
    """
    tokens = []
    for q in tqdm(questions, desc="image sizes", unit="image", leave=False):
        path = Path(image_folder) / q.image
        try:
            tokens.append(processor.image_processor.num_image_tokens(*image_size(path)))
        except (OSError, SyntaxError, ValueError) as err:
            raise EvalInputError(f"question {q.question_id!r} (line {q.line}): image {path}: {err}") from None
    order = sorted(range(len(questions)), key=lambda i: (tokens[i], len(questions[i].text)))
    return [questions[i] for i in order]


class QuestionBatches(Dataset):
    """Batch `i` of the questions as model inputs (`processor` output), made where the DataLoader runs it.

    An unreadable image comes back as the `EvalInputError` naming it, not raised, so the main process raises
    it with its own message (a worker's exception would arrive wrapped in the worker's traceback).
    """

    def __init__(self, batches: list[list[Question]], processor, image_folder: str | Path, conv_mode: str):
        self.batches = batches
        self.processor = processor
        self.image_folder = image_folder
        self.conv_mode = conv_mode

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[list[Question], dict[str, torch.Tensor] | EvalInputError]:
        batch, images = self.batches[index], []
        for q in batch:
            try:
                images.append(load_image(Path(self.image_folder) / q.image))
            except ValueError as err:
                return batch, EvalInputError(f"question {q.question_id!r} (line {q.line}): {err}")
        inputs = self.processor(images=images, text=[build_prompt(q.text, self.conv_mode) for q in batch])
        return batch, dict(inputs)


def restore_question_order(answers_file: Path, questions: list[Question]) -> None:
    """Rewrite `answers_file` in the order of `questions` (answers of other ids last), atomically, if it is
    not in that order: a chunk in question order is what `radio-llava merge` (LLaVA's `cat`) expects."""
    position = {q.question_id: i for i, q in enumerate(questions)}
    lines = [
        line for line in answers_file.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()
    ]
    ordered = sorted(lines, key=lambda line: position.get(json.loads(line)["question_id"], len(position)))
    if ordered != lines:
        partial = answers_file.with_name(answers_file.name + ".reorder")
        partial.write_text("".join(ordered), encoding="utf-8")
        os.replace(partial, answers_file)


@torch.inference_mode()
def generate_answers(
    model,
    processor,
    questions: list[Question],
    image_folder: str | Path,
    answers_file: str | Path,
    batch_size: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = 0.0,
    conv_mode: str = CONV_MODE,
    model_id: str = "model",
    num_workers: int = NUM_WORKERS,
) -> int:
    """Answer `questions` (skipping ids already in `answers_file`), appending one JSON line per answer; the
    file ends in question order. Images load in `num_workers` DataLoader workers (0: in this process).

    Returns how many questions were answered in this call.
    """
    answers_file = Path(answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    done = answered_question_ids(answers_file)
    todo = [q for q in questions if q.question_id not in done]
    for q in todo:  # fail before hours of generation, not at the first missing file
        if not (Path(image_folder) / q.image).is_file():
            raise FileNotFoundError(
                f"question {q.question_id!r} (line {q.line}): image {Path(image_folder) / q.image} not found"
            )
    if batch_size > 1:
        todo = group_by_image_tokens(todo, image_folder, processor)
    processor.tokenizer.padding_side = "left"  # generation continues from the last position of every row
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    loader = DataLoader(
        QuestionBatches(batches, processor, image_folder, conv_mode),
        batch_size=None,  # each item is already a batch
        num_workers=min(num_workers, len(batches)),
        pin_memory=device.type == "cuda",
    )
    with open(answers_file, "a", encoding="utf-8") as out, tqdm(total=len(todo), unit="question") as bar:
        for batch, inputs in loader:
            if isinstance(inputs, EvalInputError):
                raise inputs
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                num_beams=1,
                use_cache=True,
                cache_implementation="static",
                # transformers compiles the forward for a static cache on a GPU: every batch has another
                # prompt length, so it would recompile per batch
                disable_compile=True,
                **sampling,
            )
            texts = processor.batch_decode(
                output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for q, text in zip(batch, texts):
                row = {
                    "question_id": q.question_id,
                    "prompt": q.text,
                    "text": text.strip(),
                    "answer_id": uuid.uuid4().hex,
                    "model_id": model_id,
                    "metadata": {},
                }
                out.write(json.dumps(row) + "\n")
            out.flush()
            bar.update(len(batch))  # tqdm's rate reads "question/s"
    restore_question_order(answers_file, questions)  # also after a run killed before it got here
    return len(todo)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a radio-llava run / checkpoint folder (full weights)")
    parser.add_argument(
        "--question-file", required=True, help="LLaVA question JSONL (question_id, image, text)"
    )
    parser.add_argument("--image-folder", required=True)
    parser.add_argument(
        "--answers-file", required=True, help="JSONL to append answers to (resumed if it exists)"
    )
    parser.add_argument("--num-chunks", type=int, default=1)
    parser.add_argument("--chunk-idx", type=int, default=0)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="questions per generate call (1 = LLaVA's loop; try 16)"
    )
    parser.add_argument(
        "--num-workers", type=int, default=NUM_WORKERS, help="DataLoader workers reading images (0 = none)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (LLaVA-1.5's evaluation)")
    parser.add_argument("--conv-mode", default=CONV_MODE)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default: float16 on GPU")
    parser.add_argument(
        "--token-merge",
        default=None,
        help="default: the model's (saved by training); none | unshuffle:<s> | pool:<s>",
    )
    parser.add_argument(
        "--max-image-tokens", type=int, default=None, help="default: the model's per-image cap"
    )


def run(args: argparse.Namespace) -> int:
    from llava_patch.model import load_pretrained, set_token_budget  # heavy: only when the command runs

    if args.batch_size < 1:
        raise SystemExit("error: --batch-size must be at least 1")
    if args.num_workers < 0:
        raise SystemExit("error: --num-workers must be 0 or more")
    try:
        questions = load_questions(args.question_file)
        chunk = questions[chunk_slice(len(questions), args.num_chunks, args.chunk_idx)]
    except (EvalInputError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    dtype = getattr(torch, args.dtype or ("float16" if args.device.startswith("cuda") else "float32"))
    model, processor = load_pretrained(args.model, dtype=dtype)
    set_token_budget(model, processor, args.token_merge, args.max_image_tokens)
    model.to(args.device).eval()
    start = time.perf_counter()
    try:
        count = generate_answers(
            model,
            processor,
            chunk,
            args.image_folder,
            args.answers_file,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            conv_mode=args.conv_mode,
            model_id=model_name(os.fspath(args.model)),
            num_workers=args.num_workers,
        )
    except (EvalInputError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    seconds = time.perf_counter() - start
    print(
        f"answered {count} questions of chunk {args.chunk_idx}/{args.num_chunks} in {seconds:.1f} s "
        f"({count / seconds:.2f} questions/s); answers in {args.answers_file}"
    )
    return 0
