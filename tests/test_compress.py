"""compress.py end to end on a tiny random policy: it writes checkpoints that infer.py loads like any other, says in
the sidecar how each was made, evaluates the float policy once per folder, and lists every compression in one table."""
import json
import os
import subprocess
import sys

import pytest
import torch

from nano_reasoner import tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.tokenizer import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *argv, cwd):
    process = subprocess.run([sys.executable, os.path.join(REPO, script), *argv], cwd=cwd, capture_output=True,
                             text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    return process.stdout


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A tiny policy at run/rl/ckpt.pt, compressed twice into run/compress/ with the default --out."""
    work = tmp_path_factory.mktemp("compress")
    problems = tasks.generate("arith", 100, seed=0) + tasks.generate("countdown", 100, seed=0, difficulties=(3, 4))
    traces = [tasks.full_trace(p, "digits", "search" if p.task == "countdown" else "straight", "digits")
              for p in problems]
    tokenizer = train_tokenizer(traces, str(work / "tok.model"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=32))
    (work / "run" / "rl").mkdir(parents=True)
    save_checkpoint(str(work / "run" / "rl" / "ckpt.pt"), kind="policy", model_state=model.state_dict(),
                    model_config=vars(model.config), tokenizer_bytes=tokenizer.model_bytes, step=0)
    common = ["--ckpt", "run/rl/ckpt.pt", "--eval-problems", "3", "--threads", "1"]
    run_script("compress.py", *common, "--quantize", "int4", "--group-size", "16", cwd=work)
    run_script("compress.py", *common, "--prune", "0.5", "--structured", "--recover-steps", "2",
               "--recover-batch-size", "2", "--calibration-traces", "2", cwd=work)
    return work


@pytest.mark.parametrize("name", ["int4-g16", "prune50-structured-r2"])
def test_infer_loads_a_compressed_checkpoint_like_any_other(compressed, name):
    stdout = run_script("infer.py", "--ckpt", f"run/compress/{name}/ckpt.pt", "--task", "arith", "7+3",
                        "--threads", "1", cwd=compressed)
    assert "verdict:" in stdout


def test_the_sidecar_says_how_each_checkpoint_was_made_and_the_weights_are_what_it_says(compressed):
    folder = compressed / "run" / "compress"
    int4 = json.loads((folder / "int4-g16" / "ckpt.pt.json").read_text())
    assert (int4["args"]["quantize"], int4["args"]["group_size"], int4["args"]["ckpt"]) == ("int4", 16, "run/rl/ckpt.pt")
    state = torch.load(folder / "int4-g16" / "ckpt.pt", weights_only=True)["model_state"]
    assert state["blocks.0.mlp.c_fc.weight_q"].dtype == torch.uint8
    assert state["blocks.0.mlp.c_fc.weight_q"].shape == (128, 16)  # (out, in / 2): two weights a byte
    pruned = json.loads((folder / "prune50-structured-r2" / "ckpt.pt.json").read_text())
    assert (pruned["args"]["prune"], pruned["args"]["structured"]) == (0.5, True)
    assert (pruned["model_config"]["n_head"], pruned["model_config"]["mlp_hidden"]) == (1, 64)


def test_the_float_policy_is_evaluated_once_and_every_compression_is_in_one_table(compressed):
    folder = compressed / "run" / "compress"
    records = [json.loads((folder / name / "eval.json").read_text()) for name in ("int4-g16", "prune50-structured-r2")]
    assert records[0]["source"] == records[1]["source"], "the second run reuses the first run's float evaluation"
    assert records[1]["params"] < records[1]["source_params"]
    assert records[0]["bytes"]["checkpoint"] < 0.5 * records[0]["bytes"]["float_checkpoint"]  # a small model: the
    # float embedding and the tokenizer weigh more here than in the preset (tests/test_quantize.py checks that one)
    table = (folder / "compress.md").read_text()
    assert "| int4-g16 |" in table and "| prune50-structured-r2, 2 recovery steps" in table
    assert (folder / "compress.png").stat().st_size > 0
    report = (compressed / "run" / "report.md").read_text()
    assert report.count("<!-- stage:compress -->") == 1 and "| int4-g16 |" in report
