"""Shared fixtures: one small Glyphs cache rendered once per test session."""

import pytest


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
