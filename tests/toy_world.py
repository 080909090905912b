"""
A hand-built world for testing search: a policy whose step probabilities we choose, and verifiers that know the truth.

The problem is `arith: 2*3+4` (answer 10). The toy policy is a table over whole lines: after each sequence of lines
it offers a few next lines with fixed probabilities, and the token-level distribution follows from it (the mass of
every line that continues the current partial line). It runs through the real sampler and KV cache: it keeps the
token history in the cache's keys, so forking and retiring rows carry each row's history along.

Paths (probability, answer):  0.20 -> 9 and 0.20 -> 11 (first step 2*3=5, wrong), 0.35 -> 10 (right),
0.125 -> 12 and 0.125 -> 13 (first step 2*3=8, wrong). Token-greedy takes 2*3=5 (0.40 > 0.35 > 0.25) and answers
wrong; the most common answer is 10; an exact verifier prefers the 0.35 path.
"""
import functools
import math

import torch
import torch.nn as nn

from nano_reasoner import tasks
from nano_reasoner.model import GPTConfig
from nano_reasoner.search import Verifier
from nano_reasoner.tokenizer import train_tokenizer

PROBLEM = tasks.parse_problem("arith", "2*3+4")
PATHS = [  # (steps as the model writes them: numbers in the thinking units digit first, answer, probability)
    (["2*3=5;5+4", "5+4=9;9"], "9", 0.20),
    (["2*3=5;5+4", "5+4=11;11"], "11", 0.20),
    (["2*3=6;6+4", "6+4=01;01"], "10", 0.35),
    (["2*3=8;8+4", "8+4=21;21"], "12", 0.125),
    (["2*3=8;8+4", "8+4=31;31"], "13", 0.125),
]
SINGLE_PATH = [(["2*3=6;6+4", "6+4=01;01"], "10", 1.0)]


@functools.lru_cache(maxsize=None)
def toy_tokenizer(tmp_dir):
    problems = tasks.generate("arith", 300, seed=0, difficulties=(1, 2, 3))
    return train_tokenizer([tasks.full_trace(p, "fine") for p in problems], f"{tmp_dir}/toy_tok.model")


def line_table(tokenizer, paths):
    """{tuple of finished lines (token tuples): {next line (token tuple): probability}}."""
    table = {}
    for steps, answer, probability in paths:
        lines = [tuple(tokenizer.encode(step)) + (tokenizer.step_end_id,) for step in steps]
        lines.append((tokenizer.end_think_id, tokenizer.step_end_id))
        lines.append(tuple(tokenizer.encode(answer)) + (tokenizer.eos_id,))
        for depth, line in enumerate(lines):
            options = table.setdefault(tuple(lines[:depth]), {})
            options[line] = options.get(line, 0.0) + probability
    return table


class TablePolicy(nn.Module):
    """Implements the GPT interface the sampler uses; logits are log-probabilities read from a table of lines."""

    def __init__(self, tokenizer, paths, block_size=96):
        super().__init__()
        self.config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=2)
        self.tokenizer = tokenizer
        self.table = line_table(tokenizer, paths)
        self.anchor = nn.Parameter(torch.zeros(1))  # so the sampler can find the device

    def num_params(self, non_embedding=False):
        return 1000

    def next_token_logits(self, history):
        """(V,) log-probabilities of the next token after a list of token ids (prompt included)."""
        tok = self.tokenizer
        logits = torch.full((self.config.vocab_size,), -1e9)
        completion = history[history.index(tok.think_id) + 2:] if tok.think_id in history else None
        if completion is None:
            logits[tok.eos_id] = 0.0
            return logits
        lines, partial = [], []
        for token in completion:
            partial.append(token)
            if token in (tok.step_end_id, tok.eos_id):
                lines.append(tuple(partial))
                partial = []
        mass = {}
        for line, probability in self.table.get(tuple(lines), {}).items():
            if len(line) > len(partial) and list(line[:len(partial)]) == partial:
                mass[line[len(partial)]] = mass.get(line[len(partial)], 0.0) + probability
        if not mass:
            mass = {tok.eos_id: 1.0}
        total = sum(mass.values())
        for token, probability in mass.items():
            logits[token] = math.log(probability / total)
        return logits

    def forward(self, idx, targets=None, *, positions=None, attn_mask=None, kv_cache=None, loss_mask=None):
        B, T = idx.shape
        if kv_cache is not None:
            new_keys = torch.stack([idx.float(), torch.ones(B, T)], dim=-1)[:, None]  # (B, 1, T, 2)
            all_keys, _ = kv_cache.append(0, new_keys, new_keys)                   # (B, 1, pos + T, 2)
            kv_cache.advance(T)
            history = all_keys[:, 0, :, 0].long()                                   # (B, pos + T)
            is_real = attn_mask if attn_mask is not None else torch.ones_like(history, dtype=torch.bool)
        else:
            history, is_real = idx, torch.ones_like(idx, dtype=torch.bool)
        first_new = history.shape[1] - T
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b in range(B):
            for t in range(T):
                upto = first_new + t + 1
                real = [int(x) for x, r in zip(history[b, :upto], is_real[b, :upto]) if r]
                logits[b, t] = self.next_token_logits(real)
        return logits, None


def problem_of_prompt(tokenizer, prompt):
    text = tokenizer.decode(prompt)
    task, rest = text.split(": ", 1)
    return tasks.parse_problem(task, rest.split("\n")[0])


def exact_step_scores(tokenizer, prompt, completion, good=0.9, bad=0.1):
    """What a perfect PRM would say at each step end: sound prefix -> good; at eos: correct answer -> good."""
    problem = problem_of_prompt(tokenizer, prompt)
    scores, lines, partial = [], [], []
    for token in completion:
        partial.append(token)
        if token not in (tokenizer.step_end_id, tokenizer.eos_id):
            continue
        line = tokenizer.decode(partial).rstrip("\n")
        partial = []
        if token == tokenizer.eos_id:
            is_good = tasks.verify(problem, tokenizer.decode(completion)).is_correct
        elif line == tasks.END_THINK:
            is_good = all(tasks.step_labels(problem, lines)) and bool(lines)
        else:
            lines.append(line)
            is_good = tasks.step_labels(problem, lines)[-1]
        scores.append(good if is_good else bad)
    return scores


def count_tokens(prompts, completions):
    return sum(len(p) + len(c) for p, c in zip(prompts, completions))


def exact_prm(tokenizer):
    return Verifier("prm", 500, lambda prompts, completions: [exact_step_scores(tokenizer, p, c)
                                                                for p, c in zip(prompts, completions)], count_tokens)


def exact_orm(tokenizer):
    """Scores only the finished solution; every earlier step end gets a neutral 0.5."""
    def score(prompts, completions):
        return [[0.5] * (len(s) - 1) + [s[-1] if c and c[-1] == tokenizer.eos_id else 0.5] if s else []
                for p, c in zip(prompts, completions) for s in [exact_step_scores(tokenizer, p, c)]]
    return Verifier("orm", 500, score, count_tokens)


def constant_verifier(value=0.5):
    def score(prompts, completions):
        return [[value] for _ in completions]
    return Verifier("prm", 500, score, count_tokens)
