"""Tests for nano_reasoner/compute.py: the counters every strategy reports, against exact counts."""
import pytest
import torch

from nano_reasoner import search, tasks
from nano_reasoner.compute import Compute, sample_tokens
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.sampling import generate
from toy_world import PROBLEM, SINGLE_PATH, TablePolicy, exact_prm, toy_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return toy_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def random_policy(tokenizer):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)).eval()


PROBLEMS = [PROBLEM, tasks.parse_problem("arith", "12+7*3")]


def test_flops_are_two_times_params_times_tokens():
    compute = Compute(policy_params=10, verifier_params=5)
    compute.add_policy(prefill_tokens=3, row_lengths=[2, 3], redundant_prefill_tokens=2)
    compute.add_verifier(6)
    assert (compute.prefill_tokens, compute.decode_tokens, compute.generated_tokens) == (3, 3, 5)
    assert compute.flops() == 2 * 10 * (3 + 3) + 2 * 5 * 6
    assert compute.flops_with_prefix_reuse() == compute.flops() - 2 * 10 * 2


def test_best_of_64_prefills_as_many_tokens_as_best_of_1(random_policy, tokenizer):
    pools = search.sample_pool(random_policy, tokenizer, PROBLEMS, 64, seed=0)
    prompt_lengths = [len(p) for p in search.encode_prompts(tokenizer, PROBLEMS)]
    for pool, prompt_length in zip(pools, prompt_lengths):
        one = search.pool_compute(pool, 1, random_policy.num_params())
        all_64 = search.pool_compute(pool, 64, random_policy.num_params())
        assert one.prefill_tokens == all_64.prefill_tokens == prompt_length
        assert all_64.generated_tokens == sum(len(row) for row in pool.samples)
    # and the sampler itself agrees: one prefill however many samples
    prompts = search.encode_prompts(tokenizer, PROBLEMS)
    assert generate(random_policy, prompts, 4, num_samples=64).prefill_tokens == sum(prompt_lengths)


def test_pool_compute_equals_the_sampler_counters_exactly(random_policy, tokenizer):
    pools = search.sample_pool(random_policy, tokenizer, PROBLEMS, 8, seed=5)
    prompts = search.encode_prompts(tokenizer, PROBLEMS)
    max_new = random_policy.config.block_size - max(len(p) for p in prompts)
    result = generate(random_policy, prompts, max_new, num_samples=8, stop_ids=[tokenizer.eos_id],
                      pad_id=tokenizer.pad_id, seed=5)
    total = Compute(random_policy.num_params())
    for pool in pools:
        total.add(search.pool_compute(pool, 8, random_policy.num_params()))
    assert total.prefill_tokens == result.prefill_tokens
    assert total.decode_tokens == result.decode_tokens
    assert total.generated_tokens == int(result.lengths.sum())


def test_verifier_tokens_of_best_of_n_are_prompt_plus_completion_per_sample(random_policy, tokenizer):
    pool = search.sample_pool(random_policy, tokenizer, [PROBLEM], 4, seed=1, verifier=exact_prm(tokenizer))[0]
    answer = search.pick_from_pool(pool, 3, "bon", policy_params=1, verifier_params=1)
    assert answer.compute.verifier_tokens == sum(len(pool.prompt) + len(row) for row in pool.samples[:3])


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_beam_search_counts_every_prefilled_token(tokenizer, prefix_cache):
    """One path, budget 1: four rounds (two steps, the </think> line, the answer). Without the prefix cache each round
    prefills its whole prefix again; with it, only the last token of the round before (never fed back)."""
    policy = TablePolicy(tokenizer, SINGLE_PATH)
    answer = search.beam_search(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 1, seed=0,
                                prefix_cache=prefix_cache)[0]
    steps, final, _ = SINGLE_PATH[0]
    lines = [len(tokenizer.encode(s)) + 1 for s in steps] + [2, len(tokenizer.encode(final)) + 1]
    prompt = len(search.encode_prompts(tokenizer, [PROBLEM])[0])
    prefixes = [prompt + sum(lines[:i]) for i in range(len(lines))]   # the context of each round
    c = answer.compute
    assert answer.tokens[-1] == tokenizer.eos_id
    assert c.tree_tokens == prompt + sum(lines)
    if prefix_cache:
        assert c.prefill_tokens == prompt + len(lines) - 1
        assert c.redundant_prefill_tokens == 0
    else:
        assert c.prefill_tokens == sum(prefixes)
        assert c.redundant_prefill_tokens == sum(p - 1 for p in prefixes[1:])  # a prefix cache skips all but one
    assert c.generated_tokens == sum(lines)
    assert c.decode_tokens == sum(n - 1 for n in lines)
    assert c.verifier_tokens == sum(p + n for p, n in zip(prefixes, lines))


def test_sample_tokens_grow_with_difficulty(tokenizer):
    assert 0 < sample_tokens(tokenizer, "arith", 1) < sample_tokens(tokenizer, "arith", 3)
