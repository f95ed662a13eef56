"""Import boundaries: the reading side never imports torch, training and the library never import rich or typer.

Each check imports the modules in a fresh interpreter (this test process has imported everything
already) and looks at ``sys.modules`` after each one, so a failure names the module that pulled the
package in.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Everything that reads results from disk: comparison, expectations, reports, plots and what they use.
READING_SIDE = ["vocabulary", "results", "statistics", "diagnostics", "readers", "expectations", "comparison",
                "tables", "export", "reports", "plots"]
# The library and everything that trains: no terminal (STYLE: only gradlab.cli imports typer and rich).
LIBRARY_SIDE = ["gradlab", "gradlab.config", "gradlab.training", "gradlab.sweeps", "gradlab.workers",
                "gradlab.watching", "gradlab.monitor", "gradlab.bench"]


def first_importer(statements: list[str], packages: list[str]) -> dict:
    """Run ``statements`` one by one in a fresh interpreter; {package: the first statement after which it
    is in sys.modules} for each of ``packages`` that got imported."""
    script = f"""
import json, sys
found = {{}}
for statement in {statements!r}:
    exec(statement)
    for package in {packages!r}:
        if package in sys.modules and package not in found:
            found[package] = statement
print(json.dumps(found))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_reading_side_never_imports_torch():
    found = first_importer([f"import gradlab.{m}" for m in READING_SIDE], ["torch"])
    assert found == {}, f"torch imported by {found['torch']!r}"


def test_the_vocabulary_imports_only_the_standard_library():
    found = first_importer(["import gradlab.vocabulary"], ["torch", "pandas", "numpy", "yaml"])
    assert found == {}, found


def test_validating_a_config_with_expectations_imports_no_pandas():
    config = ROOT / "configs" / "quickstart.yaml"
    assert "expect:" in config.read_text()  # else this test would check nothing
    found = first_importer(["from gradlab.config import load_experiment",
                            f"assert load_experiment({str(config)!r}).expect"], ["pandas"])
    assert found == {}, f"pandas imported by {found['pandas']!r}"


def test_training_and_the_library_never_import_rich_or_typer():
    statements = [f"import {m}" for m in LIBRARY_SIDE]
    statements += ["import gradlab; gradlab.watch, gradlab.Watch, gradlab.GradientMonitor, gradlab.load"]
    found = first_importer(statements, ["rich", "typer", "click"])
    assert found == {}, found


def test_no_module_outside_the_cli_names_rich_or_typer():
    """Also where an import inside a function would only run later (the checks above see what
    importing runs)."""
    offenders = []
    for path in sorted(p for p in (ROOT / "gradlab").rglob("*.py") if "cli" not in p.relative_to(ROOT).parts):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("rich", "typer", "click")]
    assert offenders == []


def test_gradlab_run_starts_the_fork_server_before_it_imports_torch(tmp_path):
    # The server imports torch (seconds) while the driver validates the config: if the driver imported
    # torch first, the workers would start that much later. Stand-in start_server: report and stop there.
    script = f"""
import json, os, sys
import gradlab.workers
from gradlab.cli import app

def start_server():
    print(json.dumps(sorted(p for p in ("torch", "pandas", "numpy") if p in sys.modules)), flush=True)
    os._exit(0)

gradlab.workers.start_server = start_server
app(["run", {str(ROOT / "configs" / "quickstart.yaml")!r}, "--jobs", "2", "-q", "--out", {str(tmp_path)!r}],
    prog_name="gradlab")
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr  # else the server was never started
    assert json.loads(out.stdout) == [], f"imported before the fork server started: {out.stdout.strip()}"
