"""`radio-llava export RUN OUT [--remote-code]`: a trained run as a folder that loads with transformers' own tools.

    radio-llava export ckpt/finetune served/                # after `import radio_vlm`: AutoProcessor,
                                                            # AutoModelForImageTextToText, pipeline()
    radio-llava export ckpt/finetune served/ --remote-code  # the same with trust_remote_code=True in a
                                                            # process where radio_vlm is not installed

OUT gets the model files as they are (config.json, generation_config.json and the safetensors weights,
copied byte for byte: nothing is loaded, no dtype changes) and the run's `RadioLlavaProcessor`; training
state (checkpoint-N folders, optimizer, trainer_state.json) stays behind. A run saved without a processor
(processor_config.json), as runs were before processors were saved with them, gets one built from its
tokenizer files and preprocessor_config.json.

`--remote-code` adds `auto_map`s (config.json: AutoConfig -> `RadioLlavaConfig`, AutoModelForImageTextToText
-> `RadioLlavaForConditionalGeneration`; processor_config.json: AutoProcessor -> `RadioLlavaProcessor`,
AutoImageProcessor -> `RadioImageProcessor`) and copies the radio_vlm/models files they import next to them.
The config stays a stock LLaVA one (`model_type="llava"`), so OUT still loads without remote code where
radio_vlm is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

from radio_vlm.models import configuration_radio_llava, modeling_radio_llava
from radio_vlm.models.image_processing_radio import RadioImageProcessor

from .llm import configure_tokenizer
from .processing import RadioLlavaProcessor, make_processor

TOKENIZER_CONFIG = "tokenizer_config.json"
# besides the safetensors shards (and their index), the files of the model that serving needs
MODEL_FILES = ("generation_config.json", "model.safetensors.index.json")
REMOTE_CODE_MAP = {
    "AutoConfig": f"{configuration_radio_llava.__name__.rsplit('.', 1)[-1]}.RadioLlavaConfig",
    "AutoModelForImageTextToText": f"{modeling_radio_llava.__name__.rsplit('.', 1)[-1]}."
    "RadioLlavaForConditionalGeneration",
}


def run_processor(run: Path) -> RadioLlavaProcessor:
    """The run's processor; built from its tokenizer files and preprocessor_config.json if it has none."""
    if (run / PROCESSOR_NAME).is_file():
        return RadioLlavaProcessor.from_pretrained(run)
    missing = [name for name in (TOKENIZER_CONFIG, IMAGE_PROCESSOR_NAME) if not (run / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run} has no processor ({PROCESSOR_NAME}) and no {' or '.join(missing)} to build one from: copy the "
            "LLM's tokenizer files (with the <image> token the run added) and the RadioImageProcessor's "
            f"{IMAGE_PROCESSOR_NAME} the run was trained with into it"
        )
    tokenizer = configure_tokenizer(AutoTokenizer.from_pretrained(run))
    return make_processor(tokenizer, RadioImageProcessor.from_pretrained(run))


def _read_config(run: Path) -> dict:
    config_file = run / "config.json"
    if (run / "adapter_config.json").is_file():
        raise ValueError(
            f"{run} is a LoRA adapter: run `radio-llava merge-lora {run} MERGED` and export MERGED"
        )
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{run} has no config.json: pass a radio-llava run, checkpoint-N or merge-lora folder"
        )
    config = json.loads(config_file.read_text())
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if (
        config.get("model_type") != "llava"
        or vision_type != configuration_radio_llava.RadioLlavaVisionConfig.model_type
    ):
        raise ValueError(
            f"{config_file}: model_type {config.get('model_type')!r} with a {vision_type!r} vision tower; export "
            f"takes a RADIO-LLaVA run (llava with {configuration_radio_llava.RadioLlavaVisionConfig.model_type!r})"
        )
    return config


def export_run(run: str | Path, out: str | Path, remote_code: bool = False) -> Path:
    """Write `run` (a run, checkpoint-N or merge-lora folder) to `out` as described in the module docstring."""
    run, out = Path(run), Path(out)
    config = _read_config(run)
    weights = sorted(run.glob("model*.safetensors"))
    if not weights:
        raise FileNotFoundError(
            f"{run} has no model*.safetensors: pass a folder with the full model (a pretraining run holds the "
            "projector only; fine-tune from it first)"
        )
    processor = run_processor(run)
    if processor.image_token_id != config.get("image_token_index"):
        raise ValueError(
            f"{run}: the tokenizer's <image> id is {processor.image_token_id} but config.json's image_token_index is "
            f"{config.get('image_token_index')}: the tokenizer files are not the ones the run was trained with"
        )
    if out.exists() and out.resolve() == run.resolve():
        raise ValueError(f"OUT {out} is RUN: export writes a new folder")
    out.mkdir(parents=True, exist_ok=True)
    for source in weights + [run / name for name in MODEL_FILES if (run / name).is_file()]:
        shutil.copyfile(source, out / source.name)
    if remote_code:
        config["auto_map"] = REMOTE_CODE_MAP
        for source in [
            modeling_radio_llava.__file__,
            *get_relative_import_files(modeling_radio_llava.__file__),
        ]:
            shutil.copyfile(source, out / Path(source).name)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor.save_pretrained(out, export_code=remote_code)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a radio-llava run, checkpoint-N or merge-lora folder (full weights)")
    parser.add_argument(
        "out", help="the folder to write: model files, processor (and code with --remote-code)"
    )
    parser.add_argument(
        "--remote-code",
        action="store_true",
        help="also write the model and processor code with auto_map, for trust_remote_code=True without radio_vlm",
    )


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run, args.out, remote_code=args.remote_code)
    flag = ", trust_remote_code=True" if args.remote_code else ""
    print(
        f"exported {args.run} -> {out}; load with AutoModelForImageTextToText.from_pretrained({str(out)!r}{flag}), "
        f"AutoProcessor.from_pretrained({str(out)!r}{flag}) or pipeline('image-text-to-text', model={str(out)!r}{flag})"
    )
    return 0
