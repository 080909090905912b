"""
Thinking that searches, measured: what a reasoner does inside its thought, and what more thinking buys.

A reasoning model trained on search traces (tasks/countdown.py `search_solve`, tasks/trace.py) tries a move, sees
where it leads, goes back with an undo line and tries another, all inside one answer: attempt 1 -> attempt 2 -> ...
-> answer, the behaviour o1 is described by and that DeepSeek-R1's "aha moment" names. Two questions tell whether it
really searches rather than reciting a shape:

1. **What the thinking holds** (`analyse`). Per output: thinking tokens, moves, undo lines (dead ends it noticed), undo
   lines that name a state the thinking never reached (a back step it made up), moves it repeats from a state where
   it already tried them (a search that forgets), and moves whose own arithmetic is wrong (`21*17=341`): a model
   that cannot compute a move cannot check it, and a search that cannot check cannot search.
2. **Does more thinking give more right answers** (`budget_sweep`). Budget forcing (sampling.ThinkingBudget; "s1:
   Simple test-time scaling", Muennighoff et al., arXiv 2501.19393) caps the thinking at N tokens, after which
   `</think>` is forced and the answer written, or holds it open with an undo line until N. Accuracy against the
   mean thinking tokens actually spent, over a range of N, is the reasoner's own test-time scaling curve, with no
   verifier and no outside search: one model, more thinking. A straight-line policy has nothing to do with more
   tokens, so its curve is flat once its one path fits.

Simplifications: the analysis reads countdown traces only (an arith retry trace is judged by its answer and its step
labels); a repeated move is the same two numbers and operation from the same multiset of numbers.
"""
from collections import Counter
from dataclasses import dataclass

from nano_reasoner import tasks
from nano_reasoner.evaluate import accuracy_by_difficulty, attempt_problems
from nano_reasoner.sampling import ThinkingBudget
from nano_reasoner.tasks import countdown, expr


def thinking_budget(tokenizer, max_think=None, min_think=None):
    """A ThinkingBudget for this tokenizer: the newline that ends a step, `</think>`, and the first token of an undo
    line, which continues the thinking when it may not end yet (s1's "Wait")."""
    return ThinkingBudget(newline_id=tokenizer.step_end_id, end_think_id=tokenizer.end_think_id,
                          continue_id=tokenizer.encode(tasks.UNDO)[0], stop_id=tokenizer.eos_id,
                          max_think=max_think, min_think=min_think)


def thinking_tokens(tokens, end_think_id):
    """Tokens written before `</think>` (all of them when the thinking never ended)."""
    return tokens.index(end_think_id) if end_think_id in tokens else len(tokens)


@dataclass
class ThinkingStats:
    moves: int = 0               # step lines
    undo_lines: int = 0          # dead ends the model noticed and left
    bad_undo_lines: int = 0      # undo lines to a state never reached, or naming a move never tried from it
    repeated_moves: int = 0      # a move already tried from the same numbers
    wrong_arithmetic: int = 0    # moves whose own arithmetic is wrong


def analyse(problem, completion):
    """What one countdown completion (in the model's digit order) does in its thinking -> ThinkingStats."""
    assert problem.task == "countdown", "the analysis reads countdown traces"
    steps = [tasks.flip_digits(step) for step in tasks.parse_completion(completion).steps]
    numbers, _ = countdown.parse_numbers(problem.text)
    current, reached, tried = numbers, [Counter(numbers)], set()
    tried_any = set()  # every move tried, legal or not: what an undo line may name (countdown.check_undo)
    stats = ThinkingStats()
    for line in steps:
        if tasks.undone_state(line) is not None:
            stats.undo_lines += 1
            is_legal, _, current = countdown.check_undo(reached, line, tried_any)
            stats.bad_undo_lines += not is_legal
        else:
            stats.moves += 1
            stats.wrong_arithmetic += countdown.has_wrong_arithmetic(line)
            tried_any.add(countdown.tried_move(current, line))
            if current is not None:
                is_legal, _, after = countdown.check_step(current, line)
                if is_legal:
                    operation = expr.parse(line.split("=")[0])
                    a, b = sorted((operation[1][1], operation[2][1])) if operation[0] in "+*" else (operation[1][1], operation[2][1])
                    move = (tuple(sorted(current)), a, operation[0], b)
                    stats.repeated_moves += move in tried
                    tried.add(move)
                current = after
        if current is not None:
            reached.append(Counter(current))
    return stats


def stop_decisions(problem, completion):
    """Every time the thinking of one countdown completion reaches a single number by legal moves, what it does next
    -> list of (number, target, next), next one of "end" (`</think>`: the model says the target is made), "undo" (a
    miss: go back), "move" or "cut" (the output ended without `</think>`). A stop on a number that is not the target
    is a false stop: the decision the search traces weight up (data.decision_weights) taken wrongly."""
    assert problem.task == "countdown", "stop decisions are countdown's"
    parsed = tasks.parse_completion(completion)
    steps = [tasks.flip_digits(step) for step in parsed.steps]
    _, target = countdown.parse_numbers(problem.text)
    decisions = []
    for index, (_, _, numbers, _) in enumerate(countdown._walk(problem, steps)):
        if numbers is None or len(numbers) != 1:
            continue
        if index + 1 < len(steps):
            after = "undo" if tasks.undone_state(steps[index + 1]) is not None else "move"
        else:
            after = "end" if parsed.is_well_formed else "cut"
        decisions.append((numbers[0], target, after))
    return decisions


def summarise_thinking(attempts, end_think_id):
    """Attempts (evaluate.Attempt, one per problem) -> a dict of shares and means over them."""
    stats = [analyse(a.problem, a.completion) for a in attempts]
    n = len(attempts)
    return {
        "mean_thinking_tokens": sum(thinking_tokens(a.tokens, end_think_id) for a in attempts) / n,
        "share_with_wrong_arithmetic": sum(s.wrong_arithmetic > 0 for s in stats) / n,
        "share_that_backtrack": sum(s.undo_lines > 0 for s in stats) / n,
        "mean_undo_lines": sum(s.undo_lines for s in stats) / n,
        "share_of_undo_lines_wrong": sum(s.bad_undo_lines for s in stats) / max(1, sum(s.undo_lines for s in stats)),
        "share_that_repeat_a_move": sum(s.repeated_moves > 0 for s in stats) / n,
    }


def budget_sweep(model, tokenizer, problems, max_thinks):
    """Greedy accuracy with the thinking capped at each N of max_thinks (None: no cap) -> list of
    {"max_think", "accuracy" (by difficulty), "mean_thinking_tokens"}."""
    rows = []
    for max_think in max_thinks:
        budget = thinking_budget(tokenizer, max_think=max_think) if max_think is not None else None
        attempts, _ = attempt_problems(model, tokenizer, problems, temperature=0.0, budget=budget)
        attempts = [a[0] for a in attempts]
        rows.append({"max_think": max_think,
                     "accuracy": accuracy_by_difficulty(problems, [a.verdict.is_correct for a in attempts]),
                     "mean_thinking_tokens": sum(thinking_tokens(a.tokens, tokenizer.end_think_id)
                                                 for a in attempts) / len(attempts)})
    return rows
