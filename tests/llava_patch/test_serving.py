"""Runs that load anywhere: `RadioLlavaProcessor` through AutoProcessor, `pipeline("image-text-to-text")` giving
`radio-llava generate`'s answers, `radio-llava export` (plain, and `--remote-code` loaded in a process that
cannot import radio_vlm or llava_patch), and a run without a processor."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from llava_patch.cli import main
from llava_patch.eval.generate import build_prompt
from llava_patch.eval.io import write_jsonl
from llava_patch.model import build, load_pretrained
from llava_patch.processing import MissingProcessorError, RadioLlavaProcessor
from radio_vlm.models.image_processing_radio import RadioImageProcessor

SIZES = [(96, 64), (64, 112), (80, 80), (250, 30)]  # (w, h): landscape, portrait, square, a strip
SUFFIX = "\nAnswer the question using a single word or phrase."
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """A saved tiny RADIO-LLaVA run (model + processor, as `radio-llava train` writes it) and images."""
    root = tmp_path_factory.mktemp("serving")
    model, processor = build("tiny-radio", "tiny-llama")
    # The random tiny LLM mostly picks byte-fallback pieces, which decode to runs of U+FFFD that swallow
    # the text around them; suppressed (through the saved generation config, so for every caller) to get
    # answers made of words that both decoding paths can be compared on.
    vocab = processor.tokenizer.get_vocab()
    model.generation_config.suppress_tokens = sorted(
        i for piece, i in vocab.items() if piece.startswith("<0x")
    )
    model.save_pretrained(root / "run")
    processor.save_pretrained(root / "run")
    (root / "images").mkdir()
    for i, (w, h) in enumerate(SIZES):
        Image.new("RGB", (w, h), (60 * i, 200 - 40 * i, 90)).save(root / "images" / f"{i}.png")
    return {"root": root, "run": root / "run", "images": root / "images"}


def _image(served, i: int) -> Image.Image:
    return Image.open(served["images"] / f"{i}.png").convert("RGB")


def test_auto_processor_gives_each_image_its_own_token_count(served) -> None:
    processor = AutoProcessor.from_pretrained(served["run"])
    assert isinstance(processor, RadioLlavaProcessor)
    images = [_image(served, i) for i in range(len(SIZES))]
    inputs = processor(images=images, text=[build_prompt(f"What is {i}?") for i in range(len(SIZES))])
    per_row = (inputs["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    expected = [processor.image_processor.num_image_tokens(h, w) for w, h in SIZES]
    assert per_row == expected and len(set(expected)) == len(expected)  # not one fixed image_seq_length
    model = AutoModelForImageTextToText.from_pretrained(served["run"])
    model(**inputs)  # LLaVA checks that image features and image tokens agree


@pytest.mark.parametrize(
    "settings",
    [
        {"resize_mode": "long_edge", "long_edge": 40},  # not a multiple of the step: the long side pads too
        {"resize_mode": "long_edge", "long_edge": 64, "min_resolution_step": 32},
        {"resize_mode": "nearest_supported"},
        {"resize_mode": "square", "long_edge": 48},
    ],
)
def test_expansion_is_the_image_processors_count(served, settings) -> None:
    processor = RadioLlavaProcessor.from_pretrained(served["run"])
    processor.image_processor = RadioImageProcessor(patch_size=16, max_resolution=512, **settings)
    for height, width in [(17, 300), (300, 17), (64, 48), (33, 47), (250, 250), (1, 1)]:
        pixels = processor.process_image(torch.rand(3, height, width))
        assert processor.num_image_tokens(pixels) == processor.image_processor.num_image_tokens(height, width)


def test_pipeline_answers_equal_radio_llava_generate(served, tmp_path: Path) -> None:
    questions = [
        {"question_id": i, "image": f"{i}.png", "text": f"What color is shape {i}?" + SUFFIX}
        for i in range(3)
    ]
    write_jsonl(tmp_path / "questions.jsonl", questions)
    argv = ["generate", "--model", str(served["run"]), "--question-file", str(tmp_path / "questions.jsonl")]
    argv += ["--image-folder", str(served["images"]), "--answers-file", str(tmp_path / "answers.jsonl")]
    assert main(argv + ["--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2"]) == 0
    answers = [json.loads(line)["text"] for line in (tmp_path / "answers.jsonl").read_text().splitlines()]

    pipe = pipeline("image-text-to-text", model=str(served["run"]))
    assert isinstance(pipe.processor, RadioLlavaProcessor)
    piped = [
        pipe(
            images=str(served["images"] / q["image"]),
            text=build_prompt(q["text"]),
            max_new_tokens=MAX_NEW_TOKENS,
            return_full_text=False,
        )[0]["generated_text"].strip()
        for q in questions
    ]
    assert piped == answers
    assert all(answers) and len(set(answers)) > 1  # real, image-dependent answers, not empty strings
    # chat input: the run's vicuna_v1 chat template renders the same prompt
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": _image(served, 2)},
                {"type": "text", "text": questions[2]["text"]},
            ],
        }
    ]
    out = pipe(text=chat, max_new_tokens=MAX_NEW_TOKENS, return_full_text=False)
    assert out[0]["generated_text"].strip() == answers[2]


BLOCKED_LOAD = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("radio_vlm", "llava_patch"):
                raise ImportError(name + " is blocked in this process")
    sys.meta_path.insert(0, Block())
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
    folder, image, prompt = sys.argv[1:]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    classes = [type(model), type(model.model.vision_tower), type(processor), type(processor.image_processor)]
    assert all(c.__module__.startswith("transformers_modules.") for c in classes), classes
    inputs = processor(images=Image.open(image), text=prompt)
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    answer = pipe(images=image, text=prompt, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    torch.save(
        {"inputs": dict(inputs), "logits": model(**inputs).logits, "answer": answer,
         "generated": model.generate(**inputs, max_new_tokens=6, do_sample=False)},
        folder + "/remote.pt",
    )
    """
)


@pytest.mark.slow
def test_export_remote_code_loads_without_radio_vlm(served, tmp_path: Path, subprocess_env) -> None:
    out = tmp_path / "exported"
    assert main(["export", str(served["run"]), str(out), "--remote-code"]) == 0
    assert {"modeling_radio_llava.py", "configuration_radio_llava.py", "processing_radio_llava.py"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and "AutoModelForImageTextToText" in config["auto_map"]
    image, prompt = served["images"] / "1.png", build_prompt("What is it?" + SUFFIX)
    env = {**subprocess_env, "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    env.pop("PYTHONPATH")  # nothing of this checkout on the path; the blocker covers installed copies
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_LOAD, str(out), str(image), prompt],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(out / "remote.pt")

    model, processor = load_pretrained(served["run"])
    inputs = processor(images=Image.open(image), text=prompt)
    for key, value in inputs.items():
        torch.testing.assert_close(remote["inputs"][key], value, rtol=0, atol=0)
    torch.testing.assert_close(remote["logits"], model(**inputs).logits, rtol=0, atol=0)
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(remote["generated"], generated)
    assert remote["answer"].strip() == processor.decode(generated[0, inputs["input_ids"].shape[1] :]).strip()


def test_run_without_processor_names_the_folder_and_export_writes_one(served, tmp_path: Path) -> None:
    # a run as saved before processors were saved with runs: tokenizer files and preprocessor_config.json
    old = tmp_path / "old-run"
    model, processor = load_pretrained(served["run"])
    model.save_pretrained(old)
    processor.tokenizer.save_pretrained(old)
    processor.image_processor.save_pretrained(old)
    with pytest.raises(MissingProcessorError, match=rf"{old} has no processor .* radio-llava export {old} "):
        load_pretrained(old)
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": 0, "image": "0.png", "text": "What?"}])
    with pytest.raises(MissingProcessorError, match=str(old)):
        main(["generate", "--model", str(old), "--question-file", str(tmp_path / "q.jsonl"),
              "--image-folder", str(served["images"]), "--answers-file", str(tmp_path / "a.jsonl")])  # fmt: skip

    out = tmp_path / "exported"
    assert main(["export", str(old), str(out)]) == 0
    assert (out / "model.safetensors").read_bytes() == (old / "model.safetensors").read_bytes()
    assert not any(p.suffix == ".py" for p in out.iterdir())  # no code without --remote-code
    loaded = AutoProcessor.from_pretrained(out)
    assert isinstance(loaded, RadioLlavaProcessor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    image = _image(served, 0)
    prompt = build_prompt("What?")
    assert torch.equal(
        loaded(images=image, text=prompt)["input_ids"], processor(images=image, text=prompt)["input_ids"]
    )

    (old / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no processor .* and no tokenizer_config.json"):
        main(["export", str(old), str(tmp_path / "again")])


def test_export_refuses_what_it_cannot_serve(served, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        main(["export", str(tmp_path), str(tmp_path / "out")])
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(
        json.dumps({"model_type": "llava", "vision_config": {"model_type": "clip"}})
    )
    with pytest.raises(ValueError, match="export takes a RADIO-LLaVA run"):
        main(["export", str(clip), str(tmp_path / "out")])
    with pytest.raises(ValueError, match="OUT .* is RUN"):
        main(["export", str(served["run"]), str(served["run"])])


def test_exporting_code_leaves_the_processor_as_it_was(served, tmp_path: Path) -> None:
    processor = RadioLlavaProcessor.from_pretrained(served["run"])
    processor.save_pretrained(tmp_path, export_code=True)
    assert "auto_map" not in processor.to_dict() and "auto_map" not in processor.image_processor.to_dict()
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "processing_radio_llava.RadioLlavaProcessor"}
    assert os.path.isfile(tmp_path / "image_io.py")


def test_readme_serving_example_runs(served, tmp_path: Path, monkeypatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "AutoModelForImageTextToText" in b
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "finetune").symlink_to(served["run"])
    _image(served, 3).save(tmp_path / "photo.jpg")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace["processor"], RadioLlavaProcessor)
    assert namespace["answer"].strip() and namespace["piped"].strip() == namespace["answer"].strip()
