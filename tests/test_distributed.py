"""
Data-parallel training (nano_reasoner/distributed.py): two CPU processes (gloo, one thread each) compute what one
process computes on the whole batch.

The in-library checks run the same scenario functions (below) twice: in this process, alone, and in two processes
started the way torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment), which
import this file and save what they computed. The script checks run train_pretrain.py and train_rl.py with two ranks,
once through torchrun itself.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from nano_reasoner import distributed, grpo, tasks
from nano_reasoner.checkpoint import load_checkpoint
from nano_reasoner.data import collate, decision_weights, make_examples
from nano_reasoner.expert_iteration import EIConfig, attempt, attempt_across_ranks, finetune
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.report import read_metrics
from nano_reasoner.tokenizer import Tokenizer, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 120  # seconds: a rank that waits on a peer that died must not hang the suite


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world_size, port):
    """What torchrun puts in each rank's environment, one thread per process."""
    return dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                PYTHONPATH=REPO)


def launch(command, cwd, world_size=2):
    """Start `command` as ranks 0..world_size-1 of one group, wait for all -> list of CompletedProcess-like tuples
    (returncode, stdout, stderr)."""
    port = free_port()
    processes = [subprocess.Popen(command, cwd=cwd, env=rank_env(r, world_size, port), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for r in range(world_size)]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            process.kill()
    return results


# ----------------------------------------------------------------------------------------------------------------------
# scenarios: each runs alone or as one rank of two, and returns what it computed

def make_tokenizer(path):
    problems = tasks.generate("arith", 150, seed=0) + tasks.generate("countdown", 60, seed=0, difficulties=(3, 4))
    return train_tokenizer([tasks.full_trace(p) for p in problems], path)


def tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16))


def training_batch(tokenizer, size=8):
    """A global batch of traces of different lengths (arith and countdown), as the batch stream gives them."""
    problems = tasks.generate("arith", size // 2, seed=3, difficulties=(1, 2, 3)) + \
        tasks.generate("countdown", size // 2, seed=3, difficulties=(3,))
    return make_examples(tokenizer, problems)


def decision_ids(tokenizer):
    return [tokenizer.end_think_id, tokenizer.encode(tasks.UNDO)[0]]


def pretrain_gradients(tokenizer, route):
    """The gradient of one pre-training step on the global batch (decision tokens weighted 4x), by route:
    "whole": the plain one-process code on the whole batch; "ddp": distributed.wrap, 2 micro-batches per rank under
    sync_gradients (as train_pretrain.py); "plain": one micro-batch per rank, then average_gradients."""
    model = tiny_model(tokenizer)
    batch = training_batch(tokenizer)
    if route == "whole":
        inputs, targets = collate(batch, tokenizer.pad_id, "cpu")
        _, loss = model(inputs, targets, loss_mask=decision_weights(targets, decision_ids(tokenizer), 4.0))
        loss.backward()
        return {"grads": {name: p.grad.clone() for name, p in model.named_parameters()}, "loss": loss.item()}
    train_model = distributed.wrap(model) if route == "ddp" else model
    micro = []
    for examples in distributed.micro_batches(batch, 2 if route == "ddp" else 1):
        inputs, targets = collate(examples, tokenizer.pad_id, "cpu")
        micro.append((inputs, targets, decision_weights(targets, decision_ids(tokenizer), 4.0)))
    scales, _ = distributed.loss_scales([distributed.loss_weight(t, m) for _, t, m in micro])
    loss_sum = 0.0
    for index, ((inputs, targets, mask), scale) in enumerate(zip(micro, scales)):
        with distributed.sync_gradients(train_model, index == len(micro) - 1):
            _, loss = train_model(inputs, targets, loss_mask=mask)
            (loss * scale).backward()
        loss_sum += loss.item() * scale / distributed.world_size()
    if route == "plain":
        distributed.average_gradients(model)
    return {"grads": {name: p.grad.clone() for name, p in model.named_parameters()},
            "loss": distributed.all_reduce_sum([loss_sum])[0]}


GRPO_PROBLEMS = tasks.generate("arith", 4, seed=11, difficulties=(1, 2))


def scripted_rollout(uniform):
    """A stand-in for grpo.rollout that writes known completions: for problem i of GRPO_PROBLEMS, G/2 right traces
    and G/2 with a wrong answer (a group with something to learn), or all wrong when i is in `uniform` (dropped)."""
    def rollout(model, tokenizer, problems, config, seed):
        prompts, completion_tokens = [], []
        for problem in problems:
            index = GRPO_PROBLEMS.index(problem)
            steps, answer = tasks.trace(problem)
            prompts.append(tokenizer.encode_prompt(tasks.format_prompt(problem)))
            for g in range(config.group_size):
                is_right = g % 2 == 0 and index not in uniform
                text = tasks.format_completion(steps, answer if is_right else str(int(answer) + 10 ** g))
                completion_tokens.append(tokenizer.encode(text) + [tokenizer.eos_id])
        lengths = torch.tensor([len(t) for t in completion_tokens])  # (N,)
        is_real = torch.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (N, T)
        return grpo.Rollout(problems=list(problems), prompt_tokens=prompts, completion_tokens=completion_tokens,
                            completions=[tokenizer.decode(t) for t in completion_tokens],
                            sampled_logprobs=-is_real.float(), lengths=lengths, group_size=config.group_size)
    return rollout


def grpo_update(tokenizer, loss_norm, uniform):
    """Weights after one GRPO step (2 inner updates, plain SGD) on this rank's share of GRPO_PROBLEMS, and its summary."""
    policy, reference = tiny_model(tokenizer), tiny_model(tokenizer)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    config = grpo.GRPOConfig(group_size=4, max_new_tokens=40, inner_updates=2, loss_norm=loss_norm, kl_beta=0.1)
    rollout, grpo.rollout = grpo.rollout, scripted_rollout(uniform)
    try:
        summary, _, _ = grpo.grpo_step(policy, reference, optimizer, tokenizer, distributed.shard(GRPO_PROBLEMS),
                                       config, seed=0)
    finally:
        grpo.rollout = rollout
    return {"weights": {name: p.detach().clone() for name, p in policy.named_parameters()}, "summary": summary}


def ei_finetune(tokenizer):
    """Weights and mean loss after expert iteration's fine-tune (3 steps of 8 traces, SGD) split over the ranks."""
    model = tiny_model(tokenizer)
    examples = training_batch(tokenizer, 24)
    batch_list = [examples[0:8], examples[8:16], examples[16:24]]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = finetune(model, optimizer, batch_list, tokenizer, EIConfig(decision_weight=4.0), lr=0.5)
    return {"weights": {name: p.detach().clone() for name, p in model.named_parameters()}, "loss": loss}


def ei_attempts(tokenizer, across_ranks):
    """Stage (1) of expert iteration on 6 problems, K=4, 2 problems per sampler call: `attempt` alone, or
    `attempt_across_ranks` -> the completion tokens of every attempt."""
    model = tiny_model(tokenizer)
    problems = tasks.generate("arith", 6, seed=7, difficulties=(1,))
    config = EIConfig(samples_per_problem=4, max_new_tokens=12, temperature=1.0)
    sample = attempt_across_ranks if across_ranks else attempt
    _, per_problem, decode_tokens = sample(model, tokenizer, problems, config, seed=5, rows_per_call=8)
    return {"tokens": [[tokens for tokens, _, _ in samples] for samples in per_problem], "decode_tokens": decode_tokens}


def collectives():
    """gather(shard(x)) == x, and the reductions, with known values per rank."""
    items = list(range(7))
    r = distributed.rank()
    return {"round_trip": distributed.gather(distributed.shard(items)),
            "sum": distributed.all_reduce_sum([r + 1.0, 10.0]),
            "means": distributed.weighted_means({"x": float(r + 1)}, {"x": float(r + 1)}),
            "stop": distributed.any_rank(r == 1)}


WORKER = """
import sys, torch
sys.path.insert(0, {tests!r})
import test_distributed as t
from nano_reasoner import distributed
from nano_reasoner.tokenizer import Tokenizer
torch.set_num_threads(1)
distributed.setup(torch.device("cpu"))
tokenizer = Tokenizer.from_file({tokenizer!r})
results = {{"ddp": t.pretrain_gradients(tokenizer, "ddp"), "plain": t.pretrain_gradients(tokenizer, "plain"),
           "grpo_sequence": t.grpo_update(tokenizer, "sequence", {{1, 3}}),
           "grpo_token": t.grpo_update(tokenizer, "token", {{3}}),
           "finetune": t.ei_finetune(tokenizer), "attempts": t.ei_attempts(tokenizer, True),
           "collectives": t.collectives()}}
torch.save(results, {out!r} + f"/rank{{distributed.rank()}}.pt")
distributed.teardown()
"""


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok") / "tok.model")
    make_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def two_ranks(tokenizer_path, tmp_path_factory):
    """(tokenizer, what rank 0 computed, what rank 1 computed) in the scenarios above."""
    work = tmp_path_factory.mktemp("ranks")
    tokenizer = Tokenizer.from_file(tokenizer_path)
    worker = WORKER.format(tests=TESTS, tokenizer=tokenizer_path, out=str(work))
    for returncode, _, stderr in launch([sys.executable, "-c", worker], cwd=work):
        assert returncode == 0, stderr
    return tokenizer, torch.load(work / "rank0.pt", weights_only=True), torch.load(work / "rank1.pt", weights_only=True)


def max_difference(a, b):
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def test_two_ranks_one_step_gradients_equal_one_process_on_the_whole_batch(two_ranks):
    tokenizer, rank0, rank1 = two_ranks
    whole = pretrain_gradients(tokenizer, "whole")
    for route in ("ddp", "plain"):  # DDP with 2 micro-batches per rank, and the plain all-reduce
        for result in (rank0[route], rank1[route]):
            # float32 sums in another order: equal to about 1e-8 on gradients of size ~1e-2
            assert max_difference(result["grads"], whole["grads"]) < 1e-6, route
            assert result["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert max_difference(rank0["ddp"]["grads"], rank0["plain"]["grads"]) < 1e-6


def test_loss_scales_are_exactly_one_for_one_process_and_micro_batches_add_up_to_the_whole_batch(tokenizer_path):
    tokenizer = Tokenizer.from_file(tokenizer_path)
    assert distributed.loss_scales([torch.tensor(37.0)]) == ([1.0], 37.0)
    whole = pretrain_gradients(tokenizer, "whole")
    accumulated = pretrain_gradients(tokenizer, "ddp")  # one process: wrap is the model itself, 2 micro-batches
    assert max_difference(accumulated["grads"], whole["grads"]) < 1e-6
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-6)


@pytest.mark.parametrize("loss_norm, uniform", [("sequence", {1, 3}), ("token", {3})])
def test_two_ranks_grpo_update_equals_one_process_on_the_same_samples(two_ranks, loss_norm, uniform):
    # with ("sequence", {1, 3}) rank 1 holds problems 1 and 3, whose groups are uniform: it keeps nothing and takes part
    # with a zero gradient
    tokenizer, rank0, rank1 = two_ranks
    alone = grpo_update(tokenizer, loss_norm, uniform)
    for result in (rank0[f"grpo_{loss_norm}"], rank1[f"grpo_{loss_norm}"]):
        assert max_difference(result["weights"], alone["weights"]) < 1e-6
        for key in ("reward", "acc", "kept_frac", "loss", "kl", "clip_frac", "entropy", "response_len"):
            assert result["summary"][key] == pytest.approx(alone["summary"][key], rel=1e-5, abs=1e-7), key
    assert 0 < alone["summary"]["kept_frac"] < 1


def test_two_ranks_expert_iteration_samples_and_fine_tunes_as_one_process(two_ranks):
    tokenizer, rank0, rank1 = two_ranks
    alone_attempts = ei_attempts(tokenizer, across_ranks=False)
    alone_finetune = ei_finetune(tokenizer)
    for result in (rank0, rank1):
        # the sampler calls were dealt out (rank 0: calls 1 and 3, rank 1: call 2) with the seeds one process uses
        assert result["attempts"] == alone_attempts
        assert max_difference(result["finetune"]["weights"], alone_finetune["weights"]) < 1e-6
        assert result["finetune"]["loss"] == pytest.approx(alone_finetune["loss"], rel=1e-6)


def test_shard_gather_and_reductions_across_two_ranks(two_ranks):
    _, rank0, rank1 = two_ranks
    for result in (rank0["collectives"], rank1["collectives"]):
        assert result["round_trip"] == list(range(7))
        assert result["sum"] == [3.0, 20.0]
        assert result["means"]["x"] == pytest.approx((1 * 1 + 2 * 2) / 3)  # weighted by 1 and 2
        assert result["stop"] is True


# ----------------------------------------------------------------------------------------------------------------------
# the scripts

PRETRAIN = os.path.join(REPO, "train_pretrain.py")
RL = os.path.join(REPO, "train_rl.py")
PRETRAIN_FLAGS = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "128", "--batch-size", "16",
                  "--train-problems", "200", "--eval-problems", "2", "--eval-every", "1000", "--log-every", "1",
                  "--save-every", "4", "--decision-weight", "4", "--device", "cpu"]


def losses(run_dir):
    return [(m["step"], m["loss"]) for m in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if "loss" in m]


@pytest.fixture(scope="module")
def pretrain_runs(tmp_path_factory):
    """20 steps alone (1 thread) and with torchrun's 2 ranks (1 thread each) -> (work folder, single, two ranks)."""
    work = tmp_path_factory.mktemp("pretrain")
    single = subprocess.run([sys.executable, PRETRAIN, "--out", "single", "--steps", "20", "--threads", "1",
                             *PRETRAIN_FLAGS], cwd=work, capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            PRETRAIN, "--out", "ranks", "--steps", "20", *PRETRAIN_FLAGS], cwd=work,
                           capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert ranks.returncode == 0, ranks.stderr
    return work, str(work / "single"), str(work / "ranks")


def test_torchrun_two_ranks_pretrain_ends_at_the_single_process_loss(pretrain_runs):
    _, single, ranks = pretrain_runs
    single_losses, rank_losses = losses(single), losses(ranks)
    assert [s for s, _ in rank_losses] == list(range(1, 21)), "rank 0 alone logs, once per step"
    for (_, a), (_, b) in zip(single_losses, rank_losses):
        assert b == pytest.approx(a, rel=1e-5)
    final_single = load_checkpoint(os.path.join(single, "ckpt.pt"))
    final_ranks = load_checkpoint(os.path.join(ranks, "ckpt.pt"))
    assert max_difference(final_ranks["model_state"], final_single["model_state"]) < 1e-5
    with open(os.path.join(ranks, "ckpt.pt.json")) as f:
        assert json.load(f)["args"]["world_size"] == 2
    assert os.path.exists(os.path.join(ranks, "eval.json"))


KILL_RANK_0_AT_STEP_10 = """
import os, runpy, sys
sys.path.insert(0, {repo!r})
from nano_reasoner.report import MetricsLogger
log = MetricsLogger.log
def log_then_die(self, **fields):
    log(self, **fields)
    if fields.get("step") == 10:
        os._exit(9)  # rank 0 dies at once, after its checkpoint of step 8; rank 1 loses its peer
MetricsLogger.log = log_then_die
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow  # 10 s: a killed two-rank run and its resumption
def test_a_two_rank_run_killed_mid_way_resumes_under_two_ranks_to_the_unbroken_result(pretrain_runs):
    work, _, unbroken = pretrain_runs
    wrapper = KILL_RANK_0_AT_STEP_10.format(repo=REPO, script=PRETRAIN)
    flags = ["--out", "killed", "--steps", "20", "--threads", "1", *PRETRAIN_FLAGS]
    killed = launch([sys.executable, "-c", wrapper, *flags], cwd=work)
    assert killed[0][0] == 9 and killed[1][0] != 0  # rank 1 fails on the lost peer instead of hanging
    assert load_checkpoint(str(work / "killed" / "ckpt.pt"))["step"] == 8
    resumed = launch([sys.executable, PRETRAIN, *flags, "--resume"], cwd=work)
    assert [code for code, _, _ in resumed] == [0, 0], resumed[0][2] + resumed[1][2]
    assert "resumed from" in resumed[0][1] and resumed[1][1] == "", "rank 0 alone prints"
    assert losses(str(work / "killed")) == losses(unbroken)
    final = load_checkpoint(str(work / "killed" / "ckpt.pt"))
    assert max_difference(final["model_state"], load_checkpoint(os.path.join(unbroken, "ckpt.pt"))["model_state"]) == 0


RL_FLAGS = ["--algo", "ei+grpo", "--ei-rounds", "1", "--ei-problems", "8", "--ei-samples", "64", "--ei-steps", "2",
            "--ei-batch-size", "4", "--steps", "2", "--prompts-per-step", "4", "--group-size", "4",
            "--max-new-tokens", "24", "--eval-problems", "2", "--pass-k", "2", "--curve-every", "0", "--threads", "1",
            "--device", "cpu"]


def test_train_rl_with_two_ranks_runs_expert_iteration_as_one_process_and_counts_every_grpo_sample(pretrain_runs):
    work, single_policy, _ = pretrain_runs
    flags = ["--init", os.path.join(single_policy, "ckpt.pt"), *RL_FLAGS]
    alone = subprocess.run([sys.executable, RL, "--out", "rl_single", *flags], cwd=work, capture_output=True,
                           text=True, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr
    ranks = launch([sys.executable, RL, "--out", "rl_ranks", *flags], cwd=work)
    assert [code for code, _, _ in ranks] == [0, 0], ranks[0][2] + ranks[1][2]
    logged = {name: [m for m in read_metrics(str(work / name / "metrics.jsonl")) if "phase" in m]
              for name in ("rl_single", "rl_ranks")}
    ei_alone, ei_ranks = logged["rl_single"][0], logged["rl_ranks"][0]
    # the EI round: 8 problems x 64 samples in 2 sampler calls, one per rank, the same samples as one process
    for key in ("round_samples", "decode_tokens", "kept", "response_len", "countdown_acc", "arith_acc"):
        assert ei_ranks[key] == ei_alone[key], key
    assert ei_ranks["loss"] == pytest.approx(ei_alone["loss"], rel=1e-5)
    # the GRPO steps: each rank sampled 2 of the 4 prompts x G=4 with a seed of its own; every sample counted once
    grpo_ranks = [m for m in logged["rl_ranks"] if m["phase"] == "grpo"]
    assert [m["samples"] for m in grpo_ranks] == [512 + 16, 512 + 32]
    assert all(0 < m["response_len"] <= 24 for m in grpo_ranks)
