"""Typed configuration of a distillation run: one dataclass per concern, YAML in, resolved YAML out.

    config = load_config("configs/distill/tiny.yaml", overrides=["train.max_steps=20"])
    save_config(config, output_dir / "config.yaml")

Overrides are `dotted.path=value`; the value is parsed as YAML and coerced to the field's type, so
`train.max_steps=20`, `optim.lr=3e-4`, `student.backbone.hidden_size=64`, `teachers.0.source=/w/dino` and
`groups.1.teachers=[sam_vith]` all work. Every error names the field and says what is expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class StudentConfig:
    preset: str | None = (
        None  # a radio_vlm.tiny model whose backbone geometry to start from (e.g. tiny-radio)
    )
    backbone: dict[str, Any] = field(default_factory=dict)  # RadioConfig/ERadioConfig fields, over the preset
    init_from: str | None = (
        None  # a run directory or RadioWithAdaptors folder to start from (stage 2 from stage 1)
    )
    mlp_version: str = "v2"  # adaptor MLP layout (official MLP2 = AM-RADIO section 3.2's 2-layer MLP)
    num_inner: int = 0  # residual inner blocks of each adaptor MLP (0 = the paper's 2-layer head)
    training_cpe: bool = True  # random crops of the position table while training (AM-RADIO section 4, CPE)
    spectral_reparam: bool = False  # spectral reparametrisation of backbone Linears (AM-RADIO section 4)
    spectral_weight_decay: float = 0.02  # weight decay on the spectral scales (AM-RADIO section 4)


@dataclass
class TeacherConfig:
    name: str  # exact distill.teachers registry name, e.g. "dinov2_vitg14_reg"
    adaptor: str | None = None  # student adaptor head name; defaults to `name`
    source: str | None = None  # local weights replacing the registry's `source` (real teachers)
    summary_weight: float = 1.0  # lambda_i of the summary loss (AM-RADIO eq. 2); ignored without a summary
    feature_weight: float = 1.0  # gamma_i of the feature loss (AM-RADIO eq. 3)

    @property
    def head(self) -> str:
        return self.adaptor or self.name


@dataclass
class GroupConfig:
    name: str  # group label used in logs
    teachers: list[str]  # teacher names this group distils from
    resolution: int  # student input side in px for this group
    batch_size: int  # images per rank per micro-step
    ranks: int | None = None  # explicit number of ranks; or use `rank_share`
    rank_share: float | None = None  # fraction of the ranks; groups without either split what is left
    weight: float = 1.0  # share of this group in the global update (normalised over groups)
    vitdet_window_sizes: list[int] = field(default_factory=list)  # ViTDet windows sampled per step; [] = off
    vitdet_num_global: int | None = None  # global blocks in the ViTDet schedule (official default 4)


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic", "skimage", "folder" (recursive) or "webdataset" (tar shards)
    path: str | None = None  # image folder, or tar shard pattern (e.g. /d/shard-{000000..000099}.tar)
    index: str | None = None  # folder: a file of paths relative to `path`, one a line; else listed
    eval_path: str | None = None  # image folder of held-out images; default: held out from the source
    num_images: int = 256  # synthetic/skimage: size of the training pool
    min_scale: float = 0.35  # random scale+crop: smallest crop area fraction
    max_scale: float = 1.0  # random scale+crop: largest crop area fraction
    num_workers: int = 0  # DataLoader worker processes
    eval_images: int = 32  # held-out images for the final evaluation


@dataclass
class LossConfig:
    # The feature loss itself is fixed by the paper: 0.9 cosine + 0.1 smooth-L1 (AM-RADIO eq. 3, distill.losses).
    balancer: str = "naive"  # naive | uncertainty | adaloss | phi_s (AM-RADIO section 3.4.1, PHI-S)
    adaloss_momentum: float = 0.99  # AM-RADIO section 3.4.1
    phi_s_samples_per_dim: float = 2.0  # PHI-S fitted on >= this x D vectors a term (tokens count)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # base learning rate (AM-RADIO section 4)
    min_lr: float = 0.0  # end of the cosine schedule
    warmup_steps: int = 0  # linear warm-up before the cosine decay
    weight_decay: float = 0.02  # AdamW decay of weight matrices (biases, norms and tokens get none)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables


@dataclass
class DistributedConfig:
    zero_stage: int = 1  # DeepSpeed ZeRO stage: 0, 1 or 2
    precision: str = "fp32"  # "fp32" or "bf16" (the student's compute and DeepSpeed master weights)
    grad_accum: int = 1  # micro-steps per optimizer step
    group_sampling: str = (
        "fixed"  # "fixed": each rank keeps its group; "weighted": each rank samples per step
    )
    backend: str | None = None  # torch.distributed backend; None = nccl on GPU, gloo on CPU


@dataclass
class TrainConfig:
    max_steps: int = 100  # optimizer steps
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    log_every: int = 10  # steps between metrics.jsonl / console lines
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    seed: int = 0  # seeds data order, student init and per-step augmentation RNG
    device: str | None = None  # None = cuda when available, else cpu
    eval_batch_size: int = 8  # batch size of the final evaluation
    report_to: list[str] = field(default_factory=list)  # also to "tensorboard", "wandb" (offline)


@dataclass
class KnnEvalConfig:
    train: str  # ImageFolder of the database images (one folder per class)
    val: str  # ImageFolder of the held-out images to classify (the same class folders)
    k: int = 20  # neighbours that vote (official protocol)
    resolution: list[int] = field(default_factory=list)  # [N] short side / [H, W] centre crop; [] = preferred


@dataclass
class SegProbeEvalConfig:
    data: str  # data root in the `format` layout (training + validation splits)
    format: str = "ade20k"  # ade20k | voc
    steps: int = 200  # probe training steps per evaluation (the paper: 160k, once)
    crop_size: int = 512  # training crop and slide window in px
    batch_size: int = 16  # crops per probe step
    lr: float = 1e-3  # probe AdamW learning rate


@dataclass
class ZeroShotEvalConfig:
    teacher: str  # a teacher of this run; an open_clip one's text tower makes the classes
    val: str  # ImageFolder of held-out images
    classnames: str = "folders"  # folders | imagenet | a file of names (as eval zero-shot)
    templates: str = "openai"  # openai | simple | a file of templates
    text_tower: str | None = None  # a CLIP/SigLIP text tower instead of the teacher's (HF teachers)


@dataclass
class SamEvalConfig:
    teacher: str  # a segment_anything teacher of this run (its prompt encoder and mask decoder are reused)
    annotations: str  # COCO instances JSON of held-out images
    images: str  # their folder
    resolution: int | None = None  # px the student sees (default: SAM's input size)
    max_images: int | None = None  # only the first N images (by id)


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations while training (0: only at the end)
    batch_size: int = 32  # images per student forward
    knn: KnnEvalConfig | None = None  # k-NN top-1/top-5 on summary vectors (radio-vlm eval knn)
    seg_probe: SegProbeEvalConfig | None = None  # linear-probe mIoU on frozen features
    zero_shot_agreement: ZeroShotEvalConfig | None = None  # zero-shot agreement with a CLIP teacher
    sam_agreement: SamEvalConfig | None = None  # SAM-decoder mask mIoU against the SAM teacher's masks

    @property
    def protocols(self) -> list[str]:
        return [n for n in ("knn", "seg_probe", "zero_shot_agreement", "sam_agreement") if getattr(self, n)]


@dataclass
class DistillConfig:
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    groups: list[GroupConfig] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        validate(self)

    def teacher(self, name: str) -> TeacherConfig:
        return next(t for t in self.teachers if t.name == name)


# train.report_to backends (distill.reporting); each is also the name of the optional extra installing it
REPORT_TO = ("tensorboard", "wandb")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the field."""


def validate(config: DistillConfig) -> None:
    names = [t.name for t in config.teachers]
    if not names:
        raise ConfigError("teachers: the config needs at least one teacher")
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers: names must be unique, got {names}")
    heads = [t.head for t in config.teachers]
    if len(set(heads)) != len(heads):
        raise ConfigError(f"teachers: adaptor names must be unique, got {heads}")
    if not config.groups:
        raise ConfigError("groups: the config needs at least one group (teachers, resolution, batch_size)")
    for i, group in enumerate(config.groups):
        unknown = [t for t in group.teachers if t not in names]
        if unknown or not group.teachers:
            raise ConfigError(
                f"groups.{i}.teachers: {unknown or 'empty'}; every entry must be one of {names}"
            )
        if group.batch_size < 1 or group.resolution < 1:
            raise ConfigError(f"groups.{i} ({group.name}): batch_size and resolution must be >= 1")
        # A group without weight or ranks would leave its ranks without work while the others wait for them
        # in the step's collectives.
        if group.weight <= 0:
            raise ConfigError(
                f"groups.{i} ({group.name}): weight {group.weight} gives the group no work; give it a weight > 0 "
                f"or remove the group"
            )
        if group.ranks is not None and group.rank_share is not None:
            raise ConfigError(f"groups.{i} ({group.name}): set `ranks` or `rank_share`, not both")
        if (group.ranks is not None and group.ranks < 1) or (
            group.rank_share is not None and not 0 < group.rank_share <= 1
        ):
            raise ConfigError(
                f"groups.{i} ({group.name}): ranks must be >= 1 and rank_share in (0, 1]; remove a group that "
                f"should get no ranks"
            )
    unknown = sorted(set(config.train.report_to) - set(REPORT_TO))
    if unknown:
        raise ConfigError(f"train.report_to: unknown {unknown}; choose from {list(REPORT_TO)} (or [])")
    for key in ("zero_shot_agreement", "sam_agreement"):
        section = getattr(config.eval, key)
        if section is not None and section.teacher not in names:
            raise ConfigError(
                f"eval.{key}.teacher: {section.teacher!r} is not one of this run's teachers {names}"
            )
    if config.eval.every and not config.eval.protocols:
        raise ConfigError(
            "eval.every: set at least one of eval.knn, seg_probe, zero_shot_agreement, sam_agreement"
        )
    if config.eval.seg_probe is not None and config.eval.seg_probe.format not in ("ade20k", "voc"):
        raise ConfigError(f"eval.seg_probe.format: {config.eval.seg_probe.format!r}; expected ade20k or voc")
    checks = {
        "distributed.zero_stage": config.distributed.zero_stage in (0, 1, 2),
        "distributed.precision": config.distributed.precision in ("fp32", "bf16"),
        "distributed.group_sampling": config.distributed.group_sampling in ("fixed", "weighted"),
        "distributed.grad_accum": config.distributed.grad_accum >= 1,
        "loss.balancer": config.loss.balancer in ("naive", "uncertainty", "adaloss", "phi_s"),
        "loss.phi_s_samples_per_dim": config.loss.phi_s_samples_per_dim > 0,
        "train.max_steps": config.train.max_steps >= 1,
        "train.log_every": config.train.log_every >= 1,
        "train.save_every": config.train.save_every >= 0,
        "eval.every": config.eval.every >= 0,
    }
    allowed = {
        "distributed.zero_stage": "0, 1 or 2",
        "distributed.precision": "'fp32' or 'bf16'",
        "distributed.group_sampling": "'fixed' or 'weighted'",
        "distributed.grad_accum": ">= 1",
        "loss.balancer": "naive, uncertainty, adaloss or phi_s",
        "loss.phi_s_samples_per_dim": "> 0",
        "train.max_steps": ">= 1",
        "train.log_every": ">= 1",
        "train.save_every": ">= 0 (0 = only at the end)",
        "eval.every": ">= 0 (0 = only at the end)",
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"{key}: invalid value {_get(config, key)!r}; expected {allowed[key]}")


# ----------------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type coercion


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` (from YAML) as type `tp`, or a ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field; {cls.__name__} has {sorted(fields)}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}{missing[0]}: required field of {cls.__name__} is missing")
    return cls(**kwargs)


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = (
            obj[int(part)]
            if isinstance(obj, list)
            else obj[part]
            if isinstance(obj, dict)
            else getattr(obj, part)
        )
    return obj


def apply_override(data: dict, override: str) -> None:
    """Set `a.b.c=value` in the plain-dict config `data` (list items by index: `groups.0.batch_size=4`)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected KEY=VALUE, e.g. train.max_steps=20")
    parts = key.strip().split(".")
    node, path = data, []
    for part in parts[:-1]:
        path.append(part)
        node = _child(node, part, ".".join(path), create=True)
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, key)
        node[index] = yaml.safe_load(raw)
    else:
        node[last] = yaml.safe_load(raw)


def _index(node: list, part: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{where}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def _child(node: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: cannot set a field inside the value {node!r}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
    """A validated `DistillConfig` from a plain dict, after applying `overrides`."""
    data = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy, plain types
    for override in overrides:
        apply_override(data, override)
    return _build(DistillConfig, data)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
    """Read a YAML config file and apply `--set` style overrides."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; see configs/distill/ for examples")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (student, teachers, ...)")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def config_to_dict(config: DistillConfig) -> dict:
    return dataclasses.asdict(config)


def save_config(config: DistillConfig, path: str | Path) -> Path:
    """Write the resolved config (every field, defaults included) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
