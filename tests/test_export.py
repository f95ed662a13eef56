"""gradlab export DIR --tensorboard LOGDIR, read back with tensorboard's EventAccumulator and
compared with the metrics.csv and profile.npz of a tiny real run."""

import csv
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from gradlab.cli import app

runner = CliRunner()
TINY = """\
name: tiny
task: {name: temporal_order, length: 10, eval_size: 16}
model: {hidden: 4}
train: {steps: 4, batch_size: 4, eval_every: 4, clip: {kind: norm, max_norm: 0.5}}
seeds: [0]
grid:
  model:
    - {cell: vanilla}
    - {cell: lstm, layers: 2}
"""
# the scalars the issue asks for, by tag -> (kind of metrics row, column)
EXPECTED = {"train/loss": ("train", "loss"), "train/grad_norm": ("train", "grad_norm"),
            "train/grad_norm_clipped": ("train", "grad_norm_clipped"), "eval/loss": ("eval", "eval_loss"),
            "eval/accuracy": ("eval", "eval_accuracy"), "eval/horizon": ("eval", "horizon"),
            "eval/decay_rate": ("eval", "decay_rate")}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "tiny.yaml").write_text(TINY)
    result = runner.invoke(app, ["run", str(tmp / "tiny.yaml"), "--out", str(tmp / "out"), "-q", "-j", "1"])
    assert result.exit_code == 0, result.output
    return tmp / "out"


def accumulate(run_logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_logdir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_every_run_reads_back_with_its_metrics_and_profiles(results, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    logdir = tmp_path / "tb"
    result = runner.invoke(app, ["export", str(results), "--tensorboard", str(logdir)])
    assert result.exit_code == 0, result.output
    runs = sorted(d for d in (results / "tiny").iterdir() if d.is_dir())
    assert result.output.split() == sorted(str(logdir / "tiny" / d.name) for d in runs)
    for run in runs:
        events = accumulate(logdir / "tiny" / run.name)  # TensorBoard's run name: tiny/<run id>
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        assert set(EXPECTED) <= set(events.Tags()["scalars"])
        for tag, (kind, column) in EXPECTED.items():
            expected = [(int(r["step"]), float(r[column])) for r in rows if r["kind"] == kind and r[column] != ""]
            got = [(e.step, e.value) for e in events.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in expected], tag
            np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6, err_msg=tag)
        with np.load(run / "profile.npz") as profile:
            steps = profile["step"].tolist()
        images = events.Images("gradient_through_time")
        assert [i.step for i in images] == steps == [0, 4]
        assert all(i.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and i.width > 0 for i in images)

    # exporting again replaces the earlier export: no step twice
    assert runner.invoke(app, ["export", str(results), "--tensorboard", str(logdir)]).exit_code == 0
    run = runs[0]
    assert len(list((logdir / "tiny" / run.name).glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in accumulate(logdir / "tiny" / run.name).Scalars("eval/loss")] == [0, 4]


def test_without_tensorboard_a_one_line_error_and_exit_2(results, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    result = runner.invoke(app, ["export", str(results), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "error: the tensorboard package is not installed: pip install 'gradlab[tensorboard]'"]
    assert not (tmp_path / "tb").exists()


def test_bad_directories_are_exit_2(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    result = runner.invoke(app, ["export", str(tmp_path / "nope"), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and result.output.strip() == f"error: {tmp_path / 'nope'}: no such directory"
    result = runner.invoke(app, ["export", str(tmp_path), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 2 and "no finished runs to export" in result.output


def test_export_writes_the_rows_every_command_read(results, tmp_path):
    # a metrics.csv saved by an editor with a byte-order mark: pandas (readers.read_metrics, which every
    # command reads through) reads its columns; export writes what that check read, not a reading of its own
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    run = sorted(d for d in (copy / "tiny").iterdir() if d.is_dir())[0]
    text = (run / "metrics.csv").read_bytes()
    (run / "metrics.csv").write_bytes(b"\xef\xbb\xbf" + text)
    result = runner.invoke(app, ["export", str(copy), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0 and "skipped" not in result.output, result.output
    events = accumulate(tmp_path / "tb" / "tiny" / run.name)
    rows = list(csv.DictReader(text.decode().splitlines()))
    expected = [(int(r["step"]), float(r["loss"])) for r in rows if r["kind"] == "train"]
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)


def test_a_failed_run_exports_the_rows_it_wrote(results, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    import json
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    run = sorted(d for d in (copy / "tiny").iterdir() if d.is_dir())[0]
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(lines[:3]))  # stopped after its first rows
    (run / "error.txt").write_text("RuntimeError: out of memory\n")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    result = runner.invoke(app, ["export", str(copy), "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0 and str(tmp_path / "tb" / "tiny" / run.name) in result.output.split(), result.output
    rows = list(csv.DictReader(lines[:3]))
    events = accumulate(tmp_path / "tb" / "tiny" / run.name)
    assert [e.step for e in events.Scalars("train/loss")] == [int(r["step"]) for r in rows if r["kind"] == "train"]
    assert "gradient_through_time" not in events.Tags()["images"]  # a failed run's profile is not read
