"""When the browser tests skip (no Chromium), the run ends with one line saying so and how to
turn them on (tests/conftest.py); with $CI set they fail instead and the line is not shown.
Checked with a pytest run in a subprocess on a stand-in test that uses tests/browser.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

STAND_IN = '''
import browser


def test_needs_the_browser(monkeypatch):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)  # as on a machine without one
    browser.require_browser()


def test_other():
    pass
'''


def pytest_run(folder: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def stand_in(tmp_path):
    for name in ("conftest.py", "browser.py"):  # the real hook and harness
        shutil.copy(TESTS / name, tmp_path / name)
    (tmp_path / "test_stand_in.py").write_text(STAND_IN)
    return tmp_path


def test_skipped_browser_tests_end_the_run_with_one_line(stand_in):
    done = pytest_run(stand_in, ci=False)
    assert done.returncode == 0, done.stdout[-2000:]
    lines = [line for line in done.stdout.splitlines() if "to run them" in line]
    assert lines == ["1 browser test skipped; to run them, provide a system Chromium "
                     "(apt-get install chromium; or set $CHROMIUM)"]
    after = done.stdout.splitlines()[done.stdout.splitlines().index(lines[0]) + 1:]
    assert len(after) == 1 and "1 passed, 1 skipped" in after[0]  # then only pytest's count


def test_with_ci_set_they_fail_and_no_line_is_shown(stand_in):
    done = pytest_run(stand_in, ci=True)
    assert done.returncode == 1
    assert "CI is set, so this is a failure, not a skip" in done.stdout
    assert "to run them" not in done.stdout


def test_the_line_counts_only_skips_from_the_browser_harness():
    from conftest import browser_skip_line

    class Report:
        def __init__(self, path, reason):
            self.longrepr = (path, 1, f"Skipped: {reason}")

    harness = str(TESTS / "browser.py")
    need = "browser test needs the Python package playwright (pip install -e '.[test]')"
    assert browser_skip_line([Report(str(TESTS / "test_x.py"), "faiss is not installed")]) is None
    assert browser_skip_line([Report(harness, need), Report(harness, need),
                              Report(str(TESTS / "test_x.py"), "no CUDA")]) == (
        "2 browser tests skipped; to run them, provide the Python package playwright "
        "(pip install -e '.[test]')")
