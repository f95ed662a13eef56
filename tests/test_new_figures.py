"""Issue 23's figures recorded by a run and carried by compare: the long-term share and the memory at every
evaluation, the Lyapunov exponents when ``diagnostics.lyapunov`` asks for them (opt-in: their cost)."""

import json
import statistics

import torch
import yaml
from typer.testing import CliRunner

from gradlab import lyapunov, memory, training
from gradlab.cli import app

runner = CliRunner()
CONFIG = {"name": "figures", "task": {"name": "adding", "length": 8, "eval_size": 64},
          "model": {"cell": "vanilla", "hidden": 6}, "train": {"steps": 10, "batch_size": 8, "eval_every": 5},
          "diagnostics": {"lyapunov": 3}, "seeds": [0, 1, 2]}


def test_a_sweep_records_the_figures_and_compare_gives_their_medians(tmp_path):
    path = tmp_path / "figures.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    ran = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "-q", "-j", "1"])
    assert ran.exit_code == 0, ran.output
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").rglob("summary.json"))]
    assert len(summaries) == 3
    [row] = json.loads(runner.invoke(app, ["compare", str(tmp_path / "out"), "-f", "json"]).stdout)
    for key in ("long_term_share", "memory", "memory_chance", "memory_ceiling", "lyapunov_max"):
        values = [s[key] for s in summaries]
        assert all(isinstance(v, float) for v in values), (key, values)
        assert row[f"{key}_median"] == statistics.median(values), key
    assert all(0 <= s["long_term_share"] <= 1 for s in summaries)


def test_the_recorded_figures_are_those_of_the_trained_model(monkeypatch):
    cfg = {"name": "t", "task": {"name": "adding", "length": 8, "eval_size": 64},
           "model": {"cell": "lstm", "hidden": 6, "nonlinearity": None, "skip": 2, "engine": "scan"},
           "train": {"steps": 6, "batch_size": 8, "optimizer": "adam", "lr": 0.01, "clip": {"kind": "none"},
                     "tbptt": None, "eval_every": 3, "on_nonfinite": "skip"},
           "diagnostics": {"lyapunov": 2}, "seed": 1, "device": "cpu", "dtype": "float64", "threads": 1}
    model_out = {}
    real = training.build_model

    def keep(*args, **kwargs):  # the model the run trains, to measure it again at the end
        model_out["model"] = real(*args, **kwargs)
        return model_out["model"]

    monkeypatch.setattr(training, "build_model", keep)
    out = training.train(cfg)
    model, task = model_out["model"], training.resolve(cfg["task"])
    eval_batch = task.evaluation_set(64, 8, torch.Generator().manual_seed(1 + training.EVAL_SEED_OFFSET))
    eval_batch = eval_batch.to("cpu", torch.float64)
    probe = training.probe_batch(task, eval_batch)
    want_memory = memory.memory(model, task, eval_batch, 8)
    want_lyapunov = lyapunov.summary(lyapunov.model_spectrum(model, probe.x, 2)[0])
    summary = out["summary"]
    assert summary["memory"] == want_memory["memory"] and summary["memory_chance"] == want_memory["memory_chance"]
    assert summary["lyapunov_max"] == want_lyapunov["lyapunov_max"]
    assert summary["lyapunov_near_zero"] == want_lyapunov["lyapunov_near_zero"]


def test_without_the_switch_no_exponent_is_measured_and_a_bad_count_is_refused(tmp_path):
    cfg = {**CONFIG, "diagnostics": {}}
    path = tmp_path / "off.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ran = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "-q", "-j", "1", "--set", "seeds=[0]"])
    assert ran.exit_code == 0, ran.output
    [summary] = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("summary.json")]
    assert not any(k.startswith("lyapunov") for k in summary) and "memory" in summary
    path.write_text(yaml.safe_dump({**CONFIG, "diagnostics": {"lyapunov": -1}}))
    bad = runner.invoke(app, ["validate", str(path)])
    assert bad.exit_code == 2 and "diagnostics.lyapunov" in bad.output and "Traceback" not in bad.output
