"""
Expert iteration: the policy learns from its own attempts that the exact verifier accepted.

The reasoner solves about half of the countdown problems greedily, but one of 8 samples at temperature 1 is right on
64% of them and one of 32 on 74%: the right search is often inside the policy, just not its most likely one. Expert
iteration tries to turn those lucky samples into the policy's habit. One round has four stages, numbered the same way in the code:

    (1) attempt   K samples of each of B fresh training problems, in a few large sampler calls. Or, with
                  focus_failures, a greedy answer to every problem first and K samples only where it is wrong: a
                  right greedy answer is kept as it is (it anchors what the policy already does), and the samples
                  go where there is something to learn.
    (2) filter    keep the samples the exact verifier accepts (tasks.verify: for countdown every move legal, the
                  answer's path among the moves tried, the target reached), distinct ones only, at most m per
                  problem, shortest first. An attempt that writes the target after an illegal move scores zero and is
                  never kept: the reward hack cannot enter the training data.
    (3) fine-tune S steps of the pre-training loss (next-token prediction on the completion, the decision tokens
                  weighted as in the reason stage) on batches that mix the kept attempts with a share of the
                  original traces (the task generator's exact search and straight traces, written exactly as the
                  policy was fine-tuned on them), so that what the policy already knew is not forgotten.
    (4) repeat    with the updated policy: its next attempts are better, so the next round's data is too.

This is the loop of STaR ("STaR: Bootstrapping Reasoning With Reasoning", Zelikman et al., arXiv 2203.14465: keep the
rationales that reach the right answer, fine-tune, repeat), of ReST-EM ("Beyond Human Data", Singh et al., arXiv
2312.06585: generate, filter by a binary reward, improve; it is EM for RL with a 0/1 reward), and of the expert
iteration that "Teaching Large Language Models to Reason with Reinforcement Learning" (Havrilla et al., arXiv
2403.04642) found as sample-efficient as PPO. Stream of Search (Gandhi et al., arXiv 2404.03683) ran it on countdown
search traces and gained about 6 points. The name comes from "Thinking Fast and Slow with Deep Learning and Tree
Search" (Anthony et al., arXiv 1705.08439) and AlphaZero: a slow expert (here: sampling K times and checking every
answer exactly, a search with a perfect judge) finds what the fast apprentice (the policy, one greedy pass) cannot,
and the apprentice is trained to imitate the expert.

Why it sharpens rather than widens: every kept sample was already drawn from the policy, so fine-tuning on it moves
probability onto solutions the policy could already reach. It learns nothing about problems that none of the K
samples solve (the replayed original traces do teach those), so its ceiling is the policy's pass@K, and what it can
add to greedy accuracy is the gap between the two (docs/rl_log.md measures both on the reasoner).

The weights handed on are a moving average of the fine-tuned ones (ema, as in train_pretrain.py), and the average is
also the policy that attempts: a fine-tune of a few hundred small batches jitters the weights, and on the reasoner
that jitter alone cost 3 points of countdown (docs/rl_log.md).

Across ranks (torchrun, nano_reasoner/distributed.py): stage (1)'s sampler calls are dealt out to the ranks, each
call with the seed a single process gives it, and every rank gets all the attempts back, so stages (2)-(3) see what
one process sees; each fine-tuning batch is split among the ranks and the gradients averaged (distributed.py).

Simplifications against the papers:
  - one policy fine-tuned on from round to round (ReST-EM restarts every round from the base model; at our budget
    there is no time to);
  - the expert is plain sampling with the verifier (STaR's "rationalisation", a hint of the answer for the problems
    the model fails, is left out; MCTS as the expert is left to mcts.py);
  - fresh problems every round, never a held-out one; no filtering by difficulty beyond "at least one sample right"
    (and, with focus_failures, "greedy was wrong");
  - the loss is the fine-tuning stage's own, no importance weights or advantages (that is GRPO, grpo.py).
"""
import contextlib
import random
import time
from dataclasses import dataclass, replace

import torch

from nano_reasoner import distributed, tasks
from nano_reasoner.data import Example, collate, decision_weights, make_examples
from nano_reasoner.model import update_average
from nano_reasoner.sampling import generate


@dataclass
class EIConfig:
    samples_per_problem: int = 8   # K: attempts drawn per problem
    keep_per_problem: int = 2      # m: verified attempts kept per problem, shortest first
    temperature: float = 1.0       # sampling temperature of the attempts (1 = the policy's own distribution)
    max_new_tokens: int = 480      # completion budget per attempt, capped by the context
    finetune_steps: int = 100      # S: optimizer steps of stage (3) per round
    batch_size: int = 16           # sequences per optimizer step
    replay_share: float = 0.25     # share of each batch taken from the original traces (0 = kept attempts only)
    decision_weight: float = 4.0   # loss weight of `</think>` and the undo marker (data.decision_weights)
    grad_clip: float = 1.0
    ema: float = 0.0               # decay of the weight average that samples and is handed on (0: the last weights)
    focus_failures: bool = False   # sample only where the greedy answer is wrong; keep right greedy answers


@dataclass
class KeptAttempt:
    problem: tasks.Problem
    tokens: list          # [bos] + prompt + completion, ending with eos
    prompt_length: int


# ---------------------------------------------------------------------------------------------- (1) attempt

def attempt(model, tokenizer, problems, config, seed, rows_per_call=256):
    """Stage (1): K samples per problem. -> the prompts, per problem a list of K (completion tokens, completion text,
    verdict), and the decode tokens spent.

    The problems go through the sampler in chunks of at most rows_per_call rows: the KV cache of a row of the tiny
    model over a 512-token context is about 2 MB, so a call with thousands of rows would hold gigabytes and copy
    them whenever finished rows leave the cache (measured before the sampler retired rows lazily: 1.3k tokens/s at
    1536 rows, 3.1k at 256)."""
    prompts = [tokenizer.encode_prompt(tasks.format_prompt(problem)) for problem in problems]
    K = config.samples_per_problem
    was_training = model.training
    model.eval()
    per_problem, decode_tokens = [], 0
    problems_per_call = max(1, rows_per_call // K)
    for start in range(0, len(problems), problems_per_call):
        chunk = prompts[start:start + problems_per_call]
        budget = min(config.max_new_tokens, model.config.block_size - max(len(p) for p in chunk))
        result = generate(model, chunk, budget, num_samples=K, temperature=config.temperature,
                          stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=seed + start)
        decode_tokens += result.decode_tokens
        for index, problem in enumerate(problems[start:start + problems_per_call]):
            samples = []
            for row in range(index * K, (index + 1) * K):
                tokens = result.row_tokens(row)
                text = tokenizer.decode(tokens)
                samples.append((tokens, text, tasks.verify(problem, text)))
            per_problem.append(samples)
    model.train(was_training)
    return prompts, per_problem, decode_tokens


def attempt_across_ranks(model, tokenizer, problems, config, seed, rows_per_call=256):
    """Stage (1) under torchrun: `attempt`'s sampler calls dealt out to the ranks in turn, each with the seed that
    one process gives it (seed + its first problem's index), then gathered: every rank gets every attempt, the same
    ones a single process draws. One process: exactly `attempt`. -> as `attempt`."""
    problems_per_call = max(1, rows_per_call // config.samples_per_problem)
    calls = [attempt(model, tokenizer, problems[start:start + problems_per_call], config, seed + start, rows_per_call)
             for start in distributed.shard(range(0, len(problems), problems_per_call))]
    calls = distributed.gather(calls)  # (prompts, per_problem, decode_tokens) per call, in the order of `problems`
    return ([prompt for call in calls for prompt in call[0]], [samples for call in calls for samples in call[1]],
            sum(call[2] for call in calls))


# ---------------------------------------------------------------------------------------------- (2) filter

def filter_verified(problems, prompts, per_problem, keep_per_problem, eos_id):
    """Stage (2): the verified attempts, at most keep_per_problem distinct ones per problem, shortest first.

    An attempt is kept only if the exact verifier calls it correct and it ended with eos (a completion cut by the
    token budget would teach the model not to stop). -> list of KeptAttempt."""
    # BEGIN SOLUTION part 9
    kept = []
    for problem, prompt, samples in zip(problems, prompts, per_problem):
        seen, candidates = set(), []
        for tokens, _, verdict in samples:
            key = tuple(tokens)
            if verdict.is_correct and tokens and tokens[-1] == eos_id and key not in seen:
                seen.add(key)
                candidates.append(tokens)
        candidates.sort(key=len)  # shortest first: of two right searches, the one that wasted fewer tokens
        kept.extend(KeptAttempt(problem, prompt + tokens, len(prompt)) for tokens in candidates[:keep_per_problem])
    # END SOLUTION
    return kept


# ---------------------------------------------------------------------------------------------- (3) fine-tune

def replay_examples(tokenizer, problems, trace_kinds, granularity, countdown_products):
    """The original traces of fresh problems, written exactly as the policy was fine-tuned on them."""
    return make_examples(tokenizer, problems, granularity, trace_kinds, countdown_products=countdown_products)


def mixed_batches(kept, replay, batch_size, replay_share, steps, seed):
    """Stage (3)'s data: `steps` batches of batch_size Examples, round(batch_size * replay_share) of each from the
    replayed traces and the rest from the kept attempts (drawn without replacement, reshuffled when used up).
    With no kept attempt every batch is replay. -> list of lists of Examples."""
    rng = random.Random(seed)
    kept_examples = [Example(k.tokens, k.prompt_length) for k in kept]
    n_replay = round(batch_size * replay_share) if kept_examples else batch_size
    if n_replay and not replay:
        raise ValueError("replay_share > 0 (or no kept attempt) needs replay examples")

    def endless(pool):
        order = list(range(len(pool)))
        while True:
            rng.shuffle(order)
            for i in order:
                yield pool[i]
    kept_stream = endless(kept_examples) if kept_examples else None
    replay_stream = endless(replay) if replay else None
    out = []
    for _ in range(steps):
        batch = [next(replay_stream) for _ in range(n_replay)]
        batch += [next(kept_stream) for _ in range(batch_size - n_replay)]
        out.append(batch)
    return out


def finetune(model, optimizer, batch_list, tokenizer, config, lr, autocast=None, averaged=None):
    """Stage (3): one optimizer step per batch with the pre-training loss on the completion tokens. -> mean loss.
    averaged: a copy of the model kept as the weight average (decay config.ema) after every step, or None.
    Under torchrun each rank trains on its share of every batch; the gradients and the loss are of the whole batch."""
    make_autocast = autocast or contextlib.nullcontext
    device = next(model.parameters()).device
    decision_ids = [tokenizer.end_think_id, tokenizer.encode(tasks.UNDO)[0]]
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    loss_sum = 0.0
    for batch in batch_list:
        inputs, targets = collate(distributed.shard(batch), tokenizer.pad_id, device)  # (B / ranks, T) each
        loss_mask = decision_weights(targets, decision_ids, config.decision_weight) if config.decision_weight != 1 else None
        # this rank's token mean weighs by its share of the batch's loss weights (1 exactly for one process)
        (scale,), _ = distributed.loss_scales([distributed.loss_weight(targets, loss_mask)])
        with make_autocast():
            _, loss = model(inputs, targets, loss_mask=loss_mask)
        optimizer.zero_grad(set_to_none=True)
        (loss * scale).backward()
        distributed.average_gradients(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if averaged is not None:
            update_average(averaged, model, config.ema)
        loss_sum += loss.item() * scale / distributed.world_size()
    return distributed.all_reduce_sum([loss_sum])[0] / max(1, len(batch_list))


# ---------------------------------------------------------------------------------------------- one round

def ei_round(model, optimizer, tokenizer, problems, replay, config, lr, seed, autocast=None, averaged=None):
    """Stages (1)-(3) on one batch of problems. -> (summary dict, kept attempts, per-problem attempts).

    replay: the original traces (Examples) of other fresh problems, for the share config.replay_share.
    averaged: the weight average (config.ema); it is the policy that attempts, the model is what the optimizer trains.
    With config.focus_failures, stage (1) first answers every problem greedily; the K samples go to the problems it
    got wrong, and a right greedy answer is kept as it is (one attempt, the anchor): the per-problem attempts are then
    the greedy one where it was right and the K samples elsewhere."""
    policy = averaged if averaged is not None else model
    t_sample = time.time()
    summary = {}
    if config.focus_failures:
        greedy_config = replace(config, samples_per_problem=1, temperature=0.0)
        prompts, greedy, decode_tokens = attempt_across_ranks(policy, tokenizer, problems, greedy_config, seed)
        is_failed = [not attempts[0][2].is_correct for attempts in greedy]
        failed = [problem for problem, fails in zip(problems, is_failed) if fails]
        sampled, decode_sampled = [], 0
        if failed:
            _, sampled, decode_sampled = attempt_across_ranks(policy, tokenizer, failed, config, seed)
        decode_tokens += decode_sampled
        sampled_iter = iter(sampled)
        per_problem = [next(sampled_iter) if fails else attempts for attempts, fails in zip(greedy, is_failed)]
        for task in tasks.TASKS:
            task_rows = [fails for problem, fails in zip(problems, is_failed) if problem.task == task]
            if task_rows:
                summary[f"{task}_greedy"] = 1 - sum(task_rows) / len(task_rows)  # greedy accuracy of the round
        sampled_rows = [(p, s) for p, s, fails in zip(problems, per_problem, is_failed) if fails]
    else:
        prompts, per_problem, decode_tokens = attempt_across_ranks(policy, tokenizer, problems, config, seed)
        sampled_rows = list(zip(problems, per_problem))
    sample_s = time.time() - t_sample

    t_update = time.time()
    kept = filter_verified(problems, prompts, per_problem, config.keep_per_problem, tokenizer.eos_id)
    batch_list = mixed_batches(kept, replay, config.batch_size, config.replay_share, config.finetune_steps, seed)
    loss = finetune(model, optimizer, batch_list, tokenizer, config, lr, autocast, averaged)
    update_s = time.time() - t_update

    n_samples = sum(len(s) for _, s in sampled_rows)
    summary.update({"loss": loss, "kept": len(kept), "sample_s": sample_s, "update_s": update_s,
                    "decode_tokens": decode_tokens,  # the greedy pass of focus_failures counts as one sample each
                    "round_samples": n_samples + (len(problems) if config.focus_failures else 0),
                    "response_len": sum(len(t) for _, s in sampled_rows for t, _, _ in s) / max(1, n_samples)})
    for task in tasks.TASKS:
        rows = [(p, s) for p, s in sampled_rows if p.task == task]
        if not rows:
            continue
        verdicts = [v for _, samples in rows for _, _, v in samples]
        summary[f"{task}_acc"] = sum(v.is_correct for v in verdicts) / len(verdicts)  # accuracy of the samples
        summary[f"{task}_solved"] = sum(any(v.is_correct for _, _, v in s) for _, s in rows) / len(rows)  # pass@K
    return summary, kept, per_problem
