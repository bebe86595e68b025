"""`radio-vlm demo` (`make demo`): a tiny RADIO on scikit-image's bundled photos, nothing downloaded.

Builds a tiny random RadioWithAdaptors, feeds it photos of several aspect ratios and image kinds (RGB,
grayscale, RGBA) at their own aspect ratio through RadioImageProcessor as one packed batch, prints sizes,
token counts and output shapes, and writes the PCA picture of the dense features to DIR/pca.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .features import encode_images
from .image_io import load_image
from .image_processing_radio import RadioImageProcessor
from .tiny import build_tiny_radio
from .visualize import montage, pca_picture

# scikit-image's bundled photos (no download): landscape, portrait-ish, square, grayscale, RGBA, text.
DEMO_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "logo", "page")


def demo_images(names: tuple[str, ...] = DEMO_IMAGES) -> dict:
    """{name: numpy array as scikit-image ships it} (HW gray, HWC RGB or RGBA uint8)."""
    try:
        import skimage.data
    except ImportError as err:
        raise RuntimeError("the demo needs scikit-image: pip install 'radio-vlm[demo]'") from err
    return {name: getattr(skimage.data, name)() for name in names}


def run_demo(out_dir: str | Path, model_name: str = "tiny-radio", long_edge: int | None = None) -> dict:
    """Run the demo; return {"rows": [per-image dict], "adaptors": {name: shapes}, "picture": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_tiny_radio(model_name)
    # The tiny model prefers 64 px (4x4 tokens); its largest size shows more structure in the PCA picture.
    long_edge = long_edge or min(432, model.config.max_resolution)
    processor = RadioImageProcessor.from_model_config(model.config, long_edge=long_edge)
    arrays = demo_images()
    images = [load_image(array, f"skimage.data.{name}") for name, array in arrays.items()]
    encoded = encode_images(model, processor, list(arrays.values()), batch_size=len(arrays))

    rows = []
    for (name, array), item in zip(arrays.items(), encoded):
        kind = "gray" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[-1]]
        grid = item["grid_hw"]
        rows.append(
            {
                "image": name,
                "input": f"{kind} {array.shape[1]}x{array.shape[0]}",
                "resized": "{1}x{0}".format(*item["image_size"]),
                "padded": f"{grid[1] * item['token_px']}x{grid[0] * item['token_px']}",
                "grid": f"{grid[0]}x{grid[1]}",
                "tokens": grid[0] * grid[1],
                "summary": tuple(item["summary"].shape),
                "features": tuple(item["features"].shape),
            }
        )
    adaptors = {}
    for name in model.adaptors:
        first = encode_images(model, processor, images[:1], adaptor=name)[0]
        adaptors[name] = {
            "summary": None if first["summary"] is None else tuple(first["summary"].shape),
            "features": tuple(first["features"].shape),
        }

    pictures = [
        pca_picture(item["features"], item["grid_hw"], item["token_px"], item["image_size"], image)
        for item, image in zip(encoded, images)
    ]
    picture_path = out_dir / "pca.png"
    montage(pictures).save(picture_path)
    return {"rows": rows, "adaptors": adaptors, "picture": picture_path, "long_edge": long_edge}


def print_report(result: dict) -> None:
    columns = list(result["rows"][0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in result["rows"])) for c in columns}
    print(f"tiny RADIO, long edge {result['long_edge']} px, one packed batch (w x h; grid h x w)")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in result["rows"]:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
    print(f"total tokens: {sum(r['tokens'] for r in result['rows'])}")
    for name, shapes in result["adaptors"].items():
        print(f"adaptor {name}: summary {shapes['summary']}, features {shapes['features']} (image 0)")
    print(f"wrote {result['picture']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--long-edge", type=int, default=None, help="long edge in px (default: the model's max, <= 432)"
    )


def run(args: argparse.Namespace) -> int:
    print_report(run_demo(args.out, long_edge=args.long_edge))
    return 0
