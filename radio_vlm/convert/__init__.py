"""Official NVIDIA checkpoints -> `RadioWithAdaptors`, one module per job:

checkpoint (safe reading of `.pth.tar` / HF folders), settings (the table of checkpoint settings understood),
students (the `args.model` architectures), spectral (baking), vit and eradio (backbone config and key map per
architecture family), adaptors (heads and normalizers), releases (NVIDIA's released checkpoints, `radio-vlm
models`, and their metadata), official (the driver), cli (`radio-vlm convert`).
"""

from .checkpoint import read_state_dict
from .official import convert_official, save_converted

__all__ = ["convert_official", "read_state_dict", "save_converted"]
