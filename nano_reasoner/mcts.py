"""
MCTS decoding: grow a tree of partial solutions, one reasoning step per edge, and spend samples where they pay.

Best-of-N spends every sample on a whole solution from scratch; if the first step is usually wrong, most of the
budget dies there. A tree search shares prefixes: a good first step is sampled once and many continuations are tried
from it. Monte-Carlo tree search with PUCT (AlphaZero, "Mastering Chess and Shogi by Self-Play with a General
Reinforcement Learning Algorithm", Silver et al., arXiv 1712.01815) decides where to look next by balancing what a
branch has been worth so far (Q) against how likely the policy thinks it is and how rarely it has been tried (U).
For language models the action is one whole reasoning step, as in ReST-MCTS* (arXiv 2406.03816) and rStar-Math
(arXiv 2501.04519); our tasks write one step per line, so a step ends at the newline token.

    node      a partial solution that ends at a step boundary (or with eos: a terminal node, a finished solution)
    action    the next step; its prior P(s, a) = pi(a | s) / sum_b pi(b | s) over the children found so far,
              pi(a | s) = exp(sum of the step's token log-probs)
    value     v(s) = the PRM's score at the node's step end: the probability that the solution is still sound.
              A finished solution of a task with a test-time checker (countdown) is valued by the checker
              instead: 1 when it is right, 0 when not, like the win or loss at the end of a game in AlphaZero.

Each round runs four numbered stages, for every problem's tree at once:

    (1) select    from the root, repeatedly take the child maximising
                  Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a)) until a node that may widen (below) or a
                  finished solution. Several nodes are selected per tree per round; a "virtual visit" (counted as a
                  visit worth 0) on each path pushes the next selection elsewhere.
    (2) expand    from every selected node, roll out `rollouts_per_expansion` continuations to the end of the
                  solution: all nodes of all trees in ONE sampler call (each node's prefix is a prompt forked into
                  that many rows). Each rollout is cut into steps and grafted onto the tree: a step the tree already
                  has is shared, a new one becomes a new node. So every token generated stays in the tree.
    (3) evaluate  every rollout with the PRM, in ONE verifier call: the score at each step end is that node's value;
                  each finished rollout is also judged by the checker where the task has one.
    (4) back up   for each rollout, mix the PRM's value v of its first step with its outcome z (the value of
                  its last node), as AlphaGo mixed its value network with rollouts ("Mastering the game of Go with
                  deep neural networks and tree search", Silver et al. 2016): b = (1 - mix) * v + mix * z, mix 0.8;
                  then N += 1 and W += b for every node on its whole path, root to end, so Q = W / N. With a checker, z
                  is 0 for every failed rollout, and v keeps the branches the PRM trusts ahead of the others.
                  A selected finished solution is not expanded: its own value is backed up again.

Progressive widening (Coulom, "Computing Elo Ratings of Move Patterns in the Game of Go", 2007; Chaslot et al.
2008). A game has a fixed list of moves; a language model has endless possible next steps, of which the rollouts so
far found a few. A node visited N times may hold up to ceil(widening * sqrt(N + 1)) children: selection stops at a
node with fewer, and new rollouts are drawn from there. A node whose children already hold 95% of the policy's
probability of the next step (sum of pi(a | s)) is saturated: more samples would only repeat them, so it is not
widened again. This is what stops the search from re-sampling `</think>` after a finished last step.

A tree stops when its budget of generated tokens (N samples' worth, compute.sample_tokens) is spent, or as soon as
the checker accepts one of its finished solutions, which is then the answer. Otherwise the answer is the end of the
most visited path (AlphaZero's play rule) or, with pick="value", the finished solution with the best aggregated PRM
score.

The checker (tasks.check) reads only the problem: a countdown answer is checked from the numbers and the target,
without a stored solution, the way a program is checked by its tests. Arith has no such checker (checking its answer
means computing it), so there the PRM alone values finished solutions; use_checker=False does the same on countdown,
to see what the PRM alone is worth.

Simplifications compared with the papers: rollouts come from the policy itself at the search temperature (no
separate fast rollout policy); priors are normalised over the children found so far; no Dirichlet noise at the root;
no tree reuse between problems. Each node keeps the KV of its step (prefix_cache.py), so an expansion prefills one
token (the last of the node's step, which no rollout fed back) instead of the node's whole context; `tree_tokens`
counts the tree's unique tokens, against which compute.py's prefill is measured.
"""
import math
from dataclasses import dataclass, field

from nano_reasoner import tasks
from nano_reasoner.compute import Compute, sample_tokens
from nano_reasoner.prefix_cache import concat, path_kv
from nano_reasoner.prm import aggregate
from nano_reasoner.sampling import generate
from nano_reasoner.search import MAX_ROWS_PER_CALL, Answer, encode_prompts

SATURATED_MASS = 0.95  # a node whose children hold this much of pi( . | s) is not widened again


@dataclass
class Node:
    tokens: list                  # the completion up to here
    prior: float                  # P(s, a) of the step that led here, normalised over its siblings
    value: float                  # v: the PRM's score at this step's end, or the checker's verdict (0 for a cut step)
    step_scores: list             # PRM scores at every step end of `tokens`
    is_terminal: bool             # eos written, or cut off without finishing its step
    parent: "Node | None" = None
    children: list = field(default_factory=list)
    visits: int = 0               # N(s, a)
    value_sum: float = 0.0        # W(s, a)
    virtual_visits: int = 0       # pending selections of this round
    logprob: float = 0.0          # log pi(a | s) of the step that led here, summed over its tokens
    saturated: bool = False       # its children hold SATURATED_MASS of pi( . | s): do not widen again
    kv: object = None             # prefix cache: PrefixKV of this step's tokens (maybe all but its last few), or None

    def step_length(self):
        """Tokens of the step that led here (the root has none)."""
        return len(self.tokens) - (len(self.parent.tokens) if self.parent is not None else 0)

    def q(self):
        """Q(s, a) = W / N; a node not yet visited is worth its own value."""
        seen = self.visits + self.virtual_visits
        return self.value_sum / seen if seen else self.value


def puct(child, parent_visits, c_puct):
    # Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
    # BEGIN SOLUTION part 13
    return child.q() + c_puct * child.prior * math.sqrt(parent_visits) / (1 + child.visits + child.virtual_visits)
    # END SOLUTION


def may_widen(node, widening):
    """Progressive widening: a node that is not finished or saturated may hold ceil(widening * sqrt(N + 1))
    children; one with fewer (a leaf has none) gets new rollouts."""
    if node.is_terminal or node.saturated:
        return False
    return not node.children or (widening is not None and
                                 len(node.children) < math.ceil(widening * math.sqrt(node.visits + 1)))


def select(root, c_puct, widening=None):
    """(1) The path from the root to a node to expand (one that may widen) or to a finished solution, taking the
    PUCT-best child at every node on the way (ties: the first child). widening=None: only leaves are expanded."""
    path = [root]
    node = root
    while node.children and not may_widen(node, widening):
        parent_visits = node.visits + node.virtual_visits
        node = max(node.children, key=lambda child: puct(child, parent_visits, c_puct))
        path.append(node)
    return path


def backup(path, value):
    """(4) Every node on the path was visited once more and earned `value`."""
    # BEGIN SOLUTION part 13
    for node in path:
        node.visits += 1
        node.value_sum += value
    # END SOLUTION


def split_steps(tokens, logprobs, step_end_id, eos_id):
    """A rollout -> [(step tokens, step log-prob, is_complete)]: steps end at a step_end or eos token (kept); tokens
    after the last of them (the rollout ran out of room) form a last, incomplete step."""
    steps, start = [], 0
    for index, token in enumerate(tokens):
        if token == step_end_id or token == eos_id:
            steps.append((tokens[start:index + 1], sum(logprobs[start:index + 1]), True))
            start = index + 1
            if token == eos_id:
                return steps
    if start < len(tokens):
        steps.append((tokens[start:], sum(logprobs[start:]), False))
    return steps


def graft(node, steps, scores, eos_id, checker=None):
    """(2)+(3) Hang one rollout below `node`, step by step, sharing the steps the tree already has.
    steps: split_steps of the rollout; scores: the PRM's scores at the step ends of node.tokens + rollout (so the
    first len(node.step_scores) belong to node's own prefix). checker(tokens) -> bool values a finished solution.
    -> the path of nodes below `node`, down to the rollout's end."""
    path, parent = [], node
    for depth, (step, logprob, is_complete) in enumerate(steps):
        tokens = parent.tokens + step
        child = next((c for c in parent.children if c.tokens == tokens), None)
        if child is None:
            step_scores = scores[:len(node.step_scores) + depth + 1] if is_complete else list(parent.step_scores)
            is_finished = step[-1] == eos_id
            value = step_scores[-1] if is_complete and step_scores else 0.0
            if is_finished and checker is not None:
                value = 1.0 if checker(tokens) else 0.0
            child = Node(tokens, 0.0, value, step_scores, is_finished or not is_complete, parent=parent,
                         logprob=logprob)
            parent.children.append(child)
            # P(s, a) = exp(log pi(a|s) - log sum_b pi(b|s)), over every child found so far
            log_norm = math.log(sum(math.exp(c.logprob) for c in parent.children))
            for c in parent.children:
                c.prior = math.exp(c.logprob - log_norm)
            # the children found so far hold nearly all of pi( . | s): more samples would only repeat them
            parent.saturated = sum(math.exp(c.logprob) for c in parent.children) >= SATURATED_MASS
        path.append(child)
        parent = child
    return path


@dataclass
class Tree:
    problem: tasks.Problem
    prompt: list
    root: Node
    compute: Compute
    budget_tokens: int
    checker: object = None        # tokens -> bool: the task's test-time checker, or None
    solved: "Node | None" = None  # the first finished solution the checker accepted
    simulations: int = 0
    prompt_kv: object = None      # prefix cache: PrefixKV of the prompt, from the first expansion on
    prefix_cache: bool = True     # reuse the KV of the path (prefix_cache.py); False: prefill the whole prefix


def cached_prefix(tree, path):
    """The PrefixKV of prompt + path's steps that the tree already holds (prefix_cache.path_kv), or None; at least the
    last token is left out, since its logits start the sampling."""
    if not tree.prefix_cache:
        return None
    kv = path_kv([tree.prompt_kv] + [node.kv for node in path[1:]],
                 [len(tree.prompt)] + [node.step_length() for node in path[1:]])
    context_length = len(tree.prompt) + len(path[-1].tokens)
    return kv.slice(0, context_length - 1) if kv is not None and len(kv) >= context_length else kv


def store_kv(tree, nodes, row_kv, row_start):
    """Give the prompt and each node the KV of its tokens that it lacks and that a rollout computed: row_kv holds the
    KV of the rollout's sequence (prompt + tokens) from token row_start on."""
    spans = [(len(tree.prompt), 0, tree.prompt_kv)] + [
        (node.step_length(), len(tree.prompt) + len(node.tokens) - node.step_length(), node.kv) for node in nodes]
    new_kv = []
    for length, start, held in spans:
        missing_from = start + (0 if held is None else len(held))  # first token of the span without KV
        assert held is None or len(held) == length or missing_from >= row_start, "a gap in the cached prefix"
        fresh = row_kv.slice(missing_from - row_start, start + length - row_start) if missing_from >= row_start else None
        new_kv.append(concat([held, fresh]) if fresh is not None and len(fresh) > 0 else held)
    tree.prompt_kv = new_kv[0]
    for node, kv in zip(nodes, new_kv[1:]):
        node.kv = kv


def expand(selections, policy, tokenizer, verifier, *, rollouts_per_expansion, mix, temperature, seed):
    """(2), (3) and (4) for many selected nodes at once: one sampler call rolls out all of them, one verifier call
    scores all rollouts, and each rollout is grafted and backed up. selections: (tree, path to the node)."""
    k = rollouts_per_expansion
    prefixes = [tree.prompt + path[-1].tokens for tree, path in selections]
    cached = [cached_prefix(tree, path) for tree, path in selections]
    room = policy.config.block_size - max(len(prefix) for prefix in prefixes)  # a rollout may use the context
    rows, row_logprobs, row_kv, prefilled = [], [], [], []
    per_call = max(1, MAX_ROWS_PER_CALL // k)
    for start in range(0, len(prefixes), per_call):
        result = generate(policy, prefixes[start:start + per_call], room, num_samples=k, temperature=temperature,
                          stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=seed + start,
                          prefix_kv=cached[start:start + per_call], return_kv=True)
        prefilled += result.prefill_by_prompt
        for row in range(result.tokens.shape[0]):
            rows.append(result.row_tokens(row))
            row_logprobs.append(result.logprobs[row, :len(rows[-1])].tolist())
            row_kv.append(result.kv[row])
    completions = [path[-1].tokens + rows[i * k + j] for i, (_, path) in enumerate(selections) for j in range(k)]
    prompts = [tree.prompt for tree, _ in selections for _ in range(k)]
    all_scores = verifier.score_steps(prompts, completions)
    for index, (tree, path) in enumerate(selections):
        node = path[-1]
        # without the prefix cache, everything but the newest token (never fed back) is prefilled again
        is_redundant = node is not tree.root and not tree.prefix_cache
        tree.compute.add_policy(prefill_tokens=prefilled[index],
                                row_lengths=[len(row) for row in rows[index * k:(index + 1) * k]],
                                redundant_prefill_tokens=len(prefixes[index]) - 1 if is_redundant else 0)
        tree.compute.add_verifier(verifier.count_tokens(prompts[index * k:(index + 1) * k],
                                                        completions[index * k:(index + 1) * k]))
        for j in range(index * k, (index + 1) * k):
            steps = split_steps(rows[j], row_logprobs[j], tokenizer.step_end_id, tokenizer.eos_id)
            below = graft(node, steps, all_scores[j], tokenizer.eos_id, tree.checker) if steps else []
            if tree.prefix_cache:
                store_kv(tree, path[1:] + below, row_kv[j], 0 if cached[index] is None else len(cached[index]))
            end = below[-1] if below else node
            first = below[0] if below else node
            # AlphaGo's leaf evaluation: (1 - mix) * v(the rollout's first step) + mix * z(the rollout's end)
            backup(path + below, (1 - mix) * first.value + mix * end.value)
            tree.simulations += 1
            if tree.checker is not None and end.is_terminal and end.value == 1.0 and tree.solved is None:
                tree.solved = end


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
    """Follow the most visited child (ties: the higher Q) from the root to the end of a solution."""
    node = root
    while node.children:
        node = max(node.children, key=lambda child: (child.visits, child.q()))
    return node


def mcts(policy, tokenizer, problems, verifier, budget, *, pick="visits", how="min", seed=0, **search_options):
    """Solve each problem with MCTS over steps, spending about `budget` samples' worth of generated tokens.
    pick: "visits" (the end of the most visited path) or "value" (the finished solution with the best aggregated
    PRM score); a solution the checker accepted comes first. search_options: see grow_trees."""
    assert pick in ("visits", "value")
    trees = grow_trees(policy, tokenizer, problems, verifier, budget, seed=seed, **search_options)
    answers = []
    for tree, problem in zip(trees, problems):
        node = tree.solved or (best_terminal(tree.root, how) if pick == "value" else most_visited_path_end(tree.root))
        answers.append(Answer(problem, tokenizer.decode(node.tokens), node.tokens, tree.compute,
                              aggregate(node.step_scores, how), candidates=_count_terminals(tree.root)))
    return answers


def grow_trees(policy, tokenizer, problems, verifier, budget, *, rollouts_per_expansion=2, expansions_per_round=2,
               c_puct=1.0, widening=1.0, mix=0.8, temperature=1.0, max_simulations=None, use_checker=True, seed=0,
               prefix_cache=True):
    """One search tree per problem, all grown together until each has spent its token budget or is solved.
    widening: the progressive-widening constant (None: expand leaves only). mix: the weight of a rollout's outcome
    against the PRM's value of its first step in what is backed up. use_checker: value finished solutions by the
    task's test-time checker where it has one (countdown). prefix_cache: nodes keep the KV of their steps and an
    expansion prefills only what no rollout has fed through the model (prefix_cache.py)."""
    assert verifier is not None, "MCTS takes its values from a verifier: give one"
    assert budget >= 1
    max_simulations = max_simulations or 8 * budget + 16
    prompts = encode_prompts(tokenizer, problems)

    def checker_of(problem):
        if not (use_checker and tasks.checkable_at_test_time(problem.task)):
            return None
        return lambda tokens: tasks.check(problem, tokenizer.decode(tokens))

    trees = [Tree(problem, prompt, Node([], 1.0, 1.0, [], False), Compute(policy.num_params(), verifier.params),
                  budget * sample_tokens(tokenizer, problem.task, problem.difficulty), checker_of(problem),
                  prefix_cache=prefix_cache)
             for prompt, problem in zip(prompts, problems)]
    options = dict(rollouts_per_expansion=rollouts_per_expansion, mix=mix, temperature=temperature)
    for round_index in range(10 ** 6):
        active = [tree for tree in trees if tree.solved is None
                  and tree.compute.generated_tokens < tree.budget_tokens and tree.simulations < max_simulations]
        if not active:
            break
        # (1) select several nodes per tree; virtual visits spread them apart
        selections = []
        for tree in active:
            for _ in range(expansions_per_round):
                path = select(tree.root, c_puct, widening)
                for node in path:
                    node.virtual_visits += 1
                selections.append((tree, path))
        for _, path in selections:
            for node in path:
                node.virtual_visits -= 1
        # a selected finished solution: back its value up again (nothing to expand)
        to_expand, seen = [], set()
        for tree, path in selections:
            node = path[-1]
            if len(tree.prompt) + len(node.tokens) >= policy.config.block_size:
                node.is_terminal, node.value = True, 0.0  # no room left to write another token
            if node.is_terminal:
                backup(path, node.value)
                tree.simulations += 1
            elif id(node) not in seen:
                seen.add(id(node))
                to_expand.append((tree, path))
        # (2) + (3) + (4) for every node to expand, all trees in one sampler call and one verifier call
        if to_expand:
            expand(to_expand, policy, tokenizer, verifier, seed=seed + 7919 * round_index, **options)
    for tree in trees:  # the unique tokens of each tree: the prompt and every node's step
        tree.compute.tree_tokens = len(tree.prompt) + _sum_steps(tree.root)
    return trees


def _sum_steps(root):
    stack, total = [root], 0
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        total += node.step_length()
    return total


def _count_terminals(root):
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        count += node.is_terminal and bool(node.tokens)
    return count
