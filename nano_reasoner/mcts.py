"""
MCTS decoding: grow a tree of partial solutions, one reasoning step per edge, and spend samples where they pay.

Best-of-N spends every sample on a whole solution from scratch; if the first step is usually wrong, most of the
budget dies there. A tree search shares prefixes: a good first step is sampled once and many second steps are
tried from it. Monte-Carlo tree search with PUCT (AlphaZero, "Mastering Chess and Shogi by Self-Play with a General
Reinforcement Learning Algorithm", Silver et al., arXiv 1712.01815) decides where to look next by balancing what a
branch has been worth so far (Q) against how likely the policy thinks it is and how rarely it has been tried (U).
For language models the action is one whole reasoning step, as in ReST-MCTS* (arXiv 2406.03816) and rStar-Math
(arXiv 2501.04519); our tasks write one step per line, so a step ends at the newline token.

    node      a partial solution that ends at a step boundary (or with eos: a terminal node, a finished solution)
    action    the next step, sampled from the policy at temperature T until a newline or eos
    prior     P(s, a) = pi(a | s) / sum_b pi(b | s) over the sampled siblings, pi(a | s) = exp(sum of the step's
              token log-probs)
    value     v(s) = the PRM's score at the node's newest step end: the probability that the solution is still sound

Each round runs four numbered stages, for every problem's tree at once:

    (1) select    from the root, repeatedly take the child maximising
                  Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a)) until a leaf. Several leaves are selected
                  per tree per round; a "virtual visit" (counted as a visit worth 0) on each path pushes the next
                  selection elsewhere.
    (2) expand    every selected unexpanded leaf: sample `children_per_expansion` next steps. All leaves of all trees go
                  through ONE sampler call (each leaf's prefix is a prompt forked into that many rows); identical
                  sampled steps are merged into one child.
    (3) evaluate  every new child with the PRM, in ONE verifier call; the leaf's own value was computed when it was
                  created, so the selected leaf is evaluated by reading it.
    (4) back up   the leaf's value along its path: N += 1 and W += v for every node on it; Q = W / N.

A tree stops when its budget of generated tokens (N samples' worth, compute.sample_tokens) is spent. The answer is
the most visited path (AlphaZero's play rule) or, with pick="value", the terminal node with the best aggregated PRM
score. If the most visited path does not reach a finished solution, it is completed greedily (charged).

Simplifications compared with the papers: no rollouts (the leaf value is the PRM's score alone: a rollout checked by
the exact verifier would need the true answer for arith, which a fair decoder does not have); an unvisited child's Q
is its own PRM value (instead of a first-play-urgency constant); priors are normalised over the sampled siblings only;
no Dirichlet noise at the root; no tree reuse between problems; each expansion re-prefills its whole prefix instead of
reusing the parent's KV cache (the waste is counted as redundant prefill in compute.py).
"""
import math
from dataclasses import dataclass, field

from nano_reasoner.compute import Compute, sample_tokens
from nano_reasoner.prm import aggregate
from nano_reasoner.search import Answer, encode_prompts, sample_rows


@dataclass
class Node:
    tokens: list                  # the completion up to here
    prior: float                  # P(s, a) of the step that led here, normalised over its siblings
    value: float                  # v: the PRM's score at the newest step end (0 for a step cut off before its end)
    step_scores: list             # PRM scores at every step end of `tokens`
    is_terminal: bool             # eos written, a broken step, or no room left in the context
    parent: "Node | None" = None
    children: list = field(default_factory=list)
    visits: int = 0               # N(s, a)
    value_sum: float = 0.0        # W(s, a)
    virtual_visits: int = 0       # pending selections of this round

    def q(self):
        """Q(s, a) = W / N; an unvisited node is worth its own PRM value."""
        seen = self.visits + self.virtual_visits
        return self.value_sum / seen if seen else self.value


def puct(child, parent_visits, c_puct):
    # Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
    return child.q() + c_puct * child.prior * math.sqrt(parent_visits) / (1 + child.visits + child.virtual_visits)


def select(root, c_puct):
    """(1) The path from the root to a leaf, taking the PUCT-best child at every node (ties: the first child)."""
    path = [root]
    node = root
    while node.children and not node.is_terminal:
        parent_visits = node.visits + node.virtual_visits
        node = max(node.children, key=lambda child: puct(child, parent_visits, c_puct))
        path.append(node)
    return path


def backup(path, value):
    """(4) Every node on the path was visited once more and earned `value`."""
    for node in path:
        node.visits += 1
        node.value_sum += value


def add_children(node, steps, logprob_sums, hit_stop, step_scores, eos_id):
    """(2)+(3) Attach the sampled steps as children of `node`: duplicates merged, priors normalised over the rest.
    steps[i] are the new tokens, step_scores[i] the PRM scores of node.tokens + steps[i]."""
    assert len(steps) == len(logprob_sums) == len(hit_stop) == len(step_scores)
    log_norm = math.log(sum(math.exp(lp) for lp in logprob_sums))
    for step, logprob, is_stop, scores in zip(steps, logprob_sums, hit_stop, step_scores):
        # P(s, a) = exp(log pi(a|s) - log sum_b pi(b|s))
        prior = math.exp(logprob - log_norm)
        value = scores[-1] if (is_stop and scores) else 0.0
        is_terminal = step[-1] == eos_id or not is_stop
        node.children.append(Node(node.tokens + step, prior, value, list(scores), is_terminal, parent=node))


def distinct_steps(rows, logprob_sums, hit_stop):
    """Keep the first of identical sampled steps -> (rows, logprob sums, hit_stop) without repeats."""
    seen, kept = set(), ([], [], [])
    for row, logprob, is_stop in zip(rows, logprob_sums, hit_stop):
        if tuple(row) not in seen:
            seen.add(tuple(row))
            kept[0].append(row)
            kept[1].append(logprob)
            kept[2].append(is_stop)
    return kept


@dataclass
class Tree:
    prompt: list
    root: Node
    compute: Compute
    budget_tokens: int
    simulations: int = 0


def expand(trees_and_leaves, policy, tokenizer, verifier, *, children_per_expansion, temperature, max_step_tokens,
           seed):
    """(2) and (3) for many leaves at once: one sampler call for all of them, one verifier call for all children."""
    block_size = policy.config.block_size
    jobs = []
    for tree, leaf in trees_and_leaves:
        if len(tree.prompt) + len(leaf.tokens) >= block_size:
            leaf.is_terminal = True  # no room left to write another step
        else:
            jobs.append((tree, leaf))
    if not jobs:
        return
    prefixes = [tree.prompt + leaf.tokens for tree, leaf in jobs]
    room = block_size - max(len(prefix) for prefix in prefixes)
    k = children_per_expansion
    rows, logprob_sums, hit_stop = sample_rows(policy, tokenizer, prefixes, k, min(max_step_tokens, room),
                                               temperature=temperature, seed=seed,
                                               stop_ids=[tokenizer.eos_id, tokenizer.step_end_id])
    children_of_job = []
    for j, (tree, leaf) in enumerate(jobs):
        prefix_length = len(prefixes[j])
        # a prefix KV cache would already hold all of the prefix but its newest token (never fed back)
        redundant = 0 if leaf is tree.root else prefix_length - 1
        tree.compute.add_policy(prefill_tokens=prefix_length, row_lengths=[len(r) for r in rows[j * k:(j + 1) * k]],
                                redundant_prefill_tokens=redundant)
        children_of_job.append(distinct_steps(rows[j * k:(j + 1) * k], logprob_sums[j * k:(j + 1) * k],
                                              hit_stop[j * k:(j + 1) * k]))
    verifier_prompts, verifier_completions = [], []
    for (tree, leaf), (steps, _, _) in zip(jobs, children_of_job):
        verifier_prompts += [tree.prompt] * len(steps)
        verifier_completions += [leaf.tokens + step for step in steps]
    all_scores = verifier.score_steps(verifier_prompts, verifier_completions)
    start = 0
    for (tree, leaf), (steps, logprobs, stops) in zip(jobs, children_of_job):
        scores = all_scores[start:start + len(steps)]
        tree.compute.add_verifier(verifier.count_tokens(verifier_prompts[start:start + len(steps)],
                                                        verifier_completions[start:start + len(steps)]))
        start += len(steps)
        add_children(leaf, steps, logprobs, stops, scores, tokenizer.eos_id)


def best_terminal(root, how):
    """The finished solution with the best aggregated PRM score, or None."""
    best, stack = None, [root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.is_terminal and node.tokens and (best is None or
                                                 aggregate(node.step_scores, how) > aggregate(best.step_scores, how)):
            best = node
    return best


def most_visited_path_end(root):
    """Follow the most visited child (ties: the higher Q) from the root to a leaf."""
    node = root
    while node.children:
        node = max(node.children, key=lambda child: (child.visits, child.q()))
    return node


def mcts(policy, tokenizer, problems, verifier, budget, *, pick="visits", how="min", seed=0, **search_options):
    """Solve each problem with MCTS over steps, spending about `budget` samples' worth of generated tokens.
    pick: "visits" (the most visited path) or "value" (the best terminal by aggregated PRM score)."""
    assert pick in ("visits", "value")
    trees = grow_trees(policy, tokenizer, problems, verifier, budget, seed=seed, **search_options)
    return [finish(tree, problem, policy, tokenizer, pick, how, seed) for tree, problem in zip(trees, problems)]


def grow_trees(policy, tokenizer, problems, verifier, budget, *, children_per_expansion=4, leaves_per_round=2,
               c_puct=1.0, temperature=1.0, max_step_tokens=64, max_simulations=None, seed=0):
    """One search tree per problem, all grown together until each has spent its token budget."""
    assert verifier is not None, "MCTS takes its values from a verifier: give one"
    assert budget >= 1
    max_simulations = max_simulations or 8 * budget + 16
    prompts = encode_prompts(tokenizer, problems)
    trees = [Tree(prompt, Node([], 1.0, 1.0, [], False), Compute(policy.num_params(), verifier.params),
                  budget * sample_tokens(tokenizer, problem.task, problem.difficulty))
             for prompt, problem in zip(prompts, problems)]
    options = dict(children_per_expansion=children_per_expansion, temperature=temperature,
                   max_step_tokens=max_step_tokens)
    # the roots are expanded before the first simulation, so the root's children's visits sum to the simulations
    expand([(tree, tree.root) for tree in trees], policy, tokenizer, verifier, seed=seed, **options)
    for round_index in range(1, 10 ** 6):
        active = [tree for tree in trees
                  if tree.compute.generated_tokens < tree.budget_tokens and tree.simulations < max_simulations]
        if not active:
            break
        # (1) select several leaves per tree; virtual visits spread them apart
        selections = []
        for tree in active:
            for _ in range(min(leaves_per_round, max_simulations - tree.simulations)):
                path = select(tree.root, c_puct)
                for node in path:
                    node.virtual_visits += 1
                selections.append((tree, path))
        for _, path in selections:
            for node in path:
                node.virtual_visits -= 1
        # (2) + (3) expand the distinct unexpanded leaves, all trees in one sampler call and one verifier call
        leaves, seen = [], set()
        for tree, path in selections:
            leaf = path[-1]
            if not leaf.is_terminal and not leaf.children and id(leaf) not in seen:
                seen.add(id(leaf))
                leaves.append((tree, leaf))
        expand(leaves, policy, tokenizer, verifier, seed=seed + 7919 * round_index, **options)
        # (4) back up each selected leaf's value
        for tree, path in selections:
            backup(path, path[-1].value)
            tree.simulations += 1
    return trees


def finish(tree, problem, policy, tokenizer, pick, how, seed):
    """The tree's answer: the most visited path or the best terminal; an unfinished path is completed greedily."""
    node = best_terminal(tree.root, how) if pick == "value" else most_visited_path_end(tree.root)
    if node is None or not node.is_terminal:
        node = node or most_visited_path_end(tree.root)
        prefix = tree.prompt + node.tokens
        room = policy.config.block_size - len(prefix)
        tokens = list(node.tokens)
        if room > 0:
            rows, _, _ = sample_rows(policy, tokenizer, [prefix], 1, room, temperature=0.0, seed=seed,
                                     stop_ids=[tokenizer.eos_id])
            redundant = len(prefix) - 1 if node.tokens else 0
            tree.compute.add_policy(prefill_tokens=len(prefix), row_lengths=[len(rows[0])],
                                    redundant_prefill_tokens=redundant)
            tokens += rows[0]
        return Answer(problem, tokenizer.decode(tokens), tokens, tree.compute, None,
                      candidates=_count_terminals(tree.root))
    return Answer(problem, tokenizer.decode(node.tokens), node.tokens, tree.compute,
                  aggregate(node.step_scores, how), candidates=_count_terminals(tree.root))


def _count_terminals(root):
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        count += node.is_terminal and bool(node.tokens)
    return count
