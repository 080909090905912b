"""
Benchmark: training throughput of the GPT, forward + backward + AdamW step, on random tokens.

Throughput does not depend on what the tokens say, so the batch is random. A few warm-up steps are not timed
(allocation, kernel selection), then each timed step is reported. The model FLOP rate uses the usual estimate of
6 x parameters x tokens for forward plus backward ("Scaling Laws for Neural Language Models", arXiv 2001.08361),
which leaves out attention's T^2 term.

    python -m benchmarks.bench_train                     # tiny-preset sizes, batch 64 x 192 tokens, 2 threads
    python -m benchmarks.bench_train --batch-size 16 --steps 3
"""

import argparse
import time

import torch

from nano_reasoner.model import GPT, GPTConfig, configure_optimizer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default 4)")
parser.add_argument("--n-head", type=int, default=4, help="attention heads (default 4)")
parser.add_argument("--n-embd", type=int, default=128, help="model width (default 128)")
parser.add_argument("--vocab-size", type=int, default=128, help="vocabulary size (default 128)")
parser.add_argument("--block-size", type=int, default=320, help="model context length in tokens (default 320)")
# workload
parser.add_argument("--batch-size", type=int, default=64, help="sequences per step (default 64)")
parser.add_argument("--seq-len", type=int, default=192, help="tokens per sequence (default 192)")
parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (default 2)")
parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
# optimization
parser.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on 2-D weights (default 0.1)")
# machine
parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
parser.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
args = parser.parse_args()
assert args.seq_len <= args.block_size, "--seq-len must fit in --block-size"

torch.set_num_threads(args.threads)
device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
is_cuda = device.type == "cuda"
torch.manual_seed(args.seed)
config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                   n_head=args.n_head, n_embd=args.n_embd)
model = GPT(config).to(device)
optimizer = configure_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
generator = torch.Generator().manual_seed(args.seed)
tokens = torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator).to(device)
inputs, targets = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
tokens_per_step = args.batch_size * args.seq_len
flops_per_step = 6 * model.num_params() * tokens_per_step


def train_step():
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=is_cuda):
        _, loss = model(inputs, targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


print(f"device {device} | threads {args.threads} | {model.num_params() / 1e6:.2f}M params | "
      f"batch {args.batch_size} x {args.seq_len} = {tokens_per_step} tokens/step")
for _ in range(args.warmup_steps):
    train_step()
step_seconds = []
for step in range(args.steps):
    if is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    loss = train_step()
    loss_value = loss.item()  # .item() waits for the step to finish
    step_seconds.append(time.perf_counter() - start)
    tokens_per_second = tokens_per_step / step_seconds[-1]
    print(f"step {step + 1}/{args.steps} | loss {loss_value:.3f} | {tokens_per_second / 1e3:.1f}k tok/s")
total_seconds = sum(step_seconds)
print(f"mean      | {tokens_per_step * args.steps / total_seconds / 1e3:.1f}k tok/s | "
      f"{1e3 * total_seconds / args.steps:.0f} ms/step | "
      f"{flops_per_step * args.steps / total_seconds / 1e9:.1f} GFLOP/s (6 x params x tokens)")
