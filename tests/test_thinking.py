"""Tests for thinking that searches: search and retry traces (tasks), their verdicts and labels, budget forcing
(sampling.ThinkingBudget) and the analysis of what the thinking does (thinking.py)."""
import pytest

from nano_reasoner import tasks
from nano_reasoner.sampling import ThinkingBudget, generate, generate_reference
from nano_reasoner.tasks import arith, countdown
from nano_reasoner.thinking import analyse, stop_decisions
from test_sampling import tiny_model as toy_model  # a random tiny GPT whose argmax is never a near-tie

PROBLEM = countdown.parse_problem("3 7 25 19 -> 63")
DEAD_END = "25+19=44;3 7 44\n44+7=51;3 51\n51+3=54;54\n"          # a legal attempt that misses 63
SOLUTION = "25-19=6;3 7 6\n6+3=9;7 9\n7*9=63;63\n</think>\n7*(25-19+3)"


def verdict(completion):
    """The countdown verdict of a completion written in reading order."""
    return countdown.verify(PROBLEM, completion)


# ----------------------------------------------------------------------------- hand-made search traces

def test_a_legal_search_trace_with_a_dead_end_is_correct():
    result = verdict(DEAD_END + "undo;3 7 25 19\n" + SOLUTION)
    assert result.is_correct, result.reason
    # the dead end is labelled bad from its first move (63 is out of reach from 3 7 44), the undo line good again
    assert result.step_ok == [False, False, False, True, True, True, True]


def test_an_illegal_move_after_an_undo_line_is_wrong():
    result = verdict(DEAD_END + "undo;3 7 25 19\n25-19=7;3 7 7\n7*7=49;3 49\n</think>\n7*(25-19+3)")
    assert not result.is_correct and "step 5" in result.reason and "wrong arithmetic" in result.reason


def test_an_undo_line_to_a_state_never_reached_is_wrong():
    result = verdict(DEAD_END + "undo;3 7 6\n6+3=9;7 9\n7*9=63;63\n</think>\n7*(25-19+3)")
    assert not result.is_correct and "never reached" in result.reason
    assert result.step_ok[3] is False


def test_the_target_claimed_after_an_illegal_move_scores_zero_even_after_undo_lines():
    # a legal dead end, back to the start, then 25+19=45 and a "solution" built on it
    hacked = DEAD_END + "undo;3 7 25 19\n25+19=45;3 7 45\n45+7=52;3 52\n52+3=63;63\n</think>\n7*(25-19+3)"
    result = verdict(hacked)
    assert not result.is_correct and "step 5" in result.reason
    # an undo line cannot launder the illegal state: 3 7 45 was never reached legally
    assert not verdict(hacked.replace("45+7=52", "undo;3 7 45\n45+7=52")).is_correct


def test_a_wrong_move_that_was_undone_costs_nothing():
    result = verdict("25+19=45;3 7 45\nundo;3 7 25 19\n" + SOLUTION)
    assert result.is_correct and result.step_ok[:2] == [False, True]


def test_undo_lines_that_are_not_states_are_rejected_with_a_reason():
    for line in ("undo;", "undo;x", "undo;3 -7", "undo;" + "9" * 40):
        result = verdict(line + "\n" + SOLUTION)
        assert result.is_correct is False and result.reason and result.step_ok[0] is False


def test_products_may_be_worked_through_and_every_link_is_checked():
    problem = countdown.parse_problem("21 17 11 -> 368")
    assert countdown.verify(problem, "21*17=20*10+1*10+20*7+1*7=200+10+140+7=210+147=357;11 357\n357+11=368;368"
                                     "\n</think>\n21*17+11").is_correct
    wrong_link = countdown.verify(problem, "21*17=20*10+1*10+20*7+1*7=200+10+140+7=210+137=357;11 357\n"
                                           "357+11=368;368\n</think>\n21*17+11")
    assert not wrong_link.is_correct and "wrong arithmetic" in wrong_link.reason


# ----------------------------------------------------------------------------- generated traces

def test_every_generated_search_trace_verifies_and_ends_where_its_labels_say():
    problems = countdown.generate(300, seed=11, difficulties=(3, 4, 5))
    kept_dead_ends = 0
    for problem in problems:
        for products in countdown.PRODUCTS:
            lines, answer = countdown.search_solve(problem, products)
            assert (lines, answer) == countdown.search_solve(problem, products)  # deterministic
            result = countdown.verify(problem, tasks.format_completion(lines, answer))
            assert result.is_correct, (problem, lines, answer, result.reason)
            # every bad line is followed, sooner or later, by an undo line: the search never finishes from a dead end
            undo_at = [i for i, line in enumerate(lines) if tasks.undone_state(line) is not None]
            assert all(result.step_ok[max(undo_at, default=-1) + 1:])
            # every undo line follows a miss: the line before it left one number, not the target
            _, target = countdown.parse_numbers(problem.text)
            assert all(len(lines[i - 1].split(";")[1].split()) == 1 and lines[i - 1].split(";")[1] != str(target)
                       for i in undo_at[:-1] if problem.difficulty <= 4)
            kept_dead_ends += bool(undo_at)
    assert kept_dead_ends > 150, "most traces should try more than one move from the problem"


def test_root_moves_rotate_the_numbers_and_cover_every_pair():
    moves = countdown.root_moves((5, 21, 16))
    assert [(order, m[:4]) for order, m in moves] == [
        ((5, 21, 16), (5, "+", 21, 26)), ((5, 21, 16), (21, "-", 5, 16)), ((5, 21, 16), (5, "*", 21, 105)),
        ((21, 16, 5), (21, "+", 16, 37)), ((21, 16, 5), (21, "-", 16, 5)), ((21, 16, 5), (21, "*", 16, 336)),
        ((16, 5, 21), (16, "+", 5, 21)), ((16, 5, 21), (16, "-", 5, 11)), ((16, 5, 21), (16, "*", 5, 80))]
    assert moves[0][1][4] == (16, 26)  # the numbers left: the rest of the order, then the number made
    assert [m[:4] for _, m in countdown.root_moves((3, 3, 9))][:2] == [(3, "+", 3, 6), (3, "*", 3, 9)]  # 3-3 is no move
    orders = [order for order, _ in countdown.root_moves((1, 2, 3, 4))][::3]
    assert orders == [(1, 2, 3, 4), (2, 3, 4, 1), (3, 4, 1, 2), (4, 1, 2, 3), (1, 3, 2, 4), (2, 4, 1, 3)]
    for numbers in ((1, 2, 3, 4), (2, 3, 5, 7, 11)):
        pairs = {frozenset(order[:2]) for order, _ in countdown.root_moves(numbers)}
        assert len(pairs) == len(numbers) * (len(numbers) - 1) // 2  # every pair once


def test_small_problems_are_searched_completely_in_root_order():
    problem = countdown.parse_problem("4 8 16 -> 48")
    lines, answer = countdown.search_solve(problem, "digits")
    assert lines == ["4+8=12;16 12", "12+16=28;28", "undo 4+8;4 8 16",
                     "8-4=4;16 4", "4*16=4*10+4*6=40+24=64;64", "undo 8-4;4 8 16",
                     "4*8=32;16 32", "32+16=48;48"]
    assert answer == "(4*8)+16"
    for problem in countdown.generate(200, seed=14, difficulties=(3,)):
        lines, _ = countdown.search_solve(problem, "once")
        numbers, target = countdown.parse_numbers(problem.text)
        root = [countdown.move_text(*m, products="once") for _, m in countdown.root_moves(numbers)]
        first_hit = next(k for k, (_, m) in enumerate(countdown.root_moves(numbers)) if countdown.is_reachable(m[4], target))
        tried = [lines[0]] + [lines[i + 1] for i, line in enumerate(lines) if tasks.undone_state(line) is not None]
        assert tried == root[:first_hit + 1]  # in order, none skipped or repeated, stopped at the first that can hit


def test_chain_answer_brackets_every_number_made():
    path = [(4, "+", 8, 12, (2, 30, 12)), (12, "*", 2, 24, (30, 24)), (30, "-", 24, 6, (6,))]
    assert countdown.chain_answer(path) == "30-((4+8)*2)"
    assert countdown.chain_answer(path[:1]) == "4+8"
    assert [m[:4] for m in countdown.chain_moves((2, 30, 12))] == [  # the number made last combines with the others
        (12, "+", 2, 14), (12, "-", 2, 10), (12, "*", 2, 24), (12, "+", 30, 42), (30, "-", 12, 18), (12, "*", 30, 360)]


def test_undo_lines_name_a_move_tried_from_the_state_they_return_to():
    for line in ("undo 25+19;3 7 25 19", "undo 19+25;3 7 25 19", "undo;3 7 25 19"):  # DEAD_END tried 25+19 there
        assert verdict(DEAD_END + line + "\n" + SOLUTION).is_correct, line
    for line, why in (("undo 25*19;3 7 25 19", "never tried"), ("undo 3-7;3 7 25 19", "never tried"),
                      ("undo 44+7;3 7 25 19", "never tried"),  # tried, but from 3 7 44, not from here
                      ("undo 3+7+1;3 7 25 19", "not one move"), ("undo x;3 7 25 19", "not one move")):
        result = verdict(DEAD_END + line + "\n" + SOLUTION)
        assert not result.is_correct and why in result.reason, (line, result.reason)


def test_an_illegal_attempt_undone_by_name_costs_nothing_but_a_claim_built_on_it_scores_zero():
    # the model tries 19-25 (negative, not a move) and 25-19=7 (wrong arithmetic), notices, goes back naming each
    slips = "19-25=6;3 7 6\nundo 19-25;3 7 25 19\n25-19=7;3 7 7\nundo 25-19;3 7 25 19\n"
    result = verdict(slips + SOLUTION)
    assert result.is_correct, result.reason
    assert result.step_ok[:4] == [False, True, False, True]
    # the same slips with the answer's path running through the illegal state score zero
    assert not verdict("25-19=7;3 7 7\n7*7=49;3 49\n49+3=52;52\n</think>\n7*(25-19+3)").is_correct


    assert tasks.undone_move("undo 25*19;3 7 25 19") == "25*19" and tasks.undone_move("undo;3 7") is None
    assert tasks.undone_state("undo 25*19;3 7 25 19") == "3 7 25 19" and tasks.undone_state("undone;3") is None


def test_every_generated_retry_trace_verifies_and_labels_exactly_its_slips_bad():
    slips = 0
    for problem in arith.generate(300, seed=13, difficulties=(1, 2, 3, 4)):
        for granularity in arith.GRANULARITIES:
            lines, answer = arith.retry_solve(problem, granularity, share=0.3)
            assert arith.verify(problem, tasks.format_completion(lines, answer)).is_correct
            labels = arith.step_labels(problem, lines)
            is_slip = [nxt.startswith("undo;") for nxt in lines[1:] + [""]]
            assert labels == [not slip for slip in is_slip]
            slips += sum(is_slip)
    assert slips > 300
    assert arith.retry_solve(arith.parse_problem("2+3"), share=0.0) == arith.solve(arith.parse_problem("2+3"))


def test_slips_are_plausible_and_never_the_right_value():
    import random
    rng = random.Random(0)
    for value in (0, 7, 10, 99, 760, 1026, -52, 9999):
        for _ in range(50):
            wrong = arith.slip(value, rng)
            assert wrong != value and len(str(abs(wrong))) <= len(str(abs(value))) + 1


def test_trace_kinds_route_and_flip_digits():
    problem = countdown.parse_problem("19 18 5 -> 77")
    steps, answer = tasks.trace(problem, "coarse", "search", countdown_products="digits")
    assert steps == [tasks.flip_digits(line) for line in countdown.search_solve(problem, "digits")[0]]
    assert "=5*10+5*9=" in tasks.flip_digits(steps[-2])  # 5*19, worked through single-digit products
    straight, _ = tasks.trace(problem, "digits", "straight")
    assert straight == [tasks.flip_digits(line) for line in countdown.solve(problem)[0]]  # products at once
    with pytest.raises(ValueError):
        tasks.trace(problem, "coarse", "retry")


def test_uniform_targets_are_reachable_and_spread():
    problems = countdown.generate_uniform_targets(200, seed=3, difficulties=(3, 4))
    assert all(countdown.is_reachable(countdown.parse_numbers(p.text)[0], countdown.parse_numbers(p.text)[1])
               for p in problems)
    targets = [countdown.parse_numbers(p.text)[1] for p in problems]
    assert len(set(targets)) > 120 and min(targets) >= 10 and max(targets) <= 999
    assert countdown.reachable_values((2, 3)) == {2, 3, 5, 6, 1}


# ----------------------------------------------------------------------------- what the thinking does

def test_analyse_counts_undo_lines_repeats_and_wrong_arithmetic():
    completion = tasks.flip_thinking(
        "25+19=44;3 7 44\nundo;3 7 25 19\n19+25=44;3 7 44\nundo;3 7 6\n7*3=24;25 19 24\n</think>\n1")
    stats = analyse(PROBLEM, completion)
    assert (stats.moves, stats.undo_lines, stats.bad_undo_lines, stats.repeated_moves, stats.wrong_arithmetic) == (3, 2, 1, 1, 1)


def test_stop_decisions_name_what_follows_each_single_number():
    problem = countdown.parse_problem("4 8 16 -> 48")
    completion = tasks.flip_thinking("4+8=12;16 12\n12+16=28;28\nundo 4+8;4 8 16\n8-4=4;16 4\n"
                                     "4*16=4*10+4*6=40+24=64;64\n</think>\n(8-4)*16")
    assert stop_decisions(problem, completion) == [(28, 48, "undo"), (64, 48, "end")]  # 64: a false stop
    cut = tasks.flip_thinking("4*8=32;16 32\n32+16=48;48")  # the output ran out before </think>
    assert stop_decisions(problem, cut) == [(48, 48, "cut")]
    illegal = tasks.flip_thinking("4+8=13;16 13\n13+16=29;29\n</think>\n1")  # off the legal path: not counted
    assert stop_decisions(problem, illegal) == []


# ----------------------------------------------------------------------------- budget forcing

def free_run(model, prompt, n):
    return generate_reference(model, prompt, n)


def test_budget_cap_ends_the_line_then_the_thinking_exactly_at_max_think():
    model, prompt = toy_model(), [3, 17, 5]
    free = free_run(model, prompt, 30)
    unused = [t for t in range(4, 32) if t not in free]
    newline, end_think = unused[0], unused[1]  # tokens the model never writes by itself
    budget = ThinkingBudget(newline_id=newline, end_think_id=end_think, continue_id=unused[2], stop_id=unused[3],
                            max_think=10)
    forced = generate_reference(model, prompt, 30, budget=budget)
    assert forced[:9] == free[:9]                       # untouched before the cap
    assert forced[9] == newline and forced[10] == end_think  # the line ended at token 10, the thinking after it
    cached = generate(model, [prompt, prompt[:2]], 30, temperature=0.0, budget=budget)
    assert cached.row_tokens(0) == forced
    assert cached.row_tokens(1) == generate_reference(model, prompt[:2], 30, budget=budget)


def test_budget_cap_at_a_line_start_ends_the_thinking_at_once():
    model, prompt = toy_model(), [3, 17, 5]
    free = free_run(model, prompt, 30)
    newline = free[4]                                    # the model ends a line by itself at token 5
    first = free.index(newline)
    end_think = next(t for t in range(4, 32) if t not in free)
    budget = ThinkingBudget(newline_id=newline, end_think_id=end_think, continue_id=1, stop_id=2, max_think=first + 2)
    forced = generate_reference(model, prompt, 30, budget=budget)
    assert forced[:first + 1] == free[:first + 1] and forced[first + 1] == end_think


def test_budget_floor_turns_an_early_end_of_thinking_into_an_undo_line():
    model, prompt = toy_model(), [3, 17, 5]
    free = free_run(model, prompt, 30)
    end_think = free[6]                                  # pretend the model wants to end its thinking here
    first = free.index(end_think)
    continue_id = next(t for t in range(4, 32) if t not in free)
    budget = ThinkingBudget(newline_id=0, end_think_id=end_think, continue_id=continue_id, stop_id=2,
                            min_think=first + 1)
    extended = generate_reference(model, prompt, 30, budget=budget)
    assert extended[:first] == free[:first] and extended[first] == continue_id
    late = ThinkingBudget(newline_id=0, end_think_id=end_think, continue_id=continue_id, stop_id=2, min_think=first)
    assert generate_reference(model, prompt, 30, budget=late)[:first + 1] == free[:first + 1]  # at the floor: it may end
    cached = generate(model, [prompt], 30, temperature=0.0, budget=budget)
    assert cached.row_tokens(0) == extended
