"""
Benchmark: does compression break the long chains of thought or the hard problems? Greedy on the held-out problems
with the float policy and each compressed one; among the problems the float policy solves, the share each compressed
policy still solves, per difficulty, split at the median length of the float policy's trace (short half / long half).

    python -m benchmarks.compress_lengths --float runs/tiny/rl/ckpt.pt --ckpts runs/tiny/compress/prune50/ckpt.pt \\
        runs/tiny/compress/int4-g128/ckpt.pt
"""
import argparse
import os

import torch

from nano_reasoner.cli import load_policy
from nano_reasoner.evaluate import attempt_problems, held_out_problems

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--float", dest="float_ckpt", required=True, help="the float policy")
parser.add_argument("--ckpts", nargs="+", required=True, help="compressed policies")
parser.add_argument("--eval-problems", type=int, default=500, help="held-out problems per task (default 500)")
parser.add_argument("--seed", type=int, default=1337, help="seed of the held-out problems (default 1337)")
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
held_out = held_out_problems(args.eval_problems, seed=args.seed)


def solve(path):
    """-> {task: [(is_correct, completion tokens) per problem]}, greedy."""
    model, tokenizer, _ = load_policy(path, torch.device("cpu"))
    results = {}
    for task, problems in held_out.items():
        with torch.no_grad():
            attempts, _ = attempt_problems(model, tokenizer, problems, temperature=0.0, seed=args.seed)
        results[task] = [(a[0].verdict.is_correct, len(a[0].tokens)) for a in attempts]
    return results


reference = solve(args.float_ckpt)
compressed = {os.path.basename(os.path.dirname(os.path.abspath(path))): solve(path) for path in args.ckpts}
columns = [(task, d) for task, problems in held_out.items() for d in sorted({p.difficulty for p in problems})]
print("| kept (short half / long half) | " + " | ".join(f"{task} {d}" for task, d in columns) + " |")
print("|---|" + "---|" * len(columns))
halves = {}
for task, d in columns:
    solved = [i for i, p in enumerate(held_out[task]) if p.difficulty == d and reference[task][i][0]]
    lengths = sorted(reference[task][i][1] for i in solved)
    median = lengths[len(lengths) // 2]
    halves[task, d] = ([i for i in solved if reference[task][i][1] < median],
                       [i for i in solved if reference[task][i][1] >= median], median)
print("| float's median trace (tokens) | " + " | ".join(str(halves[c][2]) for c in columns) + " |")
for name, results in compressed.items():
    cells = []
    for task, d in columns:
        short, long, _ = halves[task, d]
        kept = [sum(results[task][i][0] for i in half) / max(1, len(half)) for half in (short, long)]
        cells.append(f"{kept[0]:.0%} / {kept[1]:.0%}")
    print(f"| {name} | " + " | ".join(cells) + " |")
