"""Load an image from anything a user holds: a file path, encoded bytes or a binary file object, a PIL image,
a numpy array or a torch tensor.

Every image comes out as RGB. Grayscale, palette, CMYK, 16-bit and images with transparency are converted
(transparency composited onto white, as transformers' `convert_to_rgb` does), EXIF orientation is applied,
and anything that cannot be an image raises a `ValueError` that names the image and the problem.

Shared by the image processor, the distillation data and the LLaVA data loaders.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

ImageSource = str | os.PathLike | bytes | BinaryIO | PIL.Image.Image | np.ndarray | torch.Tensor

# Arrays and tensors may carry 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels.
_CHANNEL_COUNTS = (1, 2, 3, 4)
# Float pixels slightly outside [0, 1] (resampling overshoot) are clipped; further out is a unit mistake.
_FLOAT_TOLERANCE = 1e-3
EXIF_ORIENTATION = 0x0112  # values 5-8 rotate the image by 90 degrees (width and height swap)


def load_image(src: ImageSource, name: str | None = None) -> PIL.Image.Image:
    """Return `src` as an RGB PIL image (8 bits per channel), EXIF orientation applied.

    `src` is a file path, the encoded bytes of an image file (e.g. a tar member), a binary file object, a
    PIL image, a numpy array (H, W) or (H, W, C) or a torch tensor (H, W) or (C, H, W), with C in 1..4;
    arrays and tensors are uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]. `name` labels the
    image in error messages (default: the path or the file object's name, or "image").
    """
    name = _default_name(src, name)
    src = _decode_encoded(src, name)
    if isinstance(src, PIL.Image.Image):
        return _pil_to_rgb(src, name)
    rgb = _rgb_float(_array_hwc(src, name), name)
    return PIL.Image.fromarray(np.round(rgb * 255.0).astype(np.uint8), mode="RGB")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) in px of the image file at `path` as `load_image` returns it (EXIF rotation applied),
    read from the header without decoding the pixels. PIL's error when the file is not an image."""
    with PIL.Image.open(path) as image:
        width, height = image.size
        # a corrupt EXIF block leaves the image as stored, as in load_image
        with contextlib.suppress(OSError, SyntaxError, ValueError, TypeError):
            if image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    return height, width


def load_image_tensor(src: ImageSource, name: str | None = None) -> torch.Tensor:
    """Return `src` as a float32 RGB tensor (3, H, W) in [0, 1].

    Accepts the same inputs as `load_image`; float arrays and tensors keep their precision (they are not
    quantised to 8 bits on the way).
    """
    name = _default_name(src, name)
    src = _decode_encoded(src, name)
    if isinstance(src, PIL.Image.Image):
        rgb = np.asarray(_pil_to_rgb(src, name), dtype=np.float32) / 255.0
    else:
        rgb = _rgb_float(_array_hwc(src, name), name)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


def _default_name(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return f"image file {os.fspath(src)}"
    file_name = getattr(src, "name", None) if hasattr(src, "read") else None
    return f"image file {file_name}" if isinstance(file_name, str) else "image"


def _decode_encoded(src: ImageSource, name: str) -> PIL.Image.Image | np.ndarray | torch.Tensor:
    """Decode a path, bytes or binary file object to a PIL image; pass decoded sources through."""
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ValueError(f"{name}: file not found")
        if not path.is_file():
            raise ValueError(f"{name}: is not a file (a directory?); pass image files")
        if path.stat().st_size == 0:
            raise ValueError(f"{name}: the file is empty (0 bytes)")
        return _decode(path, name)
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise ValueError(f"{name}: the image data is empty (0 bytes)")
        return _decode(io.BytesIO(src), name)
    if hasattr(src, "read"):
        return _decode(src, name)
    return src


def _decode(file: Path | BinaryIO, name: str) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(file)
        image.load()  # decode now, so truncated files fail here rather than later
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{name}: {err}; raise PIL.Image.MAX_IMAGE_PIXELS if the image is trusted") from err
    except PIL.UnidentifiedImageError as err:
        raise ValueError(
            f"{name}: not an image format PIL can read (a corrupt file, or not an image)"
        ) from err
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{name}: the image is corrupt or truncated ({err})") from err
    return image


def _pil_to_rgb(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{name}: the image has zero size ({image.width}x{image.height} px)")
    # a corrupt EXIF block leaves the pixels as stored rather than failing the image
    with contextlib.suppress(OSError, SyntaxError, ValueError, TypeError):
        image = PIL.ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit images (PNG/TIFF). PIL's own convert("RGB") clips them at 255 instead of scaling, so
        # scale here; mode "I" is how some readers hand over 16-bit data, so it is read as 0..65535 too.
        pixels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 65535.0
        return PIL.Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        return load_image(np.asarray(image, dtype=np.float32), name)
    if "A" in image.getbands() or "a" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_hwc(src: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Validate an array/tensor and return it as a numpy (H, W, C) array, C in 1..4, dtype unchanged."""
    if isinstance(src, torch.Tensor):
        tensor = src.detach().cpu()
        if tensor.dtype == torch.bfloat16 or tensor.dtype == torch.float16:
            tensor = tensor.float()
        if tensor.ndim == 3:
            if tensor.shape[0] not in _CHANNEL_COUNTS and tensor.shape[-1] in _CHANNEL_COUNTS:
                raise ValueError(
                    f"{name}: torch tensor of shape {tuple(tensor.shape)} looks channels-last; tensors must be "
                    "(C, H, W): pass tensor.permute(2, 0, 1)"
                )
            tensor = tensor.permute(1, 2, 0)
        array = tensor.numpy()
        kind = "torch tensor"
    elif isinstance(src, np.ndarray):
        array, kind = src, "numpy array"
        if array.ndim == 3 and array.shape[-1] not in _CHANNEL_COUNTS and array.shape[0] in _CHANNEL_COUNTS:
            raise ValueError(
                f"{name}: numpy array of shape {array.shape} looks channels-first; arrays must be (H, W, C): "
                "pass array.transpose(1, 2, 0)"
            )
    else:
        raise ValueError(
            f"{name}: cannot read an image from {type(src).__name__}; pass a file path, encoded bytes, a "
            "binary file object, a PIL image, a numpy array (H, W, C) or a torch tensor (C, H, W)"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"{name}: {kind} of shape {tuple(src.shape)} is not one image with 1-4 channels; pass images one "
            "at a time or as a list"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: the image has zero size ({array.shape[1]}x{array.shape[0]} px)")
    return array


def _rgb_float(array: np.ndarray, name: str) -> np.ndarray:
    """(H, W, C) array of any accepted dtype -> float32 (H, W, 3) RGB in [0, 1]."""
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        pixels = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        pixels = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        pixels = array.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise ValueError(f"{name}: the image contains NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            hint = "divide by 255" if high <= 255.0 + _FLOAT_TOLERANCE and low >= 0 else "rescale to [0, 1]"
            raise ValueError(f"{name}: float pixels must lie in [0, 1], got [{low:.4g}, {high:.4g}]: {hint}")
        pixels = np.clip(pixels, 0.0, 1.0)
    else:
        raise ValueError(
            f"{name}: pixel type {array.dtype} is not supported; use uint8 (0..255), uint16 (0..65535) or "
            "float in [0, 1]"
        )
    channels = pixels.shape[-1]
    if channels in (2, 4):  # composite the alpha channel onto white
        alpha = pixels[:, :, -1:]
        pixels = pixels[:, :, :-1] * alpha + (1.0 - alpha)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels
