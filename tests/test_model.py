"""Tests for nano_reasoner/model.py: causality, exact padding, the KV cache, the heads, the parameter count."""

import torch
import torch.nn.functional as F

from nano_reasoner.model import GPT, GPTConfig, KVCache, configure_optimizer, positions_from_mask

TINY = dict(vocab_size=32, block_size=64, n_layer=2, n_head=4, n_embd=32)


def tiny_model(seed=0, has_scalar_head=False):
    """A random tiny GPT with weights scaled up, so logits are spread out rather than all near zero."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, has_scalar_head=has_scalar_head))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(25.0)
    return model


def random_tokens(generator, *shape):
    return torch.randint(1, TINY["vocab_size"], shape, generator=generator)


def left_pad_batch(rows, pad_id=0):
    """rows: list of 1-D LongTensors -> tokens (B, P), is_real (B, P), left-padded."""
    P = max(len(row) for row in rows)
    tokens = torch.full((len(rows), P), pad_id, dtype=torch.long)
    is_real = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, P - len(row):] = row
        is_real[i, P - len(row):] = True
    return tokens, is_real


def test_future_tokens_never_change_earlier_logits():
    model = tiny_model()
    generator = torch.Generator().manual_seed(1)
    idx = random_tokens(generator, 2, 12)
    changed = idx.clone()
    changed[:, 7:] = random_tokens(generator, 2, 5)
    logits, _ = model(idx)
    changed_logits, _ = model(changed)
    assert torch.equal(logits[:, :7], changed_logits[:, :7])
    assert not torch.allclose(logits[:, 7:], changed_logits[:, 7:])


def test_left_padded_rows_give_the_same_logits_as_unpadded():
    model = tiny_model()
    generator = torch.Generator().manual_seed(2)
    rows = [random_tokens(generator, 9), random_tokens(generator, 4), random_tokens(generator, 1)]
    tokens, is_real = left_pad_batch(rows)
    padded_logits, _ = model(tokens, attn_mask=is_real)  # positions default to counting from each first real token
    for i, row in enumerate(rows):
        alone_logits, _ = model(row[None])
        assert torch.allclose(padded_logits[i, -len(row):], alone_logits[0], atol=1e-5)
    assert torch.isfinite(padded_logits).all(), "pad queries must stay finite"


def test_positions_from_mask_count_from_first_real_token():
    is_real = torch.tensor([[False, False, True, True, True], [True, True, True, False, False]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]])
    assert torch.equal(positions_from_mask(is_real), expected)


def test_kv_cache_prefill_chunks_and_decode_match_full_recompute():
    model = tiny_model()
    generator = torch.Generator().manual_seed(3)
    rows = [random_tokens(generator, 6), random_tokens(generator, 3)]
    continuation = random_tokens(generator, 2, 5)  # appended to both rows: a chunk of 2, then 3 single steps
    prompt, prompt_is_real = left_pad_batch(rows)
    P = prompt.shape[1]
    cache = KVCache(model.config, batch_size=2, max_len=P + 5, device="cpu", dtype=torch.float32)
    key_is_real = torch.cat([prompt_is_real, torch.ones(2, 5, dtype=torch.bool)], dim=1)  # (B, P + 5)
    with torch.no_grad():
        cached_logits = [model(prompt, attn_mask=prompt_is_real, kv_cache=cache)[0][:, -1:]]
        cached_logits.append(model(continuation[:, :2], attn_mask=key_is_real[:, :P + 2], kv_cache=cache)[0])
        for t in range(2, 5):
            cached_logits.append(model(continuation[:, t:t + 1], attn_mask=key_is_real[:, :cache.pos + 1],
                                       kv_cache=cache)[0])
        cached_logits = torch.cat(cached_logits, dim=1)  # (B, 6, V): predictions after the prompt and each new token
        for i, row in enumerate(rows):
            full_logits, _ = model(torch.cat([row, continuation[i]])[None])  # (1, len + 5, V)
            assert torch.allclose(cached_logits[i], full_logits[0, len(row) - 1:], atol=1e-5)
    assert cache.pos == P + 5


def test_kv_cache_select_rows_forks_and_drops_rows():
    model = tiny_model()
    generator = torch.Generator().manual_seed(4)
    rows = [random_tokens(generator, 5), random_tokens(generator, 5)]
    next_tokens = random_tokens(generator, 3)
    cache = KVCache(model.config, batch_size=2, max_len=6, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        model(torch.stack(rows), kv_cache=cache)
        cache.select_rows(torch.tensor([1, 1, 0]))  # drop nothing, fork row 1 twice, reorder
        logits, _ = model(next_tokens[:, None], kv_cache=cache)  # (3, 1, V)
        for out_row, source_row in enumerate([1, 1, 0]):
            full_logits, _ = model(torch.cat([rows[source_row], next_tokens[out_row:out_row + 1]])[None])
            assert torch.allclose(logits[out_row, 0], full_logits[0, -1], atol=1e-5)


def test_loss_is_masked_mean_of_token_cross_entropy():
    model = tiny_model()
    generator = torch.Generator().manual_seed(5)
    idx = random_tokens(generator, 2, 6)
    targets = random_tokens(generator, 2, 6)
    targets[0, :3] = -1
    loss_mask = torch.rand(2, 6, generator=generator)
    logits, loss = model(idx, targets, loss_mask=loss_mask)
    token_losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten().clamp(min=0), reduction="none").view(2, 6)
    weights = (targets != -1).float() * loss_mask
    assert torch.allclose(loss, (token_losses * weights).sum() / weights.sum(), atol=1e-6)
    _, unweighted_loss = model(idx, targets)
    assert torch.allclose(unweighted_loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1))


def test_scalar_scores_are_one_per_position_and_ignore_padding():
    model = tiny_model(has_scalar_head=True)
    generator = torch.Generator().manual_seed(6)
    rows = [random_tokens(generator, 7), random_tokens(generator, 3)]
    tokens, is_real = left_pad_batch(rows)
    scores = model.scalar_scores(tokens, attn_mask=is_real)
    assert scores.shape == (2, 7)
    assert torch.allclose(scores[1, -3:], model.scalar_scores(rows[1][None])[0], atol=1e-5)
    assert model.hidden_states(tokens, attn_mask=is_real).shape == (2, 7, TINY["n_embd"])


def test_num_params_matches_hand_count():
    V, C, L = TINY["vocab_size"], TINY["n_embd"], TINY["n_layer"]
    per_block = 3 * C * C + C * C + 4 * C * C + 4 * C * C + 2 * C  # qkv, attn proj, mlp in, mlp out, two norm gains
    embedding = V * C                                                 # tied: counted once
    assert embedding + L * per_block + C == 25760                     # + final norm gain
    assert tiny_model().num_params() == 25760
    assert tiny_model().num_params(non_embedding=True) == 25760 - 1024
    assert tiny_model(has_scalar_head=True).num_params() == 25760 + C


def test_optimizer_decays_only_two_dimensional_weights():
    model = tiny_model()
    optimizer = configure_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == 0.1 and no_decay_group["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay_group["params"])
    assert all(p.dim() == 1 for p in no_decay_group["params"])
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == model.num_params()


def test_decision_weights_weight_only_the_stop_and_go_back_tokens():
    from nano_reasoner.data import decision_weights
    targets = torch.tensor([[-1, 5, 7, 9, 7], [3, 9, -1, -1, -1]])  # 7 and 9 stand for `</think>` and undo
    weights = decision_weights(targets, [7, 9], 4.0)
    assert weights.tolist() == [[1, 1, 4, 4, 4], [1, 4, 1, 1, 1]]
    assert decision_weights(targets, [7, 9], 1.0).tolist() == [[1.0] * 5, [1.0] * 5]
