"""
Benchmark: KV-cached batched generation against recomputing the whole sequence at every step.

Both routes decode the same batch greedily for the same number of steps with no stop token, so they do the same
job; the recompute loop pushes the full, growing sequence through the model each step (O(T^2) token evaluations),
the cached sampler one token per row (O(T)). Prints tokens/s of each route and the speed-up.

    python -m benchmarks.bench_sampler                  # tiny-preset sizes, 2 threads
    python -m benchmarks.bench_sampler --threads 1 --max-new-tokens 64
"""

import argparse
import time

import torch

from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.sampling import generate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default 4)")
parser.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
parser.add_argument("--n-embd", type=int, default=128, help="model width (default 128)")
parser.add_argument("--vocab-size", type=int, default=128, help="vocabulary size (default 128)")
parser.add_argument("--block-size", type=int, default=320, help="context length in tokens (default 320)")
# workload
parser.add_argument("--batch-size", type=int, default=64, help="rows decoded together (default 64)")
parser.add_argument("--prompt-len", type=int, default=24, help="prompt tokens per row (default 24)")
parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per row (default 128)")
# machine
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
parser.add_argument("--seed", type=int, default=0, help="seed for weights and prompts (default 0)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
is_cuda = device.type == "cuda"
torch.manual_seed(args.seed)
config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                   n_head=args.n_head, n_embd=args.n_embd)
model = GPT(config).to(device)
model.eval()
generator = torch.Generator().manual_seed(args.seed)
prompt_tokens = torch.randint(0, args.vocab_size, (args.batch_size, args.prompt_len), generator=generator)
prompts = prompt_tokens.tolist()
new_tokens = args.batch_size * args.max_new_tokens


def synchronize():
    if is_cuda:
        torch.cuda.synchronize()


@torch.no_grad()
def generate_by_recompute(prompt_tokens, max_new_tokens):
    """Greedy decoding without a cache: every step runs the whole (B, T) sequence through the model."""
    sequence = prompt_tokens.to(device)  # (B, T)
    for _ in range(max_new_tokens):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=is_cuda):
            logits, _ = model(sequence)  # (B, T, V)
        next_tokens = logits[:, -1].argmax(dim=-1)  # (B,)
        sequence = torch.cat([sequence, next_tokens[:, None]], dim=1)
    return sequence[:, prompt_tokens.shape[1]:]  # (B, max_new_tokens)


def timed(function):
    synchronize()
    start = time.perf_counter()
    output = function()
    synchronize()
    return output, time.perf_counter() - start


print(f"device {device} | threads {args.threads} | {model.num_params() / 1e6:.2f}M params | "
      f"batch {args.batch_size} | prompt {args.prompt_len} | new {args.max_new_tokens}")
generate(model, prompts[:4], 4, temperature=0.0)  # warm-up: first calls pay for allocation and kernel selection
generate_by_recompute(prompt_tokens[:4], 4)

cached, cached_seconds = timed(lambda: generate(model, prompts, args.max_new_tokens, temperature=0.0))
recomputed, recompute_seconds = timed(lambda: generate_by_recompute(prompt_tokens, args.max_new_tokens))
agreement = (cached.tokens.cpu() == recomputed.cpu()).float().mean().item()

print(f"kv cache  | {new_tokens / cached_seconds:10.0f} tok/s | {cached_seconds:7.2f} s | "
      f"prefill {cached.prefill_tokens} + decode {cached.decode_tokens} token evaluations")
print(f"recompute | {new_tokens / recompute_seconds:10.0f} tok/s | {recompute_seconds:7.2f} s")
print(f"speed-up  | {recompute_seconds / cached_seconds:.1f}x | greedy tokens agree on {100 * agreement:.1f}%")
