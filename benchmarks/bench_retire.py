"""
Benchmark: retiring finished rows from the KV cache a quarter at a time against at every finished row.

Sampled search traces end at very different lengths (60 to 480 tokens), so in a batch of hundreds of rows some row
finishes at almost every step. Removing finished rows copies the whole live cache; doing it at every finished row
made the copies most of the sampler's time. `generate` now waits until a quarter of the cache's rows are done
(retire_share=0.25) and feeds the done rows pad tokens until then. Both settings draw the same samples from the same
seed (only live rows draw random numbers); this checks that and prints tokens/s of each and the ratio.

    python -m benchmarks.bench_retire --ckpt runs/tiny/reason/ckpt.pt
"""
import argparse
import time

import torch

from nano_reasoner import tasks
from nano_reasoner.cli import load_policy
from nano_reasoner.sampling import generate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ckpt", default="runs/tiny/reason/ckpt.pt", help="a policy that writes countdown search traces")
parser.add_argument("--problems", type=int, default=32, help="countdown prompts (default 32)")
parser.add_argument("--samples", type=int, default=8, help="samples per prompt (default 8: 256 rows)")
parser.add_argument("--max-new-tokens", type=int, default=480, help="completion budget (default 480)")
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
model, tokenizer, _ = load_policy(args.ckpt, torch.device("cpu"))
problems = tasks.generate("countdown", args.problems, seed=999, difficulties=(3, 4))
prompts = [tokenizer.encode_prompt(tasks.format_prompt(p)) for p in problems]
generate(model, prompts[:2], 8, temperature=1.0)  # warm-up

results = {}
for name, share in (("at every finished row", 0.0), ("a quarter at a time", 0.25)):
    start = time.perf_counter()
    result = generate(model, prompts, args.max_new_tokens, num_samples=args.samples, temperature=1.0,
                      stop_ids=[tokenizer.eos_id], pad_id=tokenizer.pad_id, seed=1, retire_share=share)
    seconds = time.perf_counter() - start
    results[name] = (result, result.decode_tokens / seconds)
    print(f"retire {name:22s}: {seconds:5.1f}s, {result.decode_tokens / seconds:7.0f} tokens/s "
          f"({result.decode_tokens} tokens, rows {args.problems * args.samples}, mean length "
          f"{result.lengths.float().mean():.0f}, longest {result.lengths.max()})")
(eager, eager_speed), (lazy, lazy_speed) = results.values()
assert torch.equal(eager.tokens, lazy.tokens) and torch.equal(eager.lengths, lazy.lengths), "samples differ"
print(f"same samples; speed-up {lazy_speed / eager_speed:.2f}x")
