"""
Benchmark: where the time of one GRPO step goes (sampling vs learning), with and without dropping uniform groups.

Loads a pre-trained policy, runs a few GRPO steps on fresh problems of both tasks with each setting, starting every
time from the same weights, and prints per step: seconds in sampling (one batched sampler call for B x G rows), seconds
in the update (rewards, reference and policy log-probs, mu gradient steps), the fraction of rows kept and the batch
accuracy. Timings on a shared CPU are rough; compare settings within one run.

    python -m benchmarks.bench_rl --init runs/tiny/pretrain/ckpt.pt
    python -m benchmarks.bench_rl --init runs/tiny/pretrain/ckpt.pt --group-size 16 --steps 5
"""
import argparse
import copy
import time

import torch

from nano_reasoner import tasks
from nano_reasoner.cli import load_policy
from nano_reasoner.grpo import GRPOConfig, grpo_step
from nano_reasoner.model import configure_optimizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--init", default="runs/tiny/pretrain/ckpt.pt", help="policy checkpoint (default runs/tiny/pretrain/ckpt.pt)")
# workload
parser.add_argument("--steps", type=int, default=3, help="GRPO steps per setting (default 3)")
parser.add_argument("--prompts-per-step", type=int, default=16, help="problems per step, half of each task (default 16)")
parser.add_argument("--group-size", type=int, default=8, help="G, samples per problem (default 8)")
parser.add_argument("--inner-updates", type=int, default=2, help="mu, gradient steps per batch (default 2)")
parser.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
# machine
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
initial, tokenizer, _ = load_policy(args.init, torch.device("cpu"))
print(f"{args.prompts_per_step} prompts x G={args.group_size}, mu={args.inner_updates}, {args.threads} threads")
for drop_uniform_groups in (False, True):
    policy, reference = copy.deepcopy(initial), copy.deepcopy(initial)
    optimizer = configure_optimizer(policy, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    config = GRPOConfig(group_size=args.group_size, inner_updates=args.inner_updates,
                        drop_uniform_groups=drop_uniform_groups)
    t_start = time.time()
    for step in range(args.steps):
        per_task = args.prompts_per_step // 2
        problems = (tasks.generate("arith", per_task, seed=2_000_000 + step, difficulties=(3, 4, 5, 6))
                    + tasks.generate("countdown", per_task, seed=3_000_000 + step, difficulties=(3, 4)))
        summary, _, _ = grpo_step(policy, reference, optimizer, tokenizer, problems, config, seed=step)
        print(f"drop_uniform_groups={drop_uniform_groups!s:5} step {step} | sample {summary['sample_s']:.2f}s | "
              f"update {summary['update_s']:.2f}s | kept {summary['kept_frac']:.0%} | acc {summary['acc']:.1%} | "
              f"len {summary['response_len']:.0f}")
    print(f"drop_uniform_groups={drop_uniform_groups}: {(time.time() - t_start) / args.steps:.2f}s per step")
