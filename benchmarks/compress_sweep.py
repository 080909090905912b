"""
Benchmark: the compressions that have no checkpoint format or lost, measured like compress.py's and added to a
compress.py folder (one eval.json each), so that the folder's table and plot (compress.md, compress.png, the report
section) include them.

  --bits 2 3   where weight quantization breaks: group-wise round-to-nearest (quantize.quantize_groupwise) below 4 bits,
               simulated: every weight of the blocks' matrices is replaced by its dequantized value, in float. That is
               the arithmetic an int4 layer does, for widths compress.py does not store.
  --wanda 0.5  Wanda ("A Simple and Effective Pruning Approach for Large Language Models", Sun et al., arXiv
               2306.11695): in every output row remove the share with the smallest |W_ij| x ||X_j||, the weight times
               the L2 norm of its input feature over calibration traces; then --recover-steps of the same distillation
               as compress.py. It lost to plain global magnitude here (docs/compress_log.md), so it is not a flag of
               compress.py.

    python -m benchmarks.compress_sweep --ckpt runs/tiny/rl/ckpt.pt --folder runs/tiny/compress --bits 2 3
    python -m benchmarks.compress_sweep --ckpt runs/tiny/rl/ckpt.pt --folder runs/tiny/compress --wanda 0.5 \\
        --recover-steps 300
"""
import argparse
import copy
import os
import time

import torch

from compress import (RECOVER_LR, cached_source_eval, calibration_batches, evaluate_greedy, file_sha256,
                      summarize_folder, trace_examples)
from nano_reasoner.cli import load_policy
from nano_reasoner.data import batches
from nano_reasoner.evaluate import held_out_problems
from nano_reasoner.prune import apply_masks, capture_inputs, prunable_weights, recover, sparsity_of
from nano_reasoner.quantize import dequantize_groupwise, quantize_groupwise
from nano_reasoner.report import write_json

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--ckpt", required=True, help="the float policy, e.g. runs/tiny/rl/ckpt.pt")
parser.add_argument("--folder", required=True, help="the compress.py folder to add the records to")
parser.add_argument("--bits", type=int, nargs="*", default=[], help="grid widths to simulate, e.g. 2 3")
parser.add_argument("--group-size", type=int, default=32, help="--bits: weights per scale and offset (default 32)")
parser.add_argument("--wanda", type=float, default=None, help="Wanda: the share of every row to remove, e.g. 0.5")
parser.add_argument("--recover-steps", type=int, default=0, help="--wanda: distillation steps after (default 0)")
parser.add_argument("--eval-problems", type=int, default=500, help="held-out problems per task (default 500)")
parser.add_argument("--seed", type=int, default=1337, help="seed of the held-out problems and the data (default 1337)")
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
args = parser.parse_args()

torch.set_num_threads(args.threads)
policy, tokenizer, ckpt = load_policy(args.ckpt, torch.device("cpu"))
held_out = held_out_problems(args.eval_problems, seed=args.seed)
source_sha256 = file_sha256(args.ckpt)
source_eval = cached_source_eval(args.folder, source_sha256, args.eval_problems, args.seed)
if source_eval is None:
    source_eval = evaluate_greedy(policy, tokenizer, held_out, args.seed)


def write_record(name, model, **fields):
    result = evaluate_greedy(model, tokenizer, held_out, args.seed)
    write_json(os.path.join(args.folder, name, "eval.json"), {
        "label": name, "ckpt": args.ckpt, "source_sha256": source_sha256, "eval_problems": args.eval_problems,
        "seed": args.seed, "params": model.num_params(), "source_params": policy.num_params(), "bytes": None,
        **fields, "source": source_eval, "compressed": result})
    print(f"{name}: " + " | ".join(f"{task} {result[task]['greedy']['all']:.1%}" for task in result), flush=True)


for bits in args.bits:
    model = copy.deepcopy(policy)
    with torch.no_grad():
        for name, weight in prunable_weights(model).items():
            weight.copy_(dequantize_groupwise(*quantize_groupwise(weight, args.group_size, bits)))
    write_record(f"int{bits}-g{args.group_size}-simulated", model, method="quantize", grid_bits=bits,
                 group_size=args.group_size, bits_per_weight=bits + 2 * 32 / args.group_size)


@torch.no_grad()
def input_norms(model, calibration):
    """{weight name: (in,) L2 norm of each input feature over the real tokens of the calibration batches}."""
    names = [name.removesuffix(".weight") for name in prunable_weights(model)]
    captured, handles = capture_inputs(model, names)
    squares = {}
    for inputs, is_real in calibration:
        model(inputs)
        for name in names:
            squares[name] = squares.get(name, 0) + captured[name][is_real].pow(2).sum(dim=0)  # (in,)
    for handle in handles:
        handle.remove()
    return {f"{name}.weight": total.sqrt() for name, total in squares.items()}


if args.wanda is not None:
    examples = trace_examples(tokenizer, ckpt["args"], max(64, args.recover_steps * 8), args.seed,
                              {p.text for problems in held_out.values() for p in problems}, policy.config.block_size)
    norms = input_norms(policy, calibration_batches(examples[:64], 16, tokenizer.pad_id, torch.device("cpu")))
    model = copy.deepcopy(policy)
    masks = {}
    for name, weight in prunable_weights(model).items():
        scores = weight.detach().abs() * norms[name][None, :]                  # (out, in): |W_ij| x ||X_j||
        is_kept = torch.ones_like(weight, dtype=torch.bool)
        is_kept.scatter_(1, scores.topk(round(args.wanda * weight.shape[1]), dim=1, largest=False).indices, False)
        masks[name] = is_kept
    apply_masks(model, masks)
    start = time.time()
    if args.recover_steps:
        stream = batches(examples, 16, seed=args.seed)
        recover(model, policy, [next(stream) for _ in range(args.recover_steps)], tokenizer.pad_id, RECOVER_LR, masks)
    name = f"prune{round(100 * args.wanda)}-wanda" + (f"-r{args.recover_steps}" if args.recover_steps else "")
    write_record(name, model, method="prune", prune=args.wanda, structured=False, prune_by="wanda",
                 sparsity=sparsity_of(model), recover_steps=args.recover_steps, recover_lr=RECOVER_LR,
                 recover_seconds=time.time() - start)
print(summarize_folder(args.folder))
