"""Tests for nano_reasoner/mcts.py: PUCT and backup on a tree checked by hand, and the decoder on a toy policy."""
import math

import pytest

from nano_reasoner import mcts, search, tasks
from toy_world import PATHS, PROBLEM, TablePolicy, constant_verifier, exact_prm, toy_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return toy_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def policy(tokenizer):
    return TablePolicy(tokenizer, PATHS)


def hand_tree():
    """A root with three terminal children: priors 0.5, 0.3, 0.2; PRM values 0.2, 0.9, 0.5."""
    root = mcts.Node([], 1.0, 1.0, [], False)
    for name, prior, value in (("a", 0.5, 0.2), ("b", 0.3, 0.9), ("c", 0.2, 0.5)):
        root.children.append(mcts.Node([ord(name)], prior, value, [value], True, parent=root))
    return root


def test_puct_selection_and_backup_match_a_hand_computation():
    root = hand_tree()
    a, b, c = root.children
    chosen = []
    for _ in range(4):
        path = mcts.select(root, c_puct=1.0)
        mcts.backup(path, path[-1].value)
        chosen.append(chr(path[-1].tokens[0]))
    # sim 1: N(root)=0, so U = Q = the PRM values: b (0.9).
    # sim 2: N=1: a 0.2+0.5*1/1=0.70, b 0.9+0.3*1/2=1.05, c 0.5+0.2*1/1=0.70 -> b.
    # sim 3: N=2: a 0.2+0.5*1.414=0.907, b 0.9+0.3*1.414/3=1.041, c 0.5+0.2*1.414=0.783 -> b.
    # sim 4: N=3: a 0.2+0.5*1.732=1.066, b 0.9+0.3*1.732/4=1.030, c 0.5+0.2*1.732=0.846 -> a.
    assert chosen == ["b", "b", "b", "a"]
    assert (root.visits, a.visits, b.visits, c.visits) == (4, 1, 3, 0)
    assert root.value_sum == pytest.approx(0.9 * 3 + 0.2)
    assert root.q() == pytest.approx((0.9 * 3 + 0.2) / 4)
    assert b.q() == pytest.approx(0.9) and c.q() == pytest.approx(0.5)  # unvisited: its own PRM value


def test_puct_formula():
    child = mcts.Node([1], prior=0.25, value=0.4, step_scores=[0.4], is_terminal=False, visits=3, value_sum=1.5)
    # Q + c P sqrt(N) / (1 + N_a) = 0.5 + 2 * 0.25 * 4 / 4
    assert mcts.puct(child, parent_visits=16, c_puct=2.0) == pytest.approx(0.5 + 0.5)


def test_virtual_visits_push_the_next_selection_elsewhere():
    root = hand_tree()
    first = mcts.select(root, 1.0)
    for node in first:
        node.virtual_visits += 1
    second = mcts.select(root, 1.0)
    assert first[-1] is not second[-1]


def test_split_steps_cuts_a_rollout_at_step_ends_and_keeps_a_cut_off_tail():
    # tokens: 5 6 NL 7 NL 8 EOS  with NL = 1, EOS = 2; log-probs chosen so each step's sum is easy to read
    steps = mcts.split_steps([5, 6, 1, 7, 1, 8, 2], [-0.1, -0.2, -0.3, -1.0, 0.0, -0.5, -0.5], step_end_id=1, eos_id=2)
    assert [(tokens, complete) for tokens, _, complete in steps] == [([5, 6, 1], True), ([7, 1], True), ([8, 2], True)]
    assert [logprob for _, logprob, _ in steps] == pytest.approx([-0.6, -1.0, -1.0])
    cut = mcts.split_steps([5, 1, 7, 7], [0.0] * 4, step_end_id=1, eos_id=2)
    assert [(tokens, complete) for tokens, _, complete in cut] == [([5, 1], True), ([7, 7], False)]


def test_graft_shares_known_steps_renormalises_priors_and_asks_the_checker():
    root = mcts.Node([], 1.0, 1.0, [], False)
    NL, EOS = 1, 2
    first = mcts.graft(root, [([5, NL], math.log(0.3), True), ([8, EOS], math.log(0.5), True)], [0.7, 0.6], EOS,
                       checker=lambda tokens: tokens == [5, NL, 9, EOS])
    assert [node.tokens for node in first] == [[5, NL], [5, NL, 8, EOS]]
    assert [node.value for node in first] == [0.7, 0.0]            # PRM score; the checker rejects 8
    assert first[-1].is_terminal and not first[0].is_terminal
    second = mcts.graft(root, [([5, NL], math.log(0.3), True), ([9, EOS], math.log(0.5), True)], [0.7, 0.2], EOS,
                        checker=lambda tokens: tokens == [5, NL, 9, EOS])
    assert second[0] is first[0]                                   # the shared first step is one node
    assert second[-1].value == 1.0                                 # the checker accepts 9, whatever the PRM said
    third = mcts.graft(root, [([6, NL], math.log(0.1), True)], [0.4], EOS)
    assert [child.prior for child in root.children] == pytest.approx([0.75, 0.25])   # 0.3 : 0.1 over the children
    assert third[0].value == 0.4 and third[0].step_scores == [0.4] and not third[0].is_terminal
    cut = mcts.graft(root, [([6, NL], math.log(0.1), True), ([7, 7], -1.0, False)], [0.4], EOS)
    assert cut[-1].is_terminal and cut[-1].value == 0.0            # ran out of room before its step ended


def test_progressive_widening_allows_ceil_of_widening_times_sqrt_of_visits_plus_one_children():
    node = mcts.Node([], 1.0, 1.0, [], False)
    assert mcts.may_widen(node, None) and mcts.may_widen(node, 1.0)    # a leaf is always expanded
    node.children = [mcts.Node([i], 0.5, 0.5, [0.5], False, parent=node) for i in range(2)]
    node.visits = 3                                                    # ceil(1 * sqrt(4)) = 2: full
    assert not mcts.may_widen(node, 1.0) and not mcts.may_widen(node, None)
    node.visits = 4                                                    # ceil(sqrt(5)) = 3: room for one more
    assert mcts.may_widen(node, 1.0)
    assert not mcts.may_widen(node, 0.5)                               # ceil(0.5 * sqrt(5)) = 2
    node.saturated = True
    assert not mcts.may_widen(node, 1.0)


@pytest.mark.parametrize("expansions_per_round", [1, 3])
def test_visit_counts_add_up(policy, tokenizer, expansions_per_round):
    tree = mcts.grow_trees(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 4,
                           expansions_per_round=expansions_per_round, max_simulations=12, seed=0)[0]
    assert tree.simulations > 0
    assert tree.root.visits == tree.simulations
    stack = [tree.root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if not node.is_terminal:
            # every visit through an unfinished node went on into one of its children (by selection or rollout)
            assert node.visits == sum(child.visits for child in node.children)
        else:
            assert node.visits >= 1 and not node.children
        assert 0.0 <= node.value_sum / node.visits <= 1.0


def test_mcts_with_an_exact_prm_answers_right_where_greedy_is_wrong(policy, tokenizer):
    assert not tasks.verify(PROBLEM, search.greedy(policy, tokenizer, [PROBLEM])[0].completion).is_correct
    for pick in ("visits", "value"):
        answer = mcts.mcts(policy, tokenizer, [PROBLEM, PROBLEM], exact_prm(tokenizer), 8, pick=pick, seed=0)
        assert all(tasks.verify(PROBLEM, a.completion).is_correct for a in answer)


def test_mcts_stops_near_its_token_budget(policy, tokenizer):
    small = mcts.mcts(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 2, seed=0)[0]
    large = mcts.mcts(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 8, seed=0)[0]
    assert small.compute.generated_tokens < large.compute.generated_tokens


def test_the_prefix_cache_prefills_the_tree_once_and_changes_no_sample(policy, tokenizer):
    runs = {cache: mcts.grow_trees(policy, tokenizer, [PROBLEM, PROBLEM], exact_prm(tokenizer), 8, seed=3,
                                   prefix_cache=cache) for cache in (False, True)}
    for uncached, cached in zip(runs[False], runs[True]):
        # the same tree: the toy policy reads its history from the cache, so copied KV must carry it exactly
        assert cached.compute.generated_tokens == uncached.compute.generated_tokens
        assert cached.compute.tree_tokens == uncached.compute.tree_tokens
        assert mcts.most_visited_path_end(cached.root).tokens == mcts.most_visited_path_end(uncached.root).tokens
        # without the cache every expansion below the root prefills its whole context again; with it, one token
        assert uncached.compute.redundant_prefill_tokens > 0 and cached.compute.redundant_prefill_tokens == 0
        # at least what compute.py counted as redundant (a context but its newest token) is no longer prefilled
        assert cached.compute.redundant_prefill_tokens == 0
        assert cached.compute.prefill_tokens <= \
            uncached.compute.prefill_tokens - uncached.compute.redundant_prefill_tokens
        assert cached.compute.prefill_tokens <= 1.1 * cached.compute.tree_tokens


def test_a_test_time_checker_values_finished_solutions_and_stops_the_tree(policy, tokenizer, monkeypatch):
    # pretend arith had a checker (countdown's role): the PRM says nothing (0.5 everywhere), the checker decides
    monkeypatch.setattr(mcts.tasks, "checkable_at_test_time", lambda task: True)
    monkeypatch.setattr(mcts.tasks, "check", lambda problem, text: tasks.verify(problem, text).is_correct)
    budget = 32
    tree = mcts.grow_trees(policy, tokenizer, [PROBLEM], constant_verifier(), budget, seed=0)[0]
    assert tree.solved is not None and tree.solved.value == 1.0
    assert tasks.verify(PROBLEM, tokenizer.decode(tree.solved.tokens)).is_correct
    assert tree.compute.generated_tokens < tree.budget_tokens        # it stopped as soon as the checker accepted
    stack = [tree.root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.is_terminal and node is not tree.solved:
            assert node.value == 0.0                                 # every other finished solution was wrong
    answer = mcts.mcts(policy, tokenizer, [PROBLEM], constant_verifier(), budget, seed=0)[0]
    assert tasks.verify(PROBLEM, answer.completion).is_correct
    without = mcts.grow_trees(policy, tokenizer, [PROBLEM], constant_verifier(), budget, use_checker=False, seed=0)[0]
    assert without.solved is None


def test_each_rollout_backs_up_the_mix_of_its_first_step_value_and_its_outcome(policy, tokenizer, monkeypatch):
    # a checker judges the outcome z (1 or 0), a constant PRM says v = 0.2 for every step, so b = 0.75 * 0.2 + 0.25 * z
    monkeypatch.setattr(mcts.tasks, "checkable_at_test_time", lambda task: True)
    monkeypatch.setattr(mcts.tasks, "check", lambda problem, text: tasks.verify(problem, text).is_correct)
    # budget 1: the first round's two rollouts from the root spend it all; with seed 1 one is right and one is wrong
    tree = mcts.grow_trees(policy, tokenizer, [PROBLEM], constant_verifier(0.2), 1, mix=0.25, seed=1)[0]
    assert tree.simulations == 2 and tree.root.visits == 2
    outcomes = sorted(node.value for node in _all_nodes(tree.root) if node.is_terminal)
    assert outcomes == [0.0, 1.0]
    assert tree.root.value_sum == pytest.approx((0.75 * 0.2 + 0.25 * 1.0) + (0.75 * 0.2 + 0.25 * 0.0))   # 0.55


def _all_nodes(root):
    stack, nodes = [root], []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        nodes.append(node)
    return nodes
