"""
Evaluation: let the policy solve problems, check every answer with the task's exact verifier, count.

Every stage measures itself the same way: the policy writes a full trace for each problem (greedy, or sampled), the
exact verifier (tasks.verify) judges it, and accuracy is reported by task and by difficulty. All problems of a call
go through the batched sampler together, in chunks, so evaluating 500 problems is a handful of sampler calls.
"""
from collections import defaultdict
from dataclasses import dataclass

from nano_reasoner import tasks
from nano_reasoner.sampling import generate


@dataclass
class Attempt:
    problem: tasks.Problem
    completion: str          # what the model wrote after the prompt (eos dropped)
    verdict: tasks.Verdict
    tokens: list             # the generated token ids
    prompt_tokens: list      # [bos] + prompt ids


def attempt_problems(model, tokenizer, problems, *, num_samples=1, temperature=0.0, top_k=None, top_p=None,
                     seed=0, chunk_size=256, max_new_tokens=None, budget=None):
    """Solve each problem num_samples times. -> list (one per problem) of lists of Attempt, and the compute spent
    as a dict {prefill_tokens, decode_tokens}. budget: budget forcing (sampling.ThinkingBudget), or None."""
    block_size = model.config.block_size
    prompts = [tokenizer.encode_prompt(tasks.format_prompt(p)) for p in problems]
    attempts = [[] for _ in problems]
    spent = {"prefill_tokens": 0, "decode_tokens": 0}
    prompts_per_call = max(1, chunk_size // num_samples)
    for start in range(0, len(problems), prompts_per_call):
        chunk = prompts[start:start + prompts_per_call]
        room = max_new_tokens or block_size - max(len(p) for p in chunk)
        result = generate(model, chunk, room, num_samples=num_samples, temperature=temperature, top_k=top_k,
                          top_p=top_p, stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=seed + start,
                          budget=budget)
        spent["prefill_tokens"] += result.prefill_tokens
        spent["decode_tokens"] += result.decode_tokens
        for row in range(len(chunk) * num_samples):
            index = start + row // num_samples
            tokens = result.row_tokens(row)
            completion = tokenizer.decode(tokens)
            verdict = tasks.verify(problems[index], completion)
            attempts[index].append(Attempt(problems[index], completion, verdict, tokens, prompts[index]))
    return attempts, spent


def accuracy_by_difficulty(problems, is_correct):
    """-> {"all": acc, difficulty: acc, ...} for one task's problems and a parallel list of booleans."""
    counts = defaultdict(lambda: [0, 0])
    for problem, correct in zip(problems, is_correct):
        for key in ("all", problem.difficulty):
            counts[key][0] += bool(correct)
            counts[key][1] += 1
    return {key: hits / total for key, (hits, total) in counts.items()}


def greedy_accuracy(model, tokenizer, problems, seed=0):
    """Greedy accuracy by difficulty on problems of one task, and the attempts."""
    attempts, _ = attempt_problems(model, tokenizer, problems, temperature=0.0, seed=seed)
    return accuracy_by_difficulty(problems, [a[0].verdict.is_correct for a in attempts]), attempts


EVAL_DIFFICULTIES = {"arith": (1, 2, 3, 4), "countdown": (3, 4)}  # what the headline numbers are measured on


def held_out_problems(n, seed):
    """The held-out evaluation problems (seeded apart from training), per task; every stage measures on these."""
    return {task: tasks.generate(task, n, seed=seed + 10_000 + i, difficulties=EVAL_DIFFICULTIES[task])
            for i, task in enumerate(tasks.TASKS)}


SHIFTED_OPERANDS = (100, 999)     # domain adaptation's new domain: arith with three-digit operands, never trained on
SHIFTED_DIFFICULTIES = (1, 2, 3)  # and 1-3 operations


def held_out_shifted(n, seed, operands=SHIFTED_OPERANDS):
    """The held-out arith problems of the shifted domain (seeded apart from training and from held_out_problems)."""
    return tasks.arith.generate(n, seed + 30_000, SHIFTED_DIFFICULTIES, operands)
