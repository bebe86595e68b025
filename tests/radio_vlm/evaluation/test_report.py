"""`radio-vlm eval report`: several runs side by side, and runs that are not metrics files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from radio_vlm.cli import main


def _run(folder, protocol, name, metrics):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"protocol": protocol, "name": name, "metrics": metrics}))


def test_report_lays_models_side_by_side(tmp_path, capsys):
    _run(tmp_path / "a" / "knn", "knn", "student", {"top1": 91.25, "top5": 99.0})
    _run(tmp_path / "a" / "sam", "sam", "student", {"miou": 70.5, "agreement_miou": None})
    _run(tmp_path / "b" / "knn", "knn", "random init", {"top1": 40.0, "top5": 80.0})
    assert main(["eval", "report", str(tmp_path / "a"), str(tmp_path / "b" / "knn" / "metrics.json"),
                 "--out", str(tmp_path / "report")]) == 0  # fmt: skip
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| metric | student | random init |" in table
    assert "| k-NN top-1 | 91.25 | 40.00 |" in table and "| SAM mIoU | 70.50 | - |" in table
    assert "agreement" not in table  # no run has it
    assert "| k-NN top-1 | 91.25 | 40.00 |" in capsys.readouterr().out
    assert Image.open(tmp_path / "report" / "report.png").size[0] >= 600


def test_report_names_what_it_cannot_read(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no metrics.json found"):
        main(["eval", "report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    (tmp_path / "x.json").write_text('{"protocol": "tea"}')
    with pytest.raises(ValueError, match=r"x\.json: not a metrics.json of `radio-vlm eval`"):
        main(["eval", "report", str(tmp_path / "x.json"), "--out", str(tmp_path / "r")])
