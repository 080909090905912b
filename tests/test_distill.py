"""
Distillation (nano_reasoner/distill.py) and domain adaptation (nano_reasoner/lora.py, data.replay_batches,
train_adapt.py): the KD loss against a hand computation, LoRA's two equalities (at the start it is the base model;
merged it computes what it computed unmerged), the replay share of every batch, and a tiny run of each new mode.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from nano_reasoner import lora, tasks
from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.data import Example, replay_batches
from nano_reasoner.distill import kd_loss
from nano_reasoner.evaluate import SHIFTED_OPERANDS, held_out_shifted
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.tokenizer import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- the KD loss

def test_kd_loss_matches_a_hand_computation():
    # one scored position, V = 2. Teacher logits (0, ln 3) at T = 2: softmax(0, ln 3 / 2) = (1, sqrt 3) / (1 + sqrt 3).
    # Student logits (0, 0): (1/2, 1/2) at any T. KL = sum p log(p / q), times T^2 = 4.
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])          # (B=1, T=2, V=2)
    teacher = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    targets = torch.tensor([[1, -1]])                            # the second position has no target: not scored
    p = [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))]
    expected = 4 * sum(p_v * math.log(p_v / 0.5) for p_v in p)  # 0.0724...
    assert kd_loss(student, teacher, targets, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_when_the_student_matches_and_averages_positions():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(2, 3, dtype=torch.long)
    assert kd_loss(logits, logits, targets, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    # T = 1: the mean over scored positions of KL(teacher || student), which prune.distillation_loss (recovery after pruning) is
    student = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))
    per_position = (logits.softmax(-1) * (logits.log_softmax(-1) - student.log_softmax(-1))).sum(-1)  # (2, 3)
    assert kd_loss(student, logits, targets, temperature=1.0).item() == pytest.approx(per_position.mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------- LoRA

def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))


def test_lora_at_the_start_equals_the_base_model():
    model = tiny_model()
    idx = torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(0))
    base_logits, _ = model(idx)
    lora.add_lora(model, rank=4, alpha=8)
    adapted_logits, _ = model(idx)
    assert torch.equal(adapted_logits, base_logits)  # B = 0: the change is exactly zero
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora.lora_parameters(model)) and len(trainable) == 2 * 4 * 2  # A and B, 4 matrices, 2 blocks


def test_lora_merged_equals_unmerged():
    model = lora.add_lora(tiny_model(), rank=4, alpha=8, targets=("attn.c_attn", "mlp.c_proj"))
    with torch.no_grad():  # a change that is not zero, as after training
        for name, p in lora.lora_parameters(model).items():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    idx = torch.randint(0, 20, (3, 10), generator=torch.Generator().manual_seed(1))
    unmerged_logits, _ = model(idx)
    merged = lora.merge(model)
    merged_logits, _ = merged(idx)
    assert not any("lora" in name for name in merged.state_dict())
    assert torch.allclose(merged_logits, unmerged_logits, atol=1e-5)
    assert not torch.allclose(merged_logits, tiny_model()(idx)[0], atol=1e-3)  # and the change did change something


def test_lora_trains_only_its_matrices():
    model = lora.add_lora(tiny_model(), rank=2, alpha=2)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    idx = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(2))
    _, loss = model(idx, idx)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)
    assert any(p.abs().sum() > 0 for name, p in lora.lora_parameters(model).items() if name.endswith("lora_B"))


# ---------------------------------------------------------------------------------------------- replay and data

@pytest.mark.parametrize("share, expected", [(0.25, 4), (0.5, 8), (0.0, 0), (0.3, 5)])
def test_replay_mixes_in_the_share_the_flag_says(share, expected):
    new = [Example([1] * (3 + i % 7), 1) for i in range(40)]
    old = [Example([2] * (3 + i % 5), 1) for i in range(40)]
    stream = replay_batches(new, old, batch_size=16, replay_share=share, seed=0)
    for _ in range(10):
        batch = next(stream)
        assert len(batch) == 16
        assert sum(ex.tokens[0] == 2 for ex in batch) == expected  # round(16 * share) original traces in each batch


def test_shifted_problems_have_three_digit_operands_and_every_difficulty_its_share():
    problems = held_out_shifted(300, seed=0)
    assert [p.difficulty for p in problems[:6]] == [1, 2, 3, 1, 2, 3]
    for p in problems:
        operands = [int(n) for n in "".join(c if c.isdigit() else " " for c in p.text).split()]
        assert len(operands) == p.difficulty + 1
        assert all(SHIFTED_OPERANDS[0] <= n <= SHIFTED_OPERANDS[1] for n in operands)
        steps, answer = tasks.trace(p, "digits")  # and the exact trace passes the exact verifier
        assert tasks.verify(p, tasks.format_completion(steps, answer)).is_correct


# ---------------------------------------------------------------------------------------------- the scripts, tiny

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    work = tmp_path_factory.mktemp("distill")
    problems = tasks.generate("arith", 150, seed=0) + tasks.generate("countdown", 150, seed=0, difficulties=(3, 4)) \
        + held_out_shifted(100, seed=5)
    tokenizer = train_tokenizer([tasks.full_trace(p, "digits", countdown_products="digits") for p in problems],
                                str(work / "tok.model"))
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=2, n_head=2, n_embd=32)
    save_checkpoint(str(work / "teacher.pt"), kind="policy", model_state=GPT(config).state_dict(),
                    model_config=vars(config), tokenizer_bytes=tokenizer.model_bytes, step=0)
    return work


def run_script(work, argv):
    process = subprocess.run([sys.executable, os.path.join(REPO, argv[0]), *argv[1:], "--threads", "1"], cwd=work,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    return process.stdout


STUDENT = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "96", "--steps", "2", "--batch-size", "2",
           "--train-problems", "20", "--eval-problems", "2"]


def test_a_tiny_distillation_run_records_both_parameter_counts(teacher):
    out = "runs/logits/student"
    stdout = run_script(teacher, ["train_pretrain.py", "--teacher", "teacher.pt", "--distill", "logits", "--out", out]
                        + STUDENT)
    with open(teacher / out / "ckpt.pt.json") as f:
        assert json.load(f)["args"]["teacher"] == "teacher.pt"
    with open(teacher / out / "config.json") as f:
        config = json.load(f)
    assert config["teacher_params"] == 2 * 12 * 32 * 32 + 2 * 2 * 32 + 32 + 32 * config["model_config"]["vocab_size"]
    assert config["params"] == 12 * 16 * 16 + 2 * 16 + 16 + 16 * config["model_config"]["vocab_size"]
    assert f"student {config['params']:,} parameters, teacher {config['teacher_params']:,}" in stdout


def test_distilling_the_traces_of_a_teacher_that_solves_nothing_says_so(teacher):
    # the fixture's teacher has random weights: none of its solutions passes the verifier, so there is nothing to learn
    process = subprocess.run([sys.executable, os.path.join(REPO, "train_pretrain.py"), "--teacher", "teacher.pt",
                              "--distill", "traces", "--teacher-problems", "4", "--out", "runs/traces", "--threads", "1"]
                             + STUDENT, cwd=teacher, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.splitlines() == ["error: the teacher solved only 0 of its problems, fewer than one batch of 2: "
                                           "raise --teacher-problems, or distil a trained policy"]


def test_a_tiny_lora_adaptation_run_saves_a_plain_policy(teacher):
    run_script(teacher, ["train_adapt.py", "--init", "teacher.pt", "--method", "lora", "--lora-rank", "2", "--steps",
                         "2", "--batch-size", "2", "--train-problems", "10", "--eval-problems", "2", "--eval-every", "1",
                         "--out", "runs/adapt"])
    raw = torch.load(teacher / "runs/adapt/ckpt.pt", weights_only=True)
    assert set(raw["model_state"]) == set(torch.load(teacher / "teacher.pt", weights_only=True)["model_state"])
    with open(teacher / "runs/adapt/ckpt.pt.json") as f:
        assert json.load(f)["args"]["init"] == "teacher.pt"
    with open(teacher / "runs/adapt/eval.json") as f:
        assert set(json.load(f)["before"]) == {"new", "arith", "countdown"}
