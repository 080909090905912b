"""Tests for nano_reasoner/sampling.py: the cached batched sampler against the plain reference loop; its contract."""

import pytest
import torch
import torch.nn.functional as F

from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.sampling import filter_logits, generate, generate_reference, sequence_logprobs

TINY = dict(vocab_size=32, block_size=64, n_layer=2, n_head=4, n_embd=32)
PROMPTS = [[3, 17, 5, 9, 21, 4, 11], [8, 2], [30, 1, 14, 6], [12]]  # mixed lengths: left padding is exercised
PAD_ID = 0


def tiny_model(seed=0):
    """A random tiny GPT with weights scaled up, so the argmax is never a near-tie between two tokens."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(25.0)
    return model


def test_greedy_cached_generation_matches_reference_token_for_token():
    model = tiny_model()
    max_new = 20
    no_stop = [generate_reference(model, prompt, max_new) for prompt in PROMPTS]
    stop_ids = [no_stop[0][3]]  # a token row 0 emits early, so rows retire at different steps
    expected = [generate_reference(model, prompt, max_new, stop_ids) for prompt in PROMPTS]
    expected_lengths = [len(row) for row in expected]
    assert len(set(expected_lengths)) == len(PROMPTS), "fixture must retire rows at different steps"

    result = generate(model, PROMPTS, max_new, temperature=0.0, stop_ids=stop_ids, pad_id=PAD_ID)
    assert [result.row_tokens(i) for i in range(len(PROMPTS))] == expected
    assert result.lengths.tolist() == expected_lengths
    assert result.hit_stop.tolist() == [row[-1] in stop_ids for row in expected]

    result_no_stop = generate(model, PROMPTS, max_new, temperature=0.0, pad_id=PAD_ID)
    assert [result_no_stop.row_tokens(i) for i in range(len(PROMPTS))] == no_stop
    assert not result_no_stop.hit_stop.any()


def test_prefill_counts_prompt_tokens_once_whatever_num_samples():
    model = tiny_model()
    one = generate(model, PROMPTS, 4, num_samples=1)
    many = generate(model, PROMPTS, 4, num_samples=64)
    assert one.prefill_tokens == many.prefill_tokens == sum(len(prompt) for prompt in PROMPTS)
    assert many.tokens.shape == (64 * len(PROMPTS), 4)


def test_greedy_forks_are_identical_and_prompt_major():
    model = tiny_model()
    single = generate(model, PROMPTS, 12, temperature=0.0)
    forked = generate(model, PROMPTS, 12, num_samples=4, temperature=0.0)
    assert torch.equal(forked.tokens, single.tokens.repeat_interleave(4, dim=0))
    assert torch.allclose(forked.logprobs, single.logprobs.repeat_interleave(4, dim=0), atol=1e-5)


def test_rows_end_on_stop_tokens_and_are_padded_after():
    model = tiny_model()
    max_new, stop_ids = 16, (5, 9, 20)
    result = generate(model, PROMPTS, max_new, num_samples=8, temperature=1.0, stop_ids=stop_ids, seed=1)
    N = len(PROMPTS) * 8
    assert result.hit_stop.any() and not result.hit_stop.all(), "fixture must have both kinds of rows"
    for i in range(N):
        length = int(result.lengths[i])
        row = result.row_tokens(i)
        assert len(row) == length
        assert not any(token in stop_ids for token in row[:-1]), "a row ends at its first stop token"
        assert (row[-1] in stop_ids) == bool(result.hit_stop[i])
        if not result.hit_stop[i]:
            assert length == max_new
        assert (result.tokens[i, length:] == PAD_ID).all()
        assert (result.logprobs[i, length:] == 0).all()
    # each row feeds back every token but its last; retired rows cost nothing more
    assert result.decode_tokens == int(result.lengths.sum()) - N
    assert result.decode_tokens < N * (max_new - 1)


def test_retiring_rows_lazily_or_at_once_gives_the_same_samples():
    model = tiny_model()
    results = [generate(model, PROMPTS, 16, num_samples=8, temperature=1.0, stop_ids=(5, 9, 20), seed=1,
                        retire_share=share) for share in (0.0, 0.25, 1.0)]  # 1.0: never compact before the end
    first = results[0]
    assert first.hit_stop.any() and not first.hit_stop.all()
    for other in results[1:]:
        assert torch.equal(first.tokens, other.tokens) and torch.equal(first.lengths, other.lengths)
        assert torch.equal(first.hit_stop, other.hit_stop) and first.decode_tokens == other.decode_tokens
        assert torch.allclose(first.logprobs, other.logprobs, atol=1e-5)


def test_same_seed_gives_same_samples_and_another_seed_differs():
    model = tiny_model()
    first = generate(model, PROMPTS, 10, num_samples=3, temperature=1.0, top_p=0.9, seed=7)
    again = generate(model, PROMPTS, 10, num_samples=3, temperature=1.0, top_p=0.9, seed=7)
    other = generate(model, PROMPTS, 10, num_samples=3, temperature=1.0, top_p=0.9, seed=8)
    assert torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, other.tokens)
    assert len({tuple(first.row_tokens(i)) for i in range(3)}) > 1, "samples of one prompt should differ"


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny_model()
    greedy = generate(model, PROMPTS, 12, temperature=0.0)
    top_k_one = generate(model, PROMPTS, 12, temperature=1.5, top_k=1, seed=3)
    tiny_top_p = generate(model, PROMPTS, 12, temperature=1.5, top_p=1e-6, seed=3)
    assert torch.equal(top_k_one.tokens, greedy.tokens)
    assert torch.equal(tiny_top_p.tokens, greedy.tokens)


def test_filter_logits_keeps_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    is_kept_top_k = torch.isfinite(filter_logits(logits, top_k=2, top_p=None))
    assert is_kept_top_k.tolist() == [[False, True, False, True]]
    # mass ranked above each token: 0.5 -> 0, 0.3 -> 0.5, 0.15 -> 0.8, 0.05 -> 0.95; keep it while that is < top_p
    is_kept_top_p = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.75))
    assert is_kept_top_p.tolist() == [[False, True, False, True]]
    is_kept_top_p = torch.isfinite(filter_logits(logits, top_k=None, top_p=0.85))
    assert is_kept_top_p.tolist() == [[True, True, False, True]]


def test_logprobs_are_raw_log_softmax_of_full_recompute():
    model = tiny_model()
    result = generate(model, PROMPTS, 12, num_samples=2, temperature=0.7, top_k=8, stop_ids=(5,), seed=4)
    for i in range(result.tokens.shape[0]):
        prompt, row = PROMPTS[i // 2], result.row_tokens(i)
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt + row]))  # (1, T, V)
        # the token at position t is predicted by the logits at t - 1, with temperature 1 and no filtering
        predicting = F.log_softmax(logits[0, len(prompt) - 1:-1], dim=-1)  # (len(row), V)
        expected = predicting.gather(1, torch.tensor(row)[:, None]).squeeze(1)
        assert torch.allclose(result.logprobs[i, :len(row)], expected, atol=1e-5)


def test_sequence_logprobs_match_sampler_logprobs():
    model = tiny_model()
    result = generate(model, PROMPTS, 10, temperature=1.0, stop_ids=(5, 9), seed=5)
    sequences = [PROMPTS[i] + result.row_tokens(i) for i in range(len(PROMPTS))]
    with torch.no_grad():
        completion_logprobs, completion_mask = sequence_logprobs(model, sequences, [len(p) for p in PROMPTS])
    T_c = int(result.lengths.max())
    assert completion_logprobs.shape == completion_mask.shape == (len(PROMPTS), T_c)
    assert completion_mask.sum(dim=1).tolist() == result.lengths.tolist()
    assert torch.allclose(completion_logprobs, result.logprobs[:, :T_c], atol=1e-5)


def test_sequence_logprobs_carry_gradients():
    model = tiny_model()
    completion_logprobs, completion_mask = sequence_logprobs(model, [[1, 2, 3, 4], [5, 6]], [2, 1])
    (completion_logprobs * completion_mask).sum().backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_prompt_that_would_overflow_the_context_raises_value_error():
    model = tiny_model()
    fits = generate(model, [[1] * 60], 4)
    assert fits.tokens.shape == (1, 4)
    with pytest.raises(ValueError, match="block_size"):
        generate(model, [[1] * 60], 5)
    with pytest.raises(ValueError, match="block_size"):
        generate_reference(model, [1] * 64, 1)


def test_a_cached_prefix_continues_exactly_like_the_full_context():
    """Rows retire at different steps and come back with their KV: the continuation prefills only what no call fed
    through the model, and writes the tokens generate_reference writes from the whole text."""
    model = tiny_model()
    first = generate(model, PROMPTS, 12, temperature=0.0, stop_ids=[7], pad_id=PAD_ID, return_kv=True)
    contexts = [prompt + first.row_tokens(i) for i, prompt in enumerate(PROMPTS)]
    # each row holds the KV of its prompt and generated tokens but the last, which was never fed back
    assert [len(kv) for kv in first.kv] == [len(c) - 1 for c in contexts] and first.kv_start == [0] * len(PROMPTS)
    # ... equal to the KV of one forward pass over the whole text
    full = generate(model, contexts, 1, temperature=0.0, pad_id=PAD_ID, return_kv=True)
    for kv, reference in zip(first.kv, full.kv):
        assert torch.allclose(kv.keys, reference.keys[:, :, :len(kv)], atol=1e-5)
        assert torch.allclose(kv.values, reference.values[:, :, :len(kv)], atol=1e-5)
    # give row 1 only part of its cache: its tail is longer, and the call prefills the longest tail for every row
    prefix_kv = [first.kv[0], first.kv[1].slice(0, 2), first.kv[2], None]
    again = generate(model, contexts, 15, temperature=0.0, pad_id=PAD_ID, prefix_kv=prefix_kv, return_kv=True)
    tails = [len(c) - (0 if kv is None else len(kv)) for c, kv in zip(contexts, prefix_kv)]
    assert again.prefill_by_prompt == [min(max(tails), len(c)) for c in contexts]
    assert again.kv_start == [0 if kv is None else len(kv) for kv in prefix_kv]
    assert [again.row_tokens(i) for i in range(len(PROMPTS))] == \
        [generate_reference(model, c, 15) for c in contexts]
    plain = generate(model, contexts, 15, temperature=0.0, pad_id=PAD_ID)
    assert torch.allclose(again.logprobs, plain.logprobs, atol=1e-4)
