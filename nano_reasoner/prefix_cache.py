"""
Prefix caching for search: the keys and values of a shared prefix are computed once and read by every continuation.

A search grows many solutions from common beginnings. Step-level beam search extends its M best partial solutions
one step at a time, and MCTS rolls out again and again from nodes deep in its tree. Handing the sampler the whole
text each time (prompt + every step so far) makes it prefill that text again: the sweep counted 24% (beam) and 12%
(MCTS) of all their FLOPs as recomputed prefixes. But with causal attention the keys and values of a token depend
only on the tokens before it, so the KV that the sampler computed while writing a step is exactly the KV any later
continuation of that step needs. Keep it with the step, and a continuation prefills only what no call has computed
before: usually one token, the last one of the step, which the sampler wrote but never fed back.

Serving engines do this over all requests: vLLM's automatic prefix caching hashes blocks of the paged KV cache
("Efficient Memory Management for Large Language Model Serving with PagedAttention", Kwon et al., arXiv 2309.06180),
and SGLang keeps the KV of every prefix in a radix tree ("SGLang: Efficient Execution of Structured Language Model
Programs", Zheng et al., arXiv 2312.07104). Our searches already hold a tree, so each node keeps the KV of its own
tokens (a `PrefixKV`), and the KV of a node's whole context is the concatenation along its path from the root.

RoPE makes this exact: a key is rotated by its token's position in its own sequence (counted from its first real
token), not by the slot it sits in, so a prefix's KV can be moved to any slot of any batch (sampling.generate
right-aligns each row's prefix against the others) without changing a number. What may change are the last bits: a
token's KV computed in a decode step (one query) and in a prefill (many) can round differently, so a cached search
draws the same samples as an uncached one up to float rounding, not bit for bit.
"""
from dataclasses import dataclass

import torch


@dataclass
class PrefixKV:
    """The keys and values of L consecutive tokens of one sequence, for every layer."""
    keys: torch.Tensor      # (n_layer, n_head, L, head_dim)
    values: torch.Tensor    # (n_layer, n_head, L, head_dim)

    def __len__(self):
        return self.keys.shape[2]

    def slice(self, start, end):
        """Tokens [start, end) of this span (clamped to what it holds)."""
        return PrefixKV(self.keys[:, :, start:end], self.values[:, :, start:end])


def concat(spans):
    """One PrefixKV for consecutive spans, in order; an empty list or empty spans give L = 0 (None: nothing)."""
    spans = [span for span in spans if span is not None and len(span) > 0]
    if not spans:
        return None
    if len(spans) == 1:
        return spans[0]
    return PrefixKV(torch.cat([s.keys for s in spans], dim=2), torch.cat([s.values for s in spans], dim=2))


def path_kv(parts, lengths):
    """The cached KV of a context made of consecutive parts (the prompt, then one step per node on a path):
    parts[i] holds the KV of the first len(parts[i]) of lengths[i] tokens, or None. The result covers the longest
    run of tokens from the start that every part before it holds completely: a part that lacks its last tokens ends
    the run there (they are prefilled again, and so is everything after them)."""
    assert len(parts) == len(lengths)
    taken = []
    for part, length in zip(parts, lengths):
        held = 0 if part is None else len(part)
        assert held <= length, f"a part holds KV for {held} tokens of its {length}"
        if held:
            taken.append(part)
        if held < length:
            break
    return concat(taken)
