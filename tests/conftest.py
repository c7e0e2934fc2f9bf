"""Shared fixtures: one small Glyphs cache rendered once per test session. And one line at the
end of the run when browser tests were skipped (tests/browser.py): what they need, and so how to
turn them on."""

from pathlib import Path

import pytest

BROWSER_HARNESS = "browser.py"  # tests/browser.py: require_browser() skips from there


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """A folder holding the smoke-sized Glyphs cache; pass it as data_root."""
    from ibdml.data.glyphs import build_glyphs

    root = tmp_path_factory.mktemp("glyphs")
    build_glyphs(root, classes=16, images_per_class=8, image_size=32, seed=0, progress=False)
    return root


@pytest.fixture
def interrupted_then_resumed(monkeypatch):
    """run(p, run_dir, after_interrupt=None): train, stopped by a KeyboardInterrupt as the second
    epoch starts, call after_interrupt(), then train again (which resumes)."""
    import ibdml.steps.train as train_module

    def run(p, run_dir, after_interrupt=lambda: None):
        real_epoch, calls = train_module.train_epoch, []

        def interrupted(*args, **kw):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real_epoch(*args, **kw)

        monkeypatch.setattr(train_module, "train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(p, run_dir, progress=False)
        monkeypatch.setattr(train_module, "train_epoch", real_epoch)
        after_interrupt()
        train_module.train(p, run_dir, progress=False)

    return run


def browser_skip_line(skipped_reports) -> str | None:
    """The one line for the end of the run when browser tests were skipped, or None: how many,
    and what they need (tests/browser.py's reason names the package or `apt-get install
    chromium; or set $CHROMIUM`). With $CI set they fail instead, so nothing is skipped."""
    reasons = []
    for report in skipped_reports:
        longrepr = getattr(report, "longrepr", None)
        if isinstance(longrepr, tuple) and len(longrepr) == 3:
            path, _, reason = longrepr
            if Path(str(path)).name == BROWSER_HARNESS:
                reasons.append(reason.removeprefix("Skipped: "))
    if not reasons:
        return None
    needs = " / ".join(dict.fromkeys(r.removeprefix("browser test needs ") for r in reasons))
    count = f"{len(reasons)} browser test{'s' if len(reasons) > 1 else ''}"
    return f"{count} skipped; to run them, provide {needs}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """Outermost, so that the line comes after pytest's short test summary."""
    try:
        return (yield)
    finally:
        line = browser_skip_line(terminalreporter.stats.get("skipped", []))
        if line:
            terminalreporter.write_line(line, yellow=True, bold=True)


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session's tests (2 CPUs, no dashboard): starting one takes seconds.
    ibdml.cluster.ray_session uses a Ray the process has started, and leaves it running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
