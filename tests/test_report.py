import json
import os

import pytest

from nano_reasoner.report import (MetricsLogger, format_duration, markdown_table, plot_curves, plot_panels,
                                  progress_line, read_metrics, write_json, write_report_section)


def test_progress_line_formats_fields_in_order():
    line = progress_line(120, 1000, 12.0, loss=0.41234, acc=0.6321, tok_s=21400.0)
    # 12 s for 120 steps -> 0.1 s a step, 880 steps left -> 88 s
    assert line == "step 120/1000 | loss 0.412 | acc 63.2% | 21.4k tok/s | 1m28s left"


def test_progress_line_number_formats():
    line = progress_line(5, 10, 50.0, lr=3e-4, kl=0.0, reward=137.25, epoch=2, pass_frac=0.5, arith_acc=1.0)
    assert line == "step 5/10 | lr 3.00e-04 | kl 0.000 | reward 137.2 | epoch 2 | pass_frac 50.0% | arith_acc 100.0% | 50s left"


def test_progress_line_time_left_counts_only_steps_timed_since_resume():
    assert progress_line(600, 1000, 100.0, start_step=500) == "step 600/1000 | 6m40s left"
    assert progress_line(0, 1000, 0.0) == "step 0/1000"


@pytest.mark.parametrize("seconds, text", [(45, "45s"), (44.6, "45s"), (130, "2m10s"), (3780, "1h03m"),
                                           (0, "0s"), (-3, "0s"), (60, "1m00s"), (36000, "10h00m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_metrics_logger_truncate_after_drops_later_steps(tmp_path):
    metrics = MetricsLogger(str(tmp_path))
    for step in (25, 50, 75, 100):
        metrics.log(step=step, loss=1.0 / step)
    metrics.log(note="no step field")
    metrics.truncate_after(50)
    assert metrics.read() == [{"step": 25, "loss": 1 / 25}, {"step": 50, "loss": 1 / 50}, {"note": "no step field"}]
    metrics.log(step=75, loss=0.5)  # the resumed run logs step 75 once more, once
    assert [record.get("step") for record in read_metrics(metrics.path)] == [25, 50, None, 75]


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed mid-write
    assert read_metrics(str(path)) == [{"step": 1}, {"step": 2}]


def test_report_section_is_replaced_in_place_and_others_kept(tmp_path):
    report_path = str(tmp_path / "report.md")
    write_report_section(report_path, "pretrain", "## Pre-training\n\nloss 0.5\n")
    write_report_section(report_path, "rl", "## RL\n\nreward 0.3")
    write_report_section(report_path, "pretrain", "## Pre-training\n\nloss 0.2")
    with open(report_path) as f:
        report = f.read()
    assert report == ("# nano-reasoner run report\n\n"
                      "<!-- stage:pretrain -->\n## Pre-training\n\nloss 0.2\n<!-- /stage:pretrain -->\n\n"
                      "<!-- stage:rl -->\n## RL\n\nreward 0.3\n<!-- /stage:rl -->\n")


def test_report_text_outside_sections_is_kept(tmp_path):
    report_path = tmp_path / "report.md"
    report_path.write_text("my notes\n\n<!-- stage:a -->\nold\n<!-- /stage:a -->\n\nmore notes\n")
    write_report_section(str(report_path), "a", "new")
    assert report_path.read_text() == "my notes\n\n<!-- stage:a -->\nnew\n<!-- /stage:a -->\n\nmore notes\n"


def test_markdown_table():
    table = markdown_table(["task", "accuracy"], [["arith", "63.2%"], ["a|b", 1]])
    assert table == "| task | accuracy |\n| --- | --- |\n| arith | 63.2% |\n| a\\|b | 1 |"
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "run" / "config.json")
    write_json(path, {"args": {"lr": 0.001, "out": "runs/x"}, "params": 12})
    with open(path) as f:
        assert json.load(f) == {"args": {"lr": 0.001, "out": "runs/x"}, "params": 12}
    assert os.listdir(tmp_path / "run") == ["config.json"]


def test_plots_write_png_files(tmp_path):
    png_magic = b"\x89PNG\r\n\x1a\n"
    curves_path, panels_path = tmp_path / "curves.png", tmp_path / "panels.png"
    plot_curves(str(curves_path), {"greedy": ([1, 2, 4], [0.1, 0.2, 0.3]), "vote": ([1, 2, 4], [0.1, 0.3, 0.4])},
                title="scaling", xlabel="samples", ylabel="accuracy", logx=True)
    plot_panels(str(panels_path), [
        {"title": "loss", "xlabel": "step", "ylabel": "loss", "series": {"loss": (list(range(50)), [1 / (i + 1) for i in range(50)])}},
        {"title": "accuracy", "xlabel": "step", "ylabel": "acc", "series": {"arith": ([0, 25], [0.0, 0.5])}, "logx": False},
    ], title="pre-training")
    assert curves_path.read_bytes()[:8] == png_magic and panels_path.read_bytes()[:8] == png_magic
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "panels.png"]
