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

Three granularities, which spend more and more thinking tokens on the hardest operation, the product:
- coarse (above) does each operation in one equation;
- fine works a product of two multi-digit numbers through partial products, one per digit of the right operand,
  the way it is done on paper: `38*27=38*20+38*7=760+266=1026;...`;
- digits (what the presets train on) goes down to single-digit products, so that every product the model writes at
  once is a fact from the times table, and every carry is done by an addition:
  `38*27=30*20+8*20+30*7+8*7=600+160+210+56=760+266=1026`, and `76*9=70*9+6*9=630+54=684`. The tiny model trained on fine traces writes `76*9=684` in one go and gets the
  tens digit wrong about half the time: it must add the carry of 6*9 to 7*9 in one token. Trained on digits traces,
  it solves 1-operation problems almost always. The training traces of both tasks together grow from 64 to 70
  tokens on average, which the 10-minute tiny preset pays for with fewer steps (README, stage 2). Signs stay with
  the digits: `-13*4=-10*4+-3*4=-40+-12=-52`.
All are checked the same way: every `=` in the chain joins two expressions of equal value.

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
from nano_reasoner.tasks.trace import (ParsedCompletion, Problem, ProblemError, Verdict, parse_completion, undo_line,
                                       undone_state)

TASK = "arith"
CHECKABLE_AT_TEST_TIME = False  # checking an answer means computing it: no test-time checker
DIFFICULTIES = (1, 2, 3, 4, 5, 6)
GRANULARITIES = ("coarse", "fine", "digits")  # how finely a product is worked through (module docstring)
MAX_OPERAND = 99
MAX_INTERMEDIATE = 9999


# ----------------------------------------------------------------------------- problems

def random_tree(n_ops, rng, operands=(0, MAX_OPERAND)):
    """A random expression tree with n_ops operations over operands in the inclusive range `operands` (its shape
    uniform at each split)."""
    if n_ops == 0:
        return ("num", rng.randint(*operands))
    n_left = rng.randint(0, n_ops - 1)
    return (rng.choice("+-*"), random_tree(n_left, rng, operands), random_tree(n_ops - 1 - n_left, rng, operands))


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


def generate(n, seed, difficulties=DIFFICULTIES, operands=None):
    """n problems, reproducible from seed. Default operands (0..MAX_OPERAND): each problem's difficulty is drawn
    uniformly from `difficulties` and a problem whose intermediate values leave the bound is drawn again from the
    start, which makes the long problems a little rarer. operands=(low, high): numbers in that inclusive range, the
    difficulties taken in turn and a problem redrawn at the same difficulty until it fits, so that every difficulty has
    its share; (100, 999) is the shifted domain of domain adaptation (nano_reasoner/lora.py), where the 4-digit bound
    leaves a product only where one side is a small difference (1% of the problems)."""
    rng = random.Random(seed)
    problems = []
    while len(problems) < n:
        if operands is None:
            n_ops = rng.choice(difficulties)
            text = expr.to_text(random_tree(n_ops, rng))
        else:
            n_ops = difficulties[len(problems) % len(difficulties)]
            text = expr.to_text(random_tree(n_ops, rng, operands))
            while not within_bounds(expr.parse(text)):
                text = expr.to_text(random_tree(n_ops, rng, operands))
        tree = expr.parse(text)  # the tree the text means, which is the one every step reduces
        if within_bounds(tree):
            problems.append(Problem(TASK, text, n_ops))
    return problems


def within_bounds(tree):
    """Does every intermediate value of the solution stay within MAX_INTERMEDIATE (what generated problems keep)?"""
    return all(abs(step[4]) <= MAX_INTERMEDIATE for step in _reductions(tree))


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

def _digit_parts(n):
    """n as a sum of its nonzero digits at their place values, sign kept: 305 -> [300, 5], -38 -> [-30, -8]."""
    sign = -1 if n < 0 else 1
    digits = str(abs(n))
    return [sign * int(d) * 10 ** (len(digits) - 1 - k) for k, d in enumerate(digits) if d != "0"] or [0]


def write_equation(x, op, y, value, granularity):
    """One operation written at a granularity (module docstring): '38*27=1026' (coarse),
    '38*27=38*20+38*7=760+266=1026' (fine), '38*27=30*20+8*20+30*7+8*7=600+160+210+56=760+266=1026' (digits)."""
    head = f"{x}{op}{y}"
    if op != "*" or granularity == "coarse":
        return f"{head}={value}"
    if granularity == "fine":
        parts = _digit_parts(y) if x >= 10 and y >= 10 else []
        if len(parts) < 2:
            return f"{head}={value}"
        return f"{head}={'+'.join(f'{x}*{b}' for b in parts)}={'+'.join(str(x * b) for b in parts)}={value}"
    x_parts, y_parts = _digit_parts(x), _digit_parts(y)
    if len(x_parts) * len(y_parts) < 2 or value == 0:  # 7*8, 30*4, 0*55: a fact, written at once
        return f"{head}={value}"
    pairs = [(a, b) for b in y_parts for a in x_parts]
    links = [head, "+".join(f"{a}*{b}" for a, b in pairs), "+".join(str(a * b) for a, b in pairs)]
    if len(x_parts) > 1 and len(y_parts) > 1:  # sum the products row by row first: 760+266, one row per digit of y
        links.append("+".join(str(x * b) for b in y_parts))
    return "=".join(links + [str(value)])


def _check_granularity(granularity):
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")


def solve(problem, granularity="coarse"):
    """The exact chain of thought at a granularity (GRANULARITIES): (steps, answer)."""
    _check_granularity(granularity)
    steps = []
    for _, x, op, y, value, tree_after in _reductions(expr.parse(problem.text)):
        steps.append(f"{write_equation(x, op, y, value, granularity)};{expr.to_text(tree_after)}")
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


def check_undo(reached, line):
    """Is the undo `line` a return to an expression in `reached`? -> (is_valid, reason, tree). Never raises."""
    try:
        tree = expr.parse(undone_state(line))
    except expr.ExprError as error:
        return False, f"unreadable undo line ({error})", None
    if tree not in reached:
        return False, "an undo line to an expression the thinking never reached", None
    return True, "", tree


def step_labels(problem, steps):
    """Exact labels: line i is good when the expression the walk is in after it was reached by valid lines (then the
    right answer can still be reached from it). In a straight trace: steps 1..i are all valid. An undo line
    (trace.py) returns to an expression reached earlier, so in a retry trace the slip is bad and the undo line good."""
    tree = expr.parse(problem.text)
    reached, labels = [tree], []
    for line in steps:
        if undone_state(line) is not None:
            is_valid, _, tree = check_undo(reached, line)
        elif tree is not None:
            is_valid, _, tree = check_step(tree, line)
        else:
            is_valid = False
        if is_valid:
            reached.append(tree)
        labels.append(is_valid)
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


RETRY_SHARE = 0.2  # the share of steps a retry trace gets wrong first (train_pretrain.py --retry-share)


def slip(value, rng):
    """A plausible wrong result, the kind the policy really writes: a carry dropped (the value short by a power of
    ten where a digit carried) or one digit wrong (most often the leading one). Never the value itself."""
    digits = str(abs(value))
    sign = -1 if value < 0 else 1
    if len(digits) > 1 and rng.random() < 0.5:
        wrong = abs(value) - 10 ** rng.randrange(1, len(digits))  # a dropped carry
    else:
        position = 0 if rng.random() < 0.5 else rng.randrange(len(digits))
        replacement = rng.choice([d for d in "0123456789" if d != digits[position]])
        wrong = int(digits[:position] + replacement + digits[position + 1:])
    wrong = sign * wrong
    return wrong if wrong != value else value + 1


def retry_solve(problem, granularity="coarse", share=RETRY_SHARE):
    """A retry trace (trace.py): the exact chain of thought, where a `share` of the steps is first written with a
    slip in its result (carried into the expression it leaves, as a real slip would be), then an undo line back to
    the expression before it, then the right step. -> (lines, answer). Deterministic for a problem.

    "Physics of Language Models 2.2" (Ye et al., arXiv 2408.16293) pre-trains on such retry data, wrong steps
    unmasked, and the model learns to notice its own mistakes and go back; light fine-tuning on it gained little."""
    _check_granularity(granularity)
    rng = random.Random("retry " + problem.text)
    tree = expr.parse(problem.text)
    lines = []
    for path, x, op, y, value, tree_after in _reductions(tree):
        if rng.random() < share:
            wrong = slip(value, rng)
            wrong_line = write_equation(x, op, y, value, granularity).rsplit("=", 1)[0] + f"={wrong}"
            lines.append(f"{wrong_line};{expr.to_text(expr.replace(tree, path, ('num', wrong)))}")
            lines.append(undo_line(expr.to_text(tree)))
        lines.append(f"{write_equation(x, op, y, value, granularity)};{expr.to_text(tree_after)}")
        tree = tree_after
    return lines, str(answer_of(problem))


def corrupt(problem, rng, granularity="coarse"):
    """A trace with one wrong step and a consistent continuation from it: (steps, answer, index of the bad step).

    The mistake is either wrong arithmetic (the value is off, and the wrong value is carried on) or a copying slip
    (the arithmetic is right but another number of the expression is miscopied). Later steps are valid from the
    wrong state, so only the step labels, not a local check of later lines, reveal that the solution is lost."""
    _check_granularity(granularity)
    tree = expr.parse(problem.text)
    reductions = _reductions(tree)
    bad_index = rng.randrange(len(reductions))
    steps = []
    for index in range(bad_index):
        _, x, op, y, value, tree = reductions[index]
        steps.append(f"{write_equation(x, op, y, value, granularity)};{expr.to_text(tree)}")
    path = expr.first_reducible(tree)
    op, left, right = expr.subtree(tree, path)
    value = expr.evaluate((op, left, right))
    delta = rng.choice([-10, -2, -1, 1, 2, 10, rng.randint(3, 9)])
    after = expr.replace(tree, path, ("num", value))
    others = [p for p in _leaf_paths(after) if p != path]
    if others and rng.random() < 0.3:
        slip = rng.choice(others)
        after = expr.replace(after, slip, ("num", expr.subtree(after, slip)[1] + delta))
        line = f"{write_equation(left[1], op, right[1], value, granularity)};{expr.to_text(after)}"
    else:
        after = expr.replace(tree, path, ("num", value + delta))
        line = f"{left[1]}{op}{right[1]}={value + delta};{expr.to_text(after)}"
    steps.append(line)
    for _, x, op, y, value, tree_after in _reductions(after):
        steps.append(f"{write_equation(x, op, y, value, granularity)};{expr.to_text(tree_after)}")
    return steps, str(expr.evaluate(after)), bad_index


def _leaf_paths(tree, path=()):
    if tree[0] == "num":
        return [path]
    return _leaf_paths(tree[1], path + (1,)) + _leaf_paths(tree[2], path + (2,))
