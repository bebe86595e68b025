"""`radio-vlm demo`: a reduced run of the whole pipeline (plumbing and file formats, no accuracy claims),
the stage runner's console streaming, and the blind baseline's blanked images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radio_vlm.demo import driver as demo
from radio_vlm.demo import stages as demo_stages
from radio_vlm.demo.report import BENCHMARKS, VISION_ROWS

REPO = Path(__file__).resolve().parents[2]

# A reduced version of configs/demo/demo.yaml: every stage runs, for a few steps on a few images.
QUICK = {
    "data": {"seed": 0, "num_train": 24, "num_test": 12, "num_vision": 8},
    "distill": {
        "config": str(REPO / "configs" / "demo" / "distill.yaml"),
        "set": ["train.max_steps=2", "train.log_every=1", "data.eval_images=4", "groups.0.batch_size=4"],
    },
    "vision": {
        "knn": {"k": 3},
        "seg_probe": {"steps": 2, "crop-size": 32, "batch-size": 4},
        "zero_shot": {"adaptor": "clip", "teacher": "tiny_clip"},
        "sam": {"adaptor": "sam", "teacher": "tiny_sam", "flags": {"resolution": 64}},
    },
    "llava": {
        "llm": "tiny-llama",
        "long_edge": 64,
        "common": {"no-gradient-checkpointing": True, "dataloader-num-workers": 0, "logging-steps": 1},
        "pretrain": {"max-steps": 2, "global-batch-size": 4, "per-device-batch-size": 4},
        "finetune": {
            "max-steps": 2,
            "global-batch-size": 4,
            "per-device-batch-size": 4,
            "learning-rate": 1e-3,
            "unfreeze-vision-tower": True,
        },  # fmt: skip
        "generate": {"batch-size": 8, "max-new-tokens": 3},
    },
}


def run_in_process(stages, threads_each=None):
    """The stages' commands called in this process (the same CLI entry points, no interpreter start-ups)."""
    from distill.cli import main as distill_main
    from llava_patch.cli import main as llava_main

    mains = {"distill": distill_main, "llava_patch.cli": llava_main}
    for stage in stages:
        assert stage.argv[0] == "-m", stage.argv
        assert mains[stage.argv[1]](stage.argv[2:]) == 0, stage.name


def run_variant(run, root: Path, config: dict) -> dict:
    """`run` (demo.run_demo or a variant) on `config` into root/out, its stages run in this process."""
    (root / "quick.yaml").write_text(json.dumps(config))  # JSON is YAML
    mp = pytest.MonkeyPatch()
    mp.setattr(demo, "run_stages", run_in_process)
    try:
        return run(root / "out", root / "quick.yaml")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root / "out", run_variant(demo.run_demo, root, QUICK)


def test_results_json_has_the_issue_schema(reduced_run):
    out, results = reduced_run
    assert json.loads((out / "results.json").read_text()) == results
    assert set(results) == {"benchmarks", "tokens_per_image", "distill", "vision", "wall_seconds"}
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for scores in results["benchmarks"].values():
        assert set(scores) == {"score", "blind_score"}
        assert all(0.0 <= value <= 100.0 for value in scores.values())
    assert results["tokens_per_image"]["clip_336"] == 576
    # test images are 64..112 px; at long edge 64 and patch 16 an image costs 4x2 .. 4x4 tokens
    assert 8 <= results["tokens_per_image"]["mean"] <= 16
    assert set(results["distill"]["teachers"]) == {"tiny_clip", "tiny_dinov2", "tiny_sam"}
    assert results["wall_seconds"] > 0


def test_every_question_is_answered_and_scored_on_both_sides(reduced_run):
    out, _ = reduced_run
    for side in demo.SIDES:
        for benchmark in BENCHMARKS:
            metrics = json.loads((out / "llava" / side / "scores" / f"{benchmark}.json").read_text())
            assert metrics["num_missing"] == 0 and metrics["num_questions"] == 12, (side, benchmark)
        assert (out / "llava" / side / "pretrain" / "mm_projector.bin").is_file()
        settings = json.loads((out / "llava" / side / "finetune" / "radio_llava_run.json").read_text())
        assert settings["vision_tower"] == str(out / "student")


def test_vision_rows_compare_the_student_with_its_untrained_architecture(reduced_run):
    out, results = reduced_run
    assert set(results["vision"]) == set(VISION_ROWS)
    for key, values in results["vision"].items():
        assert set(values) == {"student", "random init"} and all(-100 <= v <= 100 for v in values.values()), (
            key
        )
    for side in ("student", "random init"):
        for protocol in ("knn", "seg-probe", "zero-shot", "sam"):
            record = json.loads((out / "vision_eval" / side / protocol / "metrics.json").read_text())
            assert record["name"] == side and record["random_init"] == (side == "random init")
    assert (out / "teachers" / "tiny_clip" / "open_clip_config.json").is_file()
    assert "| metric | student | random init |" in (out / "vision_eval" / "report.md").read_text()


def test_reports_and_figure(reduced_run):
    out, results = reduced_run
    markdown = (out / "results.md").read_text()
    assert f"| {VISION_ROWS['knn_top1'][0]} | {results['vision']['knn_top1']['student']:.1f} |" in markdown
    for benchmark in BENCHMARKS:
        assert f"| {benchmark} | {results['benchmarks'][benchmark]['score']:.1f} |" in markdown
    assert Image.open(out / "results.png").size[0] > 1000
    pca = Image.open(out / "pca.png")
    assert pca.width == 2 * Image.open(out / "data" / "eval" / "gqa" / "images" / "n100000.jpg").width


def test_the_blind_copy_keeps_names_and_sizes_but_no_content(tmp_path):
    source = tmp_path / "src" / "a"
    source.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)).save(source / "x.png")
    (source / "notes.json").write_text("{}")
    assert demo_stages.blank_images(tmp_path / "src", tmp_path / "blind") == 1
    blank = np.asarray(Image.open(tmp_path / "blind" / "a" / "x.png"))
    assert blank.shape == (20, 30, 3) and (blank == demo_stages.BLANK_RGB).all()
    assert not (tmp_path / "blind" / "a" / "notes.json").exists()


def test_answers_of_the_combined_question_file_split_back_per_benchmark(reduced_run, tmp_path):
    out, _ = reduced_run
    owner = demo.combined_questions(out / "data" / "eval", tmp_path / "q.jsonl")
    questions = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(questions) == len(owner) == 4 * 12
    assert all((out / "data" / "eval" / q["image"]).is_file() for q in questions)
    answers = tmp_path / "a.jsonl"
    answers.write_text(
        "".join(json.dumps({"question_id": q["question_id"], "text": "x"}) + "\n" for q in questions)
    )
    paths = demo.split_answers(answers, owner, tmp_path)
    assert {b: len(p.read_text().splitlines()) for b, p in paths.items()} == dict.fromkeys(BENCHMARKS, 12)


PROGRESS = "import sys, time\nfor i in range(3):\n    sys.stdout.write(f'\\rbar {i}'); sys.stdout.flush()\nprint()\nprint('done')\n"


def test_stages_stream_to_console_and_log(tmp_path, capsys):
    stages = [demo_stages.Stage(f"s{i}", ["-c", PROGRESS], tmp_path / "logs" / f"s{i}.log") for i in range(2)]
    demo_stages.run_stages(stages)
    console = capsys.readouterr().out
    for i in range(2):
        assert f"[s{i}] done" in console and f"[s{i}] bar 0" in console  # the first redraw is shown
        assert (tmp_path / "logs" / f"s{i}.log").read_bytes() == b"\rbar 0\rbar 1\rbar 2\ndone\n"
        assert stages[i].seconds > 0


def test_a_failing_stage_names_its_log(tmp_path):
    stage = demo_stages.Stage("bad", ["-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "bad.log")
    with pytest.raises(demo_stages.StageFailed, match=r"bad \(exit 3; log .*bad\.log"):
        demo_stages.run_stages([stage])
    assert "boom" in (tmp_path / "bad.log").read_text()


def test_flags_and_config_errors(tmp_path):
    assert demo.flags({"max-steps": 4, "unfreeze-vision-tower": True, "x": False}) == [
        "--max-steps",
        "4",
        "--unfreeze-vision-tower",
    ]
    with pytest.raises(FileNotFoundError, match="demo config"):
        demo.load_demo_config(tmp_path / "missing.yaml")
    (tmp_path / "c.yaml").write_text("data: {}\n")
    with pytest.raises(ValueError, match="section 'distill' is missing"):
        demo.load_demo_config(tmp_path / "c.yaml")


def test_default_config_is_the_repository_demo_config():
    """`make demo` passes no --config: the default must be configs/demo/demo.yaml of this checkout."""
    assert Path(__file__).resolve().parents[2] / "configs" / "demo" / "demo.yaml" == demo.DEFAULT_CONFIG
    assert demo.DEFAULT_CONFIG.is_file()


def test_token_budget_variant_scores_each_budget_side_by_side(tmp_path):
    """`--variant token-budget`: one LLaVA per `token_budget` side (here 64 px without a merge and 128 px
    with unshuffle:2: the same tokens per image), each trained with its flags, and a side-by-side table."""
    sides = {
        "none-64px": {"long-edge": 64},
        "unshuffle2-128px": {"long-edge": 128, "token-merge": "unshuffle:2"},
    }
    results = run_variant(demo.run_token_budget, tmp_path, {**QUICK, "token_budget": sides})
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text()) == results
    assert set(results["sides"]) == set(sides) and results["variant"] == "token-budget"
    tokens = [side["tokens_per_image"] for side in results["sides"].values()]
    assert tokens[0] == tokens[1] and 8 <= tokens[0] <= 16  # twice the pixels per side, a quarter per token
    for name, settings in sides.items():
        run = json.loads((out / "llava" / name / "finetune" / "radio_llava_run.json").read_text())
        assert (run["long_edge"], run["token_merge"]) == (
            settings["long-edge"],
            settings.get("token-merge", "none"),
        )
        for benchmark in BENCHMARKS:
            metrics = json.loads((out / "llava" / name / "scores" / f"{benchmark}.json").read_text())
            assert metrics["num_missing"] == 0 and metrics["num_questions"] == 12, (name, benchmark)
    markdown = (out / "results.md").read_text()
    assert "| benchmark | none-64px | unshuffle2-128px | change |" in markdown
    assert f"| textvqa | {results['sides']['none-64px']['benchmarks']['textvqa']:.1f} |" in markdown
    assert (out / "results.png").is_file() and not (out / "blind_data").exists()


def test_the_default_config_holds_the_token_budget_sides(tmp_path):
    config = demo.load_demo_config(demo.DEFAULT_CONFIG)  # the file `radio-vlm demo` reads without --config
    assert config["token_budget"] == {
        "none-96px": {"long-edge": 96, "token-merge": "none"},
        "unshuffle2-192px": {"long-edge": 192, "token-merge": "unshuffle:2"},
    }
    (tmp_path / "quick.yaml").write_text(json.dumps(QUICK))
    with pytest.raises(ValueError, match="needs a section 'token_budget'"):
        demo.run_token_budget(tmp_path / "out", tmp_path / "quick.yaml")
    assert not (tmp_path / "out").exists()
