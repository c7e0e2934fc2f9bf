"""environment.yml (conda, GPU) lists the same packages and versions as pyproject.toml."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent


def test_conda_and_pip_lists_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_pins = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {pin.replace("faiss-gpu", "faiss-cpu") for pin in pip_section}
    assert conda_pins == pip_pins
    assert not any(pin.startswith("faiss-cpu") for pin in pip_section)  # never both
    assert "python=3.11" in env["dependencies"]


def test_every_pin_is_exact():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for pin in project["dependencies"]:
        assert "==" in pin, pin
    assert "torch==2.14.1" in project["dependencies"]
    assert "torchvision==0.29.1" in project["dependencies"]
