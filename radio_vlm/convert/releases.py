"""NVIDIA's released RADIO checkpoints, as data, and the metadata a converted model takes from them.

`RELEASES` holds every TorchHub version of the official `RESOURCE_MAP` (radio/common.py at NVlabs/RADIO
c0f3701: patch size, max / preferred resolution, ViTDet support and schedule, the file each URL names), with
its Hugging Face repository, the architecture family the converter maps it as, and its adaptor names as the
official README lists them ("Supported Adaptors"); plus the HF-only C-RADIO. `radio-vlm models` prints them.
`release_metadata` fills what a checkpoint lacks (its version, preferred resolution, ViTDet schedule) from
the release it comes from, recognised by `--version`, the HF config's `version`, or the file name.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

# converter families (`radio_vlm.convert.students`; E-RADIO in `eradio`) and how the table names them
FAMILIES = {
    "vit": "ViT",
    "vit+layerscale": "ViT + LayerScale",
    "vit+mlpnorm": "ViT + MLP norm",
    "vit+scaled_ln": "ViT + scaled LN",
    "dinov2": "DINOv2 ViT (SwiGLU, LayerScale)",
    "eradio": "E-RADIO (CNN + windowed attention)",
}
CONVERTED_FAMILIES = frozenset(FAMILIES)  # every family above converts in this version

_V2 = ("clip", "dino_v2", "sam")
_V25 = ("clip", "siglip", "dino_v2", "sam")
_CV3 = ("clip", "siglip2-g", "dino_v2", "sam")
_CV4 = ("siglip2-g", "dino_v3", "sam3")


@dataclass(frozen=True)
class Release:
    name: str  # TorchHub `version` (RESOURCE_MAP key), or the HF repository for HF-only releases
    architecture: str  # as NVIDIA names it
    family: str  # a key of FAMILIES
    patch_size: int
    max_resolution: int
    preferred_resolution: int | None  # square side in px; None where no official source states it
    supports_vitdet: bool = True
    vitdet_num_global: int | None = None  # the official schedule used with vitdet_window_size
    vitdet_num_windowed: int | None = None
    adaptors: tuple[str, ...] | None = None  # None: not documented by NVIDIA
    hf_repo: str | None = None
    file_name: str | None = None  # the TorchHub checkpoint's file name (last part of its URL)
    note: str = ""

    @property
    def converts(self) -> bool:
        return self.family in CONVERTED_FAMILIES

    @property
    def vitdet(self) -> str:
        if not self.supports_vitdet:
            return "no"
        if self.vitdet_num_windowed is not None:
            return f"{self.vitdet_num_windowed} windowed : 1 global"
        return f"{self.vitdet_num_global or 4} global blocks"


_RELEASES = [
    Release("radio_v1", "ViT-H/14", "vit", 14, 1050, 378, file_name="radio_v1.pth.tar"),
    Release("radio_v2", "ViT-H/16", "vit", 16, 2048, 432, vitdet_num_windowed=5, adaptors=_V2,
            file_name="radio_v2.pth.tar"),
    Release("radio_v2.1", "ViT-H/16", "vit", 16, 2048, 432, vitdet_num_windowed=5, adaptors=_V2,
            hf_repo="nvidia/RADIO", file_name="radio_v2.1_bf16.pth.tar", note="trained in bf16"),
    Release("e-radio_v2", "E-RADIO", "eradio", 16, 2048, 512, supports_vitdet=False, hf_repo="nvidia/E-RADIO",
            file_name="eradio_v2.pth.tar", note="input sides multiples of 32"),
    Release("radio_v2.5-b", "ViT-B/16", "vit+layerscale", 16, 2048, 768, vitdet_num_global=4, adaptors=_V25,
            hf_repo="nvidia/RADIO-B", file_name="radio-v2.5-b_half.pth.tar"),
    Release("radio_v2.5-l", "ViT-L/16", "vit+layerscale", 16, 2048, 768, vitdet_num_global=4, adaptors=_V25,
            hf_repo="nvidia/RADIO-L", file_name="radio-v2.5-l_half.pth.tar"),
    Release("radio_v2.5-h", "ViT-H/16", "vit", 16, 2048, 768, vitdet_num_global=4, adaptors=_V25,
            hf_repo="nvidia/RADIO-H", file_name="radio_v2.5-h.pth.tar"),
    Release("radio_v2.5-h-norm", "ViT-H/16", "vit", 16, 2048, 768, vitdet_num_global=4, adaptors=_V25,
            file_name="radio_v2.5-h-norm.pth.tar", note="feature normalizer"),
    Release("radio_v2.5-g", "ViT-g/14 (DINOv2)", "dinov2", 14, 1792, 896, vitdet_num_global=8, adaptors=_V25,
            hf_repo="nvidia/RADIO-g", file_name="radio_v2.5-g.pth.tar"),
    Release("nvidia/C-RADIO", "ViT-H/16", "vit+mlpnorm", 16, 2048, None, hf_repo="nvidia/C-RADIO",
            note="HF only; preferred resolution from its config.json"),
    Release("c-radio_v2-g", "ViT-g/16", "vit", 16, 2048, 768, vitdet_num_global=8, hf_repo="nvidia/C-RADIOv2-g",
            file_name="c-radio_v2-g_half.pth.tar"),
    Release("c-radio_v2-vlm-h", "ViT-H/16", "vit", 16, 2048, 768, vitdet_num_global=8,
            hf_repo="nvidia/C-RADIOv2-VLM-H", file_name="c-radio_v2-vlm-h.pth.tar"),
    Release("c-radio_v3-b", "ViT-B/16", "vit", 16, 2048, 512, supports_vitdet=False, adaptors=_CV3,
            hf_repo="nvidia/C-RADIOv3-B", file_name="c-radio_v3-b_half.pth.tar"),
    Release("c-radio_v3-l", "ViT-L/16", "vit", 16, 2048, 512, supports_vitdet=False, adaptors=_CV3,
            hf_repo="nvidia/C-RADIOv3-L", file_name="c-radio-v3_l_half.pth.tar"),
    Release("c-radio_v3-h", "ViT-H/16", "vit", 16, 2048, 512, supports_vitdet=False, adaptors=_CV3,
            hf_repo="nvidia/C-RADIOv3-H", file_name="c-radio_v3-h_half.pth.tar"),
    Release("c-radio_v3-g", "ViT-g/16", "vit+scaled_ln", 16, 2048, 512, supports_vitdet=False, adaptors=_CV3,
            hf_repo="nvidia/C-RADIOv3-g", file_name="c-radio_v3-g_half.pth.tar"),
    Release("c-radio_v4-so400m", "ViT-SO400M/16", "vit", 16, 2048, 512, adaptors=_CV4,
            hf_repo="nvidia/C-RADIOv4-SO400M", file_name="c-radio_v4-so400m_half.pth.tar",
            note="siglip2-g is an attention head: only in the .pth.tar"),
    Release("c-radio_v4-h", "ViT-H/16", "vit", 16, 2048, 512, adaptors=_CV4, hf_repo="nvidia/C-RADIOv4-H",
            file_name="c-radio_v4-h_half.pth.tar", note="the official default; siglip2-g only in the .pth.tar"),
]  # fmt: skip
RELEASES: dict[str, Release] = {release.name: release for release in _RELEASES}
_BY_FILE = {release.file_name: release for release in _RELEASES if release.file_name}
_BY_REPO = {release.hf_repo: release for release in _RELEASES if release.hf_repo}


def find_release(source: Path, hf_config: dict | None, version: str | None) -> Release | None:
    """The release a checkpoint is: `version` (a name or HF repo), its HF config's `version`, or its file name."""
    for name in (version, (hf_config or {}).get("version")):
        if name is not None:
            release = RELEASES.get(name) or _BY_REPO.get(name)
            if release is None and name == version:
                raise ValueError(f"--version {name!r} is no known release; `radio-vlm models` lists them")
            return release
    stem = source.name.removesuffix(".tar").removesuffix(".pth")
    return _BY_FILE.get(source.name) or RELEASES.get(stem)


def release_metadata(
    source: Path, hf_config: dict | None, args: dict, patch_size: int, version: str | None
) -> dict:
    """Version, max and preferred resolution, ViTDet support and schedule: from the checkpoint where it has
    them (HF config; the position table of `args.cpe_max_size`), else from the release it comes from.

    An HF config's `vitdet_window_size` is not applied: the official remote code only uses it for
    `min_resolution_step` and runs every block globally (radio_official.md 1.7).
    """
    hf_config = hf_config or {}
    release = find_release(source, hf_config, version)
    max_resolution = hf_config.get("max_resolution")
    if max_resolution is None and args.get("cpe_max_size"):
        max_resolution = round(args["cpe_max_size"] / patch_size) * patch_size
    if max_resolution is None and release:
        max_resolution = release.max_resolution
    preferred = hf_config.get("preferred_resolution") or (release.preferred_resolution if release else None)
    if isinstance(preferred, int):
        preferred = [preferred, preferred]
    meta = {
        "version": version or hf_config.get("version") or (release.name if release else None),
        "max_resolution": max_resolution,
        "preferred_resolution": list(preferred) if preferred else None,
    }
    if release:
        meta |= {
            "vitdet_supported": release.supports_vitdet,
            "vitdet_num_global": release.vitdet_num_global,
            "vitdet_num_windowed": release.vitdet_num_windowed,
        }
    return {k: v for k, v in meta.items() if v is not None}


# ----------------------------------------------------------------- `radio-vlm models`

COLUMNS = ("name", "HF repo", "family", "patch", "preferred", "max", "ViTDet", "adaptors", "converts")


def table_rows() -> list[tuple[str, ...]]:
    return [
        (
            r.name,
            r.hf_repo or "-",
            FAMILIES[r.family],
            str(r.patch_size),
            str(r.preferred_resolution or "-"),
            str(r.max_resolution),
            r.vitdet,
            ", ".join(r.adaptors) if r.adaptors else "(not documented)",
            "yes" if r.converts else "no",
        )
        for r in _RELEASES
    ]


def format_table() -> str:
    rows = [COLUMNS, *table_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    notes = [f"{r.name}: {r.note}" for r in _RELEASES if r.note]
    return "\n".join([*lines, "", "notes:", *(f"  {note}" for note in notes)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps([{**asdict(r), "converts": r.converts} for r in _RELEASES], indent=1))
    else:
        print(format_table())
    return 0
