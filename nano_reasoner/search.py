"""
Search at test time: spend more inference compute on a fixed policy to get better answers.

A policy that solves a problem 30% of the time per sample solves it far more often when we draw many samples and
pick well. How we pick, and where we spend the samples, is the whole game ("Scaling LLM Test-Time Compute
Optimally", Snell et al., arXiv 2408.03314). This file holds the strategies that need no tree (mcts.py holds the tree):

    greedy          one solution at temperature 0.
    sample          one solution at temperature T (the unit of "one sample's worth" of compute).
    vote            self-consistency ("Self-Consistency Improves Chain of Thought Reasoning in Language Models",
                    Wang et al., arXiv 2203.11171): sample N, return the most common final answer.
    bon             best-of-N: sample N, return the one the verifier scores highest (an ORM scores the finished
                    solution; a PRM scores every step and the scores are aggregated by min, product or last, as in
                    "Let's Verify Step by Step", Lightman et al., arXiv 2305.20050).
    wvote           weighted majority vote: every answer collects the verifier scores of the samples that gave it.
    check           generate and test, for a task with a test-time checker (countdown, tasks.check): sample N, return
                    the first that the checker accepts. The checker reads only the problem, so this is best-of-N
                    with a perfect verifier, and its accuracy is pass@N: the bar a learned verifier aims at.
    beam            step-level beam search guided by a PRM (Snell et al. section 5): (1) expand every beam into
                    N / M next steps, all beams of all problems in one sampler call that stops at the end of a step,
                    (2) score the new prefixes with the PRM, (3) set finished solutions aside, (4) keep the M best
                    unfinished prefixes, (5) repeat until M solutions are finished; answer the best-scored one.

vote, bon and wvote read the same N samples, so `sample_pool` draws 64 once and `pick_from_pool` answers for the first
N of them: exactly what a run with N samples would see (the same distribution; the tokens come from one seeded
stream), and the sweep gets every N from one pool. The compute of the first N samples is counted exactly (prefill
once, decode and verifier tokens of those N rows).

Majority vote needs answers that agree when they are right. On `arith` every right answer is the same integer. On
`countdown` many different expressions reach the target, so votes split among right answers; we vote over the answer
text with spaces removed (the policy writes the same expression for the same path, so repeated paths still add up),
and say plainly that it is a weak strategy there: the verifier-based strategies do not have this problem.

Full samples may use the whole context, as a greedy answer may. They once stopped at 3x the tokens of a typical
straight solution (compute.sample_tokens), on the idea that a trace that long had lost its way; for a policy that
searches inside its thinking that cut most samples off mid-search: the reasoner's countdown pass@16 was 47.2% capped
and 64.8% uncapped (500 held-out problems, temperature 1), below and then above its greedy 51.4%. A row that
rambles costs its tokens, and compute.py counts them.

Simplifications compared with the papers: beam search dedupes identical prefixes before keeping the best M (a
duplicate beam spends budget on the same state twice); a candidate step that runs past `max_step_tokens` without
ending counts as a finished, broken solution with score 0; the PRM rescores the whole prefix every step (no KV cache
in the verifier). The sampler does not prefill a beam's prefix again: each beam keeps the KV of its steps
(prefix_cache.py), so a step costs one prefilled token, the last of the step before, which was never fed back.
The beam score of a partial solution is the PRM's score at its newest step end ("last"): our PRM is trained on
prefix soundness (is everything up to here still right), so that one number already judges the whole prefix.
"""
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

from nano_reasoner import genrm, prm, tasks
from nano_reasoner.checkpoint import sidecar_kind
from nano_reasoner.compute import Compute
from nano_reasoner.prefix_cache import concat
from nano_reasoner.prm import aggregate
from nano_reasoner.sampling import generate

STRATEGIES = ("greedy", "sample", "vote", "bon", "wvote", "check", "beam", "mcts")
MAX_ROWS_PER_CALL = 256  # rows of one sampler call: bounds the KV cache's memory


@dataclass
class Verifier:
    """A PRM or ORM as search uses it: step scores of (prompt, completion) token lists, and what reading them costs."""
    kind: str                                                                   # "prm", "orm" or "genrm"
    params: int
    score_steps: Callable[[list[list[int]], list[list[int]]], list[list[float]]]  # P(good) at every step end
    count_tokens: Callable[[list[list[int]], list[list[int]]], int]             # tokens one scoring call reads


def load_verifier(path, device, policy_tokenizer):
    """A verifier checkpoint -> Verifier: a PRM or ORM (prm.py), or a generative verifier (genrm.py: countdown answers,
    arith steps), told apart by the kind its sidecar names; ValueError when it was trained with another tokenizer."""
    if sidecar_kind(path) == "genrm":
        model, tokenizer = genrm.load(path, device, policy_tokenizer)
        score_steps, count_tokens = genrm.step_scorer(model, tokenizer, policy_tokenizer)
        return Verifier(kind="genrm", params=model.num_params(), score_steps=score_steps, count_tokens=count_tokens)
    model, tokenizer, ckpt = prm.load_verifier(path, device)
    if tokenizer.sha256 != policy_tokenizer.sha256:
        raise ValueError(f"{path} was trained with another tokenizer than the policy: use a verifier of this policy")
    return Verifier(kind=ckpt["kind"], params=model.num_params(), score_steps=partial(prm.score_steps, model, tokenizer),
                    count_tokens=prm.verifier_tokens)


@dataclass
class Answer:
    """What a strategy returns for one problem."""
    problem: tasks.Problem
    completion: str                 # the chosen solution's text (after the prompt)
    tokens: list                    # its token ids (eos included when it finished)
    compute: Compute
    score: float | None = None      # the verifier score that chose it, when a verifier chose it
    candidates: int = 1             # finished solutions the strategy chose among


def encode_prompts(tokenizer, problems):
    return [tokenizer.encode_prompt(tasks.format_prompt(problem)) for problem in problems]


def answer_key(problem, completion):
    """The final answer as a vote: arith by integer value, countdown by expression text; None when there is none."""
    parsed = tasks.parse_completion(completion)
    if not parsed.is_well_formed:
        return None
    text = parsed.answer.replace(" ", "")
    if problem.task == "arith":
        return text.lstrip("+") if text.lstrip("+-").isdigit() else None
    return text


@dataclass
class Rows:
    """What sample_rows drew, prompt-major: one entry per row."""
    tokens: list            # token lists
    logprob_sums: list      # sum of each row's token log-probs
    hit_stop: list          # the row ended on a stop token
    prefill_tokens: list    # per prompt, the tokens the sampler prefilled for it
    kv: list                # return_kv: each row's new KV (sampling.generate), else None per row


def sample_rows(policy, tokenizer, prompts, num_samples, max_new_tokens, *, temperature, seed, stop_ids,
                budget=None, prefix_kv=None, return_kv=False):
    """generate() in chunks of at most MAX_ROWS_PER_CALL rows -> Rows. budget: a sampling.ThinkingBudget (budget
    forcing), or None. prefix_kv: per prompt, the PrefixKV of its cached start or None (prefix_cache.py)."""
    prompts_per_call = max(1, MAX_ROWS_PER_CALL // num_samples)
    rows = Rows([], [], [], [], [])
    for start in range(0, len(prompts), prompts_per_call):
        chunk = prompts[start:start + prompts_per_call]
        result = generate(policy, chunk, max_new_tokens, num_samples=num_samples, temperature=temperature,
                          stop_ids=stop_ids, pad_id=tokenizer.pad_id, seed=seed + start, budget=budget,
                          prefix_kv=None if prefix_kv is None else prefix_kv[start:start + prompts_per_call],
                          return_kv=return_kv)
        rows.prefill_tokens += result.prefill_by_prompt
        for row in range(len(chunk) * num_samples):
            rows.tokens.append(result.row_tokens(row))
            rows.logprob_sums.append(float(result.logprobs[row].sum()))
            rows.hit_stop.append(bool(result.hit_stop[row]))
            rows.kv.append(result.kv[row] if return_kv else None)
    return rows


# ----------------------------------------------------------------------------- N independent samples

@dataclass
class Pool:
    """N full solutions of one problem, sampled after one shared prefill, with their verifier scores."""
    problem: tasks.Problem
    prompt: list
    samples: list                               # N token lists (eos included when finished)
    texts: list                                 # N completions as text
    keys: list                                  # N answer keys (None: no well-formed answer)
    step_scores: list = field(default_factory=list)  # N lists of verifier scores, empty without a verifier
    verifier_tokens: list = field(default_factory=list)  # N: tokens the verifier read for each sample


def sample_pool(policy, tokenizer, problems, num_samples, *, temperature=1.0, seed=0, verifier=None, budget=None,
                max_new_tokens=None):
    """Sample num_samples full solutions per problem (one prefill per problem) and score them if a verifier is given.
    budget: budget forcing (sampling.ThinkingBudget); max_new_tokens: the cap on a sample (default: the context)."""
    prompts = encode_prompts(tokenizer, problems)
    room = policy.config.block_size - max(len(p) for p in prompts)
    max_new = room if max_new_tokens is None else min(room, max_new_tokens)
    samples = sample_rows(policy, tokenizer, prompts, num_samples, max_new, temperature=temperature, seed=seed,
                          stop_ids=[tokenizer.eos_id], budget=budget).tokens
    pools = []
    for index, (problem, prompt) in enumerate(zip(problems, prompts)):
        rows = samples[index * num_samples:(index + 1) * num_samples]
        texts = [tokenizer.decode(row) for row in rows]
        pools.append(Pool(problem, prompt, rows, texts, [answer_key(problem, text) for text in texts]))
    return score_pools(pools, verifier) if verifier is not None else pools


def score_pools(pools, verifier):
    """Copies of the pools with every sample scored by `verifier`, all samples of all pools in one call."""
    prompts = [pool.prompt for pool in pools for _ in pool.samples]
    completions = [row for pool in pools for row in pool.samples]
    all_scores = verifier.score_steps(prompts, completions)
    scored, start = [], 0
    for pool in pools:
        n = len(pool.samples)
        scored.append(replace(pool, step_scores=all_scores[start:start + n],
                              verifier_tokens=[verifier.count_tokens([pool.prompt], [row]) for row in pool.samples]))
        start += n
    return scored


def pool_compute(pool, n, policy_params, verifier_params=0, with_verifier=False):
    """Exact compute of the first n samples: the prompt prefilled once, L - 1 decode tokens per row of L tokens."""
    rows = pool.samples[:n]
    compute = Compute(policy_params, verifier_params)
    compute.add_policy(prefill_tokens=len(pool.prompt), row_lengths=[len(row) for row in rows])
    if with_verifier:
        compute.add_verifier(sum(pool.verifier_tokens[:n]))
    return compute


def pick_from_pool(pool, n, strategy, how="min", policy_params=0, verifier_params=0):
    """Answer a problem with vote / bon / wvote / check / sample over the first n samples of its pool."""
    assert 1 <= n <= len(pool.samples), f"the pool holds {len(pool.samples)} samples, asked for {n}"
    uses_verifier = strategy in ("bon", "wvote")
    assert not uses_verifier or pool.step_scores, f"{strategy} needs a pool scored by a verifier"
    compute = pool_compute(pool, n, policy_params, verifier_params, with_verifier=uses_verifier)
    scores = [aggregate(s, how) for s in pool.step_scores[:n]] if uses_verifier else None
    if strategy == "sample":
        chosen = 0
    elif strategy == "vote":
        # most common answer; ties go to the answer seen first, so the choice is deterministic
        # BEGIN SOLUTION part 12
        counts = Counter(key for key in pool.keys[:n] if key is not None)
        chosen = max(range(n), key=lambda i: (counts[pool.keys[i]] if pool.keys[i] is not None else -1, -i))
        # END SOLUTION
    elif strategy == "bon":
        chosen = max(range(n), key=lambda i: (scores[i], -i))
    elif strategy == "check":
        # the first sample the checker accepts; when none is, the first sample (it is wrong like all the others)
        chosen = next((i for i in range(n) if tasks.check(pool.problem, pool.texts[i])), 0)
    else:
        assert strategy == "wvote", f"unknown pool strategy {strategy!r}"
        # weight(answer) = sum of the verifier scores of the samples that gave it
        # BEGIN SOLUTION part 12
        weights = defaultdict(float)
        for key, score in zip(pool.keys[:n], scores):
            if key is not None:
                weights[key] += score
        chosen = max(range(n), key=lambda i: (weights[pool.keys[i]] if pool.keys[i] is not None else -1.0,
                                              scores[i], -i))
        # END SOLUTION
    return Answer(pool.problem, pool.texts[chosen], pool.samples[chosen], compute,
                  scores[chosen] if scores else None, candidates=n)


def greedy(policy, tokenizer, problems, *, seed=0, budget=None, max_new_tokens=None):
    """One temperature-0 solution per problem (budget: as in sample_pool). A greedy row may use the whole context
    by default (max_new_tokens): it is one row per problem, and a reasoner that searches writes long thinking."""
    pools = sample_pool(policy, tokenizer, problems, 1, temperature=0.0, seed=seed, budget=budget,
                        max_new_tokens=max_new_tokens or policy.config.block_size)
    return [pick_from_pool(pool, 1, "sample", policy_params=policy.num_params()) for pool in pools]


# ----------------------------------------------------------------------------- step-level beam search

@dataclass
class Beam:
    tokens: list          # completion so far (ends at a step end, or eos when finished)
    score: float          # PRM score at the newest step end
    step_scores: list
    kv_parts: list = field(default_factory=list)  # prefix cache: PrefixKV spans of prompt + tokens, all but the last


def beam_search(policy, tokenizer, problems, verifier, budget, *, beam_width=None, temperature=1.0,
                max_step_tokens=64, max_steps=24, how="min", seed=0, prefix_cache=True):
    """
    PRM-guided step-level beam search with `budget` expansions per step (about `budget` samples' worth of tokens).
    beam_width M defaults to max(1, budget // 4), so each beam gets budget // M expansions per step. All problems
    advance in lockstep: one sampler call and one verifier call per step for all their beams. prefix_cache: each
    beam keeps the KV its steps were written with and the sampler prefills only the token it never fed back
    (prefix_cache.py); False re-prefills every beam's whole prefix, counted as redundant prefill.
    """
    assert verifier is not None, "beam search is guided by a verifier: give one"
    assert budget >= 1
    width = beam_width or max(1, budget // 4)
    expansions = max(1, budget // width)
    prompts = encode_prompts(tokenizer, problems)
    computes = [Compute(policy.num_params(), verifier.params) for _ in problems]
    live = [[Beam([], 1.0, [])] for _ in problems]   # per problem: unfinished beams
    finished = [[] for _ in problems]                # per problem: finished solutions (Beam)
    block_size = policy.config.block_size
    for step in range(max_steps):
        # (1) expand: every live beam of every problem, `expansions` samples each, stopping at the end of a step;
        # the first step has one beam, which gets the whole budget
        jobs = [(p, beam) for p in range(len(problems)) for beam in live[p]
                if len(prompts[p]) + len(beam.tokens) < block_size]
        if not jobs:
            break
        per_job = budget if step == 0 else expansions
        room = block_size - max(len(prompts[p]) + len(beam.tokens) for p, beam in jobs)
        prefix_kv = [concat(beam.kv_parts) for _, beam in jobs] if prefix_cache else None
        drawn = sample_rows(policy, tokenizer, [prompts[p] + beam.tokens for p, beam in jobs], per_job,
                            min(max_step_tokens, room), temperature=temperature, seed=seed + 7919 * step,
                            stop_ids=[tokenizer.eos_id, tokenizer.step_end_id], prefix_kv=prefix_kv,
                            return_kv=prefix_cache)
        candidates = [[] for _ in problems]   # per problem: (tokens, is_done, hit_stop, kv_parts, new tokens)
        for j, (p, beam) in enumerate(jobs):
            prefix_length = len(prompts[p]) + len(beam.tokens)
            # without the cache, a beam's prefix is prefilled again but for its newest token (never fed back)
            redundant = prefix_length - 1 if step > 0 and not prefix_cache else 0
            job = range(j * per_job, (j + 1) * per_job)
            computes[p].add_policy(prefill_tokens=drawn.prefill_tokens[j],
                                   row_lengths=[len(drawn.tokens[r]) for r in job], redundant_prefill_tokens=redundant)
            for r in job:
                row, is_stop = drawn.tokens[r], drawn.hit_stop[r]
                kv_parts = beam.kv_parts + [drawn.kv[r]] if prefix_cache else []
                candidates[p].append((beam.tokens + row, row[-1] == tokenizer.eos_id or not is_stop, is_stop, kv_parts,
                                      len(row)))
        for p in range(len(problems)):  # the tree's unique tokens: the prompt, then every distinct new step
            computes[p].tree_tokens += (len(prompts[p]) if step == 0 else 0) + sum(c[4] for c in _unique(candidates[p]))
        # (2) score every new prefix with the PRM, all problems in one call
        flat = [(p, c) for p in range(len(problems)) for c in _unique(candidates[p])]
        step_scores = verifier.score_steps([prompts[p] for p, _ in flat], [c[0] for _, c in flat])
        for p in range(len(problems)):
            unique = [c for q, c in flat if q == p]
            if unique:
                computes[p].add_verifier(verifier.count_tokens([prompts[p]] * len(unique), [c[0] for c in unique]))
        new_live = [[] for _ in problems]
        for (p, (tokens, is_done, is_stop, kv_parts, _)), scores in zip(flat, step_scores):
            # a step cut off before its end is a broken solution: score 0, never preferred
            score = scores[-1] if (is_stop and scores) else 0.0
            beam = Beam(tokens, score, list(scores) if is_stop else list(scores) + [0.0], [] if is_done else kv_parts)
            # (3) set finished solutions aside
            (finished[p] if is_done else new_live[p]).append(beam)
        # (4) keep the M best unfinished prefixes of each problem, until M solutions are finished
        for p in range(len(problems)):
            is_complete = len(finished[p]) >= width
            live[p] = [] if is_complete else sorted(new_live[p], key=lambda b: -b.score)[:width]
    answers = []
    for p, problem in enumerate(problems):
        pool = finished[p] or live[p]
        best = max(pool, key=lambda b: aggregate(b.step_scores, how)) if pool else Beam([], 0.0, [])
        answers.append(Answer(problem, tokenizer.decode(best.tokens), best.tokens, computes[p],
                              aggregate(best.step_scores, how), candidates=len(finished[p])))
    return answers


def _unique(candidates):
    """Candidates with distinct token sequences, first occurrence kept, order kept."""
    seen, kept = set(), []
    for candidate in candidates:
        key = tuple(candidate[0])
        if key not in seen:
            seen.add(key)
            kept.append(candidate)
    return kept
