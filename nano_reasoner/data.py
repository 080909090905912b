"""
Training data for next-token prediction on chain-of-thought traces (pre-training and supervised fine-tuning).

Each example is one problem's full trace, tokenized as [bos] + prompt + completion + [eos]. The loss is taken on the
completion tokens only (the steps, `</think>`, the answer and eos): the model is never asked to predict the problem,
which is random and unpredictable, only to solve it. This is how instruction tuning and R1's supervised stages
train ("SFT on reasoning traces").

Batches are right-padded. To waste little compute on padding, examples are bucketed by length: a shuffled chunk of
many batches is sorted by length and cut into batches, which are then shuffled (the "bucket iterator" trick).
Positions start at 0 in every row, exactly as at inference, so there is no train/test mismatch that packing several
traces into one row would bring.
"""
import random
from dataclasses import dataclass

import torch

from nano_reasoner import tasks


@dataclass
class Example:
    tokens: list        # [bos] + prompt + completion + [eos]
    prompt_length: int  # tokens before the completion, bos included


def make_example(tokenizer, problem, steps, answer):
    prompt = tokenizer.encode_prompt(tasks.format_prompt(problem))
    completion = tokenizer.encode(tasks.format_completion(steps, answer)) + [tokenizer.eos_id]
    return Example(prompt + completion, len(prompt))


def make_examples(tokenizer, problems, granularity="coarse", trace_kinds=None, retry_share=None,
                  countdown_products="once"):
    """One example per problem; trace_kinds maps a task to its kind of trace (tasks.TRACE_KINDS; default straight),
    countdown_products says how countdown moves write a product (countdown.PRODUCTS)."""
    trace_kinds = trace_kinds or {}
    extra = {"countdown_products": countdown_products}
    if retry_share is not None:
        extra["retry_share"] = retry_share
    examples = []
    for problem in problems:
        steps, answer = tasks.trace(problem, granularity, trace_kinds.get(problem.task, "straight"), **extra)
        examples.append(make_example(tokenizer, problem, steps, answer))
    return examples


def collate(examples, pad_id, device):
    """-> inputs (B, T), targets (B, T) with -1 where no loss is taken (prompt and padding)."""
    T = max(len(ex.tokens) for ex in examples) - 1
    inputs = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), -1, dtype=torch.long)
    for row, ex in enumerate(examples):
        seq = torch.tensor(ex.tokens, dtype=torch.long)
        n = len(ex.tokens) - 1
        inputs[row, :n] = seq[:-1]
        targets[row, ex.prompt_length - 1:n] = seq[ex.prompt_length:]  # predict the completion only
    return inputs.to(device), targets.to(device)


def decision_weights(targets, decision_ids, weight):
    """Per-position loss weights (B, T): `weight` where the token to predict is a decision, 1 elsewhere.

    In a search trace almost every token is copying or arithmetic; the few that decide what the search does next are
    the first token after a checked state, `</think>` (the target is made: stop) or the undo marker (it is not: go
    back). A model that gets the arithmetic right but these wrong stops on a miss or walks past a hit, so their loss
    can be weighted up: a larger share of the gradient goes to the comparison with the target. (A plain cousin of
    Rho-1's selective language modelling, Lin et al., "Not All Tokens Are What You Need", arXiv 2404.07965, which
    spends the loss on the tokens that matter; here we know which ones they are.)"""
    is_decision = torch.zeros_like(targets, dtype=torch.bool)
    for token_id in decision_ids:
        is_decision |= targets == token_id
    return 1.0 + (weight - 1.0) * is_decision.float()


def batches(examples, batch_size, seed, bucket_batches=4):
    """An endless stream of length-bucketed batches (lists of Examples), reproducible from seed."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        chunk_size = batch_size * bucket_batches
        for start in range(0, len(order) - batch_size + 1, chunk_size):
            chunk = sorted(order[start:start + chunk_size], key=lambda i: len(examples[i].tokens))
            chunk_batches = [chunk[k:k + batch_size] for k in range(0, len(chunk) - batch_size + 1, batch_size)]
            rng.shuffle(chunk_batches)
            for batch in chunk_batches:
                yield [examples[i] for i in batch]


def replay_batches(examples, replay, batch_size, replay_share, seed, bucket_batches=4):
    """An endless stream of batches of which round(batch_size * replay_share) examples come from `replay` (the
    original traces, against forgetting) and the rest from `examples` (the new task), each part length-bucketed on its
    own; reproducible from seed. Replay ("experience replay" against catastrophic forgetting: keep training on a share
    of the old distribution) is the cheapest guard there is: it costs only that share of each batch."""
    assert 0 <= replay_share <= 1
    n_replay = round(batch_size * replay_share)
    new_stream = batches(examples, batch_size - n_replay, seed, bucket_batches) if n_replay < batch_size else None
    replay_stream = batches(replay, n_replay, seed + 1, bucket_batches) if n_replay > 0 else None
    while True:
        yield (next(replay_stream) if replay_stream else []) + (next(new_stream) if new_stream else [])
