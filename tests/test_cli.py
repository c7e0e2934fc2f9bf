"""The ibdml command: errors are one clear line and exit code 2; train + evaluate work."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibdml.cli import main

SMOKE = str(Path(__file__).parent.parent / "params" / "smoke.yaml")


def test_bad_parameter_is_one_clear_line(capsys, tmp_path):
    assert main(["train", SMOKE, "-p", "n_c=99", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ibdml: error: parameter n_c: 99") and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a bad parameter


@pytest.mark.parametrize("command", ["run", "claims"])
def test_run_and_claims_refuse_a_bad_parameter_before_any_notebook(command, capsys, tmp_path):
    assert main([command, SMOKE, "-p", "n_c=99", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("ibdml: error: parameter n_c: 99")
    assert not (tmp_path / "r").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only errors the user can fix are one line (docs/errors.md); a bug is not hidden."""
    import ibdml.cli

    def bug(args):
        raise ValueError("a bug")

    monkeypatch.setattr(ibdml.cli, "cmd_evaluate", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["evaluate", "somewhere"])


def test_train_then_evaluate(glyph_root, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", SMOKE, "-p", f"data_root={glyph_root}", "-p", "baselines=false",
                 "--out", run]) == 0
    assert main(["evaluate", run]) == 0
    out = capsys.readouterr().out
    assert "metrics.json" in out
    assert "baselines" not in json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_evaluate_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_params_table(capsys):
    assert main(["params"]) == 0
    assert "`mpn_layers`" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["params"], ["run", "--help"]])
def test_help_and_params_answer_without_importing_torch(argv):
    code = ("import sys\nfrom ibdml.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'plotly' not in sys.modules, 'plotly was imported'\n" % argv)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 1.5
