"""`radio-vlm eval report RUN... --out DIR`: several models' metrics side by side.

Each RUN is a metrics.json of `radio-vlm eval <protocol>` or a folder searched for them. Runs are grouped
by their model label (`name` in metrics.json, `--name` of the eval command); the headline number of each
protocol becomes a row, each model a column. Writes DIR/report.md (the table) and DIR/report.png (grouped
bars), and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import METRICS_FILE

# protocol -> (row label, metrics key) of the numbers a report shows, in order
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "knn": [("k-NN top-1", "top1"), ("k-NN top-5", "top5")],
    "zero-shot": [
        ("zero-shot top-1", "top1"),
        ("zero-shot top-5", "top5"),
        ("zero-shot agreement", "agreement"),
        ("zero-shot logit correlation", "logit_correlation"),
    ],
    "seg-probe": [("seg-probe mIoU", "miou")],
    "sam": [("SAM mIoU", "miou"), ("SAM agreement mIoU", "agreement_miou")],
}


def read_runs(paths: list[str | Path]) -> list[dict]:
    """Every metrics.json record under `paths` (files or folders), in the order given."""
    records = []
    for path in map(Path, paths):
        files = sorted(path.rglob(METRICS_FILE)) if path.is_dir() else [path]
        if not files or not files[0].is_file():
            raise ValueError(f"{path}: no {METRICS_FILE} found (pass run folders of `radio-vlm eval ...`)")
        for file in files:
            try:
                record = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}: not JSON ({err})") from err
            if (
                not isinstance(record, dict)
                or record.get("protocol") not in HEADLINES
                or "metrics" not in record
            ):
                raise ValueError(
                    f"{file}: not a metrics.json of `radio-vlm eval` (needs protocol and metrics)"
                )
            records.append(record)
    return records


def side_by_side(records: list[dict]) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """(model names, [(row label, value per model)]) of the headline metrics present in `records`."""
    names = list(dict.fromkeys(r["name"] for r in records))
    values: dict[tuple[str, str], float] = {}
    for record in records:
        for label, key in HEADLINES[record["protocol"]]:
            value = record["metrics"].get(key)
            if value is not None:
                values[label, record["name"]] = float(value)
    rows = []
    for protocol_rows in HEADLINES.values():
        for label, _ in protocol_rows:
            row = [values.get((label, name)) for name in names]
            if any(v is not None for v in row):
                rows.append((label, row))
    return names, rows


def markdown(names: list[str], rows: list[tuple[str, list[float | None]]]) -> str:
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines)


def bar_chart(path: Path, names: list[str], rows: list[tuple[str, list[float | None]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    for m, name in enumerate(names):
        xs = [i + (m - (len(names) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [row[m] or 0.0 for _, row in rows], width, label=name)
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(paths: list[str | Path], out: str | Path) -> str:
    """Write out/report.md and out/report.png for the runs under `paths`; returns the markdown table."""
    names, rows = side_by_side(read_runs(paths))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(names, rows)
    (out / "report.md").write_text("# radio-vlm eval report\n\n" + table + "\n")
    bar_chart(out / "report.png", names, rows)
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="metrics.json files or folders holding them")
    parser.add_argument("--out", required=True, help="folder for report.md and report.png")


def run(args: argparse.Namespace) -> int:
    print(write_report(args.runs, args.out))
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'report.png'}")
    return 0
