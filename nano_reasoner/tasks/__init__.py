"""
The toy reasoning tasks: problems whose every step can be checked exactly.

Two tasks, one file each: `arith.py` (evaluate an expression one operation per step) and `countdown.py` (combine
numbers to reach a target). `trace.py` holds the trace format they share and its parser; `expr.py` the safe parser of
integer expressions that both use instead of eval. This file routes a task name to its module, so callers write
`tasks.verify(problem, completion)` whatever the task, and it is where the digit order of the trace format is
applied (trace.py): the task modules build and check steps in reading order (`38*2=76`), the model reads and writes
them units digit first (`83*2=67`). Everything outside the tasks package sees the model's order only; the reason
in a Verdict quotes steps in reading order, for people.

Each task module offers the same functions:
    generate(n, seed, difficulties) -> [Problem]      seeded problem generator by difficulty
    parse_problem(text) -> Problem                     a problem a person typed, or ProblemError with the fix
    solve(problem, granularity) -> (steps, answer)     the exact chain of thought (arith: GRANULARITIES)
    search_solve / retry_solve(problem, ...)           the trace that goes back inside its thinking (TRACE_KINDS)
    verify(problem, completion) -> Verdict             the exact verifier of model output (never raises)
    step_labels(problem, steps) -> [bool]              exact step labels (is the prefix still sound)
    corrupt(problem, rng, granularity) -> (steps, answer, i)  one wrong step i and a consistent continuation
and a flag, CHECKABLE_AT_TEST_TIME: can a search check its own candidates, from the problem alone? Countdown can
(countdown.check: the numbers and the target are all it needs); arith cannot (checking is computing the answer).
"""
from nano_reasoner.tasks import arith, countdown
from nano_reasoner.tasks.trace import (END_THINK, THINK, UNDO, ParsedCompletion, Problem, ProblemError, Verdict,
                                       flip_digits, flip_thinking, format_completion, format_prompt, parse_completion,
                                       shown_problem, undone_move, undone_state)

TASKS = {"arith": arith, "countdown": countdown}
GRANULARITIES = arith.GRANULARITIES  # how finely arith works a product through (countdown: countdown.PRODUCTS)
DEFAULT_GRANULARITY = "digits"       # what the presets train on (train_pretrain.py --granularity)
# the trace kinds of each task (trace.py): straight to the answer, or going back inside the thinking
TRACE_KINDS = {"arith": ("straight", "retry"), "countdown": ("straight", "search")}


def module(task):
    if task not in TASKS:
        raise ProblemError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return TASKS[task]


def generate(task, n, seed, difficulties=None):
    task_module = module(task)
    return task_module.generate(n, seed, difficulties or task_module.DIFFICULTIES)


def parse_problem(task, text):
    return module(task).parse_problem(text)


def solve(problem, granularity="coarse"):
    steps, answer = module(problem.task).solve(problem, granularity)
    return [flip_digits(step) for step in steps], answer


def trace(problem, granularity="coarse", kind="straight", retry_share=arith.RETRY_SHARE, countdown_products="once"):
    """The exact trace of a kind (TRACE_KINDS) in the model's digit order: (steps, answer). granularity: how arith
    works a product; countdown_products: how countdown does (countdown.PRODUCTS)."""
    if kind not in TRACE_KINDS[problem.task]:
        raise ValueError(f"{problem.task} traces are {' or '.join(TRACE_KINDS[problem.task])}, not {kind!r}")
    if kind == "search":
        steps, answer = countdown.search_solve(problem, countdown_products)
    elif kind == "retry":
        steps, answer = arith.retry_solve(problem, granularity, retry_share)
    elif problem.task == "countdown":
        steps, answer = countdown.solve(problem, granularity, countdown_products)
    else:
        steps, answer = arith.solve(problem, granularity)
    return [flip_digits(step) for step in steps], answer


def verify(problem, completion):
    if isinstance(completion, ParsedCompletion):
        completion = ParsedCompletion([flip_digits(step) for step in completion.steps], completion.answer,
                                      completion.is_well_formed, completion.reason)
    else:
        completion = flip_thinking(completion)
    return module(problem.task).verify(problem, completion)


def checkable_at_test_time(task):
    return module(task).CHECKABLE_AT_TEST_TIME


def check(problem, completion):
    """The test-time checker of a task that has one (countdown): is the completion right? -> bool. Never raises on
    model output; asking it of a task without a checker (arith) is a ValueError."""
    if not checkable_at_test_time(problem.task):
        raise ValueError(f"{problem.task} has no test-time checker: checking its answer means solving the problem")
    return module(problem.task).check(problem, flip_thinking(completion))[0]


def step_labels(problem, steps):
    return module(problem.task).step_labels(problem, [flip_digits(step) for step in steps])


def corrupt(problem, rng, granularity="coarse"):
    steps, answer, bad_index = module(problem.task).corrupt(problem, rng, granularity)
    return [flip_digits(step) for step in steps], answer, bad_index


def full_trace(problem, granularity="coarse", kind="straight", countdown_products="once"):
    """Prompt + completion text of the exact trace of a kind (without the end-of-sequence token)."""
    steps, answer = trace(problem, granularity, kind, countdown_products=countdown_products)
    return format_prompt(problem) + format_completion(steps, answer)
