"""`ibdml check-data`: exit 0 for a good copy, 1 with the report's problems, 2 for a bad name."""

import numpy as np
import pytest
from PIL import Image

from ibdml.cli import main
from ibdml.data import benchmarks


def make_tiny_sop(root):
    """Stanford Online Products' layout with 2 train and 2 test images."""
    for name, class_ids in (("Ebay_train.txt", (1, 2)), ("Ebay_test.txt", (11319, 11320))):
        lines = ["image_id class_id super_class_id path"]
        for class_id in class_ids:
            rel = f"mug_final/{class_id}_0.JPG"
            (root / "mug_final").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), class_id % 255, dtype=np.uint8)).save(root / rel)
            lines.append(f"{class_id} {class_id} 1 {rel}")
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def test_check_data_exit_codes(tmp_path, capsys):
    root = make_tiny_sop(tmp_path / "Stanford_Online_Products")
    # The official layout but not the official counts: exit 1, the problem shown.
    assert main(["check-data", "sop", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"Stanford Online Products (sop) at {root}\nlayout: official")
    assert "train: 2 classes and 2 images, expected 11,318 and 59,551" in out
    # A structural problem: exit 1 with the fix, never a traceback.
    assert main(["check-data", "sop", str(root / "mug_final"), "--no-verify"]) == 1
    out = capsys.readouterr().out
    assert f"but {root} holds Ebay_train.txt" in out and f"ROOT = {root}" in out
    # A usage error: argparse exits 2 and names the choices.
    with pytest.raises(SystemExit) as raised:
        main(["check-data", "SOP", str(root)])
    assert raised.value.code == 2
    assert "invalid choice: 'SOP'" in capsys.readouterr().err


def test_check_data_good_copy_exits_0(tmp_path, capsys, monkeypatch):
    root = make_tiny_sop(tmp_path / "sop")
    tiny = {"train": benchmarks.SplitCount(2, 2), "test": benchmarks.SplitCount(2, 2)}
    monkeypatch.setitem(benchmarks.OFFICIAL_COUNTS, "sop", tiny)
    assert main(["check-data", "sop", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images opened: 4" in out and out.rstrip().endswith("OK")
