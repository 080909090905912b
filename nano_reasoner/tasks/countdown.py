"""
`countdown`: reach a target by combining the given numbers.

Problem: 3 to 5 numbers in 1..25 and a target in 10..999, written `3 7 25 19 -> 63`. Difficulty is how many numbers
are given. Answer: one expression with `+ - *` that uses each given number at most once and equals the target
(`7*(25-19)+...`). The game comes from the TV show; as a reasoning benchmark see "Stream of Search" (Gandhi et al.,
arXiv 2404.03683) and TinyZero, which used it for R1-Zero style RL.

Chain of thought: each step combines two of the numbers left and writes the numbers that are left after it (the two
used are removed, the result is appended):

    3 7 25 19 -> 63
    25-19=6;3 7 6
    7*6=42;3 42
    ...

Shown, built and checked here in reading order; the model writes the numbers of its thinking units digit first
(`52-91=6;3 7 6`, `7*6=24;3 24`) and tasks/__init__.py flips between the two (trace.py explains why). The final
answer expression keeps the usual order.

Rules of a step: `a+b`, `a*b`, or `a-b` with a > b (no zero or negative numbers, no division), where a and b are two
of the numbers left (a number given twice may be used twice). The final answer may be written with any parentheses;
it is checked exactly: parsed (never eval'd), its numbers must come from the given ones, each at most once, and its
value must be the target.

Verifier. A trace is correct only when it is well formed, *every step is legal* (right arithmetic, numbers that are
really left, the numbers left written correctly) and the answer is right. Checking only "the answer equals the target"
would pay a model that writes the target after bad arithmetic; checking every step shuts that reward hack out.

Exact step labels (for the verifiers in prm.py): step i is good when steps 1..i are all legal and the target can still
be reached from the numbers left, which `is_reachable` decides by exhaustive search with memoisation.

Training traces show a shortest solution (chosen at random among the shortest, seeded by the problem text), so that
the model learns to reach the target in as few steps as the problem allows.
"""
import functools
import random
from collections import Counter

from nano_reasoner.tasks import expr
from nano_reasoner.tasks.trace import ParsedCompletion, Problem, ProblemError, Verdict, parse_completion

TASK = "countdown"
CHECKABLE_AT_TEST_TIME = True  # check() needs only the problem: see its docstring
DIFFICULTIES = (3, 4, 5)
MAX_NUMBER = 25
TARGET_RANGE = (10, 999)
MAX_GIVEN = 6          # numbers a person may type (search cost grows fast with more)
MAX_VALUE = 10 ** 6    # numbers and target a person may type


# ----------------------------------------------------------------------------- rules and the exact solver

def combine(a, op, b):
    """The value of a legal step, or None when the step breaks the rules."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-" and a > b:
        return a - b
    return None


def _moves(numbers):
    """Every legal step from a tuple of numbers: (i, j, a, op, b, value)."""
    for i in range(len(numbers)):
        for j in range(len(numbers)):
            if i == j:
                continue
            a, b = numbers[i], numbers[j]
            for op in "+-*":
                if op in "+*" and i > j:
                    continue  # + and * commute: try each pair once
                value = combine(a, op, b)
                if value is not None:
                    yield i, j, a, op, b, value


def _remove_pair(numbers, i, j):
    return tuple(n for k, n in enumerate(numbers) if k not in (i, j))


@functools.lru_cache(maxsize=200_000)
def _reachable_sorted(numbers, target):
    if target in numbers:
        return True
    if len(numbers) == 2:  # the leaves of the search, most of its calls: one step left, checked directly
        small, large = numbers
        return small + large == target or small * large == target or (large > small and large - small == target)
    for i, j, _, _, _, value in _moves(numbers):
        if _reachable_sorted(tuple(sorted(_remove_pair(numbers, i, j) + (value,))), target):
            return True
    return False


def is_reachable(numbers, target):
    """Can some sequence of legal steps make `target` from `numbers` (using each at most once)? Exact."""
    return _reachable_sorted(tuple(sorted(numbers)), target)


def _solutions(numbers, target, depth, limit):
    """Up to `limit` step sequences of exactly `depth` steps whose last result is target.
    A solution is a list of (a, op, b, value, numbers_left)."""
    found = []

    def search(state, path):
        if len(found) >= limit:
            return
        if len(path) == depth:
            if path and path[-1][3] == target:
                found.append(list(path))
            return
        for i, j, a, op, b, value in _moves(state):
            left = _remove_pair(state, i, j) + (value,)
            if len(path) + 1 < depth and not is_reachable(left, target):
                continue
            path.append((a, op, b, value, left))
            search(left, path)
            path.pop()

    search(tuple(numbers), [])
    return found


def shortest_solution(numbers, target, rng):
    """A shortest solution, chosen with rng among (up to 64 of) the shortest ones; None if unreachable."""
    if not is_reachable(numbers, target):
        return None
    for depth in range(1, len(numbers)):
        solutions = _solutions(numbers, target, depth, limit=64)
        if solutions:
            return rng.choice(solutions)
    return None


# ----------------------------------------------------------------------------- problems

def _text(numbers, target):
    return " ".join(str(n) for n in numbers) + f" -> {target}"


def parse_numbers(text):
    """'3 7 25 19 -> 63' -> ((3, 7, 25, 19), 63), or ProblemError."""
    if not isinstance(text, str) or not text.strip():
        raise ProblemError("empty problem: give numbers and a target such as '3 7 25 19 -> 63'")
    if text.count("->") != 1:
        raise ProblemError("a countdown problem is numbers, '->', target, such as '3 7 25 19 -> 63'")
    left, right = text.split("->")
    words = left.split()
    if not all(w.isascii() and w.isdigit() and len(w) <= 7 for w in words + [right.strip()]) or not right.strip():
        raise ProblemError("numbers and target must be whole numbers, such as '3 7 25 19 -> 63'")
    numbers, target = tuple(int(w) for w in words), int(right)
    if not 2 <= len(numbers) <= MAX_GIVEN:
        raise ProblemError(f"give 2 to {MAX_GIVEN} numbers before '->'")
    if min(numbers + (target,)) < 1 or max(numbers + (target,)) > MAX_VALUE:
        raise ProblemError(f"numbers and target must lie in 1..{MAX_VALUE}")
    return numbers, target


def parse_problem(text):
    numbers, target = parse_numbers(text)
    return Problem(TASK, _text(numbers, target), len(numbers))


def generate(n, seed, difficulties=DIFFICULTIES):
    """n solvable problems: random numbers, then a random combination of all of them gives the target."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        count = rng.choice(difficulties)
        numbers = [rng.randint(1, MAX_NUMBER) for _ in range(count)]
        state = tuple(numbers)
        while len(state) > 1:
            i, j, _, _, _, value = rng.choice(list(_moves(state)))
            state = _remove_pair(state, i, j) + (value,)
        target = state[0]
        if TARGET_RANGE[0] <= target <= TARGET_RANGE[1] and target not in numbers:
            problems.append(Problem(TASK, _text(numbers, target), count))
    return problems


# ----------------------------------------------------------------------------- traces

def solve(problem, granularity="coarse"):
    """A shortest chain of thought, deterministic for a problem: (steps, answer). The granularity is arith's: every
    countdown step is one operation on small numbers, written at once."""
    numbers, target = parse_numbers(problem.text)
    solution = shortest_solution(numbers, target, random.Random(problem.text))
    if solution is None:
        raise ProblemError(f"{problem.text} has no solution")
    return _write_steps(numbers, solution)


def _write_steps(numbers, solution):
    """Steps as text, and the answer: the expression tree of the last number made, printed.
    Each number left carries the tree that made it, keyed by the value the trace claims for it."""
    made = [(n, ("num", n)) for n in numbers]  # (claimed value, expression tree)
    steps = []
    for a, op, b, value, left in solution:
        tree_a = made.pop(next(k for k, (v, _) in enumerate(made) if v == a))[1]
        tree_b = made.pop(next(k for k, (v, _) in enumerate(made) if v == b))[1]
        made.append((value, (op, tree_a, tree_b)))
        steps.append(f"{a}{op}{b}={value};" + " ".join(str(n) for n in left))
    return steps, expr.to_text(made[-1][1])


def check_step(numbers, line):
    """Is `line` a legal step from the numbers left? -> (is_legal, reason, numbers_after). Never raises."""
    if line.count(";") != 1 or line.count("=") != 1 or line.index("=") > line.index(";"):
        return False, "a step is 'a op b=c;numbers left'", None
    equation, left_text = line.split(";")
    lhs, rhs = equation.split("=")
    try:
        operation, result = expr.parse(lhs), expr.parse(rhs)
    except expr.ExprError as error:
        return False, f"unreadable step ({error})", None
    if expr.count_ops(operation) != 1 or operation[1][0] != "num" or operation[2][0] != "num" or result[0] != "num":
        return False, "a step combines two numbers into one", None
    op, a, b = operation[0], operation[1][1], operation[2][1]
    value = combine(a, op, b)
    if value is None:
        return False, f"{lhs} breaks the rules (subtraction must stay positive)", None
    if value != result[1]:
        return False, f"wrong arithmetic: {lhs} is {value}, not {result[1]}", None
    available = Counter(numbers)
    if available[a] < 1 or available[b] < 1 + (a == b):
        return False, f"{lhs} uses a number that is not left", None
    words = left_text.split()
    if not all(w.isascii() and w.isdigit() and len(w) <= 12 for w in words):
        return False, "the numbers left are not whole numbers", None
    after = available - Counter([a, b]) + Counter([value])
    if Counter(int(w) for w in words) != after:
        return False, "the numbers left are not the ones the step leaves", None
    return True, "", tuple(int(w) for w in words)


def _step_checks(problem, steps):
    """Per step: (is_legal, reason, numbers_after); after the first illegal step nothing is checked."""
    numbers, _ = parse_numbers(problem.text)
    checks = []
    for line in steps:
        if numbers is None:
            checks.append((False, "follows an illegal step", None))
            continue
        result = check_step(numbers, line)
        checks.append(result)
        numbers = result[2]
    return checks


def step_labels(problem, steps):
    """Exact labels: step i is good when steps 1..i are legal and the target is still reachable."""
    _, target = parse_numbers(problem.text)
    labels, is_sound = [], True
    for is_legal, _, numbers_after in _step_checks(problem, steps):
        is_sound = is_sound and is_legal and is_reachable(numbers_after, target)
        labels.append(is_sound)
    return labels


def check(problem, completion):
    """The checker a search may use at test time -> (is_correct, reason, is_well_formed). Never raises.

    It reads only the problem (the numbers and the target) and the completion: no stored answer, no solver. Checking
    a countdown solution is easy even when finding one is hard, the way a unit test checks a program or a proof
    checker a proof, so MCTS and `check` in search.py may call it on their own candidates. (An arith answer cannot
    be checked this way without computing the answer, which is the whole problem: arith has no such checker.)"""
    parsed = completion if isinstance(completion, ParsedCompletion) else parse_completion(completion)
    numbers, target = parse_numbers(problem.text)
    if not parsed.is_well_formed:
        return False, parsed.reason, False
    for index, (is_legal, reason, _) in enumerate(_step_checks(problem, parsed.steps)):
        if not is_legal:
            return False, f"step {index + 1}: {reason}", True
    try:
        tree = expr.parse(parsed.answer)
    except expr.ExprError as error:
        return False, f"the answer is not an expression ({error})", True
    if Counter(expr.numbers(tree)) - Counter(numbers):
        return False, "the answer uses a number that was not given, or one too often", True
    value = expr.evaluate(tree)
    if value != target:
        return False, f"the answer makes {value}, not {target}", True
    return True, "", True


def verify(problem, completion):
    """Every step legal, and the answer an expression over the given numbers equal to the target. Never raises.
    The verdict is check()'s; the step labels added to it need the solver (is_reachable)."""
    parsed = completion if isinstance(completion, ParsedCompletion) else parse_completion(completion)
    is_correct, reason, is_well_formed = check(problem, parsed)
    return Verdict(is_correct, parsed.answer, reason, is_well_formed, step_labels(problem, parsed.steps))


def corrupt(problem, rng, granularity="coarse"):
    """A trace with one bad step and a consistent continuation: (steps, answer, index of the bad step).

    The bad step is wrong arithmetic (the wrong value is then used as if right), or a legal step that leaves the
    target out of reach. The continuation heads for the target from the state the bad step left, so some corrupted
    traces end by claiming the target after bad arithmetic: exactly what the verifier must not pay for."""
    numbers, target = parse_numbers(problem.text)
    solution = shortest_solution(numbers, target, rng)
    bad_index = rng.randrange(len(solution))
    state = tuple(numbers) if bad_index == 0 else solution[bad_index - 1][4]
    dead_ends = [m for m in _moves(state) if not is_reachable(_remove_pair(state, m[0], m[1]) + (m[5],), target)]
    if dead_ends and rng.random() < 0.5:
        i, j, a, op, b, value = rng.choice(dead_ends)
        bad = (a, op, b, value, _remove_pair(state, i, j) + (value,))
    else:
        a, op, b, value, left = solution[bad_index]
        wrong = max(0, value + rng.choice([-10, -2, -1, 1, 2, 10, rng.randint(3, 9)]))
        bad = (a, op, b, wrong, left[:-1] + (wrong,))
    prefix = solution[:bad_index] + [bad]
    continuation = shortest_solution(bad[4], target, rng) if target not in bad[4] else []
    if continuation is None:  # the target is out of reach: combine what is left at random
        continuation, state = [], bad[4]
        while len(state) > 1:
            i, j, a, op, b, value = rng.choice(list(_moves(state)))
            state = _remove_pair(state, i, j) + (value,)
            continuation.append((a, op, b, value, state))
    steps, answer = _write_steps(numbers, prefix + continuation)
    return steps, answer, bad_index
