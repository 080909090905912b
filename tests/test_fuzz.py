"""
Fuzz the code that reads untrusted text: the trace parser, both task verifiers, step labels, problem parsing and the
expression parser. Everything a model writes (and everything a person types) goes through these functions, so they
must never raise, never hang, and say why when they reject.

Inputs come from hypothesis (property-based testing): random unicode and bytes, a soup of the characters and markers
the formats use, steps with huge numbers, and correct traces with random edits, which reach deep into the checks.
Hypothesis runs derandomized (the same inputs every run, as CI should) and keeps no example database.
"""
import random
import re
import time

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nano_reasoner import tasks
from nano_reasoner.tasks import END_THINK, THINK, ParsedCompletion, ProblemError, Verdict, arith, countdown, expr
from nano_reasoner.tasks import format_completion, parse_completion

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Drawing structured text costs hypothesis far more time than verifying it, so each drawn completion is also cut and
# spliced into MUTATIONS cheap variants with a seeded generator that hypothesis draws: 500 x (1 + 20) = 10,500 inputs
# per task verifier in a few seconds.
VERIFIER_EXAMPLES = 500
MUTATIONS = 20

PROBLEMS = {"arith": tasks.generate("arith", 24, seed=5), "countdown": tasks.generate("countdown", 24, seed=5)}
CORRECT = {task: [tasks.format_completion(*tasks.solve(p, tasks.GRANULARITIES[i % 3])) for i, p in enumerate(problems)]
           for task, problems in PROBLEMS.items()}

# the characters and markers the formats are built from, plus things that must never be executed or trusted
PIECES = list("0123456789+-*()=; \n") + [THINK, END_THINK, "->", "-0", "00", "99999999999", "9" * 40, "1e5", "__import__('os')",
                                          "\x00", "é", "²", "٣", "\ud800", "\r", "\t", "=" * 30, ";" * 30, "(" * 45, ")" * 45]
ADVERSARIAL = [
    "x" * (1 << 20),                                            # a 1 MB string
    "(" * 100_000 + "1" + ")" * 100_000,                        # nesting deeper than any recursion limit
    "9" * 100_000,                                              # a 100,000-digit number
    "__import__('os').getcwd()",                                # code, which must never run
    "=\n" * 5_000, ";\n" * 5_000, "\n" * 19_000,                # lines of only '=' or ';', empty lines
    "1+1=2;2\n" * 2_400 + "</think>\n2",                        # many steps
    ("1+1=" + "2=" * 2_000 + "2;2\n") + "</think>\n2",          # one step with a very long chain of '='
    "2+3=5;" + " ".join(["5"] * 3_000) + "\n</think>\n5",       # a step that leaves thousands of numbers
    "</think>\n" + "1" + "*99" * 40,                            # an answer with every operation allowed
    "</think>\n" + "-" * 300 + "1",                             # an answer of many signs
    "</think>\n\ud800",                                         # a lone surrogate (not encodable as UTF-8)
]
ADVERSARIAL_BYTES = [b"\xff\xfe\x00</think>\n\xc3", b"\x80" * 1000, "1+1=2;2\n</think>\n2".encode("utf-16")]


def edited(text, edits):
    """Apply (position, kind, piece) edits to a correct completion: the near-misses a model makes."""
    for position, kind, piece in edits:
        i = position % (len(text) + 1)
        if kind == "insert":
            text = text[:i] + piece + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + len(piece):]
        else:
            text = text[:i] + piece + text[i + 1:]
    return text


numbers = st.integers(-10 ** 15, 10 ** 15) | st.integers(0, 30)
step_lines = st.builds(lambda a, op, b, c, left: f"{a}{op}{b}={c};{left}", numbers, st.sampled_from("+-*/x"),
                       numbers, numbers, st.lists(numbers, max_size=7).map(lambda ns: " ".join(map(str, ns))))
soup = st.lists(st.sampled_from(PIECES), max_size=60).map("".join)
lines = st.one_of(step_lines, soup, st.text(max_size=40))


def completions(task):
    """Text, bytes and near-correct traces, weighted towards inputs that get past the first checks."""
    near_correct = st.builds(edited, st.sampled_from(CORRECT[task]),
                             st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(["insert", "delete", "replace"]),
                                                st.sampled_from(PIECES)), min_size=1, max_size=4))
    structured = st.builds(lambda steps, answer: format_completion(steps, answer), st.lists(lines, max_size=8), lines)
    return st.one_of(near_correct, near_correct, structured, soup, st.text(max_size=300), st.binary(max_size=300))


def check_verdict(problem, completion, verdict):
    """What every verdict must satisfy, whatever the input."""
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.is_correct, bool) and isinstance(verdict.is_well_formed, bool)
    assert verdict.is_correct == (verdict.reason == ""), "a rejection always says why; an acceptance never does"
    assert isinstance(verdict.reason, str) and "\n" not in verdict.reason
    assert len(verdict.step_ok) == len(parse_completion(completion).steps)
    assert all(isinstance(ok, bool) for ok in verdict.step_ok)
    if verdict.is_correct:
        assert verdict.is_well_formed
        check_really_correct(problem, verdict.answer)


def check_really_correct(problem, answer):
    """An accepted answer, checked by a second route that does not use the verifier's code."""
    if problem.task == "arith":
        assert int(answer) == arith.answer_of(problem)
        return
    given_numbers, _ = countdown.parse_numbers(problem.text)
    assert set(answer) <= set("0123456789+-*() ")
    used = [int(n) for n in re.findall(r"\d+", answer)]
    assert used and all(used.count(n) <= given_numbers.count(n) for n in used), "only given numbers, each at most once"


def check_labels(problem, steps):
    labels = tasks.step_labels(problem, steps)
    assert len(labels) == len(steps) and all(isinstance(label, bool) for label in labels)
    # prefix soundness: once a prefix cannot reach the answer, no later step can make it sound again
    assert all(not later for earlier, later in zip(labels, labels[1:]) if not earlier)


def mutations(completion, rng):
    """Cheap variants of a drawn completion: random pieces inserted, spans deleted or replaced, lines duplicated."""
    variants = []
    for _ in range(MUTATIONS):
        if isinstance(completion, bytes):
            i = rng.randrange(len(completion) + 1)
            variants.append(completion[:i] + rng.randbytes(rng.randint(1, 4)) + completion[i + rng.randint(0, 3):])
            continue
        text = completion
        for _ in range(rng.randint(1, 3)):
            kind = rng.choice(["insert", "delete", "replace", "duplicate line"])
            if kind == "duplicate line":
                line_list = text.split("\n")
                line_list.insert(rng.randrange(len(line_list) + 1), rng.choice(line_list))
                text = "\n".join(line_list)
            else:
                text = edited(text, [(rng.randrange(len(text) + 1), kind, rng.choice(PIECES))])
        variants.append(text)
    return variants


def fuzz_verifier(task, problem_index, completion, rng):
    problem = PROBLEMS[task][problem_index]
    for variant in [completion] + mutations(completion, rng):
        verdict = tasks.verify(problem, variant)
        check_verdict(problem, variant, verdict)
        if tasks.checkable_at_test_time(task):
            # the test-time checker, which never consults the solver, agrees with the verifier
            assert tasks.check(problem, variant) == verdict.is_correct


@settings(FUZZ, max_examples=VERIFIER_EXAMPLES)
@given(st.integers(0, 23), completions("arith"), st.randoms(use_true_random=False))
@example(0, ";=\n</think>\n1", random.Random(0))
def test_arith_verifier_never_raises_and_always_gives_a_reason(problem_index, completion, rng):
    fuzz_verifier("arith", problem_index, completion, rng)


@settings(FUZZ, max_examples=VERIFIER_EXAMPLES)
@given(st.integers(0, 23), completions("countdown"), st.randoms(use_true_random=False))
@example(0, ";=\n</think>\n1", random.Random(0))  # regression: '=' after ';' crashed check_step
def test_countdown_verifier_never_raises_and_always_gives_a_reason(problem_index, completion, rng):
    fuzz_verifier("countdown", problem_index, completion, rng)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(list(tasks.TASKS)), st.integers(0, 23), st.lists(lines, max_size=12))
def test_step_labels_never_raise_and_are_prefix_sound(task, problem_index, steps):
    check_labels(PROBLEMS[task][problem_index], steps)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.text(max_size=20).filter(lambda s: "\n" not in s and THINK not in s and END_THINK not in s),
                max_size=8),
       st.text(min_size=1, max_size=20).map(str.strip).filter(lambda s: s and "\n" not in s))
def test_parse_completion_round_trips_what_format_completion_writes(steps, answer):
    parsed = parse_completion(format_completion(steps, answer))
    assert parsed == ParsedCompletion(steps, answer, True, "")


@settings(FUZZ, max_examples=500)
@given(st.one_of(soup, st.text(max_size=200), st.binary(max_size=200)))
def test_parse_completion_never_raises_and_explains_rejections(completion):
    parsed = parse_completion(completion)
    assert parsed.is_well_formed == (parsed.reason == "")
    assert all("\n" not in step for step in parsed.steps)
    if parsed.is_well_formed:
        assert parsed.answer and "\n" not in parsed.answer


@settings(FUZZ, max_examples=500)
@given(st.one_of(soup, st.text(max_size=100)))
@example("7+38*2-15")
@example("-5*-3--2")
def test_expression_parser_accepts_or_raises_expr_error_only(text):
    try:
        tree = expr.parse(text)
    except expr.ExprError as error:
        assert str(error)
        return
    assert expr.parse(expr.to_text(tree)) == tree, "printing then parsing gives the same tree back"
    assert isinstance(expr.evaluate(tree), int)


@settings(FUZZ, max_examples=500)
@given(st.sampled_from(list(tasks.TASKS)), st.one_of(soup, st.text(max_size=100),
                                                     st.lists(numbers, max_size=8).map(lambda ns: " ".join(map(str, ns)) + " -> 24")))
@example("arith", "7+")
@example("countdown", "3 7 -> x")
@example("countdown", "")
def test_problem_parser_accepts_or_raises_problem_error_only(task, text):
    try:
        problem = tasks.parse_problem(task, text)
    except ProblemError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert tasks.parse_problem(task, problem.text) == problem, "a parsed problem's text is already normal"


def test_adversarial_inputs_are_rejected_quickly_with_a_reason():
    t_start = time.time()
    for task, problems in PROBLEMS.items():
        for problem in problems[:4]:
            for completion in ADVERSARIAL + ADVERSARIAL_BYTES:
                verdict = tasks.verify(problem, completion)
                check_verdict(problem, completion, verdict)
                assert not verdict.is_correct
                check_labels(problem, parse_completion(completion).steps)
    for text in ADVERSARIAL:
        for parse in (expr.parse, lambda t: tasks.parse_problem("arith", t), lambda t: tasks.parse_problem("countdown", t)):
            try:
                parse(text)
            except (expr.ExprError, ProblemError) as error:
                assert str(error)
    # 128 verifier calls on inputs up to 1 MB take well under a second: every input is bounded before any real work.
    # The bound is loose for loaded CI machines; a parser that recursed or scanned quadratically would take minutes
    assert time.time() - t_start < 10


def test_code_in_model_output_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for task, problems in PROBLEMS.items():
        for completion in (payload, f"{payload};1\n{END_THINK}\n{payload}", f"{END_THINK}\n{payload}"):
            verdict = tasks.verify(problems[0], completion)
            assert not verdict.is_correct and verdict.reason
    for parse in (expr.parse, lambda t: tasks.parse_problem("arith", t), lambda t: tasks.parse_problem("countdown", t)):
        try:
            parse(payload)
        except (expr.ExprError, ProblemError):
            pass
    assert not marker.exists()
