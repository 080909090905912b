"""
Sampling: turning a next-token model into text, many rows at once.

A language model gives a distribution over the next token. To generate, pick a token, append it, ask again. Done
naively, step t pushes the whole sequence of length t through the network, so n new tokens cost O(n^2) token
evaluations. Two facts make it cheap:

1. **The past does not change.** With causal attention, the keys and values of earlier tokens are the same at every
   step, so they are computed once and kept in a KV cache (model.KVCache). Each step then pushes one token per row
   through the network: a *prefill* pass over the prompts fills the cache, then one *decode* pass per new token.
2. **Rows are independent.** Many prompts (and many samples of each prompt) are stacked into one batch, so each
   decode step is a few large matrix multiplications instead of many small ones.

`generate` does it in five numbered stages, which the loop below follows:

    (1) prefill   the B prompts, left-padded to one length; a padding mask hides pad tokens and each row's RoPE
                  positions start at 0 at its first real token, so padding changes no number. A prompt whose start
                  a search already pushed through the model comes with that KV (prefix_kv, prefix_cache.py): it is
                  copied into the row's slots and only the rest is prefilled.
    (2) fork      each prompt's cache row into num_samples rows (repeat_interleave), so a prompt's prefix is
                  computed once however many samples are drawn from it. Rows are prompt-major.
    (3) sample    the next token per row: temperature, then top-k, then top-p (nucleus) filtering
                  ("The Curious Case of Neural Text Degeneration", Holtzman et al., arXiv 1904.09751);
                  temperature 0 is greedy argmax.
    (4) retire    rows that emitted a stop token are done: nothing more is written for them. They are removed
                  from the cache (index_select) once a quarter of its rows are done (retire_share), not one by one: a
                  compaction copies the whole live cache, and copying it at every finished row cost 70% of the
                  sampler's time at 256 rows. Until then a done row is pushed through the model with the others
                  (pad tokens, its outputs ignored), a quarter of wasted rows at most.
    (5) decode    one token for every row still active, appending to the cache.

Stop tokens are per call and apply to every row: pass the end-of-answer token to generate whole solutions, or also
the newline token to generate one reasoning step at a time (step-level beam search and MCTS grow solutions this way).

The log-prob stored for each generated token is log softmax(raw logits) at that token: the model's own distribution,
before temperature and filtering. That is the quantity RL (GRPO's ratio pi / pi_old) and search priors need.

Budget forcing ("s1: Simple test-time scaling", Muennighoff et al., arXiv 2501.19393) controls how long a row
thinks, at stage (3), by overriding the token sampled (ThinkingBudget, force_budget). A cap: once a row has written
max_think - 1 thinking tokens it is made to end the line it is on (a newline) and then to write `</think>`, so it
thinks at most max_think tokens and its thinking ends on a whole line; the model then writes its answer. A floor:
while a row has written fewer than min_think thinking tokens, a `</think>` (or the end of the sequence) it samples is
replaced by the first token of an undo line, so it goes back and thinks on, as s1 appends "Wait" where the model
wanted to stop. Rows are counted independently; the forced token's log-prob is the model's own, as for any token.

`generate_reference` is the specification: one row, no cache, greedy, recomputing the whole sequence every step.
The tests check that `generate` matches it token for token. `sequence_logprobs` scores given completions in one
forward pass (teacher forcing) for RL and for verifier-free priors.

Simplifications: every row of a call shares the same temperature, filters and stop tokens; the cache is compacted
by copying its live rows (production engines page the cache instead, as in vLLM's "Efficient Memory Management for
Large Language Model Serving with PagedAttention", arXiv 2309.06180).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nano_reasoner.model import KVCache, positions_from_mask
from nano_reasoner.prefix_cache import PrefixKV


@dataclass
class SampleResult:
    tokens: torch.Tensor      # (N, T_new) long, generated tokens, pad_id after each row's end
    logprobs: torch.Tensor    # (N, T_new) float, log-prob of each token under the unmodified model; 0 at padding
    lengths: torch.Tensor     # (N,) long, generated tokens per row, the stop token included
    hit_stop: torch.Tensor    # (N,) bool, the row ended on a stop token (False: it ran out of max_new_tokens)
    prefill_tokens: int       # real prompt tokens pushed through the model in prefill (independent of num_samples)
    decode_tokens: int        # (row, step) evaluations of live rows in decoding; finished rows stop counting
    prefill_by_prompt: list | None = None  # (B,) of prefill_tokens: each prompt's tokens pushed through in prefill
    kv: list | None = None    # return_kv: per row, a PrefixKV of the tokens this call computed (kv_start below)
    kv_start: list | None = None  # per row, where its kv starts in prompt + generated tokens (= its cached prefix)

    def row_tokens(self, i) -> list[int]:
        """The real generated tokens of row i, as a list."""
        return self.tokens[i, : int(self.lengths[i])].tolist()


def _model_device(model):
    return next(model.parameters()).device


def check_fits(model, prompt_lengths, max_new_tokens):
    """Raise ValueError if the longest prompt plus max_new_tokens would not fit in the model's context."""
    block_size = model.config.block_size
    longest = max(prompt_lengths)
    if longest + max_new_tokens > block_size:
        raise ValueError(
            f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
            f"block_size={block_size}; shorten the prompt or generate fewer tokens"
        )


def left_pad(prompts, pad_id, device):
    """Stack prompts right-aligned: tokens (B, P) long and is_real (B, P) bool, P = longest prompt."""
    P = max(len(prompt) for prompt in prompts)
    padded = [[pad_id] * (P - len(prompt)) + list(prompt) for prompt in prompts]
    is_real = [[False] * (P - len(prompt)) + [True] * len(prompt) for prompt in prompts]
    return torch.tensor(padded, dtype=torch.long, device=device), torch.tensor(is_real, device=device)


def filter_logits(logits, top_k, top_p):
    """Set to -inf every logit outside the top k and outside the smallest set of tokens with mass >= top_p."""
    # BEGIN SOLUTION part 4
    if top_k is not None:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (A, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)  # (A, V)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold mass >= top_p; the top token always stays
        mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
        is_dropped_sorted = mass_above >= top_p
        is_dropped = is_dropped_sorted.scatter(-1, sorted_index, is_dropped_sorted)  # back to vocabulary order
        logits = logits.masked_fill(is_dropped, float("-inf"))
    # END SOLUTION
    return logits


@dataclass
class ThinkingBudget:
    """Budget forcing (module docstring). Token ids come from the tokenizer: newline_id ends a step,
    continue_id is the first token of an undo line, stop_id the end of the sequence."""
    newline_id: int
    end_think_id: int
    continue_id: int
    stop_id: int
    max_think: int | None = None   # at most this many thinking tokens (None: no cap)
    min_think: int | None = None   # no end of thinking before this many (None: no floor)


def force_budget(next_tokens, think_count, is_thinking, at_line_start, budget):
    """(A,) sampled tokens -> (A,) tokens after budget forcing. think_count (A,) thinking tokens written so far,
    is_thinking (A,) no `</think>` yet, at_line_start (A,) the last token ended a line (or the prompt ended)."""
    # BEGIN SOLUTION part 5
    tokens = next_tokens
    if budget.min_think is not None:  # the floor: an early end of thinking becomes an undo line
        wants_to_stop = (tokens == budget.end_think_id) | (tokens == budget.stop_id)
        tokens = torch.where(is_thinking & (think_count < budget.min_think) & wants_to_stop, budget.continue_id, tokens)
    if budget.max_think is not None:  # the cap wins over the floor: end the line, then the thinking
        is_over = is_thinking & (think_count >= budget.max_think - 1)
        tokens = torch.where(is_over & at_line_start, budget.end_think_id, tokens)
        tokens = torch.where(is_over & ~at_line_start, budget.newline_id, tokens)
    # END SOLUTION
    return tokens


def advance_budget(tokens, think_count, is_thinking, budget):
    """The per-row state after `tokens` (A,) were written -> (think_count, is_thinking, at_line_start)."""
    is_end = tokens == budget.end_think_id
    think_count = think_count + (is_thinking & ~is_end).long()
    return think_count, is_thinking & ~is_end, tokens == budget.newline_id


def choose_next_tokens(logits, temperature, top_k, top_p, generator):
    """(A, V) float logits -> (A,) long token ids: argmax if temperature == 0, else a filtered sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)  # (A, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, num_samples: int = 1, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_ids: Sequence[int] = (), pad_id: int = 0,
             seed: int = 0, device=None, budget: ThinkingBudget | None = None, retire_share: float = 0.25,
             prefix_kv: list | None = None, return_kv: bool = False) -> SampleResult:
    """
    Sample up to max_new_tokens after each prompt, num_samples times per prompt, with a KV cache.

    prompts: list of B token lists (lengths may differ; a prompt may already hold part of a solution).
    Returns a SampleResult with N = B * num_samples rows, prompt-major: rows [i * num_samples, (i + 1) * num_samples)
    continue prompts[i]. The model must already live on `device` (default: the device of its parameters).
    Raises ValueError if a prompt plus max_new_tokens would exceed model.config.block_size.
    budget: budget forcing (ThinkingBudget); every prompt must then end inside the thinking, at the start of a line.
    retire_share: done rows leave the cache once they are this share of its rows (0: at every finished row); the
    samples are the same whatever it is, only the time differs (benchmarks/bench_retire.py).
    prefix_kv: per prompt, a PrefixKV of its first tokens (all but at least the last) or None; only the rest is
    prefilled (prefix_cache.py). return_kv: the result holds, per row, the KV of every token the call computed, from
    the end of its cached prefix to its last token fed back (the last generated token never is).
    """
    assert len(prompts) > 0 and all(len(prompt) > 0 for prompt in prompts), "every prompt needs at least one token"
    assert max_new_tokens >= 1 and num_samples >= 1
    assert temperature >= 0, "temperature must be >= 0 (0 = greedy)"
    assert top_k is None or top_k >= 1, "top_k must be >= 1"
    assert top_p is None or 0 < top_p <= 1, "top_p must be in (0, 1]"
    check_fits(model, [len(prompt) for prompt in prompts], max_new_tokens)
    device = torch.device(device) if device is not None else _model_device(model)
    is_cuda = device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(seed)
    stop_tensor = torch.tensor(list(stop_ids), dtype=torch.long, device=device)  # (S,)
    config = model.config
    B = len(prompts)
    N = B * num_samples

    # (1) prefill: every prompt once, left-padded, with its own positions. With prefix_kv, each row's cached KV is
    # copied into its slots and only the last R columns are pushed through the model, R = the longest uncached tail
    prompt_tokens, prompt_is_real = left_pad(prompts, pad_id, device)  # (B, P) each
    P = prompt_tokens.shape[1]
    max_len = P + max_new_tokens
    cache_dtype = torch.bfloat16 if is_cuda else next(model.parameters()).dtype
    cache = KVCache(config, B, max_len, device, cache_dtype)
    prompt_lengths = [len(prompt) for prompt in prompts]
    cached = [0] * B if prefix_kv is None else [0 if kv is None else len(kv) for kv in prefix_kv]
    assert len(cached) == B and all(c < n for c, n in zip(cached, prompt_lengths)), \
        "a cached prefix must leave at least the prompt's last token to prefill (its logits start the sampling)"
    R = max(n - c for n, c in zip(prompt_lengths, cached))  # columns to prefill
    for row, kv in enumerate(prefix_kv or []):
        first_slot, num_copied = P - prompt_lengths[row], prompt_lengths[row] - R  # tokens left of the prefill
        if kv is not None and num_copied > 0:
            cache.keys[:, row, :, first_slot:P - R] = kv.keys[:, :, :num_copied].to(cache_dtype)
            cache.values[:, row, :, first_slot:P - R] = kv.values[:, :, :num_copied].to(cache_dtype)
    cache.advance(P - R)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=is_cuda):
        logits, _ = model(prompt_tokens[:, P - R:], positions=positions_from_mask(prompt_is_real)[:, P - R:],
                          attn_mask=prompt_is_real, kv_cache=cache)  # (B, R, V)
    prefill_by_prompt = prompt_is_real[:, P - R:].sum(dim=1).tolist()  # a tail shorter than R is partly recomputed
    prefill_tokens = sum(prefill_by_prompt)
    # return_kv: row i's new KV runs from slot kv_first_slot[i] (its first token not cached before) to its end
    kv_first_slot = torch.tensor([P - n + c for n, c in zip(prompt_lengths, cached)], device=device)  # (B,)
    last_logits = logits[:, -1].float()  # (B, V): left padding puts every prompt's last token in the last column
    key_is_real = torch.ones(B, max_len, dtype=torch.bool, device=device)  # (B, max_len): generated tokens are real
    key_is_real[:, :P] = prompt_is_real
    next_position = prompt_is_real.sum(dim=1)  # (B,) RoPE position of the next token = prompt length

    # (2) fork: row i of the cache becomes rows [i * num_samples, (i + 1) * num_samples)
    if num_samples > 1:
        fork_index = torch.arange(B, device=device).repeat_interleave(num_samples)  # (N,)
        cache.select_rows(fork_index)
        last_logits = last_logits[fork_index]    # (N, V)
        key_is_real = key_is_real[fork_index]    # (N, max_len)
        next_position = next_position[fork_index]
        kv_first_slot = kv_first_slot[fork_index]

    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(N, max_new_tokens, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    hit_stop = torch.zeros(N, dtype=torch.bool, device=device)
    active_rows = torch.arange(N, device=device)  # (A,) output row of each row still in the cache
    is_done = torch.zeros(N, dtype=torch.bool, device=device)  # (A,) the row emitted a stop token (stage 4)
    decode_tokens = 0
    row_kv = [None] * N  # return_kv: each row's PrefixKV, taken when it leaves the cache
    think_count = torch.zeros(N, dtype=torch.long, device=device)  # (A,) budget forcing's state (ThinkingBudget)
    is_thinking = torch.ones(N, dtype=torch.bool, device=device)
    at_line_start = torch.ones(N, dtype=torch.bool, device=device)

    for step in range(max_new_tokens):
        # (3) sample one token per live row; its log-prob is taken under the raw, unfiltered distribution. Only the
        # live rows draw, so the random stream (and every sample) is the same however lazily rows are retired.
        live = (~is_done).nonzero().squeeze(1)  # (L,) cache rows still generating
        next_tokens = torch.full_like(active_rows, pad_id)  # (A,) done rows are fed pad, their outputs ignored
        next_tokens[live] = choose_next_tokens(last_logits[live], temperature, top_k, top_p, generator)
        if budget is not None:
            next_tokens = force_budget(next_tokens, think_count, is_thinking, at_line_start, budget)
            think_count, is_thinking, at_line_start = advance_budget(next_tokens, think_count, is_thinking, budget)
        live_rows, live_tokens = active_rows[live], next_tokens[live]  # (L,) output rows and their tokens
        tokens[live_rows, step] = live_tokens
        logprobs[live_rows, step] = F.log_softmax(last_logits[live], dim=-1).gather(1, live_tokens[:, None]).squeeze(1)
        lengths[live_rows] = step + 1
        is_stop = torch.zeros_like(is_done)
        is_stop[live] = torch.isin(live_tokens, stop_tensor)  # (A,)
        hit_stop[active_rows[is_stop]] = True
        is_done |= is_stop
        if step == max_new_tokens - 1 or bool(is_done.all()):
            break  # the last token is never fed back: nothing would read its logits

        # (4) retire done rows, a quarter of the cache at a time (module docstring)
        if int(is_done.sum()) >= max(1.0, retire_share * is_done.numel()):
            if return_kv:
                _take_kv(cache, is_done.nonzero().squeeze(1), active_rows, kv_first_slot, lengths, P, row_kv)
            keep = (~is_done).nonzero().squeeze(1)  # (A',)
            cache.select_rows(keep)
            active_rows, next_tokens, is_done = active_rows[keep], next_tokens[keep], is_done[keep]
            key_is_real, next_position, kv_first_slot = key_is_real[keep], next_position[keep], kv_first_slot[keep]
            think_count, is_thinking, at_line_start = think_count[keep], is_thinking[keep], at_line_start[keep]

        # (5) decode: push each row's new token through the model, appending to the cache
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=is_cuda):
            logits, _ = model(next_tokens[:, None], positions=next_position[:, None],
                              attn_mask=key_is_real[:, :cache.pos + 1], kv_cache=cache)  # (A, 1, V)
        last_logits = logits[:, -1].float()  # (A, V)
        next_position = next_position + 1
        decode_tokens += int((~is_done).sum())  # tokens generated; a done row's wasted pass is not the method's cost

    if return_kv:  # the rows still in the cache
        _take_kv(cache, torch.arange(active_rows.numel(), device=device), active_rows, kv_first_slot, lengths, P, row_kv)
    kv_start = [cached[row // num_samples] for row in range(N)] if return_kv else None
    return SampleResult(tokens=tokens, logprobs=logprobs, lengths=lengths, hit_stop=hit_stop,
                        prefill_tokens=prefill_tokens, decode_tokens=decode_tokens, prefill_by_prompt=prefill_by_prompt,
                        kv=row_kv if return_kv else None, kv_start=kv_start)


def _take_kv(cache, cache_rows, active_rows, kv_first_slot, lengths, P, row_kv):
    """Copy out the KV of cache rows `cache_rows` (their output rows: active_rows[cache_rows]) from their first new
    slot to their last token fed back: generated token t sits in slot P + t and the last one is never fed. A loop over
    rows, but outside the decode loop: it runs when rows retire (a quarter of the cache at a time) and at the end."""
    for cache_row in cache_rows.tolist():
        out_row = int(active_rows[cache_row])
        first, end = int(kv_first_slot[cache_row]), P + int(lengths[out_row]) - 1
        row_kv[out_row] = PrefixKV(cache.keys[:, cache_row, :, first:end].clone(),
                                   cache.values[:, cache_row, :, first:end].clone())


@torch.no_grad()
def generate_reference(model, prompt: list[int], max_new_tokens: int, stop_ids: Sequence[int] = (),
                       budget: ThinkingBudget | None = None) -> list[int]:
    """
    The specification of greedy decoding: one row, no cache, no padding. Every step pushes the whole sequence
    through the model and appends the argmax of the last position. Stops after a token in stop_ids (kept).
    With a budget, the argmax goes through budget forcing first, exactly as in generate.
    """
    check_fits(model, [len(prompt)], max_new_tokens)
    device = _model_device(model)
    sequence = list(prompt)
    generated = []
    think_count, is_thinking, at_line_start = torch.tensor([0]), torch.tensor([True]), torch.tensor([True])
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([sequence], dtype=torch.long, device=device))  # (1, T, V)
        next_token = int(logits[0, -1].argmax())
        if budget is not None:
            forced = force_budget(torch.tensor([next_token]), think_count, is_thinking, at_line_start, budget)
            think_count, is_thinking, at_line_start = advance_budget(forced, think_count, is_thinking, budget)
            next_token = int(forced[0])
        generated.append(next_token)
        sequence.append(next_token)
        if next_token in stop_ids:
            break
    return generated


def sequence_logprobs(model, sequences: list[list[int]],
                      prompt_lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Per-token log-probs of given completions under the model, in one teacher-forced forward pass.

    sequences[i] is prompt_i followed by completion_i; prompt_lengths[i] = len(prompt_i) >= 1.
    For completion token y_j (at position t = prompt_length + j) the value is log pi(y_j | x, y_<j), read from the
    logits at position t - 1. Rows are right-padded: causal attention never reads a later position, so the
    padding changes nothing before it and needs no mask.

    Returns (completion_logprobs, completion_mask), both (N, T_c) with T_c the longest completion: column j holds
    completion token j; mask is False past a row's end, where the log-prob is 0.
    Gradients flow (GRPO differentiates through the policy's log-probs); call it under torch.no_grad() for a frozen
    reference model or for search priors, and under autocast if you want bf16.
    """
    assert len(sequences) == len(prompt_lengths) and len(sequences) > 0
    assert all(1 <= p <= len(s) for s, p in zip(sequences, prompt_lengths)), "need 1 <= prompt_length <= len(sequence)"
    device = _model_device(model)
    lengths = torch.tensor([len(s) for s in sequences], device=device)   # (N,)
    prompt_lens = torch.tensor(list(prompt_lengths), device=device)      # (N,)
    completion_lengths = lengths - prompt_lens                            # (N,)
    N, T = len(sequences), int(lengths.max())
    T_c = int(completion_lengths.max())
    if T > model.config.block_size:
        raise ValueError(f"a sequence of {T} tokens exceeds the model's block_size={model.config.block_size}")
    if T_c == 0:
        empty = torch.zeros(N, 0, device=device)
        return empty, empty.bool()
    padded = torch.tensor([list(s) + [0] * (T - len(s)) for s in sequences], dtype=torch.long, device=device)  # (N, T)
    logits, _ = model(padded)  # (N, T, V)
    # log pi(token t+1 | tokens <= t) for t = 0 .. T-2
    next_token_logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)                   # (N, T-1, V)
    next_token_logprobs = next_token_logprobs.gather(2, padded[:, 1:, None]).squeeze(2)  # (N, T-1)
    completion_index = torch.arange(T_c, device=device)                  # (T_c,)
    completion_mask = completion_index[None, :] < completion_lengths[:, None]  # (N, T_c)
    column = (prompt_lens[:, None] - 1 + completion_index[None, :]).clamp(max=T - 2)  # (N, T_c) into (N, T-1)
    completion_logprobs = next_token_logprobs.gather(1, column).masked_fill(~completion_mask, 0.0)  # (N, T_c)
    return completion_logprobs, completion_mask
