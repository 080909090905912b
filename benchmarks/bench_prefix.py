"""
Benchmark: beam search and MCTS with and without the prefix cache (nano_reasoner/prefix_cache.py).

Both searches grow a tree of steps. Without the cache, every expansion hands the sampler its whole context again and
the sampler prefills it; with it, each beam and node keeps the KV its steps were written with, and an expansion
prefills only the last token of its step. This prints, per strategy and task, in one run: tokens prefilled per
problem against the unique tokens of the trees (the issue's bar: at most 1.1x), policy FLOPs per problem, wall time,
and accuracy (the same up to float rounding: a cached key can differ from a recomputed one in its last bits).

    python -m benchmarks.bench_prefix --ckpt runs/tiny/reason/ckpt.pt --verifier runs/tiny/prm/ckpt.pt
"""
import argparse
import time

import torch

from nano_reasoner import mcts, search, tasks
from nano_reasoner.cli import load_policy

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ckpt", default="runs/tiny/reason/ckpt.pt", help="the policy (default: the pipeline's reasoner)")
parser.add_argument("--verifier", default="runs/tiny/prm/ckpt.pt", help="the PRM that guides the searches")
parser.add_argument("--problems", type=int, default=16, help="held-out problems per task (default 16)")
parser.add_argument("--budget", type=int, default=16, help="samples' worth of tokens per problem (default 16)")
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
device = torch.device("cpu")
policy, tokenizer, _ = load_policy(args.ckpt, device)
verifier = search.load_verifier(args.verifier, device, tokenizer)
strategies = {
    "beam": lambda problems, cache: search.beam_search(policy, tokenizer, problems, verifier, args.budget, seed=0,
                                                       temperature=0.5, prefix_cache=cache),
    "mcts": lambda problems, cache: mcts.mcts(policy, tokenizer, problems, verifier, args.budget, seed=0,
                                              prefix_cache=cache),
}
print(f"{args.problems} problems per task, budget {args.budget}, {args.threads} threads")
print(f"{'task':10} {'strategy':8} {'cache':5} {'prefilled':>9} {'tree':>6} {'ratio':>6} {'GFLOP':>7} {'seconds':>8} "
      f"{'accuracy':>8}")
for task, difficulties in (("arith", (1, 2, 3)), ("countdown", (3, 4))):
    problems = tasks.generate(task, args.problems, seed=2024, difficulties=difficulties)
    for name, run in strategies.items():
        for cache in (False, True):
            start = time.perf_counter()
            answers = run(problems, cache)
            seconds = time.perf_counter() - start
            prefilled = sum(a.compute.prefill_tokens for a in answers) / len(answers)
            tree = sum(a.compute.tree_tokens for a in answers) / len(answers)
            flops = sum(a.compute.policy_flops() for a in answers) / len(answers)
            accuracy = sum(tasks.verify(a.problem, a.completion).is_correct for a in answers) / len(answers)
            print(f"{task:10} {name:8} {'on' if cache else 'off':5} {prefilled:9.0f} {tree:6.0f} {prefilled / tree:6.2f} "
                  f"{flops / 1e9:7.2f} {seconds:8.1f} {accuracy:8.1%}", flush=True)
