"""Config: YAML + `--set` overrides with type coercion, errors naming the field, resolved config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import ConfigError, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs/distill"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    config = load_config(CONFIGS / name)
    assert config.groups and config.teachers and config.train.max_steps >= 1


def test_overrides_coerce_types_at_any_depth():
    config = load_config(
        CONFIGS / "tiny.yaml",
        [
            "train.max_steps=20",
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string: coerced to float
            "train.save_every=5.0",
            "student.backbone.hidden_size=64",
            "teachers.0.source=/weights/clip.bin",
            "groups.0.teachers=[tiny_clip, tiny_sam]",
            "groups.0.rank_share=1",
            "distributed.precision=bf16",
            "student.spectral_reparam=true",
        ],
    )
    assert config.train.max_steps == 20 and isinstance(config.train.max_steps, int)
    assert config.optim.lr == 3e-4 and config.train.save_every == 5
    assert config.student.backbone["hidden_size"] == 64
    assert config.teachers[0].source == "/weights/clip.bin"
    assert config.groups[0].teachers == ["tiny_clip", "tiny_sam"] and config.groups[0].rank_share == 1.0
    assert config.distributed.precision == "bf16" and config.student.spectral_reparam is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "train.max_step: unknown field"),
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("train.max_steps=2.5", "train.max_steps: expected an integer"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("student.spectral_reparam=3", "student.spectral_reparam: expected true or false"),
        ("groups.5.batch_size=3", "groups.5: '5' is not an index"),
        ("groups.0.teachers=[nope]", "groups.0.teachers"),
        ("distributed.zero_stage=3", "distributed.zero_stage"),
        ("loss.balancer=magic", "loss.balancer"),
        ("groups.0.weight=0", r"groups.0 \(all\): weight 0.0 gives the group no work"),
        ("groups.0.ranks=0", r"groups.0 \(all\): ranks must be >= 1"),
        ("groups.0.rank_share=0", r"groups.0 \(all\): ranks must be >= 1 and rank_share in \(0, 1\]"),
        ("train.report_to=[tensorbored]", r"train.report_to: unknown \['tensorbored'\]"),
        ("train.max_steps", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.yaml", [override])


def test_missing_file_and_required_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teachers: [{adaptor: clip}]\ngroups: []\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: teachers.0.name: required field"):
        load_config(bad)


def test_resolved_config_round_trips(tmp_path):
    config = load_config(CONFIGS / "tiny_partitioned.yaml", ["train.log_every=3"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_config(path) == config
    assert "save_every" in path.read_text() and "keep_checkpoints" in path.read_text()  # defaults written too
