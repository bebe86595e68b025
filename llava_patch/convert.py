"""Convert LLaVA-1.5 checkpoints between the original codebase and transformers' LLaVA, both ways.

    radio-llava convert --from llava --to hf  SRC OUT    # LlavaLlamaForCausalLM folder -> LlavaForConditionalGeneration
    radio-llava convert --from hf --to llava  SRC OUT    # and back
    radio-llava convert --from llava --to hf  mm_projector.bin OUT   # a pretrained projector alone

Weights (original <-> transformers, in-memory names; reference llava.md 4.1):

    model.mm_projector.0.*                <-> model.multi_modal_projector.linear_1.*
    model.mm_projector.2.*                <-> model.multi_modal_projector.linear_2.*
    model.vision_tower.vision_tower.*     <-> model.vision_tower.*   (CLIPVisionModel or RadioLlavaVisionModel)
    model.{embed_tokens,layers,norm}.*    <-> model.language_model.*
    lm_head.*                             <-> lm_head.*

Config: LLaVA's `mm_vision_select_layer` is transformers' `vision_feature_layer` and `mm_vision_select_feature`
"patch" is strategy "default" (drop CLIP's CLS token). A RADIO tower (`radio:...`, `RadioLlavaVisionModel`)
returns patch tokens from its own feature sources, so it maps to layer -1 and strategy "full". Settings
transformers has no field for (`image_aspect_ratio`, `tokenizer_model_max_length`, `mm_*` ...) travel in the
transformers config as `llava_original_config`, so a round trip restores them. Only LLaVA-1.5's
`mm_projector_type="mlp2x_gelu"` with `mm_patch_merge_type="flat"` has a transformers equivalent.

Conventions that differ (a checkpoint converts exactly; code around it must follow the target's rules):

- `<image>`: the original splits the prompt at the literal tag and puts the placeholder id -200 (never
  embedded) there, one per image; transformers needs a real vocabulary id repeated once per image token.
  llava -> hf adds `<image>` to the tokenizer (id = the old vocabulary size) with embedding and lm_head rows
  set to the mean of the others; hf -> llava drops that row and token again when it is the last id.
- Tokenisation at the tag: the original tokenises each chunk between tags on its own (the text after
  `<image>` starts with SentencePiece's "▁"); a processor that tokenises the whole prompt can differ by one
  token there. Train and evaluate a model with one pipeline.
- `image_sizes`: the original passes PIL's (width, height); transformers' LLaVA and RadioLlavaVisionModel
  take (height, width).
- The original output folder names the vision tower by path (`mm_vision_tower`) and rebuilds it from there;
  hf -> llava writes the tower to OUT/vision_tower and stores its absolute path.
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.utils import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME

import radio_vlm  # noqa: F401  registers RadioLlavaVisionConfig for LlavaForConditionalGeneration.from_pretrained
from llava_patch.vision_tower import RADIO_PREFIX, RadioVisionTower, parse_radio_tower_name
from radio_vlm import RadioLlavaVisionConfig
from radio_vlm.convert import read_state_dict
from radio_vlm.models.image_processing_radio import RadioImageProcessor

from .conversation import IMAGE_TAG
from .processing import add_image_token, make_processor

# (original prefix, transformers prefix); the first match wins, so the longer vision prefix comes first
PREFIXES = (
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.", "model.vision_tower."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
# LLaVA config fields with no transformers LlavaConfig field (kept in `llava_original_config`)
LLAVA_ONLY_FIELDS = (
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj", "s2", "s2_scales",
)  # fmt: skip
PROJECTOR_FILE = "mm_projector.bin"  # LLaVA's pretraining output (torch.load)
HF_PROJECTOR_FILE = "multi_modal_projector.safetensors"
VISION_DIR = "vision_tower"


def rename(key: str, to_hf: bool) -> str:
    """One state-dict key from the original naming to transformers' (`to_hf`) or back."""
    for original, hf in PREFIXES:
        old, new = (original, hf) if to_hf else (hf, original)
        if key.startswith(old):
            return new + key[len(old) :]
    raise ValueError(
        f"weight {key!r} has no counterpart in the {'transformers' if to_hf else 'LLaVA'} layout"
    )


def _compact(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy the tensors that are views into a larger storage (a trimmed vocabulary, a fused qkv split
    into q/k/v): safetensors refuses them. Others are kept as they are, so a 7B model is not copied."""
    return {
        k: v
        if v.is_contiguous() and v.untyped_storage().nbytes() == v.numel() * v.element_size()
        else v.clone()
        for k, v in state.items()
    }


def _projector_only(path: Path) -> Path | None:
    """The projector file when `path` is one, or a folder holding only a projector (pretraining output)."""
    if path.is_file():
        return path
    if any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        return None
    return next(
        (path / name for name in (PROJECTOR_FILE, HF_PROJECTOR_FILE) if (path / name).is_file()), None
    )


def convert_projector(src: Path, out: Path, to_hf: bool) -> Path:
    """mm_projector.bin (model.mm_projector.{0,2}.*) <-> multi_modal_projector.safetensors."""
    tensors = read_state_dict(src)
    prefix = "mm_projector." if to_hf else "multi_modal_projector."
    if not tensors or any(prefix not in key for key in tensors):
        raise ValueError(
            f"{src}: expected only projector weights (*{prefix}*), got e.g. {sorted(tensors)[:3]}"
        )
    # any prefix before the module name (a bare file, peft's base_model.model.) -> the model's own key
    state = {rename("model." + key[key.index(prefix) :], to_hf): value for key, value in tensors.items()}
    out.mkdir(parents=True, exist_ok=True)
    if to_hf:
        save_file({k: v.contiguous() for k, v in state.items()}, out / HF_PROJECTOR_FILE)
        return out / HF_PROJECTOR_FILE
    torch.save(state, out / PROJECTOR_FILE)  # LLaVA reads --pretrain_mm_mlp_adapter with torch.load
    return out / PROJECTOR_FILE


# ------------------------------------------------------------------------------------- llava -> hf


def _nominal_tokens(image_processor, patch_size: int) -> int:
    """Image tokens of a square image at the processor's size (transformers' informational image_seq_length)."""
    if isinstance(image_processor, RadioImageProcessor):  # with its token merge and cap
        return image_processor.num_image_tokens(image_processor.long_edge, image_processor.long_edge)
    side = image_processor.crop_size["height"]
    return (side // patch_size) ** 2


def _vision_from_llava(cfg: dict, state: dict, tower_name: str):
    """(vision_config, tower state with transformers keys, feature layer, select strategy, image processor)."""
    prefix = "model.vision_tower.vision_tower."
    saved = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if tower_name.startswith(RADIO_PREFIX):
        tower = RadioVisionTower(tower_name, args=types.SimpleNamespace(**cfg))
        weights = saved or tower.vision_tower.state_dict()
        spec = tower.spec  # the processor transformers-side code loads: RadioImageProcessor's own class
        sizes = {"resize_mode": spec.resize_mode, **({"long_edge": spec.long_edge} if spec.long_edge else {})}
        processor = RadioImageProcessor.from_model_config(
            tower.config.radio_config,
            token_merge=tower.config.token_merge,
            max_image_tokens=spec.max_image_tokens,
            **sizes,
        )
        return tower.vision_tower.config, weights, -1, "full", processor
    if not Path(tower_name, "config.json").is_file():
        raise FileNotFoundError(
            f"mm_vision_tower {tower_name!r} is not a local folder: download it and pass --vision-tower PATH"
        )
    vision_config = CLIPVisionConfig.from_pretrained(tower_name)
    weights = saved or CLIPVisionModel.from_pretrained(tower_name).state_dict()
    select = cfg.get("mm_vision_select_feature", "patch")
    strategy = {"patch": "default", "cls_patch": "full"}[select]
    return (
        vision_config,
        weights,
        cfg["mm_vision_select_layer"],
        strategy,
        CLIPImageProcessor.from_pretrained(tower_name),
    )


def llava_to_hf(src: Path, out: Path, vision_tower: str | None = None) -> Path:
    """An original LLaVA-1.5 checkpoint folder -> a transformers LlavaForConditionalGeneration folder."""
    cfg = json.loads((src / "config.json").read_text())
    if "mm_vision_tower" not in cfg:
        raise ValueError(f"{src / 'config.json'}: no mm_vision_tower; not an original LLaVA checkpoint")
    for key, want in (("mm_projector_type", "mlp2x_gelu"), ("mm_patch_merge_type", "flat")):
        if cfg.get(key, want) != want:
            raise ValueError(f"{src}: {key}={cfg[key]!r}; only {want!r} has a transformers LLaVA equivalent")
    state = read_state_dict(src)
    tower_name = vision_tower or cfg["mm_vision_tower"]
    vision_config, tower_state, layer, strategy, image_processor = _vision_from_llava(cfg, state, tower_name)

    hf_state = {rename(k, True): v for k, v in state.items() if not k.startswith("model.vision_tower.")}
    hf_state.update({f"model.vision_tower.{k}": v for k, v in tower_state.items()})
    tokenizer = AutoTokenizer.from_pretrained(src) if (src / "tokenizer_config.json").is_file() else None
    vocab = cfg["vocab_size"]
    image_token_id = add_image_token(tokenizer) if tokenizer is not None else vocab
    for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        weight = hf_state[key]
        rows = weight.mean(0, keepdim=True).expand(image_token_id + 1 - len(weight), -1)
        hf_state[key] = torch.cat([weight, rows])  # new rows = mean, as LLaVA's smart resize

    text = {k: v for k, v in cfg.items() if not k.startswith("mm_") and k not in LLAVA_ONLY_FIELDS}
    text.update(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=image_token_id + 1)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig.from_dict(text),
        image_token_id=image_token_id,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu",  # mlp2x_gelu's nn.GELU (exact erf)
        image_seq_length=_nominal_tokens(image_processor, vision_config.patch_size),
        tie_word_embeddings=cfg.get("tie_word_embeddings", False),
    )
    config.llava_original_config = {
        k: v for k, v in cfg.items() if k.startswith("mm_") or k in LLAVA_ONLY_FIELDS
    }
    # Written without building the model (a 7B one would not fit twice in memory); the model's own key
    # names, which from_pretrained reads as they are.
    config.save_pretrained(out)
    save_torch_state_dict(_compact(hf_state), out, max_shard_size="5GB")
    if tokenizer is not None and isinstance(image_processor, RadioImageProcessor):
        make_processor(tokenizer, image_processor).save_pretrained(out)  # for AutoProcessor / pipeline()
    else:
        image_processor.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------- hf -> llava


def _tower_to_llava(model, out: Path, original: dict, src: Path) -> dict:
    """Write the vision tower to OUT/vision_tower; the LLaVA config fields that name and select it."""
    config, tower = model.config, model.model.vision_tower
    folder = (out / VISION_DIR).resolve()
    tower.save_pretrained(folder)
    if isinstance(config.vision_config, RadioLlavaVisionConfig):
        # the image size settings: the source's RadioImageProcessor, else the original tower name's
        name = original.get("mm_vision_tower", "")
        sizes = vars(parse_radio_tower_name(name)) if name.startswith(RADIO_PREFIX) else {}
        if (src / PROCESSOR_NAME).is_file() or (src / IMAGE_PROCESSOR_NAME).is_file():
            sizes = RadioImageProcessor.from_pretrained(src).to_dict()  # a run's processor, or one alone
        parts = [f"feature={'+'.join(config.vision_config.feature_sources)}"]
        if sizes.get("long_edge"):
            parts.insert(0, f"long_edge={sizes['long_edge']}")
        if sizes.get("resize_mode", "long_edge") != "long_edge":
            parts.append(f"resize_mode={sizes['resize_mode']}")
        if config.vision_config.output_layernorm:
            parts.append("layernorm=true")
        if config.vision_config.token_merge != "none":  # the tower-name spelling: unshuffle2
            parts.append(f"merge={config.vision_config.token_merge.replace(':', '')}")
        if sizes.get("max_image_tokens") is not None:
            parts.append(f"max_tokens={sizes['max_image_tokens']}")
        # the name's feature= decides; mm_vision_select_layer (restored or -1) no longer matters
        return {
            "mm_vision_tower": f"{RADIO_PREFIX}{folder}:{','.join(parts)}",
            "mm_vision_select_feature": "patch",
        }
    side = config.vision_config.image_size
    processor = (
        CLIPImageProcessor.from_pretrained(src)
        if (src / PROCESSOR_NAME).is_file() or (src / IMAGE_PROCESSOR_NAME).is_file()
        else CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    )
    processor.save_pretrained(folder)
    select = {"default": "patch", "full": "cls_patch"}[config.vision_feature_select_strategy]
    return {"mm_vision_tower": str(folder), "mm_vision_select_layer": config.vision_feature_layer,
            "mm_vision_select_feature": select}  # fmt: skip


def _drop_image_token(tokenizer, out: Path, image_token_id: int) -> None:
    """Save `tokenizer` without the added `<image>` token (the original codebase never embeds one)."""
    tokenizer.save_pretrained(out)
    tokenizer_json = json.loads((out / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"] = [t for t in tokenizer_json["added_tokens"] if t["id"] != image_token_id]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.get("added_tokens_decoder", {}).pop(str(image_token_id), None)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(tokenizer_config.get(key), list):
            tokenizer_config[key] = [t for t in tokenizer_config[key] if t != IMAGE_TAG]
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))


def hf_to_llava(src: Path, out: Path) -> Path:
    """A transformers LlavaForConditionalGeneration folder -> an original LLaVA-1.5 checkpoint folder."""
    model = LlavaForConditionalGeneration.from_pretrained(src)
    config = model.config
    original = dict(getattr(config, "llava_original_config", None) or {})
    out.mkdir(parents=True, exist_ok=True)
    tower_fields = _tower_to_llava(model, out, original, src)

    state = {rename(k, False): v for k, v in model.state_dict().items()}
    vocab = config.text_config.vocab_size
    tokenizer = AutoTokenizer.from_pretrained(src) if (src / "tokenizer_config.json").is_file() else None
    if config.image_token_id == vocab - 1:  # added by llava -> hf (or build_model): drop it again
        vocab -= 1
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            state[key] = state[key][:vocab]
        if tokenizer is not None:
            _drop_image_token(tokenizer, out, config.image_token_id)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
    save_torch_state_dict(_compact(state), out, max_shard_size="5GB")

    cfg = config.text_config.to_dict()
    defaults = {  # LLaVA-1.5 finetune settings (scripts/v1_5/finetune.sh) unless the source kept its own
        "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "flat", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad", "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 2048, "use_mm_proj": True, "mm_vision_select_layer": -1,
    }  # fmt: skip
    cfg.update({**defaults, **original, **tower_fields})
    cfg.update(
        model_type="llava_llama",
        architectures=["LlavaLlamaForCausalLM"],
        vocab_size=vocab,
        mm_hidden_size=config.vision_config.hidden_size,
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    return out


def convert(
    src: str | Path, out: str | Path, from_format: str, to_format: str, vision_tower: str | None = None
):
    """Convert `src` (folder or projector file) to `out` (folder); returns the written folder or file."""
    src, out = Path(src), Path(out)
    if (from_format, to_format) not in (("llava", "hf"), ("hf", "llava")):
        raise ValueError(f"--from {from_format} --to {to_format}: convert llava -> hf or hf -> llava")
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    projector = _projector_only(src)
    if projector is not None:
        return convert_projector(projector, out, to_hf=to_format == "hf")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json; pass a checkpoint folder or a projector file")
    return llava_to_hf(src, out, vision_tower) if to_format == "hf" else hf_to_llava(src, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_format", choices=("llava", "hf"), required=True)
    parser.add_argument("--to", dest="to_format", choices=("hf", "llava"), required=True)
    parser.add_argument(
        "src", help="checkpoint folder, or a projector file (mm_projector.bin / *.safetensors)"
    )
    parser.add_argument("out", help="output folder")
    parser.add_argument(
        "--vision-tower",
        default=None,
        help="llava -> hf: local folder (or radio:... name) replacing mm_vision_tower",
    )


def run(args: argparse.Namespace) -> int:
    written = convert(args.src, args.out, args.from_format, args.to_format, args.vision_tower)
    print(f"wrote {written}")
    return 0
