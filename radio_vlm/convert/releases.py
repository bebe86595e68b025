"""NVIDIA's released versions and the resolution metadata a converted model carries."""

from __future__ import annotations

from pathlib import Path

# TorchHub `version` -> (patch size, max resolution, preferred resolution) (official radio/common.py RESOURCE_MAP)
KNOWN_VERSIONS: dict[str, tuple[int, int, int]] = {
    "radio_v1": (14, 1050, 378),
    "radio_v2": (16, 2048, 432),
    "radio_v2.1": (16, 2048, 432),
    "e-radio_v2": (16, 2048, 512),
    "radio_v2.5-b": (16, 2048, 768),
    "radio_v2.5-l": (16, 2048, 768),
    "radio_v2.5-h": (16, 2048, 768),
    "radio_v2.5-h-norm": (16, 2048, 768),
    "radio_v2.5-g": (14, 1792, 896),
    "c-radio_v2-g": (16, 2048, 768),
    "c-radio_v2-vlm-h": (16, 2048, 768),
    "c-radio_v3-b": (16, 2048, 512),
    "c-radio_v3-l": (16, 2048, 512),
    "c-radio_v3-h": (16, 2048, 512),
    "c-radio_v3-g": (16, 2048, 512),
    "c-radio_v4-so400m": (16, 2048, 512),
    "c-radio_v4-h": (16, 2048, 512),
}


def release_metadata(
    source: Path, hf_config: dict | None, args: dict, patch_size: int, version: str | None
) -> dict:
    """Version, max and preferred resolution: given, from the HF config, or from the known versions table.

    An HF config's `vitdet_window_size` is not applied: the official remote code only uses it for
    `min_resolution_step` and runs every block globally (radio_official.md 1.7).
    """
    hf_config = hf_config or {}
    stem = source.name.removesuffix(".tar").removesuffix(".pth")
    version = version or hf_config.get("version") or (stem if stem in KNOWN_VERSIONS else None)
    known = KNOWN_VERSIONS.get(version)
    max_resolution = hf_config.get("max_resolution")
    if max_resolution is None and args.get("cpe_max_size"):
        max_resolution = round(args["cpe_max_size"] / patch_size) * patch_size
    if max_resolution is None and known:
        max_resolution = known[1]
    preferred = hf_config.get("preferred_resolution") or (known[2] if known else None)
    if isinstance(preferred, int):
        preferred = [preferred, preferred]
    meta = {"version": version, "max_resolution": max_resolution, "preferred_resolution": preferred}
    return {k: (list(v) if k == "preferred_resolution" else v) for k, v in meta.items() if v is not None}
