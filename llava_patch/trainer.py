"""`LlavaTrainer`: the Hugging Face Trainer with what LLaVA-1.5's training adds, and nothing else.

- `group_by_modality_length` sampling (one modality per global batch, LLaVA's llava_trainer.py);
- a separate learning rate for the projector (`mm_projector_lr`, LoRA stage);
- bad samples the data set skipped are counted in the data set's `BadSampleLog` (which aborts past
  `--max-bad-fraction`);
- extra files at every save (see `checkpoints.py`): `mm_projector.bin` when only the projector trains
  (pretrain), `non_lora_trainables.bin` for LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer

from .checkpoints import NON_LORA_FILE, save_projector
from .data import LazySupervisedDataset, ModalityLengthGroupedSampler


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
            log = self.train_dataset.bad_samples
            for sample_id, reason in skipped:
                log.add(sample_id, reason, check=False)
            if self.args.world_size > 1:  # every rank must abort at the same step, on the global count
                count = torch.tensor([len(skipped)], device=self.args.device)
                torch.distributed.all_reduce(count)
                log.other_ranks += int(count.item()) - len(skipped)
            log.check()
        return super().compute_loss(model, inputs, *args, **kwargs)

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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        if self.save_projector_alone:
            save_projector(state_dict, output_dir)
        if hasattr(self.model, "peft_config"):
            # peft's adapter file has the LoRA weights and the modules_to_save (projector, an unfrozen tower);
            # LLaVA users expect every trained non-LoRA weight beside it too, under the model's own names
            trained = [n for n, p in self.model.named_parameters() if p.requires_grad and "lora_" not in n]
            non_lora = {
                n.removeprefix("base_model.model.").replace("modules_to_save.default.", ""): state_dict[n]
                .detach()
                .cpu()
                for n in trained
                if n in state_dict
            }
            torch.save(non_lora, output_dir / NON_LORA_FILE)
