import random

import pytest

from nano_reasoner import tasks
from nano_reasoner.tasks import arith, countdown, expr, format_completion, Problem, ProblemError


def arith_problem(text):
    return arith.parse_problem(text)


def countdown_problem(text):
    return countdown.parse_problem(text)


# ----------------------------------------------------------------------------- expressions

def test_expression_precedence_and_left_associativity():
    assert expr.evaluate(expr.parse("7+38*2-15")) == 68
    assert expr.evaluate(expr.parse("9-3-2")) == 4
    assert expr.evaluate(expr.parse("2*(3+4)")) == 14
    assert expr.evaluate(expr.parse("5*-3")) == -15
    assert expr.evaluate(expr.parse("15--23")) == 38


def test_to_text_round_trips_the_tree():
    for text in ["1-(2-3)", "(1+2)*3", "1+(2+3)", "2*(3*4)", "-5*3", "1-(-2+3)"]:
        tree = expr.parse(text)
        assert expr.parse(expr.to_text(tree)) == tree
    assert expr.to_text(expr.parse("((1+2))*3")) == "(1+2)*3"


@pytest.mark.parametrize("text", ["", "7+", "1+(2", "2)", "__import__('os')", "1e5", "9" * 13, "(" * 50 + "1" + ")" * 50, "1" + "+1" * 41, "²+1"])
def test_expression_parser_rejects_with_a_reason(text):
    with pytest.raises(expr.ExprError) as error:
        expr.parse(text)
    assert str(error.value)


# ----------------------------------------------------------------------------- arith

def test_arith_solution_reduces_in_precedence_order():
    steps, answer = arith.solve(arith_problem("7+38*2-15"))
    assert steps == ["38*2=76;7+76-15", "7+76=83;83-15", "83-15=68;68"]
    assert answer == "68"


def test_arith_fine_granularity_works_through_partial_products():
    steps, answer = arith.solve(arith_problem("38*27+1"), "fine")
    assert steps[0] == "38*27=38*20+38*7=760+266=1026;1026+1"
    assert answer == "1027"
    assert arith.verify(arith_problem("38*27+1"), format_completion(steps, answer)).is_correct


def test_arith_digits_granularity_works_through_single_digit_products():
    steps, answer = arith.solve(arith_problem("38*27+1"), "digits")
    assert steps[0] == "38*27=30*20+8*20+30*7+8*7=600+160+210+56=760+266=1026;1026+1"
    assert arith.verify(arith_problem("38*27+1"), format_completion(steps, answer)).is_correct
    assert arith.solve(arith_problem("76*9"), "digits")[0] == ["76*9=70*9+6*9=630+54=684;684"]
    assert arith.solve(arith_problem("(2-15)*4"), "digits")[0][1] == "-13*4=-10*4+-3*4=-40+-12=-52;-52"
    # a times-table fact, or a product of zero, is written at once
    for text in ("7*8", "30*4", "0*55"):
        assert arith.solve(arith_problem(text), "digits") == arith.solve(arith_problem(text), "coarse")
    # one wrong single-digit product anywhere in the chain makes the step wrong
    problem = arith_problem("76*9")
    wrong = "76*9=70*9+6*9=630+44=674;674\n</think>\n674"
    verdict = arith.verify(problem, wrong)
    assert not verdict.is_correct and verdict.step_ok == [False] and "wrong arithmetic" in arith.check_step(
        expr.parse("76*9"), wrong.split("\n")[0])[1]
    with pytest.raises(ValueError, match="granularity"):
        arith.solve(problem, "finest")


def test_arith_verifier_verdicts():
    problem = arith_problem("7+38*2-15")
    good = "38*2=76;7+76-15\n7+76=83;83-15\n83-15=68;68\n</think>\n68"
    assert arith.verify(problem, good).is_correct
    wrong = arith.verify(problem, good.replace("\n68", "\n69").replace("68;69", "68;68"))
    assert not wrong.is_correct and "expected 68" in wrong.reason
    no_end = arith.verify(problem, "38*2=76;7+76-15\n")
    assert not no_end.is_correct and not no_end.is_well_formed and no_end.reason


def test_arith_step_labels_on_a_hand_written_trace():
    problem = arith_problem("7+38*2-15")
    steps = ["38*2=76;7+76-15", "7+76=84;84-15", "84-15=69;69"]  # a slip at step 2, then consistent
    assert arith.step_labels(problem, steps) == [True, False, False]
    copied_wrong = ["38*2=76;7+75-15", "7+75=82;82-15"]  # right arithmetic, miscopied state
    assert arith.step_labels(problem, copied_wrong) == [False, False]
    out_of_order = arith_problem("2*3+4*5")
    assert arith.step_labels(out_of_order, ["4*5=20;2*3+20", "2*3=6;6+20", "6+20=26;26"]) == [True, True, True]
    assert arith.step_labels(problem, ["7+38=45;45*2-15"]) == [False]  # ignores precedence


def test_arith_generator_is_seeded_and_respects_difficulty():
    first = arith.generate(50, seed=7, difficulties=(3,))
    assert first == arith.generate(50, seed=7, difficulties=(3,))
    assert all(expr.count_ops(expr.parse(p.text)) == 3 == p.difficulty for p in first)
    assert all(abs(v[4]) <= arith.MAX_INTERMEDIATE for p in first for v in arith._reductions(expr.parse(p.text)))


def test_arith_corrupted_traces_are_labelled_bad_from_the_mistake_on():
    rng = random.Random(0)
    for problem in arith.generate(200, seed=3):
        for granularity in arith.GRANULARITIES:
            steps, answer, bad = arith.corrupt(problem, rng, granularity)
            assert arith.step_labels(problem, steps) == [i < bad for i in range(len(steps))]


# ----------------------------------------------------------------------------- countdown

def test_countdown_verifier_accepts_a_legal_solution():
    problem = countdown_problem("3 7 25 19 -> 63")
    completion = "25-19=6;3 7 6\n6+3=9;7 9\n7*9=63;63\n</think>\n7*(25-19+3)"
    verdict = countdown.verify(problem, completion)
    assert verdict.is_correct and verdict.step_ok == [True, True, True]


def test_countdown_target_after_bad_arithmetic_scores_zero():
    problem = countdown_problem("3 7 25 19 -> 63")
    # the answer line is a real solution, but step 1 claims 25+19=45: the verifier must not pay for it
    hacked = "25+19=45;3 7 45\n45+7=52;3 52\n52+3=63;63\n</think>\n7*(25-19+3)"
    verdict = countdown.verify(problem, hacked)
    assert not verdict.is_correct and "step 1" in verdict.reason and "wrong arithmetic" in verdict.reason


def test_only_countdown_has_a_test_time_checker_and_it_judges_like_the_verifier():
    problem = countdown_problem("3 7 25 19 -> 63")
    right = tasks.flip_thinking("25-19=6;3 7 6\n6+3=9;7 9\n7*9=63;63\n</think>\n7*(25-19+3)")
    hacked = tasks.flip_thinking("25+19=45;3 7 45\n45+7=52;3 52\n52+3=63;63\n</think>\n7*(25-19+3)")
    assert tasks.checkable_at_test_time("countdown") and not tasks.checkable_at_test_time("arith")
    assert tasks.check(problem, right) and not tasks.check(problem, hacked)
    assert not tasks.check(problem, "\x00</think>\n")
    with pytest.raises(ValueError, match="no test-time checker"):
        tasks.check(arith_problem("2*3+4"), "</think>\n10")


def test_countdown_answer_checks():
    problem = countdown_problem("3 7 25 19 -> 63")
    assert "not given" in countdown.verify(problem, "</think>\n7*9").reason
    assert "not given" in countdown.verify(problem, "</think>\n7*7+7*2").reason
    assert "makes 45" in countdown.verify(problem, "</think>\n7*(25-19)+3").reason


def test_countdown_step_legality():
    assert countdown.check_step((3, 7, 25), "25-7=18;3 18")[0]
    assert not countdown.check_step((3, 7, 25), "7-25=-18;3 -18")[0]   # subtraction stays positive
    assert not countdown.check_step((3, 7, 25), "7+7=14;3 25 14")[0]   # 7 is given once
    assert countdown.check_step((7, 7, 25), "7+7=14;25 14")[0]         # given twice: fine
    assert not countdown.check_step((3, 7, 25), "25-7=18;3 25")[0]     # numbers left miswritten


def test_countdown_step_labels_need_the_target_reachable():
    problem = countdown_problem("2 3 5 -> 25")
    assert countdown.step_labels(problem, ["2+3=5;5 5", "5*5=25;25"]) == [True, True]
    assert countdown.step_labels(problem, ["2*3=6;5 6", "5+6=11;11"]) == [False, False]  # 25 out of reach from 5 6


def test_countdown_solver_is_exact():
    assert countdown.is_reachable((2, 3, 5), 25)
    assert not countdown.is_reachable((2, 3, 5), 31)   # the largest reachable number is 2*3*5 = 30
    assert countdown.is_reachable((2, 3, 5), 30)
    # the last step is checked directly, without recursion: the rules of - hold there too
    assert countdown.is_reachable((3, 10), 7) and not countdown.is_reachable((7, 7), 0)
    assert countdown.is_reachable((7, 7), 49) and countdown.is_reachable((7, 7), 14)


def test_countdown_solver_agrees_with_listing_every_reachable_value():
    def reachable_values(numbers):  # every value some legal steps make, listed by brute force
        values = set(numbers)
        for i, j, _, _, _, value in countdown._moves(numbers):
            values |= reachable_values(countdown._remove_pair(numbers, i, j) + (value,))
        return values
    rng = random.Random(11)
    for _ in range(60):
        numbers = tuple(rng.randint(1, 25) for _ in range(rng.choice((2, 3, 4))))
        values = reachable_values(numbers)
        for target in range(1, 200):
            assert countdown.is_reachable(numbers, target) == (target in values), (numbers, target)


def test_countdown_generator_makes_solvable_problems_in_range():
    problems = countdown.generate(100, seed=5, difficulties=(3, 4))
    assert problems == countdown.generate(100, seed=5, difficulties=(3, 4))
    for problem in problems:
        numbers, target = countdown.parse_numbers(problem.text)
        assert len(numbers) == problem.difficulty and all(1 <= n <= 25 for n in numbers)
        assert 10 <= target <= 999
        steps, answer = countdown.solve(problem)
        assert countdown.verify(problem, format_completion(steps, answer)).is_correct


def test_countdown_corrupted_traces_are_never_correct():
    rng = random.Random(1)
    for problem in countdown.generate(100, seed=2, difficulties=(3, 4)):
        steps, answer, bad = countdown.corrupt(problem, rng)
        assert not countdown.verify(problem, format_completion(steps, answer)).is_correct
        assert countdown.step_labels(problem, steps) == [i < bad for i in range(len(steps))]


# ----------------------------------------------------------------------------- shared

@pytest.mark.parametrize("task,text", [("arith", "7+"), ("arith", ""), ("arith", "12"), ("countdown", "3 7 -> x"),
                                       ("countdown", ""), ("countdown", "3 7 25"), ("countdown", "3 -> 9"), ("chess", "e4")])
def test_bad_problems_raise_problem_error_with_a_fix(task, text):
    with pytest.raises(ProblemError) as error:
        tasks.parse_problem(task, text)
    assert str(error.value)


def test_problem_text_is_normalised():
    assert tasks.parse_problem("arith", " 7 + 38*2 - 15 ").text == "7+38*2-15"
    assert tasks.parse_problem("countdown", "3  7 25 19->63").text == "3 7 25 19 -> 63"


def test_trace_format_bytes():
    problem = Problem("arith", "2+3", 1)
    assert tasks.full_trace(problem) == "arith: 2+3\n<think>\n2+3=5;5\n</think>\n5"
    # numbers in the thinking and in the arith prompt are written units digit first; the answer is not
    assert tasks.full_trace(Problem("arith", "38+24", 1)) == "arith: 83+42\n<think>\n83+42=26;26\n</think>\n62"
    # countdown problems too are shown units digit first
    countdown = Problem("countdown", "3 17 25 -> 92", 3)
    assert tasks.format_prompt(countdown) == "countdown: 3 71 52 -> 29\n<think>\n"
    assert tasks.shown_problem(Problem("arith", "38+24", 1)) == "83+42"
    assert tasks.shown_problem(countdown) == "3 71 52 -> 29"


# ----------------------------------------------------------------------------- digit order (trace.py)

def test_flip_digits_reverses_each_number_and_is_its_own_inverse():
    assert tasks.flip_digits("38*27=38*20+38*7=760+266=1026;1026+1") == "83*72=83*02+83*7=067+662=6201;6201+1"
    assert tasks.flip_digits("25-19=6;3 7 6") == "52-91=6;3 7 6"
    for problem in tasks.generate("arith", 50, seed=3) + tasks.generate("countdown", 50, seed=3):
        for step in tasks.solve(problem, "digits")[0]:
            assert tasks.flip_digits(tasks.flip_digits(step)) == step


def test_the_dispatch_layer_speaks_the_models_digit_order():
    problem = arith_problem("7+38*2-15")
    steps, answer = tasks.solve(problem)
    assert steps == ["83*2=67;7+67-51", "7+67=38;38-51", "38-51=86;86"] and answer == "68"
    assert tasks.verify(problem, format_completion(steps, answer)).step_ok == [True, True, True]
    reading_order = format_completion(arith.solve(problem)[0], answer)  # 38*2=76 read units first is 83*2=67: wrong
    assert tasks.verify(problem, reading_order).step_ok == [False, False, False]
    assert tasks.verify(problem, tasks.parse_completion(format_completion(steps, answer))).step_ok == [True] * 3
    rng_a, rng_b = random.Random(5), random.Random(5)
    bad_steps, bad_answer, bad_index = tasks.corrupt(problem, rng_a)
    assert [tasks.flip_digits(step) for step in bad_steps] == arith.corrupt(problem, rng_b)[0]
    assert tasks.step_labels(problem, bad_steps) == [i < bad_index for i in range(len(bad_steps))]
    cd = countdown_problem("3 7 25 19 -> 63")
    written = "52-91=6;3 7 6\n6+3=9;7 9\n7*9=36;36\n</think>\n7*(25-19+3)"  # answer in the usual order
    assert tasks.verify(cd, written).is_correct
    assert not tasks.verify(cd, tasks.flip_thinking(written)).is_correct


@pytest.mark.parametrize("junk", [b"\xff\xfe\x00", "", "</think>", "x" * 30_000, "</think>\n\n", None, 12345,
                                  "1+1=2;2\n</think>\n2\n2", "<think>\n</think>\n5"])
def test_verifiers_never_raise_and_give_a_reason(junk):
    for problem in (arith_problem("2+3"), countdown_problem("2 3 5 -> 25")):
        verdict = tasks.verify(problem, junk)
        assert not verdict.is_correct and verdict.reason
