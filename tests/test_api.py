"""The Python API: lazy `import gradlab`, load/compare as the CLI reads results, the README's
"Use it on your own model" snippets and the example scripts, run as written."""

import contextlib
import io
import json
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import gradlab
from gradlab import comparison

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "horizon_by_cell"  # a committed result set


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_import_gradlab_loads_neither_torch_nor_pandas():
    code = ("import sys, gradlab, gradlab.cli; "
            "print(json.dumps([m for m in ('torch', 'pandas', 'numpy') if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert {"watch", "GradientMonitor", "load", "compare"} <= set(dir(gradlab))
    with pytest.raises(AttributeError, match="no attribute 'wtach'"):
        _ = gradlab.wtach


def test_load_and_compare_are_what_compare_reads():
    frame = gradlab.load(STUDY)
    pd.testing.assert_frame_equal(frame, comparison.load_frame([STUDY]))
    assert len(frame) == len(list(STUDY.glob("*/summary.json")))
    pd.testing.assert_frame_equal(gradlab.compare(STUDY, by=["cell"]),
                                  comparison.compare(comparison.load_frame([STUDY]), ["cell"]))
    pd.testing.assert_frame_equal(gradlab.compare(str(STUDY)), comparison.compare(comparison.load_frame([STUDY])))
    with pytest.raises(ValueError, match="unknown --by column"):
        gradlab.compare(STUDY, by=["cel"])


def test_load_and_compare_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        gradlab.load(tmp_path / "nope")
    assert gradlab.load(tmp_path).empty
    with pytest.raises(ValueError, match="no finished runs under"):
        gradlab.compare(tmp_path)


def readme_snippets() -> list[tuple[str, str]]:
    """(code, the output pasted below it) of every python snippet of "Use it on your own model"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use it on your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```\s*```\n(.*?)```", section, re.S)


def test_the_readme_snippets_run_as_written(tmp_path, monkeypatch):
    snippets = readme_snippets()
    assert len(snippets) == 3
    (tmp_path / "results").symlink_to(ROOT / "results")  # the snippets read a committed result set
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for code, pasted in snippets:  # in order, in one namespace, as a reader runs them
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            exec(compile(code, "README.md", "exec"), namespace)
        # the README pastes the output as it came out; another CPU's float32 kernels may round the last digits
        lines, expected = stdout.getvalue().splitlines(), pasted.splitlines()
        assert len(lines) == len(expected) and all(map(same_output, lines, expected)), (lines, expected)
    assert (tmp_path / "grad_profile.png").read_bytes()[:4] == b"\x89PNG"


NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?")


def same_output(line: str, pasted: str) -> bool:
    """The same text, and the same numbers to 1e-4 (relative)."""
    if NUMBER.sub("#", line).strip() != NUMBER.sub("#", pasted).strip():
        return False
    return all(math.isclose(float(a), float(b), rel_tol=1e-4, abs_tol=1e-12)
               for a, b in zip(NUMBER.findall(line), NUMBER.findall(pasted)))


@pytest.mark.parametrize("script", ["watch_lstm.py", "monitor_loop.py"])
def test_the_examples_run(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script, str(tmp_path)])
    runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    out = capsys.readouterr().out
    if script == "watch_lstm.py":
        assert "verdict: vanishing" in out and (tmp_path / "grad_profile.png").is_file()
    else:
        assert out.startswith("verdict: not exploding")  # never "healthy": the monitor measures no profile
