"""Tests for nano_reasoner/search.py: each strategy on a toy policy and verifier where the right answer is known."""
from collections import Counter

import pytest

from nano_reasoner import search, tasks
from toy_world import PATHS, PROBLEM, TablePolicy, constant_verifier, exact_orm, exact_prm, toy_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return toy_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def policy(tokenizer):
    return TablePolicy(tokenizer, PATHS)


@pytest.fixture(scope="module")
def pool(policy, tokenizer):
    return search.sample_pool(policy, tokenizer, [PROBLEM], 64, seed=0, verifier=exact_prm(tokenizer))[0]


def is_correct(answer):
    return tasks.verify(answer.problem, answer.completion).is_correct


def test_greedy_takes_the_likeliest_first_step_and_is_wrong_on_the_toy(policy, tokenizer):
    answer = search.greedy(policy, tokenizer, [PROBLEM])[0]
    assert answer.completion.startswith("2*3=5;5+4\n")
    assert not is_correct(answer)


def test_pool_samples_follow_the_toy_distribution(pool):
    counts = Counter(pool.keys)
    assert set(counts) == {"9", "10", "11", "12", "13"}
    assert counts.most_common(1)[0][0] == "10"  # 0.35 against at most 0.20 for any wrong answer


def test_majority_vote_returns_the_most_common_answer(pool):
    answer = search.pick_from_pool(pool, 64, "vote")
    assert search.answer_key(PROBLEM, answer.completion) == "10" and is_correct(answer)


def test_majority_vote_of_one_sample_is_that_sample(pool):
    assert search.pick_from_pool(pool, 1, "vote").completion == pool.texts[0]


def test_best_of_n_with_an_exact_prm_finds_a_right_sample_when_one_exists(pool):
    for n in (1, 2, 4, 8, 16, 64):
        answer = search.pick_from_pool(pool, n, "bon", how="min")
        assert is_correct(answer) == any(key == "10" for key in pool.keys[:n])


def test_best_of_n_with_an_orm_reads_the_last_score(policy, tokenizer):
    orm_pool = search.sample_pool(policy, tokenizer, [PROBLEM], 16, seed=3, verifier=exact_orm(tokenizer))[0]
    assert "10" in orm_pool.keys
    assert is_correct(search.pick_from_pool(orm_pool, 16, "bon", how="last"))
    # min over the ORM's neutral 0.5 early scores cannot tell right from wrong: ties go to the first sample
    assert search.pick_from_pool(orm_pool, 16, "bon", how="min").completion == orm_pool.texts[0]


def test_weighted_vote_with_a_constant_verifier_is_majority_vote(policy, tokenizer):
    flat_pool = search.sample_pool(policy, tokenizer, [PROBLEM], 64, seed=0, verifier=constant_verifier())[0]
    for n in (1, 3, 8, 64):
        weighted = search.pick_from_pool(flat_pool, n, "wvote")
        plain = search.pick_from_pool(flat_pool, n, "vote")
        assert search.answer_key(PROBLEM, weighted.completion) == search.answer_key(PROBLEM, plain.completion)


def test_weighted_vote_lets_verifier_scores_outweigh_a_wrong_majority():
    texts = ["2*3=5;5+4\n5+4=11;11\n</think>\n11"] * 2 + ["2*3=6;6+4\n6+4=01;01\n</think>\n10"]
    hand_pool = search.Pool(PROBLEM, [1], [[5]] * 3, texts, [search.answer_key(PROBLEM, t) for t in texts],
                            step_scores=[[0.9, 0.1], [0.8, 0.2], [0.9, 0.7]], verifier_tokens=[1, 1, 1])
    assert search.pick_from_pool(hand_pool, 3, "vote").completion == texts[0]        # 2 votes against 1
    # weight(11) = min-scores 0.1 + 0.2 = 0.3 < weight(10) = 0.7
    assert search.pick_from_pool(hand_pool, 3, "wvote", how="min").completion == texts[2]
    # last: weight(11) = 0.1 + 0.2 = 0.3 < weight(10) = 0.7
    assert search.pick_from_pool(hand_pool, 3, "wvote", how="last").completion == texts[2]
    # best-of-n by min: 0.7 is the best single solution
    assert search.pick_from_pool(hand_pool, 3, "bon", how="min").completion == texts[2]


def test_check_returns_the_first_sample_the_countdown_checker_accepts():
    problem = tasks.parse_problem("countdown", "3 7 25 19 -> 63")
    texts = [tasks.flip_thinking(t) for t in (
        "7*3=21;25 19 21\n</think>\n7*3",                                       # legal, but not the target
        "25+19=45;3 7 45\n45+7=52;3 52\n52+3=63;63\n</think>\n7*(25-19+3)",  # the target after bad arithmetic
        "25-19=6;3 7 6\n6+3=9;7 9\n7*9=63;63\n</think>\n7*(25-19+3)",        # right
        "25-19=6;3 7 6\n7*6=42;3 42\n</think>\n7*(25-19)")]                   # wrong
    hand_pool = search.Pool(problem, [1], [[5]] * 4, texts, [search.answer_key(problem, t) for t in texts])
    assert search.pick_from_pool(hand_pool, 4, "check").completion == texts[2]
    assert search.pick_from_pool(hand_pool, 2, "check").completion == texts[0]   # none of the first 2: the first
    with pytest.raises(ValueError, match="no test-time checker"):
        search.pick_from_pool(search.Pool(PROBLEM, [1], [[5]], ["</think>\n10"], ["10"]), 1, "check")


def test_beam_search_with_an_exact_prm_finds_the_right_path(policy, tokenizer):
    # 8 first steps: the right one (probability 0.35) is among them unless 0.65 ** 8 = 3% bad luck
    answer = search.beam_search(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 8, seed=0)[0]
    assert is_correct(answer)
    assert answer.completion == "2*3=6;6+4\n6+4=01;01\n</think>\n10"


def test_beam_search_solves_many_problems_in_lockstep(policy, tokenizer):
    answers = search.beam_search(policy, tokenizer, [PROBLEM] * 3, exact_prm(tokenizer), 8, beam_width=2, seed=1)
    assert all(is_correct(a) for a in answers)
    assert all(a.candidates >= 2 for a in answers)  # runs until beam_width solutions are finished


def test_answer_keys_read_arith_values_and_countdown_expressions():
    countdown = tasks.parse_problem("countdown", "3 7 25 19 -> 63")
    assert search.answer_key(PROBLEM, "2*3=6;6+4\n6+4=01;01\n</think>\n10") == "10"
    assert search.answer_key(PROBLEM, "2*3=6;6+4\n") is None
    assert search.answer_key(countdown, "</think>\n7 * (25-19) + 3*7") == "7*(25-19)+3*7"


def test_beam_search_with_the_prefix_cache_prefills_the_tree_once_and_answers_the_same(policy, tokenizer):
    answers = {cache: search.beam_search(policy, tokenizer, [PROBLEM, PROBLEM], exact_prm(tokenizer), 4, seed=5,
                                         prefix_cache=cache) for cache in (False, True)}
    for uncached, cached in zip(answers[False], answers[True]):
        assert cached.tokens == uncached.tokens
        assert cached.compute.generated_tokens == uncached.compute.generated_tokens
        assert cached.compute.tree_tokens == uncached.compute.tree_tokens
        # at least what compute.py counted as redundant (a context but its newest token) is no longer prefilled
        assert cached.compute.redundant_prefill_tokens == 0
        assert cached.compute.prefill_tokens <= \
            uncached.compute.prefill_tokens - uncached.compute.redundant_prefill_tokens
        assert cached.compute.prefill_tokens <= 1.1 * cached.compute.tree_tokens
