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
the model learns to reach the target in as few steps as the problem allows. Search traces (`search_solve`) write a
search instead, dead ends and undo lines included (trace.py), the way "Stream of Search" (Gandhi et al., arXiv
2404.03683) trains a model on the search rather than on its result. Ours differs from the paper's in what the tiny
model could carry out (docs/reasoning_log.md has the measurements behind each choice): the moves from the problem
itself are tried in a fixed order the model can read off its own last lines (root_moves) rather than by a heuristic
it would have to compute; below each a single probe runs to one number, guided by the exact solver where the target
is still reachable (so the model learns to guess well) and by nearness to the target where it is not; the probe
only ever combines the number made last (a chain), so the answer is built by wrapping, not by looking up which line
made which number; a product is worked through single-digit products (`move_text`); and failed searches are not
kept: a trace that does not fit the context is left out of training.
"""
import functools
import random
from collections import Counter

from nano_reasoner.tasks import expr
from nano_reasoner.tasks.arith import write_equation
from nano_reasoner.tasks.trace import (ParsedCompletion, Problem, ProblemError, Verdict, parse_completion, undo_line,
                                       undone_move, undone_state)

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


def reachable_values(numbers):
    """Every value some sequence of legal steps can make from `numbers` (the numbers themselves included)."""
    numbers = tuple(sorted(numbers))
    values = set(numbers)
    for i, j, _, _, _, value in _moves(numbers):
        values |= reachable_values(_remove_pair(numbers, i, j) + (value,))
    return values


def generate_uniform_targets(n, seed, difficulties=DIFFICULTIES):
    """n problems whose target a person might pick: random numbers, then a target drawn uniformly among the values in
    TARGET_RANGE that they can reach (generate() instead combines all the numbers at random, which favours some
    targets: products of all of them, values near their sum)."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        count = rng.choice(difficulties)
        numbers = [rng.randint(1, MAX_NUMBER) for _ in range(count)]
        targets = sorted(v for v in reachable_values(numbers)
                         if TARGET_RANGE[0] <= v <= TARGET_RANGE[1] and v not in numbers)
        if targets:
            problems.append(Problem(TASK, _text(numbers, rng.choice(targets)), count))
    return problems


# ----------------------------------------------------------------------------- traces

def solve(problem, granularity="coarse", products="once"):
    """A shortest chain of thought, deterministic for a problem: (steps, answer). The granularity is arith's and
    changes nothing here; `products` says how a product is written (move_text)."""
    numbers, target = parse_numbers(problem.text)
    solution = shortest_solution(numbers, target, random.Random(problem.text))
    if solution is None:
        raise ProblemError(f"{problem.text} has no solution")
    return _write_steps(numbers, solution, products)


PRODUCTS = ("once", "digits")  # how a move writes a product (move_text; train_pretrain.py --countdown-products)


def move_text(a, op, b, value, left, products="once"):
    """One move as a step line. A sum or a difference is written at once (units digit first, each digit of it needs
    one column and a carry). A product is written at once (`once`), or (`digits`) worked through single-digit
    products when both numbers have more than one nonzero digit or one of them has two, the way arith's digits
    granularity works it (`21*17=20*10+1*10+20*7+1*7=200+10+140+7=210+147=357`): a move the model can compute rather
    than guess. Measured on the tiny model: 63% of the straight policy's countdown outputs held a move with wrong
    arithmetic, 4% of the reasoner's, trained on digits moves (README)."""
    equation = f"{a}{op}{b}={value}" if products == "once" else write_equation(a, op, b, value, "digits")
    return f"{equation};" + " ".join(str(n) for n in left)


def _state_text(numbers):
    return " ".join(str(n) for n in numbers)


def _write_steps(numbers, solution, products="once"):
    """Steps as text, and the answer: the expression tree of the last number made, printed.
    Each number left carries the tree that made it, keyed by the value the trace claims for it."""
    made = [(n, ("num", n)) for n in numbers]  # (claimed value, expression tree)
    steps = []
    for a, op, b, value, left in solution:
        tree_a = made.pop(next(k for k, (v, _) in enumerate(made) if v == a))[1]
        tree_b = made.pop(next(k for k, (v, _) in enumerate(made) if v == b))[1]
        made.append((value, (op, tree_a, tree_b)))
        steps.append(move_text(a, op, b, value, left, products))
    return steps, expr.to_text(made[-1][1])


# ----------------------------------------------------------------------------- search traces

def root_moves(numbers):
    """The moves a search trace tries from the problem itself, in its order -> [(order, move)], where move is
    (a, op, b, value, numbers_left) and order is how the undo line before the move writes the problem's numbers.

    A move combines the first two numbers of its order: their sum, the larger minus the smaller, their product (a
    difference of two equal numbers is not a move). After the three the order is rotated left (`5 21 16` -> `21 16 5`)
    and the next first two are combined: n rotations of n numbers pair every two neighbours on a circle, which is
    every pair of 3 numbers; the pairs of more numbers that are never neighbours follow, each written first with the
    other numbers after it in the problem's order (`a c b d`, `b d a c` for 4 numbers). So the next move to try is
    always read off the line just above it: the next operation on the first two numbers of the undo line, or after a
    product the first two numbers of a rotated copy of it."""
    numbers = tuple(numbers)
    n = len(numbers)
    orders = [numbers[k:] + numbers[:k] for k in range(n)]
    neighbours = {frozenset((k, (k + 1) % n)) for k in range(n)}
    for i in range(n):
        for j in range(i + 1, n):
            if frozenset((i, j)) not in neighbours:
                orders.append((numbers[i], numbers[j]) + tuple(x for k, x in enumerate(numbers) if k not in (i, j)))
    moves = []
    for order in orders:
        a, b, rest = order[0], order[1], order[2:]
        for op, x, y in (("+", a, b), ("-", max(a, b), min(a, b)), ("*", a, b)):
            value = combine(x, op, y)
            if value is not None:
                moves.append((order, (x, op, y, value, rest + (value,))))
    return moves


def chain_moves(state):
    """The moves that combine the number made last (the last of `state`) with one of the others: the sum, the larger
    minus the smaller, the product -> [(a, op, b, value, numbers_left)], the number made last written first."""
    newest, others = state[-1], state[:-1]
    moves = []
    for i, other in enumerate(others):
        rest = others[:i] + others[i + 1:]
        for op, x, y in (("+", newest, other), ("-", max(newest, other), min(newest, other)), ("*", newest, other)):
            value = combine(x, op, y)
            if value is not None:
                moves.append((x, op, y, value, rest + (value,)))
    return moves


def _nearness(move, target):
    """How far the number left nearest the target is from it, relative to the target (smaller is nearer)."""
    return min(abs(target - n) for n in move[4]) / target


def probe_move(state, target, rng):
    """The next move of a probe (search_solve) from a state below the problem itself. With two numbers left, the move
    whose result is nearest the target: the check, which makes the target whenever one move can. With more, a chain
    move (chain_moves) from which the target can still be reached, chosen at random among those (the exact solver
    decides); when there is none, the chain move that leaves a number nearest the target."""
    moves = chain_moves(state)
    if len(state) == 2:
        return min(moves, key=lambda m: abs(target - m[3]))
    alive = [m for m in moves if is_reachable(m[4], target)]
    return rng.choice(alive) if alive else min(moves, key=lambda m: _nearness(m, target))


def chain_answer(path):
    """The answer expression of a chain of moves, each after the first using the number the one before made; every
    number made is written in brackets where it is used: `4+8`, `(4+8)*2`, `30-((4+8)*2)`."""
    a, op, b, value, _ = path[0]
    text, made = f"{a}{op}{b}", value
    for a, op, b, value, _ in path[1:]:
        text = f"({text}){op}{b}" if a == made else f"{a}{op}({text})"
        made = value
    return text


def search_solve(problem, products="digits"):
    """A search trace: the search written out as the thinking (trace.py shows the bytes) -> (lines, answer).

    The moves from the problem itself are tried one after the other in the order of root_moves. Below each, a probe:
    one path of chain moves to a single number (probe_move), the last of them the check against the target. When it
    misses, an undo line names the move given up and the problem's numbers in the order of the next move, and the
    next move is tried; when it hits, the thinking ends and the answer is the path's chain (chain_answer). Every dead
    end of the trace is a real one (a miss that the check saw) and the probe below a move that can still reach the
    target always reaches it: the teacher knows (the solver), the model learns to guess it. A problem whose every
    solution needs two numbers made apart (`(a+b)*(c+d)`, about 5% of 4-number ones) is not found by chains: after
    the last root move it is solved straight from the problem (shortest_solution). Deterministic for a problem."""
    # BEGIN SOLUTION part 1
    numbers, target = parse_numbers(problem.text)
    if not is_reachable(numbers, target):
        raise ProblemError(f"{problem.text} has no solution")
    lines, tried = [], None
    for order, (a, op, b, value, left) in root_moves(numbers):
        if tried is not None:
            lines.append(undo_line(_state_text(order), tried))
        tried = f"{a}{op}{b}"
        rng = random.Random(f"probe {problem.text} {tried}")
        path, state = [(a, op, b, value, left)], left
        lines.append(move_text(a, op, b, value, left, products))
        while target not in state and len(state) > 1:
            path.append(probe_move(state, target, rng))
            lines.append(move_text(*path[-1], products))
            state = path[-1][4]
        if target in state:
            return lines, chain_answer(path)
    lines.append(undo_line(_state_text(numbers), tried))
    steps, answer = _write_steps(numbers, shortest_solution(numbers, target, random.Random(problem.text)), products)
    return lines + steps, answer
    # END SOLUTION


def check_step(numbers, line):
    """Is `line` a legal step from the numbers left? -> (is_legal, reason, numbers_after). Never raises."""
    if line.count(";") != 1 or "=" not in line or line.index("=") > line.index(";"):
        return False, "a step is 'a op b=c;numbers left'", None
    equation, left_text = line.split(";")
    links = equation.split("=")  # a op b = (worked-through links) = c
    lhs = links[0]
    try:
        chain = [expr.parse(link) for link in links]
    except expr.ExprError as error:
        return False, f"unreadable step ({error})", None
    operation, result = chain[0], chain[-1]
    if expr.count_ops(operation) != 1 or operation[1][0] != "num" or operation[2][0] != "num" or result[0] != "num":
        return False, "a step combines two numbers into one", None
    op, a, b = operation[0], operation[1][1], operation[2][1]
    value = combine(a, op, b)
    if value is None:
        return False, f"{lhs} breaks the rules (subtraction must stay positive)", None
    for link_text, link in zip(links[1:], chain[1:]):
        if expr.evaluate(link) != value:
            return False, f"wrong arithmetic: {lhs} is {value}, not {link_text}", None
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


def has_wrong_arithmetic(line):
    """Does `line` hold a step whose own arithmetic is wrong (`21*17=341`), whatever state it is written from?
    False for every other line, legal or not. Never raises."""
    if undone_state(line) is not None or line.count(";") != 1 or "=" not in line.split(";")[0]:
        return False
    links = line.split(";")[0].split("=")
    try:
        chain = [expr.parse(link) for link in links]
    except expr.ExprError:
        return False
    first = chain[0]
    if expr.count_ops(first) != 1 or first[1][0] != "num" or first[2][0] != "num":
        return False
    value = expr.evaluate(first)
    return any(expr.evaluate(link) != value for link in chain[1:])


def _one_move(text):
    """`a op b` -> (op, a, b), a sum or product's numbers in order so that `3+7` and `7+3` are one move; None for any
    other text. Never raises."""
    try:
        tree = expr.parse(text)
    except expr.ExprError:
        return None
    if expr.count_ops(tree) != 1 or tree[1][0] != "num" or tree[2][0] != "num":
        return None
    a, b = tree[1][1], tree[2][1]
    return (tree[0],) + (tuple(sorted((a, b))) if tree[0] in "+*" else (a, b))


def tried_move(numbers, line):
    """The move a move line tries from the state `numbers`, legal or not -> (sorted state, op, a, b), or None when
    there is no state (the walk is off the legal path) or the line does not start with `a op b`. Never raises."""
    if numbers is None or undone_state(line) is not None:
        return None
    move = _one_move(line.split(";")[0].split("=")[0])
    return None if move is None else (tuple(sorted(numbers)),) + move


def check_undo(reached, line, tried=()):
    """Is the undo `line` a return to a state in `reached` (a list of Counters), and the move it names (if any) one the
    thinking tried from that state (`tried`: tried_move of every move line so far)? -> (is_legal, reason, numbers).

    The move named is the one given up, so it must have been tried, legal or not: an attempt `19-22=7` (illegal) then
    `undo 19-22;19 22 16` is the search noticing its mistake and going back, which is what it is for; only the path
    the answer comes from must be legal (_walk). Never raises."""
    words = undone_state(line).split()
    if not words or not all(w.isascii() and w.isdigit() and len(w) <= 12 for w in words):
        return False, "an undo line names numbers: 'undo 3+7;3 7 6'", None
    numbers = tuple(int(w) for w in words)
    if Counter(numbers) not in reached:
        return False, f"undo to {' '.join(words)}: a state the thinking never reached", None
    move = undone_move(line)
    if move is not None:
        named = _one_move(move)
        if named is None:
            return False, f"undo {move[:20]}: the move undone is not one move, 'undo 3+7;3 7 6'", None
        if (tuple(sorted(numbers)),) + named not in tried:
            return False, f"undo {move}: a move the thinking never tried from {' '.join(words)}", None
    return True, "", numbers


def _walk(problem, lines):
    """Walk the lines (trace.py): per line (is_legal, reason, numbers_after, path_error), where numbers_after is the
    state the walk is in after the line (None once the current path holds an illegal line) and path_error names the
    first illegal line of the current path ("" while it has none). An undo line returns to a state reached legally and
    names a move tried from it (check_undo)."""
    numbers, _ = parse_numbers(problem.text)
    reached, tried = [Counter(numbers)], set()
    walk, path_error = [], ""
    for index, line in enumerate(lines):
        if undone_state(line) is not None:
            result = check_undo(reached, line, tried)
            path_error = "" if result[0] else f"step {index + 1}: {result[1]}"
        elif numbers is None:
            result = (False, "follows an illegal step", None)
        else:
            tried.add(tried_move(numbers, line))  # None for a line that is not `a op b`: never matched
            result = check_step(numbers, line)
            if not result[0]:
                path_error = f"step {index + 1}: {result[1]}"
        numbers = result[2]
        if numbers is not None:
            reached.append(Counter(numbers))
        walk.append(result + (path_error,))
    return walk


def step_labels(problem, steps):
    """Exact labels: line i is good when the state the walk is in after it was reached by legal lines and can still
    reach the target. In a straight trace: steps 1..i are legal and the target is reachable. In a search trace a move
    into a dead end is bad and the undo line back out of it good (trace.py)."""
    _, target = parse_numbers(problem.text)
    return [numbers is not None and is_reachable(numbers, target) for _, _, numbers, _ in _walk(problem, steps)]


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
    walk = _walk(problem, parsed.steps)
    if walk and walk[-1][2] is None:  # the path the answer comes from holds an illegal line
        return False, walk[-1][3], True
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
