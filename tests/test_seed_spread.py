"""benchmarks/seed_spread.py: the flags split at `--`, and the summary of finished runs is exact."""
import json

import pytest

from benchmarks import seed_spread


def test_flags_after_the_separator_go_to_train_pretrain():
    args = seed_spread.parse_args(["--seeds", "5,6", "--parallel", "1", "--", "--preset", "tiny", "--steps", "9"])
    assert args.seeds == [5, 6] and args.parallel == 1
    assert args.train_flags == ["--preset", "tiny", "--steps", "9"]


@pytest.mark.parametrize("argv", [["--", "--seed", "3"], ["--", "--out", "x"], ["--seeds", "1,two"],
                                  ["--parallel", "0"]])
def test_flags_the_script_sets_itself_or_bad_values_are_refused(argv):
    with pytest.raises(SystemExit) as exit_info:
        seed_spread.parse_args(argv)
    assert exit_info.value.code == 2


def test_summary_of_finished_runs(tmp_path, capsys):
    for seed, arith in ((1, 0.5), (2, 0.7), (3, 0.6)):
        (tmp_path / f"seed{seed}").mkdir()
        (tmp_path / f"seed{seed}" / "eval.json").write_text(json.dumps(
            {"arith": {"all": arith, "1": 1.0}, "countdown": {"all": 0.2, "3": 0.3}}))
    args = seed_spread.parse_args(["--seeds", "1,2,3", "--root", str(tmp_path)])
    summary = seed_spread.summarize(args)
    arith = summary["tasks"]["arith"]
    assert arith["per_seed"] == [0.5, 0.7, 0.6]
    assert arith["mean"] == pytest.approx(0.6) and arith["std"] == pytest.approx(0.1)  # sample std
    assert (arith["min"], arith["max"]) == (0.5, 0.7)
    assert summary["tasks"]["countdown"]["std"] == 0.0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "60.0%" in capsys.readouterr().out


def test_runs_each_seed_once_and_reads_a_finished_run_back(tmp_path):
    flags = ["--preset", "tiny", "--threads", "1", "--steps", "2", "--batch-size", "4", "--train-problems", "30",
             "--eval-problems", "2", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--eval-every", "100"]
    args = seed_spread.parse_args(["--seeds", "5", "--parallel", "1", "--root", str(tmp_path), "--"] + flags)
    assert seed_spread.run_all(args) == {}  # no run failed
    eval_path = tmp_path / "seed5" / "eval.json"
    assert json.loads(eval_path.read_text()).keys() == {"arith", "countdown", "countdown_uniform_targets",
                                                        "countdown_thinking", "budget_sweep"}
    written = eval_path.stat().st_mtime_ns
    assert seed_spread.run_all(args) == {}  # finished: read as is, not trained again
    assert eval_path.stat().st_mtime_ns == written
