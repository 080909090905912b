"""
Benchmark: where the sampler's time goes, at the batch sizes the learning stages use (issue 24, item 1).

Three figures on the same model, side by side in one run, at each batch size:

- `generate`: decode tokens/s of the sampler, greedy, no stop token (every row decodes every step);
- bare forward: tokens/s of one-token forward passes over a KV cache already holding the prompt and half the new
  tokens, nothing else (no sampling, no bookkeeping): the ceiling of the sampler as it is written;
- training: the FLOP rate of a training step (forward + backward + AdamW) on the same weights, 6 x params x tokens/s.

Two ratios follow: sampler / bare forward (what the sampler's own bookkeeping costs) and the decode FLOP rate
(2 x params x tokens/s) / the training FLOP rate (how well a decode step uses the cores that training uses).

    python -m benchmarks.bench_decode                       # batches 64, 256, 512, 2 threads
    python -m benchmarks.bench_decode --batch-sizes 512 --max-new-tokens 64
"""

import argparse
import time

import torch

from nano_reasoner.model import GPT, GPTConfig, KVCache, configure_optimizer
from nano_reasoner.sampling import generate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default 4)")
parser.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
parser.add_argument("--n-embd", type=int, default=128, help="model width (default 128)")
parser.add_argument("--vocab-size", type=int, default=67, help="vocabulary size (default 67, the chat model's)")
parser.add_argument("--block-size", type=int, default=512, help="context length in tokens (default 512)")
# workload
parser.add_argument("--batch-sizes", default="64,256,512", help="rows decoded together, comma separated (default 64,256,512)")
parser.add_argument("--prompt-len", type=int, default=24, help="prompt tokens per row (default 24)")
parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per row (default 128)")
parser.add_argument("--train-batch", default="16x96", help="training step shape, rows x tokens (default 16x96, the tiny preset's)")
# machine
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
parser.add_argument("--seed", type=int, default=0, help="seed for weights and tokens (default 0)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                   n_head=args.n_head, n_embd=args.n_embd)
model = GPT(config).eval()
params = model.num_params()


def best_of(repeats, function):
    """The shortest of `repeats` timings of function() in seconds (the least disturbed one)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()
def sampler_seconds(batch_size):
    prompts = torch.randint(0, args.vocab_size, (batch_size, args.prompt_len)).tolist()
    return best_of(2, lambda: generate(model, prompts, args.max_new_tokens, temperature=0.0))


@torch.no_grad()
def bare_forward_seconds(batch_size, steps=32):
    """`steps` one-token forward passes over a cache that already holds prompt + half the new tokens."""
    past = args.prompt_len + args.max_new_tokens // 2
    cache = KVCache(config, batch_size, past + steps, "cpu", torch.float32)
    model(torch.randint(0, args.vocab_size, (batch_size, past)), kv_cache=cache)  # fill the cache once
    tokens = torch.randint(0, args.vocab_size, (batch_size, 1))

    def decode():
        cache.pos = past
        for _ in range(steps):
            model(tokens, kv_cache=cache)
    return best_of(3, decode) / steps


def training_seconds(rows, length, steps=5):
    trained = GPT(config)
    optimizer = configure_optimizer(trained, lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    inputs = torch.randint(0, args.vocab_size, (rows, length))
    targets = torch.randint(0, args.vocab_size, (rows, length))

    def step():
        _, loss = trained(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step()  # warm-up
    return best_of(steps, step)


rows, length = (int(part) for part in args.train_batch.split("x"))
train_flops = 6 * params * rows * length / training_seconds(rows, length)
print(f"threads {args.threads} | {params / 1e6:.2f}M params | prompt {args.prompt_len} | new {args.max_new_tokens} | "
      f"training step {rows}x{length}: {train_flops / 1e9:.1f} GFLOP/s (6 x params x tokens/s)")
print("| batch | generate tok/s | bare forward tok/s | sampler / forward | decode GFLOP/s | decode / training FLOP rate |")
print("|---|---|---|---|---|---|")
generate(model, [[1, 2, 3]] * 4, 4, temperature=0.0)  # warm-up
for batch_size in (int(b) for b in args.batch_sizes.split(",")):
    sampler_rate = batch_size * args.max_new_tokens / sampler_seconds(batch_size)
    forward_rate = batch_size / bare_forward_seconds(batch_size)
    decode_flops = 2 * params * forward_rate
    print(f"| {batch_size} | {sampler_rate:,.0f} | {forward_rate:,.0f} | {sampler_rate / forward_rate:.2f} | "
          f"{decode_flops / 1e9:.1f} | {decode_flops / train_flops:.2f} |", flush=True)
