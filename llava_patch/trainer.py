"""`LlavaTrainer`: the Hugging Face Trainer with what LLaVA-1.5's training adds, and nothing else.

- `group_by_modality_length` sampling (one modality per global batch, LLaVA's llava_trainer.py);
- a separate learning rate for the projector (`mm_projector_lr`, LoRA stage);
- bad samples the data set skipped are logged, once each, in the data set's `BadSampleLog` (which aborts
  past `--max-bad-fraction`), merged over all ranks;
- what a save writes (see `checkpoints.py`): when only the projector trains (pretrain), `mm_projector.bin`
  and the config instead of the model, and a resumable checkpoint without the frozen weights;
  `non_lora_trainables.bin` beside the adapter for LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME

from .checkpoints import NON_LORA_FILE, load_projector, save_projector
from .data import LazySupervisedDataset, ModalityLengthGroupedSampler
from .model import gathered


class LlavaTrainer(Trainer):
    def __init__(
        self,
        *args,
        group_by_modality_length: bool = False,
        projector_lr: float | None = None,
        save_projector_alone: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.group_by_modality_length = group_by_modality_length
        self.projector_lr = projector_lr
        self.save_projector_alone = save_projector_alone

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_modality_length or not isinstance(dataset, LazySupervisedDataset):
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        return ModalityLengthGroupedSampler(
            self.args.train_batch_size,
            # LLaVA groups over every micro-batch of one optimizer step (world size x accumulation)
            self.args.world_size * self.args.gradient_accumulation_steps,
            dataset.modality_lengths,
            generator=generator,
        )

    def compute_loss(self, model, inputs, *args, **kwargs):
        skipped = inputs.pop("skipped", [])
        if isinstance(self.train_dataset, LazySupervisedDataset):
            self._log_skipped(self.train_dataset.bad_samples, skipped)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def _log_skipped(self, log, skipped: list[tuple]) -> None:
        """Add the batch's skipped samples to `log`; with several ranks, every rank's new ones to every
        rank's log, so all ranks abort at the same step on the same distinct samples."""
        new = [entry for entry in skipped if log.add(*entry, check=False)]
        if self.args.world_size > 1:
            count = torch.tensor([len(new)], device=self.args.device)
            torch.distributed.all_reduce(count)
            if count.item():  # rare: gather the entries themselves only then
                everyone: list[list[tuple]] = [[] for _ in range(self.args.world_size)]
                torch.distributed.all_gather_object(everyone, new)
                for entry in (e for entries in everyone for e in entries):
                    log.add(*entry, check=False, warn=False)
        log.check()

    def create_optimizer(self, model=None):
        if self.projector_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        projector = [p for n, p in trainable if "multi_modal_projector" in n]
        rest = [p for n, p in trainable if "multi_modal_projector" not in n]
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = [
            {"params": rest, "weight_decay": self.args.weight_decay},
            {"params": projector, "weight_decay": self.args.weight_decay, "lr": self.projector_lr},
        ]
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **kwargs)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.save_projector_alone:
            return super().save_model(output_dir, _internal_call)
        # as LLaVA's pretraining: the projector and the config, not the frozen LLM and tower
        output_dir = Path(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        projector = model.model.multi_modal_projector
        with gathered(projector.parameters()):  # every rank joins the gather under ZeRO-3
            if self.args.should_save:
                output_dir.mkdir(parents=True, exist_ok=True)
                save_projector(projector, output_dir)
        if self.args.should_save:
            model.config.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not (self.save_projector_alone and self.is_deepspeed_enabled):
            return super()._save_optimizer_and_scheduler(output_dir)
        # DeepSpeed's checkpoint would hold the whole model twice (module + ZeRO-2's frozen fragments)
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        from accelerate.utils import DeepSpeedSchedulerWrapper

        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)  # the Trainer's own

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.save_projector_alone:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_projector(self.model, resume_from_checkpoint)

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if not (self.save_projector_alone and self.is_deepspeed_enabled and resume_from_checkpoint):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        # the engine checkpoint has the trained (projector) weights only: the frozen ones are as built
        load_path, _ = self.model_wrapped.load_checkpoint(
            resume_from_checkpoint,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ValueError(f"[deepspeed] failed to resume from checkpoint {resume_from_checkpoint}")
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save or not hasattr(self.model, "peft_config"):
            return
        # peft's adapter file has the LoRA weights and the modules_to_save (projector, an unfrozen tower);
        # LLaVA users expect every trained non-LoRA weight beside it too, under the model's own names
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        trained = [n for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]
        non_lora = {
            n.removeprefix("base_model.model.").replace("modules_to_save.default.", ""): state_dict[n]
            .detach()
            .cpu()
            for n in trained
            if n in state_dict
        }
        torch.save(non_lora, Path(output_dir or self.args.output_dir) / NON_LORA_FILE)
