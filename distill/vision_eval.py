"""The paper's vision benchmark of the student during and after distillation (`eval:` in the config).

    eval:
      every: 500                                      # also at the end of the run
      knn: {train: held_out/train, val: held_out/val}  # ImageFolders
      seg_probe: {data: ade_small/, format: ade20k, steps: 200}
      zero_shot_agreement: {teacher: dfn_clip_vith14_378, val: held_out/val, classnames: imagenet}
      sam_agreement: {teacher: sam_vith, annotations: coco/instances_val2017.json, images: coco/val2017}

`VisionEval` is a metric of `distill.evaluate` (it is added to `METRICS` as "vision" when the config has an
`eval:` protocol), so it runs in the end-of-run evaluation, and every `eval.every` steps on its own. Each
protocol is `radio_vlm.evaluation`'s (the same code as `radio-vlm eval`), run on the student in memory.
Every rank takes part: k-NN, zero-shot and SAM split their images over the ranks and combine them
(radio_vlm.evaluation.distributed, on the run's device, as `Collectives`); the probe trains identically on
every rank, so no rank waits in a collective while another computes. The zero-shot classes come from the
teacher's own open_clip text tower (built once, with the teacher's weights or its tiny twin's seed), the SAM
agreement from the teacher's own prompt encoder and mask decoder (its full checkpoint, or the twin).
Results: {"knn": {"top1", "top5", ...}, "seg_probe": {"miou", "aacc", ...}, "zero_shot_agreement":
{"agreement", "logit_correlation", ...}, "sam_agreement": {"agreement_miou", "miou", ...}}, percentages in
0..100 (per-class tables are left to `radio-vlm eval`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from distill.config import DistillConfig
from distill.evaluate import EvalContext
from distill.teachers import TeacherSpec, build_teacher_model
from radio_vlm import RadioWithAdaptors
from radio_vlm.evaluation import distributed
from radio_vlm.evaluation.datasets import ImageFolder, load_classnames, load_templates
from radio_vlm.evaluation.knn import knn_metrics
from radio_vlm.evaluation.sam import load_coco, load_sam, sam_metrics
from radio_vlm.evaluation.seg_probe import ProbeSettings, seg_probe_metrics
from radio_vlm.evaluation.zero_shot import TextTower, load_text_tower, zero_shot_metrics

logger = logging.getLogger("distill")


def open_clip_tower(spec: TeacherSpec) -> TextTower:
    """The open_clip teacher `spec` with its text tower, as `radio_vlm.evaluation.zero_shot` uses it."""
    import open_clip

    if spec.loader != "open_clip":
        raise ValueError(
            f"eval.zero_shot_agreement.teacher: {spec.name!r} is a {spec.loader} teacher without a text tower in "
            "this registry; set eval.zero_shot_agreement.text_tower to its CLIP/SigLIP folder"
        )
    name = spec.source if spec.source and spec.source.startswith("local-dir:") else spec.arch
    context = ((spec.config or {}).get("text_cfg") or {}).get("context_length")
    tokenizer = open_clip.get_tokenizer(name, **({"context_length": context} if context else {}))
    preprocess = open_clip.image_transform(spec.resolution, is_train=False, mean=spec.mean, std=spec.std)
    return TextTower(spec.name, build_teacher_model(spec), tokenizer, preprocess, "open_clip")


class VisionEval:
    """The configured protocols as one `distill.evaluate` metric; teachers' extra parts are built on first use."""

    def __init__(self, config: DistillConfig, specs: dict[str, TeacherSpec]) -> None:
        self.config, self.specs = config, specs
        self._tower: TextTower | None = None
        self._sam = None

    def __bool__(self) -> bool:
        return bool(self.config.eval.protocols)

    def due(self, step: int, max_steps: int) -> bool:
        """An evaluation after optimizer step `step` (the last step's is the end-of-run one)."""
        every = self.config.eval.every
        return bool(self) and every > 0 and step % every == 0 and step != max_steps

    def __call__(self, ctx: EvalContext) -> dict:
        """{protocol: metrics} of `ctx.student` (put in eval mode, ViTDet off, by `distill.evaluate`)."""
        cfg, start, student = self.config.eval, time.perf_counter(), ctx.student
        comm = ctx.collectives  # None: one process (evaluate_student)
        ranks = distributed.EvalContext(comm.rank if comm else 0, comm.world_size if comm else 1, ctx.device)
        results = {}
        if cfg.knn is not None:
            train = ImageFolder.scan(cfg.knn.train, "eval.knn.train")
            val = ImageFolder.scan(cfg.knn.val, "eval.knn.val")
            results["knn"], _ = knn_metrics(student, train, val, ranks, k=cfg.knn.k,
                                            resolution=tuple(cfg.knn.resolution) or None, batch_size=cfg.batch_size)  # fmt: skip
        if cfg.seg_probe is not None:
            probe = cfg.seg_probe
            settings = ProbeSettings(steps=probe.steps, batch_size=probe.batch_size, lr=probe.lr,
                                     crop_size=probe.crop_size, seed=self.config.train.seed)  # fmt: skip
            results["seg_probe"] = seg_probe_metrics(student, probe.data, probe.format, settings, ctx.device)[
                0
            ]
        if cfg.zero_shot_agreement is not None:
            results["zero_shot_agreement"] = self._zero_shot(student, ranks)
        if cfg.sam_agreement is not None:
            results["sam_agreement"] = self._sam_agreement(student, ranks)
        logger.info(f"vision evaluation ({', '.join(results)}) in {time.perf_counter() - start:.1f}s")
        # headline numbers only: per-class tables are `radio-vlm eval`'s
        return {name: {k: v for k, v in m.items() if not isinstance(v, dict)} for name, m in results.items()}

    def _zero_shot(self, student: RadioWithAdaptors, ranks: distributed.EvalContext) -> dict:
        cfg = self.config.eval.zero_shot_agreement
        if self._tower is None:
            if cfg.text_tower:
                self._tower = load_text_tower(cfg.text_tower, device=ranks.device)
            else:
                self._tower = open_clip_tower(self.specs[cfg.teacher])
                self._tower.model.to(ranks.device)
        val = ImageFolder.scan(cfg.val, "eval.zero_shot_agreement.val")
        metrics, _ = zero_shot_metrics(
            student, self.config.teacher(cfg.teacher).head, val, self._tower, load_classnames(cfg.classnames, val.classes),
            load_templates(cfg.templates), ranks, agreement=True, batch_size=self.config.eval.batch_size,
        )  # fmt: skip
        return metrics

    def _sam_agreement(self, student: RadioWithAdaptors, ranks: distributed.EvalContext) -> dict:
        cfg = self.config.eval.sam_agreement
        spec = self.specs[cfg.teacher]
        if spec.loader != "segment_anything":
            raise ValueError(f"eval.sam_agreement.teacher: {spec.name!r} is not a segment_anything teacher")
        if self._sam is None:  # the whole SAM: a real teacher's checkpoint, or the tiny twin from its seed
            self._sam = load_sam(spec.source)[0] if spec.source else build_teacher_model(spec)
        entries = load_coco(Path(cfg.annotations), Path(cfg.images), cfg.max_images)
        metrics, _ = sam_metrics(student, self._sam, entries, ranks, self.config.teacher(cfg.teacher).head,
                                 cfg.resolution, agreement=True)  # fmt: skip
        return metrics
