"""
Benchmark: how fast compressed policies decode and prefill, side by side in one run, against the float policy.

Every checkpoint is loaded through cli.load_policy, as infer.py loads it. Two measurements per model, the models taking
turns in every round so that a slow moment of the machine hits them all alike (the best of --rounds is kept):

  - decode: the KV-cached sampler, greedy, --prompts countdown prompts, exactly --new-tokens tokens per row (no stop
    token, so every model does the same work): one row of activations per prompt meets every weight matrix at each
    step, the memory-bound regime of serving;
  - prefill: one forward pass over --prompts full-length rows without a cache: large matmuls, the compute-bound regime.

Quantized weights are dequantized in PyTorch at every call, so on a CPU they cost time on top of the float matmul;
zeroed weights (unstructured pruning) are multiplied like any other; removed heads and neurons (structured pruning)
are matmuls that no longer exist.

    python -m benchmarks.bench_compress --ckpts runs/tiny/rl/ckpt.pt runs/tiny/compress/int8/ckpt.pt \\
        runs/tiny/compress/int4-g32/ckpt.pt runs/tiny/compress/prune50-r300/ckpt.pt \\
        runs/tiny/compress/prune50-structured-r300/ckpt.pt
"""
import argparse
import os
import time

import torch

from nano_reasoner import tasks
from nano_reasoner.cli import load_policy
from nano_reasoner.prune import sparsity_of
from nano_reasoner.sampling import generate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ckpts", nargs="+", required=True, help="policy checkpoints, the float one first")
parser.add_argument("--prompts", type=int, default=64, help="prompts decoded together, rows of the prefill (default 64)")
parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per prompt (default 128)")
parser.add_argument("--prefill-tokens", type=int, default=256, help="tokens per row of the prefill (default 256)")
parser.add_argument("--rounds", type=int, default=3, help="rounds, each model measured once per round (default 3)")
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
device = torch.device("cpu")
models = {}
for path in args.ckpts:
    model, tokenizer, _ = load_policy(path, device)
    models[os.path.basename(os.path.dirname(os.path.abspath(path)))] = model
problems = tasks.generate("countdown", args.prompts, seed=999, difficulties=(3, 4))
prompts = [tokenizer.encode_prompt(tasks.format_prompt(p)) for p in problems]
prefill_rows = torch.randint(1, tokenizer.vocab_size, (args.prompts, args.prefill_tokens),
                             generator=torch.Generator().manual_seed(0))


def decode_seconds(model):
    start = time.perf_counter()
    generate(model, prompts, args.new_tokens, temperature=0.0, pad_id=tokenizer.pad_id)
    return time.perf_counter() - start


@torch.no_grad()
def prefill_seconds(model):
    start = time.perf_counter()
    model(prefill_rows)
    return time.perf_counter() - start


for model in models.values():  # warm-up: first calls allocate
    generate(model, prompts[:4], 4, temperature=0.0, pad_id=tokenizer.pad_id)
    prefill_seconds(model)
best = {name: [float("inf"), float("inf")] for name in models}
for _ in range(args.rounds):
    for name, model in models.items():
        best[name][0] = min(best[name][0], decode_seconds(model))
        best[name][1] = min(best[name][1], prefill_seconds(model))

reference = next(iter(models))
decode_reference = args.prompts * args.new_tokens / best[reference][0]
prefill_reference = args.prompts * args.prefill_tokens / best[reference][1]
print(f"{args.threads} threads | {args.prompts} prompts x {args.new_tokens} decoded tokens | prefill {args.prompts} x "
      f"{args.prefill_tokens} tokens | best of {args.rounds} rounds\n")
print("| model | parameters | zero block weights | decode tokens/s | vs float | prefill tokens/s | vs float |")
print("|---|---|---|---|---|---|---|")
for name, model in models.items():
    decode_speed = args.prompts * args.new_tokens / best[name][0]
    prefill_speed = args.prompts * args.prefill_tokens / best[name][1]
    zeros = f"{sparsity_of(model):.0%}" if any(p.dim() == 2 for p in model.blocks.parameters()) else "-"
    print(f"| {name} | {model.num_params() / 1e6:.2f}M | {zeros} | {decode_speed:,.0f} | "
          f"{decode_speed / decode_reference:.2f}x | {prefill_speed:,.0f} | {prefill_speed / prefill_reference:.2f}x |")
