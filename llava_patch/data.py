"""LLaVA's JSON data for RADIO-LLaVA: lazy loading, bad-sample accounting, modality grouping, collation.

A data file is LLaVA's list of `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}`
(blip_laion_cc_sbu_558k.json, llava_v1_5_mix665k.json); `image` is relative to `--image-folder`;
records without `image` are text-only.

Bad samples never stop a run: a record with a missing or corrupt image, an `<image>` tag count that does
not match its image, roles that do not alternate, an empty turn, a masking mismatch, or nothing left to
train on after truncation is skipped (the next record stands in), and logged once, with its id and
reason, in a `BadSampleLog`. Once more than `max_bad_fraction` of the data set's samples are bad,
training stops with a summary of the reasons and the bad samples' ids. Text-level problems are found
when the file is read; image and tokenisation problems when the sample is loaded.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from .conversation import (
    IGNORE_INDEX,
    IMAGE_TAG,
    ROLE_OF,
    ConversationTemplate,
    MaskingMismatch,
    expand_image_tokens,
    tokenize_conversation,
)
from .processing import RadioLlavaProcessor, pad_images

logger = logging.getLogger(__name__)


class TooManyBadSamples(RuntimeError):
    """More than `max_bad_fraction` of the data set is unusable."""


class BadSample(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class BadSampleLog:
    """The samples skipped as bad, each logged once with its reason, and the abort past `max_fraction` of
    `total` (the data set's size, bad samples included).

    A sample is its position in the data file (LLaVA's ids need not be unique): adding one that is already
    logged does nothing, so a sample drawn again (a later epoch, another DataLoader worker, another rank,
    or as the stand-in for another bad sample) still counts once. With several ranks `LlavaTrainer` merges
    every rank's new entries into every rank's log at each step, so all ranks hold the same log and abort
    at the same step.
    """

    def __init__(self, total: int, max_fraction: float = 0.01, ids_per_reason: int = 20):
        self.total = total
        self.max_fraction = max_fraction
        self.samples: dict[
            int, tuple[str, str, str]
        ] = {}  # position in the data file -> (id, reason, detail)
        self._ids_per_reason = ids_per_reason

    def add(
        self,
        position: int,
        sample_id: str,
        reason: str,
        detail: str = "",
        check: bool = True,
        warn: bool = True,
    ) -> bool:
        """Log the sample at `position` (False, and nothing logged, if it already is); abort if `check`."""
        if position in self.samples:
            return False
        self.samples[position] = (str(sample_id), reason, detail)
        if warn:
            logger.warning("skipping sample %s: %s%s", sample_id, reason, f" ({detail})" if detail else "")
        if check:
            self.check()
        return True

    @property
    def num_bad(self) -> int:
        return len(self.samples)

    @property
    def counts(self) -> Counter[str]:
        """Bad samples per reason."""
        return Counter(reason for _, reason, _ in self.samples.values())

    def ids(self, reason: str) -> list[str]:
        """The ids of the samples bad for `reason`, in data file order."""
        return [self.samples[p][0] for p in sorted(self.samples) if self.samples[p][1] == reason]

    def summary(self) -> str:
        lines = [f"{self.num_bad} of {self.total} samples are bad:"]
        for reason, n in self.counts.items():
            ids = self.ids(reason)
            more = f" and {n - self._ids_per_reason} more" if n > self._ids_per_reason else ""
            lines.append(f"  {n} x {reason} (ids {', '.join(ids[: self._ids_per_reason])}{more})")
        return "\n".join(lines)

    def check(self) -> None:
        if self.num_bad > self.max_fraction * self.total:
            raise TooManyBadSamples(
                f"{self.summary()}\nthat is more than --max-bad-fraction {self.max_fraction:g}: fix the data "
                "(or the --template / tokenizer, for masking mismatches) or raise --max-bad-fraction"
            )

    def write(self, path: str | Path) -> None:
        """Every bad sample as JSON: [{"position", "id", "reason", "detail"}], in data file order."""
        entries = [
            {"position": position, "id": sample_id, "reason": reason, "detail": detail}
            for position, (sample_id, reason, detail) in sorted(self.samples.items())
        ]
        Path(path).write_text(json.dumps({"total": self.total, "bad": entries}, indent=1))


def load_records(path: str | Path) -> list[dict]:
    """The JSON list of a LLaVA data file (or JSON lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except json.JSONDecodeError as err:
        raise ValueError(f"--data {path}: not a JSON list or JSON lines file ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"--data {path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def check_record(record: dict) -> None:
    """Raise BadSample if a record's structure cannot give a valid LLaVA conversation."""
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise BadSample("no conversations")
    if turns[0].get("from") != "human":
        turns = turns[1:]  # LLaVA drops a leading gpt turn
    if not turns or len(turns) % 2:
        raise BadSample("roles do not alternate", "need human/gpt pairs")
    for i, turn in enumerate(turns):
        if turn.get("from") not in ROLE_OF or ROLE_OF[turn["from"]] != i % 2:
            raise BadSample("roles do not alternate", f"turn {i} is from {turn.get('from')!r}")
        if not isinstance(turn.get("value"), str) or not turn["value"].replace(IMAGE_TAG, "").strip():
            raise BadSample("empty turn", f"turn {i}")
    tags = [turn["value"].count(IMAGE_TAG) for turn in turns]
    if record.get("image") is not None:
        if not isinstance(record["image"], str):
            raise BadSample("image is not one path", "multi-image samples are not LLaVA-1.5 data")
        if sum(tags) != 1 or tags[0] != 1:
            raise BadSample(
                "no <image> where an image is given", f"{sum(tags)} tags; need one, in the first turn"
            )
    elif sum(tags):
        raise BadSample("<image> without an image", f"{sum(tags)} tags")


class LazySupervisedDataset(Dataset):
    """LLaVA records tokenised and their images processed when indexed.

    `dataset[i]` is a dict: input_ids (L,), labels (L,) int64 (image tokens already expanded and masked)
    and pixel_values (3, h, w) or None for a text-only sample. Records that are bad on reading are
    counted in `bad_samples` at construction; one that fails to load is replaced by the next good one and
    listed in the sample's `skipped` (position in the data file, id, reason, detail) entries, which the
    consumer (`LlavaTrainer`) adds to `bad_samples` (DataLoader workers hold copies of the data set, so
    they cannot count). A process skips the samples it already found bad without loading them again.
    """

    def __init__(
        self,
        records: list[dict],
        image_folder: str | Path | None,
        processor: RadioLlavaProcessor,
        template: ConversationTemplate,
        max_length: int | None = None,
        max_bad_fraction: float = 0.01,
    ):
        self.image_folder = Path(image_folder) if image_folder else None
        self.processor = processor
        self.template = template
        self.max_length = max_length or processor.tokenizer.model_max_length
        self.bad_samples = BadSampleLog(len(records), max_bad_fraction)
        self.records, self.positions = [], []  # the usable records and their positions in the data file
        for position, record in enumerate(records):
            try:
                check_record(record)
                if template.style == "plain" and record.get("image") is None:
                    raise BadSample("text-only sample in pretraining", "the plain template needs an image")
            except BadSample as bad:
                self.bad_samples.add(position, _record_id(record, position), bad.reason, str(bad))
                continue
            self.records.append(record)
            self.positions.append(position)
        if not self.records:
            raise ValueError(f"no usable samples: {self.bad_samples.summary()}")
        self._failed: set[int] = set()  # indices this process (or DataLoader worker) found bad at load

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's grouping lengths: words (+ the nominal image tokens), negative for text-only samples."""
        p = self.processor.image_processor
        image_tokens = p.num_image_tokens(p.long_edge, p.long_edge)
        lengths = []
        for record in self.records:
            words = sum(len(turn["value"].split()) for turn in record["conversations"])
            lengths.append(words + image_tokens if record.get("image") else -words)
        return lengths

    def __getitem__(self, index: int) -> dict:
        skipped = []
        for attempt in range(len(self.records)):
            i = (index + attempt) % len(self.records)
            if i in self._failed:  # reported when this process first found it
                continue
            record, position = self.records[i], self.positions[i]
            try:
                sample = self.load(record)
            except BadSample as bad:  # counted by the consumer: this may run in a DataLoader worker
                self._failed.add(i)
                skipped.append((position, _record_id(record, position), bad.reason, str(bad)))
                continue
            sample["skipped"] = skipped
            return sample
        raise TooManyBadSamples(f"no sample of {len(self.records)} loads: {self.bad_samples.summary()}")

    def load(self, record: dict) -> dict:
        """Tokenise one checked record and process its image; raises BadSample."""
        sample_id = str(record.get("id", "?"))
        images = []
        if record.get("image") is not None:
            path = (self.image_folder / record["image"]) if self.image_folder else Path(record["image"])
            if not path.is_file():
                raise BadSample("missing image", str(path))
            try:
                images.append(self.processor.process_image(path, str(path)))
            except ValueError as err:
                raise BadSample("corrupt image", str(err)) from err
        try:
            ids = tokenize_conversation(
                record["conversations"],
                self.processor.tokenizer,
                self.template,
                has_image=bool(images),
                image_token_id=self.processor.image_token_id,
                sample_id=sample_id,
            )
        except MaskingMismatch as err:
            raise BadSample("masking mismatch", str(err)) from err
        num_tokens = [self.processor.num_image_tokens(image) for image in images]
        ids = expand_image_tokens(ids, self.processor.image_token_id, num_tokens)
        image_end = max(
            (i + 1 for i, t in enumerate(ids.input_ids) if t == self.processor.image_token_id), default=0
        )
        if image_end > self.max_length:
            raise BadSample("too long", f"image tokens end at {image_end} > max length {self.max_length}")
        labels = ids.labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise BadSample("nothing to train on", "every label is masked after truncation")
        return {
            "input_ids": torch.tensor(ids.input_ids[: self.max_length]),
            "labels": torch.tensor(labels),
            "pixel_values": images[0] if images else None,
        }


def _record_id(record, index: int) -> str:
    return str(record.get("id", f"#{index}")) if isinstance(record, dict) else f"#{index}"


@dataclass
class LlavaCollator:
    """Right-pads a list of samples into a batch for `LlavaForConditionalGeneration`:
    input_ids / labels / attention_mask (B, L); pixel_values (N, 3, H, W) and image_sizes (N, 2) for the N
    samples that have an image; `skipped` (the samples' `skipped` entries) is popped by the trainer before
    the forward.

    A batch without images gets LLaVA's dummy image: a black image of the tower's smallest size (one
    `size_step` square: the resolution step, a whole merged token with a token merge) whose image tokens
    sit in extra padding columns (attention mask 0, labels ignored, after every real token), so the loss
    is that of the text alone but the vision tower and projector still run. Every rank then uses the same
    parameters at every step, which ZeRO-3 (it gathers each module's weights collectively) and DDP require.
    """

    pad_token_id: int
    image_token_id: int
    dummy_side: int  # px, the dummy image's height and width
    dummy_tokens: int  # the image tokens the tower gives for it

    @classmethod
    def for_processor(cls, processor: RadioLlavaProcessor) -> LlavaCollator:
        image_processor = processor.image_processor
        side = image_processor.size_step
        return cls(
            processor.tokenizer.pad_token_id,
            processor.image_token_id,
            side,
            image_processor.num_padded_image_tokens(side, side),
        )

    def __call__(self, samples: list[dict]) -> dict:
        images = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
        dummy_tokens = 0 if images else self.dummy_tokens
        length = max(len(s["input_ids"]) for s in samples) + dummy_tokens
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        if not images:
            input_ids[0, length - dummy_tokens :] = self.image_token_id
            images = [torch.zeros(3, self.dummy_side, self.dummy_side)]
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        batch["pixel_values"], batch["image_sizes"] = pad_images(images)
        batch["skipped"] = [entry for s in samples for entry in s.get("skipped", [])]
        return batch


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's `group_by_modality_length` (llava_trainer.py): every global batch holds one modality
    (image or text-only), and within a megabatch samples are sorted by length and spread so that
    ranks get similar lengths. `lengths` are `LazySupervisedDataset.modality_lengths`."""

    def __init__(self, batch_size: int, world_size: int, lengths: list[int], generator=None):
        if any(length == 0 for length in lengths):
            raise ValueError("modality lengths must be non-zero (their sign is the modality)")
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = lengths
        self.generator = generator

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def _grouped(self, indices: list[int], lengths: list[int]) -> list[list[int]]:
        """Megabatches of world*batch indices from `indices`, each split into world chunks of similar length."""
        order = torch.randperm(len(indices), generator=self.generator).tolist()
        size = self.world_size * self.batch_size
        megabatches = [order[i : i + size] for i in range(0, len(order), size)]
        out = []
        for mb in megabatches:
            mb = sorted(mb, key=lambda i: abs(lengths[i]), reverse=True)
            out.append([indices[i] for chunk in _split_balanced(mb, lengths, self.world_size) for i in chunk])
        return out

    def _indices(self) -> list[int]:
        image = [i for i, length in enumerate(self.lengths) if length > 0]
        text = [i for i, length in enumerate(self.lengths) if length < 0]
        if not image or not text:
            return [i for mb in self._grouped(list(range(len(self.lengths))), self.lengths) for i in mb]
        lengths = [abs(x) for x in self.lengths]
        image_mbs = self._grouped(image, [lengths[i] for i in image])
        text_mbs = self._grouped(text, [lengths[i] for i in text])
        last = image_mbs.pop() + text_mbs.pop()  # the two partial megabatches go last, together
        full = image_mbs + text_mbs
        order = torch.randperm(len(full), generator=self.generator).tolist()
        return [i for k in order for i in full[k]] + sorted(last)


def _split_balanced(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """Greedy: each index (longest first) goes to the chunk with the smallest total length that has room."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0] * num_chunks
    for i in indices:
        k = min((k for k in range(num_chunks) if len(chunks[k]) < per_chunk), key=totals.__getitem__)
        chunks[k].append(i)
        totals[k] += abs(lengths[i])
    return chunks
