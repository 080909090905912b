"""
`arith`: evaluate an integer expression one operation at a time.

Problem: an expression with `+ - *` and parentheses over operands 0..99, standard precedence, e.g. `7+38*2-15`.
Difficulty is the number of operations (1 to 6). Answer: the integer value (`68`).

Chain of thought: each step applies the next operation in evaluation order (the post-order of the expression tree:
`*` before `+ -`, left to right, parentheses first) and writes the expression that is left:

    38*2=76;7+76-15
    7+76=83;83-15
    83-15=68;68

The steps are shown, built and checked here in reading order; the model writes every number of its thinking units
digit first (`83*2=67;7+67-51`), and tasks/__init__.py flips between the two (trace.py explains why).

Two granularities. Coarse (above) does each operation in one equation. Fine works a multiplication of two
multi-digit numbers through partial products, the way it is done on paper, which spends more thinking tokens on the
hardest operation: `38*27=38*20+38*7=760+266=1026;...`. Both are checked the same way: every `=` in the chain joins
two expressions of equal value.

A step is *valid* when (1) its first equation is one operation on two numbers of the current expression and every `=`
in its chain holds, and (2) the expression it leaves is the current one with exactly that operation replaced by its
value. The exact step label used by the verifiers (prm.py) is prefix soundness: step i is good when steps 1..i are
all valid, which is exactly when the right answer can still be reached from there. The outcome verifier checks the
final answer against the exact value.

Generated problems keep every intermediate value within 4 digits (|v| <= 9999) so that a model of under a million
parameters can learn the arithmetic; a problem that a person types may hold any values the parser accepts.
"""
import random

from nano_reasoner.tasks import expr
from nano_reasoner.tasks.trace import ParsedCompletion, Problem, ProblemError, Verdict, parse_completion

TASK = "arith"
CHECKABLE_AT_TEST_TIME = False  # checking an answer means computing it: no test-time checker
DIFFICULTIES = (1, 2, 3, 4, 5, 6)
MAX_OPERAND = 99
MAX_INTERMEDIATE = 9999


# ----------------------------------------------------------------------------- problems

def _random_tree(n_ops, rng):
    if n_ops == 0:
        return ("num", rng.randint(0, MAX_OPERAND))
    n_left = rng.randint(0, n_ops - 1)
    return (rng.choice("+-*"), _random_tree(n_left, rng), _random_tree(n_ops - 1 - n_left, rng))


def _reductions(tree):
    """The canonical solution: a list of (path, x, op, y, value, tree_after) in evaluation order."""
    reductions = []
    while tree[0] != "num":
        path = expr.first_reducible(tree)
        op, left, right = expr.subtree(tree, path)
        value = expr.evaluate((op, left, right))
        tree = expr.replace(tree, path, ("num", value))
        reductions.append((path, left[1], op, right[1], value, tree))
    return reductions


def generate(n, seed, difficulties=DIFFICULTIES):
    """n problems, difficulties drawn uniformly from `difficulties`, reproducible from seed."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        n_ops = rng.choice(difficulties)
        text = expr.to_text(_random_tree(n_ops, rng))
        tree = expr.parse(text)  # the tree the text means, which is the one every step reduces
        if all(abs(step[4]) <= MAX_INTERMEDIATE for step in _reductions(tree)):
            problems.append(Problem(TASK, text, n_ops))
    return problems


def parse_problem(text):
    """A problem as a person typed it -> Problem, or ProblemError saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ProblemError("empty problem: give an expression such as 7+38*2-15")
    try:
        tree = expr.parse(text.strip())
    except expr.ExprError as error:
        raise ProblemError(f"not an arith problem ({error}): give an expression such as 7+38*2-15") from None
    if tree[0] == "num":
        raise ProblemError("nothing to compute: give at least one operation, such as 7+38*2-15")
    return Problem(TASK, expr.to_text(tree), expr.count_ops(tree))


def answer_of(problem):
    return expr.evaluate(expr.parse(problem.text))


# ----------------------------------------------------------------------------- traces

def _equation(x, op, y, value, fine):
    """'38*27=1026' (coarse) or '38*27=38*20+38*7=760+266=1026' (fine)."""
    head = f"{x}{op}{y}"
    if not (fine and op == "*" and x >= 10 and y >= 10):
        return f"{head}={value}"
    digits = str(y)
    parts = [int(d) * 10 ** (len(digits) - 1 - k) for k, d in enumerate(digits) if d != "0"]
    if len(parts) < 2:
        return f"{head}={value}"
    products = "+".join(f"{x}*{part}" for part in parts)
    partials = "+".join(str(x * part) for part in parts)
    return f"{head}={products}={partials}={value}"


def solve(problem, fine=False):
    """The exact chain of thought: (steps, answer)."""
    steps = []
    for _, x, op, y, value, tree_after in _reductions(expr.parse(problem.text)):
        steps.append(f"{_equation(x, op, y, value, fine)};{expr.to_text(tree_after)}")
    return steps, str(answer_of(problem))


def check_step(tree, line):
    """Is `line` a valid next step from expression `tree`? -> (is_valid, reason, tree_after). Never raises."""
    if tree[0] == "num":
        return False, "a step after the expression was already a number", None
    if line.count(";") != 1:
        return False, "a step is 'equation;expression left'", None
    chain_text, state_text = line.split(";")
    links = chain_text.split("=")
    if len(links) < 2:
        return False, "the step has no '='", None
    try:
        chain = [expr.parse(link) for link in links]
        state = expr.parse(state_text)
    except expr.ExprError as error:
        return False, f"unreadable step ({error})", None
    first = chain[0]
    if expr.count_ops(first) != 1 or first[1][0] != "num" or first[2][0] != "num":
        return False, "the step does not start with one operation on two numbers", None
    if chain[-1][0] != "num":
        return False, "the step's equation does not end in a number", None
    value = expr.evaluate(first)
    for link_text, link in zip(links[1:], chain[1:]):
        if expr.evaluate(link) != value:
            return False, f"wrong arithmetic: {links[0]} is {value}, not {link_text}", None
    # the state must be the previous expression with exactly one occurrence of this operation replaced by its value
    for path in _reducible_paths(tree):
        if expr.subtree(tree, path) == first and expr.replace(tree, path, ("num", value)) == state:
            return True, "", state
    return False, "the expression left does not follow from the previous one", None


def _reducible_paths(tree, path=()):
    if tree[0] == "num":
        return []
    if tree[1][0] == "num" and tree[2][0] == "num":
        return [path]
    return _reducible_paths(tree[1], path + (1,)) + _reducible_paths(tree[2], path + (2,))


def step_labels(problem, steps):
    """Exact labels: step i is good when steps 1..i are all valid (the prefix can still reach the answer)."""
    tree = expr.parse(problem.text)
    labels = []
    for line in steps:
        is_valid, _, tree_after = check_step(tree, line) if tree is not None else (False, "", None)
        labels.append(is_valid)
        tree = tree_after
    return labels


def verify(problem, completion):
    """Outcome verifier: is the final answer the exact value? Never raises; says why when it rejects."""
    parsed = completion if isinstance(completion, ParsedCompletion) else parse_completion(completion)
    step_ok = step_labels(problem, parsed.steps)
    if not parsed.is_well_formed:
        return Verdict(False, parsed.answer, parsed.reason, False, step_ok)
    try:
        answer_tree = expr.parse(parsed.answer)
    except expr.ExprError as error:
        return Verdict(False, parsed.answer, f"the answer is not a number ({error})", True, step_ok)
    if answer_tree[0] != "num":
        return Verdict(False, parsed.answer, "the answer is an expression, not a number", True, step_ok)
    expected = answer_of(problem)
    if answer_tree[1] != expected:
        return Verdict(False, parsed.answer, f"wrong answer: expected {expected}", True, step_ok)
    return Verdict(True, parsed.answer, "", True, step_ok)


def corrupt(problem, rng, fine=False):
    """A trace with one wrong step and a consistent continuation from it: (steps, answer, index of the bad step).

    The mistake is either wrong arithmetic (the value is off, and the wrong value is carried on) or a copying slip
    (the arithmetic is right but another number of the expression is miscopied). Later steps are valid from the
    wrong state, so only the step labels, not a local check of later lines, reveal that the solution is lost."""
    tree = expr.parse(problem.text)
    reductions = _reductions(tree)
    bad_index = rng.randrange(len(reductions))
    steps = []
    for index in range(bad_index):
        _, x, op, y, value, tree = reductions[index]
        steps.append(f"{_equation(x, op, y, value, fine)};{expr.to_text(tree)}")
    path = expr.first_reducible(tree)
    op, left, right = expr.subtree(tree, path)
    value = expr.evaluate((op, left, right))
    delta = rng.choice([-10, -2, -1, 1, 2, 10, rng.randint(3, 9)])
    after = expr.replace(tree, path, ("num", value))
    others = [p for p in _leaf_paths(after) if p != path]
    if others and rng.random() < 0.3:
        slip = rng.choice(others)
        after = expr.replace(after, slip, ("num", expr.subtree(after, slip)[1] + delta))
        line = f"{_equation(left[1], op, right[1], value, fine)};{expr.to_text(after)}"
    else:
        after = expr.replace(tree, path, ("num", value + delta))
        line = f"{left[1]}{op}{right[1]}={value + delta};{expr.to_text(after)}"
    steps.append(line)
    for _, x, op, y, value, tree_after in _reductions(after):
        steps.append(f"{_equation(x, op, y, value, fine)};{expr.to_text(tree_after)}")
    return steps, str(expr.evaluate(after)), bad_index


def _leaf_paths(tree, path=()):
    if tree[0] == "num":
        return [path]
    return _leaf_paths(tree[1], path + (1,)) + _leaf_paths(tree[2], path + (2,))
