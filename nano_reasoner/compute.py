"""
Compute accounting: what a test-time strategy spends, so that strategies compare at equal compute.

A strategy that samples 64 solutions and one that searches a tree both turn FLOPs into accuracy. To say which is
better we need one x-axis. "Scaling LLM Test-Time Compute Optimally" (Snell et al., arXiv 2408.03314) counts
inference compute as FLOPs ~= 2 * params * tokens: each token pushed through a forward pass costs about one multiply
and one add per parameter. We count tokens by where they go:

- policy prefill tokens: prompt (or prefix) tokens pushed through the policy before sampling. `sampling.generate`
  prefills each distinct prompt once and forks its KV cache into num_samples rows, so best-of-64 prefills exactly as
  many tokens as best-of-1 (tested).
- policy decode tokens: one forward token per generated token that is fed back (the last token of a row is never fed
  back, so a row of L generated tokens costs L - 1 decode tokens; its first token came from the prefill's logits).
- generated tokens: tokens the policy wrote (the "budget" unit: a budget of N samples is N times the tokens of one).
- verifier tokens: tokens the PRM / ORM reads; it reads prompt + completion in one forward pass per call.
- redundant prefill tokens: the part of the policy prefill that a prefix KV cache would have skipped. Step-level beam
  search and MCTS call the sampler again on each partial solution; with their prefix cache (prefix_cache.py, as in
  SGLang's RadixAttention, arXiv 2312.07104) they prefill only what no call computed before and this stays 0; with
  prefix_cache=False they recompute the prompt and every earlier step, counted here.
- tree tokens: the unique tokens of a search tree (prompt + every distinct step), the floor of what it must prefill.

FLOPs = 2 * policy_params * (prefill + decode) + 2 * verifier_params * verifier_tokens.

A budget of "N samples' worth" for a search that does not draw whole samples (MCTS) is N times `sample_tokens`: the
mean length in tokens of an exact solution of a problem of the same task and difficulty (estimated on 32 generated
problems, so it never looks at the problem being solved).

Simplifications: params counts every weight (the tied embedding once), and attention's own cost (which grows with
context length) is left out, as in the paper's 2 * N * D estimate; at our context lengths (< 320) and widths it is
a small correction.
"""
from dataclasses import asdict, dataclass
from functools import lru_cache

from nano_reasoner import tasks


@dataclass
class Compute:
    policy_params: int
    verifier_params: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    generated_tokens: int = 0
    verifier_tokens: int = 0
    redundant_prefill_tokens: int = 0
    tree_tokens: int = 0  # beam search and MCTS: the unique tokens of their tree (prompt + every distinct step)

    def add_policy(self, prefill_tokens: int, row_lengths: list[int], redundant_prefill_tokens: int = 0):
        """Charge sampling after one prefill of `prefill_tokens` tokens: rows of the given lengths were generated.
        A row of L tokens costs L - 1 decode tokens, exactly as sampling.generate counts them."""
        assert all(length >= 1 for length in row_lengths), "every sampled row holds at least one token"
        self.prefill_tokens += prefill_tokens
        self.decode_tokens += sum(length - 1 for length in row_lengths)
        self.generated_tokens += sum(row_lengths)
        self.redundant_prefill_tokens += redundant_prefill_tokens

    def add_verifier(self, tokens: int):
        """Charge the verifier reading `tokens` tokens."""
        self.verifier_tokens += tokens

    def policy_flops(self):
        # FLOPs ~= 2 * params * tokens through the policy's forward passes
        return 2 * self.policy_params * (self.prefill_tokens + self.decode_tokens)

    def verifier_flops(self):
        return 2 * self.verifier_params * self.verifier_tokens

    def flops(self):
        return self.policy_flops() + self.verifier_flops()

    def flops_with_prefix_reuse(self):
        """What the same search would cost if a prefix KV cache skipped every recomputed prefix token."""
        return self.flops() - 2 * self.policy_params * self.redundant_prefill_tokens

    def add(self, other: "Compute"):
        """Add another account's counts into this one (the parameter counts must match)."""
        assert (self.policy_params, self.verifier_params) == (other.policy_params, other.verifier_params), \
            "adding accounts of different models"
        for name in ("prefill_tokens", "decode_tokens", "generated_tokens", "verifier_tokens",
                     "redundant_prefill_tokens", "tree_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self):
        return {**asdict(self), "flops": self.flops()}


@lru_cache(maxsize=None)
def sample_tokens(tokenizer, task, difficulty):
    """Tokens of one typical full solution (completion + eos) of a `task` problem of this difficulty, written at the
    granularity the presets train on."""
    problems = tasks.generate(task, 32, seed=4242, difficulties=(difficulty,))
    lengths = [len(tokenizer.encode(tasks.full_trace(p, tasks.DEFAULT_GRANULARITY)[len(tasks.format_prompt(p)):])) + 1 for p in problems]
    return round(sum(lengths) / len(lengths))
