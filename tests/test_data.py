"""
The training batches: length buckets and the task mix.

data.batches sorts a chunk of `bucket_batches` batches by length before cutting it, so a larger bucket wastes less
compute on padding; every example is still drawn once per pass. train_pretrain.training_problems draws
`--arith-ratio` arith problems per countdown problem.
"""
import os
import sys
from collections import Counter

from nano_reasoner.data import Example, batches

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_pretrain  # noqa: E402  (a script at the top level; importing it runs nothing)


def make_examples(lengths):
    return [Example(tokens=list(range(n)), prompt_length=1) for n in lengths]


def padded_tokens(batch):
    return len(batch) * max(len(ex.tokens) for ex in batch)


def test_one_pass_draws_every_example_once():
    examples = make_examples([3 + (7 * i) % 50 for i in range(64)])  # 64 = 4 batches of 16 = one chunk
    stream = batches(examples, batch_size=16, seed=0, bucket_batches=4)
    drawn = [id(ex) for _ in range(4) for ex in next(stream)]
    assert sorted(drawn) == sorted(id(ex) for ex in examples)


def test_a_bucket_of_every_batch_sorts_the_whole_pass():
    lengths = [3 + (7 * i) % 50 for i in range(64)]
    examples = make_examples(lengths)
    stream = batches(examples, batch_size=16, seed=0, bucket_batches=4)
    pass_batches = sorted((next(stream) for _ in range(4)), key=lambda b: min(len(ex.tokens) for ex in b))
    for shorter, longer in zip(pass_batches, pass_batches[1:]):
        assert max(len(ex.tokens) for ex in shorter) <= min(len(ex.tokens) for ex in longer)
    # so the padding is the least any cut of these lengths into batches of 16 can have
    best = sum(16 * max(chunk) for chunk in (sorted(lengths)[k:k + 16] for k in range(0, 64, 16)))
    assert sum(padded_tokens(b) for b in pass_batches) == best


def test_larger_buckets_waste_less_on_padding():
    lengths = [5 + (37 * i) % 400 for i in range(16 * 64)]
    examples = make_examples(lengths)
    waste = {}
    for bucket in (1, 4, 16):
        stream = batches(examples, batch_size=16, seed=0, bucket_batches=bucket)
        drawn = [next(stream) for _ in range(64)]
        waste[bucket] = sum(padded_tokens(b) for b in drawn) / sum(len(ex.tokens) for b in drawn for ex in b)
    assert waste[1] > waste[4] > waste[16] >= 1.0


def test_arith_ratio_sets_the_task_mix(tmp_path):
    args = train_pretrain.parse_args(["--out", str(tmp_path), "--train-problems", "30", "--arith-ratio", "2"])
    held_out = {"arith": [], "countdown": []}
    problems = train_pretrain.training_problems(args, held_out)
    assert Counter(p.task for p in problems) == {"arith": 60, "countdown": 30}
    assert len({p.text for p in problems}) == 90  # distinct
