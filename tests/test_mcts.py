"""Tests for nano_reasoner/mcts.py: PUCT and backup on a tree checked by hand, and the decoder on a toy policy."""
import math

import pytest

from nano_reasoner import mcts, search, tasks
from toy_world import PATHS, PROBLEM, TablePolicy, exact_prm, toy_tokenizer


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


def test_priors_are_normalised_step_probabilities_and_duplicates_merge():
    rows, logprobs, stops = mcts.distinct_steps([[5, 9], [6, 9], [5, 9]], [math.log(0.3), math.log(0.1), math.log(0.3)],
                                                [True, True, True])
    assert rows == [[5, 9], [6, 9]]
    parent = mcts.Node([], 1.0, 1.0, [], False)
    mcts.add_children(parent, rows, logprobs, stops, [[0.8], [0.4]], eos_id=2)
    assert [child.prior for child in parent.children] == pytest.approx([0.75, 0.25])
    assert [child.value for child in parent.children] == [0.8, 0.4]
    assert [child.tokens for child in parent.children] == [[5, 9], [6, 9]]


@pytest.mark.parametrize("leaves_per_round", [1, 3])
def test_visit_counts_sum_to_the_simulations(policy, tokenizer, leaves_per_round):
    tree = mcts.grow_trees(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 4, leaves_per_round=leaves_per_round,
                           max_simulations=12, seed=0)[0]
    assert tree.simulations > 0
    assert tree.root.visits == tree.simulations
    assert sum(child.visits for child in tree.root.children) == tree.simulations
    stack = [tree.root]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.children and node is not tree.root and leaves_per_round == 1:
            # one selection per round: a node was a selected leaf once (then expanded), every other visit went on
            assert node.visits - sum(child.visits for child in node.children) == 1
        assert node.visits == 0 or 0.0 <= node.value_sum / node.visits <= 1.0


def test_mcts_with_an_exact_prm_answers_right_where_greedy_is_wrong(policy, tokenizer):
    assert not tasks.verify(PROBLEM, search.greedy(policy, tokenizer, [PROBLEM])[0].completion).is_correct
    for pick in ("visits", "value"):
        answer = mcts.mcts(policy, tokenizer, [PROBLEM, PROBLEM], exact_prm(tokenizer), 4, pick=pick, seed=0)
        assert all(tasks.verify(PROBLEM, a.completion).is_correct for a in answer)


def test_mcts_stops_near_its_token_budget(policy, tokenizer):
    small = mcts.mcts(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 2, seed=0)[0]
    large = mcts.mcts(policy, tokenizer, [PROBLEM], exact_prm(tokenizer), 8, seed=0)[0]
    assert small.compute.generated_tokens < large.compute.generated_tokens
    assert small.compute.redundant_prefill_tokens > 0  # expansions below the root re-prefill their prefix
