"""
A training run survives being killed, interrupted or blown up, and a resumed run ends exactly where an unbroken one does.

Each test runs train_pretrain.py as a real process on a tiny model (1 layer, width 32, 12 steps) and sends it real
signals. Where a test needs the run to stop at a known point, it starts the script through a few lines that wrap one
library function (the kill test waits inside the metrics logger at step 10; the loss test makes the loss nan at one
step); the script itself runs unchanged.
"""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from nano_reasoner.checkpoint import load_checkpoint
from nano_reasoner.model import update_average
from nano_reasoner.report import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "train_pretrain.py")
TINY_FLAGS = {"--n-layer": 1, "--n-embd": 32, "--n-head": 2, "--block-size": 128, "--steps": 12, "--save-every": 4,
              "--batch-size": 16, "--train-problems": 200, "--eval-problems": 2, "--eval-every": 1000, "--log-every": 1,
              "--threads": 1}


def tiny(**overrides):
    """The tiny run's command-line flags; overrides as keyword arguments: tiny(steps=100)."""
    flags = {**TINY_FLAGS, **{"--" + key.replace("_", "-"): value for key, value in overrides.items()}}
    return [str(part) for flag, value in flags.items() for part in (flag, value)]


TINY = tiny()

# runs train_pretrain.py as __main__ after wrapping one function (the placeholders are filled in by `wrapped`)
WRAPPER = """
import os, runpy, sys, time
sys.path.insert(0, {repo!r})
{patch}
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""
WAIT_AT_STEP_10 = """
from nano_reasoner.report import MetricsLogger
log = MetricsLogger.log
def log_then_wait(self, **fields):
    log(self, **fields)
    if fields.get("step") == 10:
        print("waiting at step 10", flush=True)
        time.sleep(120)
MetricsLogger.log = log_then_wait
"""
NAN_LOSS_AT_STEP_6 = """
import torch
from nano_reasoner.model import GPT
forward, calls = GPT.forward, []
def forward_nan_at_step_6(self, *args, **kwargs):
    logits, loss = forward(self, *args, **kwargs)
    calls.append(1)
    return logits, (loss * float("nan") if len(calls) == 6 else loss)
GPT.forward = forward_nan_at_step_6
"""


def wrapped(patch):
    return [sys.executable, "-c", WRAPPER.format(repo=REPO, script=SCRIPT, patch=patch)]


def run(command, cwd):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def losses(run_dir):
    return [(m["step"], m["loss"], m["lr"]) for m in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "loss" in m]


def assert_one_clean_line(stderr):
    assert "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.fixture(scope="module")
def unbroken_run(tmp_path_factory):
    """The reference run. Its folder starts with the log of an attempt killed before its first checkpoint (the last
    line torn mid-write), as a student's folder would: a fresh start must drop it, not append to it."""
    work = tmp_path_factory.mktemp("unbroken")
    os.makedirs(work / "run")
    (work / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0, "lr": 0.1}\n{"step": 2, "lo')
    result = run([sys.executable, SCRIPT, "--out", str(work / "run"), *TINY], cwd=work)
    assert result.returncode == 0, result.stderr
    return str(work / "run")


def test_run_killed_mid_way_then_resumed_ends_bit_identical_to_an_unbroken_run(unbroken_run, tmp_path):
    run_dir = str(tmp_path / "run")
    process = subprocess.Popen(wrapped(WAIT_AT_STEP_10) + ["--out", run_dir, *TINY], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("waiting at step 10"):
                break
        process.send_signal(signal.SIGKILL)  # no handler, no cleanup: like a power cut for the process
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert load_checkpoint(os.path.join(run_dir, "ckpt.pt"))["step"] == 8
    assert [step for step, _, _ in losses(run_dir)] == list(range(1, 11)), "steps 9 and 10 were logged, then lost"

    resumed = run([sys.executable, SCRIPT, "--out", run_dir, *TINY, "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "at step 8" in resumed.stdout

    # the same losses at every step (steps 9-10 logged once, not twice), so the same final loss
    assert losses(run_dir) == losses(unbroken_run)
    assert len(losses(run_dir)) == 12
    # and bit-identical weights and optimizer moments at the end
    final, expected = load_checkpoint(os.path.join(run_dir, "ckpt.pt")), load_checkpoint(os.path.join(unbroken_run, "ckpt.pt"))
    assert final["step"] == expected["step"] == 12
    for name, tensor in expected["model_state"].items():
        assert torch.equal(final["model_state"][name], tensor), name
    for name, tensor in expected["extra"]["training_state"].items():  # the weights under the average, too
        assert torch.equal(final["extra"]["training_state"][name], tensor), name
    for index, state in expected["optimizer_state"]["state"].items():
        assert torch.equal(final["optimizer_state"]["state"][index]["exp_avg_sq"], state["exp_avg_sq"])
    with open(os.path.join(unbroken_run, "eval.json")) as f, open(os.path.join(run_dir, "eval.json")) as g:
        assert json.load(f) == json.load(g)


def test_the_weight_average_is_handed_on_and_never_feeds_back_into_training(unbroken_run, tmp_path):
    # the unbroken run averages (the tiny preset's --ema 0.995); the same run with --ema 0 hands on its last weights
    plain_dir = str(tmp_path / "plain")
    result = run([sys.executable, SCRIPT, "--out", plain_dir, *TINY, "--ema", "0"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    averaged, plain = load_checkpoint(os.path.join(unbroken_run, "ckpt.pt")), load_checkpoint(os.path.join(plain_dir, "ckpt.pt"))
    assert losses(plain_dir) == losses(unbroken_run)  # training itself is the same step for step
    assert "training_state" not in plain["extra"]
    for name, tensor in plain["model_state"].items():
        assert torch.equal(averaged["extra"]["training_state"][name], tensor), name
    # what is handed on is the average, not the last weights: every tensor differs
    moved = [name for name, tensor in plain["model_state"].items() if not torch.equal(averaged["model_state"][name], tensor)]
    assert len(moved) == len(plain["model_state"])


def test_update_average_is_the_exponential_moving_average():
    averaged, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        averaged.weight.fill_(1.0), averaged.bias.fill_(-2.0)
        model.weight.fill_(3.0), model.bias.fill_(2.0)
    update_average(averaged, model, decay=0.75)
    assert torch.equal(averaged.weight, torch.full((2, 3), 0.75 * 1.0 + 0.25 * 3.0))  # 1.5
    assert torch.equal(averaged.bias, torch.full((2,), 0.75 * -2.0 + 0.25 * 2.0))    # -1.0
    assert torch.equal(model.weight, torch.full((2, 3), 3.0)), "the training weights are left alone"
    update_average(averaged, model, decay=0.0)  # decay 0: the average is the last weights
    assert torch.equal(averaged.weight, model.weight) and torch.equal(averaged.bias, model.bias)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run_dir = str(tmp_path / "run")
    process = subprocess.Popen([sys.executable, SCRIPT, "--out", run_dir, *tiny(steps=100000)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("step 3/"):
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert_one_clean_line(stderr)
    assert stderr.startswith(f"interrupted: saved {os.path.join(run_dir, 'ckpt.pt')} at step ")
    saved_step = int(stderr.split(" at step ")[1].split(";")[0])
    assert 3 <= saved_step < 100000
    assert load_checkpoint(os.path.join(run_dir, "ckpt.pt"))["step"] == saved_step
    assert not os.path.exists(os.path.join(run_dir, "eval.json")), "an interrupted run skips the final evaluation"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    result = run(wrapped(NAN_LOSS_AT_STEP_6) + ["--out", run_dir, *TINY], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_line(result.stderr)
    assert result.stderr.startswith("error: the loss became nan at step 6: lower --lr")
    assert f"the last good checkpoint {os.path.join(run_dir, 'ckpt.pt')} is kept" in result.stderr
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    assert ckpt["step"] == 4
    assert all(torch.isfinite(tensor).all() for tensor in ckpt["model_state"].values())


def test_weights_blown_up_by_an_absurd_learning_rate_are_never_saved(tmp_path):
    run_dir = str(tmp_path / "run")
    result = run([sys.executable, SCRIPT, "--out", run_dir, *tiny(lr=1e30, warmup=4, save_every=1)], cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clean_line(result.stderr)
    # with lr 1e30 one AdamW step moves every weight by ~1e29 and the next overflows float32: the loss may still be
    # finite when the weights are not, so the guard before each save is what catches it
    assert re.match(r"error: the (weights|loss) became (inf|nan|inf or nan) (by|at) step \d+: lower --lr", result.stderr)
    ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    assert ckpt["step"] < 12
    assert all(torch.isfinite(tensor).all() for tensor in ckpt["model_state"].values())


def test_chat_fine_tune_adds_the_chat_tokens_measures_conversations_and_resumes(unbroken_run, tmp_path):
    from nano_reasoner.chat import CHAT_SYMBOLS, has_chat_tokens
    from nano_reasoner.tokenizer import Tokenizer
    run_dir = str(tmp_path / "chat")
    chat_flags = ["--init", os.path.join(unbroken_run, "ckpt.pt"), "--chat", "--chat-conversations", "4",
                  "--out", run_dir, *tiny(steps=4, train_problems=100)]
    first = run([sys.executable, SCRIPT, *chat_flags], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    start, tuned = load_checkpoint(os.path.join(unbroken_run, "ckpt.pt")), load_checkpoint(os.path.join(run_dir, "ckpt.pt"))
    assert has_chat_tokens(Tokenizer(tuned["tokenizer_bytes"]))
    assert tuned["model_config"]["vocab_size"] == start["model_config"]["vocab_size"] + len(CHAT_SYMBOLS)
    with open(os.path.join(run_dir, "eval.json")) as f:
        summary = json.load(f)["chat"]
    assert summary["dropped"]["conversations"] == summary["kept"]["conversations"] == 4
    assert [row["turn"] for row in summary["dropped"]["by_turn"]] == [1, 2, 3]
    # a resume extends the start's vocabulary the same way, so the checkpoint's tokenizer matches
    more = run([sys.executable, SCRIPT, *chat_flags[:-len(tiny())], *tiny(steps=6, train_problems=100), "--resume"],
               cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "resumed from" in more.stdout and "at step 4" in more.stdout
