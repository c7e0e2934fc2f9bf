"""bench/ holds scripts, not an installed package: tests load them by path."""

import importlib.util
from pathlib import Path


def load_bench(name: str):
    """The module bench/<name>.py."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
