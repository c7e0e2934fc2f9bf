"""The README's front page promises: its Python example runs as written (on the smoke recipe, so
that it takes seconds), and the page stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import ibdml.config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SMOKE = ROOT / "params" / "smoke.yaml"


def python_example() -> str:
    section = README.read_text().split("## From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)[1]


def test_the_python_example_runs(glyph_root, tmp_path, monkeypatch, capsys):
    real = ibdml.config.load_params
    asked = []

    def smoke_instead(path, overrides=None):  # the example's recipe, swapped for the smoke one
        asked.append((path, overrides))
        return real(SMOKE, {**(overrides or {}), "data_root": str(glyph_root)})

    monkeypatch.setattr(ibdml.config, "load_params", smoke_instead)
    monkeypatch.chdir(tmp_path)
    exec(compile(python_example(), "README.md", "exec"), {})
    assert asked == [("params/glyphs.yaml", {"epochs": 2})]
    assert (ROOT / asked[0][0]).is_file()
    last_line = capsys.readouterr().out.strip().splitlines()[-1]  # after the progress lines
    r1, map_r, nmi = (float(v) for v in last_line.split())
    assert 0 <= r1 <= 1 and 0 <= map_r <= 1 and 0 <= nmi <= 1
    assert (tmp_path / "outputs" / "quick" / "metrics.json").is_file()


def test_the_readme_stays_a_front_page():
    assert len(README.read_bytes()) <= 12_000, "README.md is a front page: move detail to docs/"
