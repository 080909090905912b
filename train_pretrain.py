"""
Pre-train the policy: next-token prediction on exact chain-of-thought traces of both tasks.

    python train_pretrain.py --preset tiny --out runs/tiny/pretrain

Recipe: generate problems -> write their exact traces -> train the tokenizer (if the run has none) -> train a GPT on
the completions (AdamW, warmup + cosine, gradient clipping, bf16 autocast on CUDA) -> greedy accuracy by task and
difficulty on held-out problems, during and after training. Writes to --out: tokenizer.model, ckpt.pt (+ .json),
config.json, metrics.jsonl, pretrain.png and a section of report.md (in the parent folder of --out).
Resume after a stop with --resume (same flags): it continues from --out/ckpt.pt to the same result.

Several processes (nano_reasoner/distributed.py): `torchrun --standalone --nproc_per_node N train_pretrain.py ...` runs
N data-parallel ranks, each on its 1/N of every batch a single process would take, gradients averaged; rank 0 alone
prints, evaluates and writes. --grad-accum K cuts each rank's share into K micro-batches (less memory, the same step).

Weight averaging. The weights that the run hands on are an exponential moving average (EMA) of the training
weights, ema <- decay * ema + (1 - decay) * weights after every step (`--ema`; Polyak & Juditsky, "Acceleration of
stochastic approximation by averaging", 1992). The optimizer's last iterate jitters around the minimum it is heading
for; the average sits nearer its middle, much as a further decay of the learning rate would take it there, but for
free. With decay 0.995 the average spans about the last 1 / (1 - 0.995) = 200 steps. The training weights themselves
are kept in the checkpoint too (for --resume), and the optimizer only ever sees them.

Fine-tuning (`--init CKPT`): the same loop started from a trained policy's weights and tokenizer, with the
fine-tuning preset of the size (FINETUNE_PRESETS). The reason stage of the pipeline is this: the pre-trained policy
fine-tuned on countdown traces that go back inside their thinking (`--countdown-traces search`, traces in
tasks/trace.py; `--arith-traces retry` is the arith kind, which the pipeline leaves off), which is DeepSeek-R1's cold start ("DeepSeek-R1", arXiv 2501.12948: a few thousand long
chain-of-thought examples before RL) and the seed's first recipe for an o1-like model: supervised fine-tuning on
problem -> attempts -> answer.

Conversation (`--init CKPT --chat`): a short fine-tune that teaches the policy the chat format of nano_reasoner/chat.py.
It adds the tokens `<user>`, `<assistant>` and `ans` (the tokenizer and the embedding grow by three), trains on
conversations of one to three turns rendered exactly as chat.py renders them (every earlier turn's thinking dropped,
the last turn's kept and learned; follow-up questions use `ans`, the previous answer) mixed with plain single
problems (ChatMix), and measures three-turn conversations with the thinking dropped and kept (eval.json "chat").

Distillation (`--teacher CKPT`): a student, smaller than the teacher (DISTILL_PRESETS: a third of its parameters),
trained from scratch with the teacher's tokenizer, on the teacher's soft targets over the exact traces
(`--distill logits`: KL at temperature T, Hinton et al.) or on the teacher's verified solutions instead of the exact
traces (`--distill traces`: DeepSeek-R1's distilled models); `--distill none` is the control, the same student on the
exact traces alone (the teacher gives only its tokenizer). nano_reasoner/distill.py explains the two, and
benchmarks/distill_compare.py compares them with the exact traces alone and with GRPO on top, at equal CPU time.
"""
import argparse
import copy
import math
import os
import signal
import sys
import time

import torch

from nano_reasoner import chat, distributed, tasks
from nano_reasoner.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint, CheckpointError
from nano_reasoner.cli import (UserError, autocast, cosine_lr, load_policy,
                               make_run_folder, parse_range, pick_device, run_main)
from nano_reasoner.data import batches, collate, decision_weights, make_examples
from nano_reasoner.distill import kd_loss, teacher_examples
from nano_reasoner.evaluate import EVAL_DIFFICULTIES, greedy_accuracy, held_out_problems
from nano_reasoner.model import GPT, GPTConfig, configure_optimizer, update_average
from nano_reasoner.report import MetricsLogger, markdown_table, plot_panels, progress_line, write_json, write_report_section
from nano_reasoner.thinking import budget_sweep, summarise_thinking
from nano_reasoner.tokenizer import Tokenizer, train_tokenizer

PRESETS = {
    #        layers, embd, heads, block, batch, steps, lr, problems per task, arith operations in training, weight average
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, block_size=320, batch_size=16, steps=8000, lr=1e-3, train_problems=40000,
                 arith_difficulties="1-3,1-3,4", ema=0.995, countdown_products="once", decision_weight=1.0,
                 bucket_batches=4, arith_ratio=1.0),
    "small": dict(n_layer=6, n_embd=256, n_head=8, block_size=320, batch_size=128, steps=6000, lr=1e-3, train_problems=200000,
                  arith_difficulties="1-3", ema=0.0, countdown_products="once", decision_weight=1.0,
                  bucket_batches=4, arith_ratio=1.0),
    "base": dict(n_layer=8, n_embd=512, n_head=8, block_size=320, batch_size=128, steps=12000, lr=6e-4, train_problems=400000,
                 arith_difficulties="1-3", ema=0.0, countdown_products="once", decision_weight=1.0,
                 bucket_batches=4, arith_ratio=1.0),
}


# fine-tuning (--init): longer context for traces that search, fewer steps, a lower peak learning rate, the decision
# tokens weighted up (data.decision_weights: 48.6% countdown against 33.8% unweighted, docs/reasoning_log.md), long
# length buckets (a search trace runs 60 to 512 tokens: 36% of the compute of buckets of 4 batches was padding, 11% of
# buckets of 16), and two arith traces per countdown trace (short ones: 87.6% arith against 78-83% in about the
# same time, round 4 of docs/reasoning_log.md; small and base keep their steps, unmeasured on a GPU)
FINETUNE_PRESETS = {
    "tiny": dict(block_size=512, batch_size=16, steps=3600, lr=5e-4, train_problems=20000, ema=0.995,
                 countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
    "small": dict(block_size=512, batch_size=128, steps=3000, lr=5e-4, train_problems=100000, ema=0.0,
                  countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
    "base": dict(block_size=512, batch_size=128, steps=6000, lr=3e-4, train_problems=200000, ema=0.0,
                 countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
}


# the chat fine-tune (--chat): a short stage on top of a fine-tuned policy; train_problems counts training conversations
CHAT_PRESETS = {
    "tiny": dict(steps=2000, lr=3e-4, train_problems=30000, decision_weight=1.0, bucket_batches=8),
    "small": dict(steps=2000, lr=3e-4, train_problems=100000, decision_weight=1.0, bucket_batches=8),
    "base": dict(steps=4000, lr=2e-4, train_problems=200000, decision_weight=1.0, bucket_batches=8),
}


# distillation (--teacher): a student with a third of the teacher's parameters (4 x 72: 254k against the tiny policy's
# 796k), from scratch, in the teacher's trace format (long search traces need the fine-tuning context), at a higher
# learning rate than the bigger model's; 4600 steps are about 4 minutes of the exact traces on 2 cores (--distill
# traces takes 4100 in the same time, logits 2950: benchmarks/distill_compare.py, docs/distill_log.md)
DISTILL_PRESETS = {
    "tiny": dict(n_layer=4, n_embd=72, n_head=4, block_size=512, steps=4600, lr=2e-3, train_problems=20000,
                 countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
    "small": dict(n_layer=4, n_embd=144, n_head=4, block_size=512, steps=3000, lr=2e-3, train_problems=100000,
                  countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
    "base": dict(n_layer=4, n_embd=288, n_head=8, block_size=512, steps=6000, lr=1e-3, train_problems=200000,
                 countdown_products="digits", decision_weight=4.0, bucket_batches=16, arith_ratio=2.0),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="sizes: tiny (CPU, 0.8M params), small, base (GPU)")
    parser.add_argument("--out", default="runs/tiny/pretrain", help="run folder (default runs/tiny/pretrain)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    parser.add_argument("--init", help="fine-tune: start from this policy checkpoint's weights and tokenizer, with the "
                        "fine-tuning preset (FINETUNE_PRESETS; the model flags must match the checkpoint's)")
    parser.add_argument("--chat", action="store_true", help="with --init: fine-tune for conversation (chat.py's format, "
                        "`ans` follow-ups) and measure three-turn conversations (module docstring)")
    parser.add_argument("--chat-thinking", choices=("dropped", "kept"), default="dropped",
                        help="--chat: what the earlier turns of a training conversation show, their reply only "
                        "(dropped, as chat.py renders them; default) or their thinking too (kept, the comparison)")
    parser.add_argument("--chat-countdown-share", type=float, default=chat.ChatMix.countdown_share,
                        help=f"--chat: share of the turns that are countdown problems (default {chat.ChatMix.countdown_share})")
    parser.add_argument("--chat-follow-up-share", type=float, default=chat.ChatMix.follow_up_share,
                        help=f"--chat: how often a turn after an arith turn uses `ans` (default {chat.ChatMix.follow_up_share})")
    parser.add_argument("--chat-conversations", type=int, default=300,
                        help="--chat: held-out three-turn conversations measured at the end (default 300)")
    # distillation (nano_reasoner/distill.py)
    parser.add_argument("--teacher", help="distil: train a student from scratch (or from --init, a student with the "
                        "same tokenizer) on what this policy checkpoint knows, with its tokenizer and the distillation "
                        "preset (DISTILL_PRESETS; model flags size the student)")
    parser.add_argument("--distill", choices=("logits", "traces", "none"), default="logits",
                        help="--teacher: learn the teacher's token distributions on the exact traces (logits, Hinton "
                        "et al.; default), its verified greedy solutions instead of the exact traces (traces, R1), or "
                        "nothing from it (none: the same student on the exact traces alone, the control)")
    parser.add_argument("--kd-temperature", type=float, default=2.0, help="--distill logits: T that softens both "
                        "distributions (default 2.0)")
    parser.add_argument("--kd-weight", type=float, default=0.9, help="--distill logits: w in w * T^2 KL + (1 - w) * "
                        "cross-entropy on the trace's tokens (default 0.9)")
    parser.add_argument("--teacher-problems", type=int, default=2000, help="--distill traces: countdown problems the "
                        "teacher solves, arith ones --arith-ratio times as many (default 2000: about 66 s of the tiny "
                        "teacher's sampling on 2 cores)")
    # model
    parser.add_argument("--n-layer", type=int, help="transformer blocks (preset)")
    parser.add_argument("--n-embd", type=int, help="width (preset)")
    parser.add_argument("--n-head", type=int, help="attention heads (preset)")
    parser.add_argument("--block-size", type=int, help="context length in tokens (preset)")
    # data
    parser.add_argument("--train-problems", type=int, help="distinct training problems per task (preset)")
    parser.add_argument("--arith-ratio", type=float, help="arith training problems per countdown problem (preset; "
                        "pre-training 1, fine-tuning 2: arith traces are short, so a third of the time buys two thirds "
                        "of the batches)")
    parser.add_argument("--arith-difficulties", help="operations per arith training problem, a value listed twice is "
                        "drawn twice as often (preset; tiny: 1-3,1-3,4, so 4 operations are drawn one time in seven)")
    parser.add_argument("--countdown-difficulties", default="3-4", help="numbers per countdown training problem (default 3-4)")
    parser.add_argument("--granularity", choices=tasks.GRANULARITIES, default=tasks.DEFAULT_GRANULARITY,
                        help="arith traces: how finely a product is worked through, coarse (at once), fine (partial "
                        "products) or digits (single-digit products; default)")
    parser.add_argument("--countdown-products", choices=tasks.countdown.PRODUCTS,
                        help="countdown moves: a product written at once, or worked through single digits (preset: "
                        "once for pre-training, digits for fine-tuning)")
    parser.add_argument("--arith-traces", choices=tasks.TRACE_KINDS["arith"], default="straight",
                        help="arith traces: straight, or retry (a share of the steps slips first, then an undo line "
                        "and the right step; default straight)")
    parser.add_argument("--countdown-traces", choices=tasks.TRACE_KINDS["countdown"], default="straight",
                        help="countdown traces: straight (a shortest solution), or search (a depth-first search with "
                        "dead ends and undo lines; default straight)")
    parser.add_argument("--decision-weight", type=float,
                        help="loss weight of the tokens that decide to stop or go back (`</think>`, undo), 1 = plain "
                        "(preset: 1 for pre-training)")
    parser.add_argument("--retry-share", type=float, default=tasks.arith.RETRY_SHARE,
                        help=f"share of arith steps a retry trace slips on first (default {tasks.arith.RETRY_SHARE})")
    # optimization
    parser.add_argument("--steps", type=int, help="optimizer steps (preset)")
    parser.add_argument("--batch-size", type=int, help="sequences per step, over all ranks together (preset)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step on each rank, their gradients "
                        "summed before the step: the same step in less memory (default 1)")
    parser.add_argument("--bucket-batches", type=int, help="batches per length bucket: more waste less compute on "
                        "padding, fewer mix tasks and lengths within a stretch of steps (data.batches; preset)")
    parser.add_argument("--lr", type=float, help="peak learning rate (preset)")
    parser.add_argument("--warmup", type=int, default=100, help="warmup steps (default 100)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    parser.add_argument("--ema", type=float, help="decay of the weight average handed on, 0 = the last weights "
                        "(preset; tiny: 0.995)")
    # evaluation and output
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between held-out evaluations (default 1000)")
    parser.add_argument("--eval-problems", type=int, default=500, help="held-out problems per task at the end (default 500)")
    parser.add_argument("--log-every", type=int, default=25, help="steps between progress lines (default 25)")
    parser.add_argument("--save-every", type=int, default=250, help="steps between checkpoints (default 250)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of everything (default 1337)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: all cores, shared "
                        "out among the processes torchrun starts)")
    args = parser.parse_args(argv)
    if args.chat and not args.init:
        raise UserError("--chat fine-tunes a trained policy: pass --init runs/tiny/rl/ckpt.pt (or another policy)")
    if args.teacher and args.chat:
        raise UserError("--teacher and --chat are two different runs: drop one")
    preset = dict(PRESETS[args.preset])
    preset.update(FINETUNE_PRESETS[args.preset] if args.init else {})
    preset.update(DISTILL_PRESETS[args.preset] if args.teacher else {})
    preset.update(CHAT_PRESETS[args.preset] if args.chat else {})
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("chat_conversations", "steps", "batch_size", "grad_accum", "bucket_batches", "train_problems", "eval_problems", "eval_every", "log_every", "save_every", "n_layer", "n_embd", "n_head", "block_size"):
        if getattr(args, key) <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be positive")
    try:
        args.world_size = distributed.env_world_size()  # torchrun's ranks (1: a single process)
    except ValueError as error:
        raise UserError(f"{error}: start several processes with torchrun, which sets it") from None
    if args.batch_size % (args.world_size * args.grad_accum):
        ranks = f"{args.world_size} rank" + ("s" if args.world_size > 1 else "")
        raise UserError(f"--batch-size {args.batch_size} does not split into {ranks} x --grad-accum {args.grad_accum} "
                        f"equal micro-batches: give a multiple of {args.world_size * args.grad_accum}")
    if args.n_embd % args.n_head or (args.n_embd // args.n_head) % 2:
        raise UserError("--n-embd must be a multiple of 2 * --n-head (RoPE needs an even head size)")
    # chained comparisons refuse nan and inf too (every comparison with nan is False)
    if not 0 < args.lr < float("inf"):
        raise UserError("--lr must be a positive number")
    if not 0 < args.grad_clip < float("inf"):
        raise UserError("--grad-clip must be a positive number")
    if not 0 <= args.weight_decay < float("inf"):
        raise UserError("--weight-decay must be a number >= 0")
    if args.warmup < 0:
        raise UserError("--warmup must be >= 0")
    if not 0 <= args.retry_share <= 1:
        raise UserError("--retry-share must be a number in [0, 1]: the share of arith steps that slip first")
    if not 0 < args.arith_ratio <= 100:
        raise UserError("--arith-ratio must be a number in (0, 100]: arith training problems per countdown problem")
    if not 1 <= args.decision_weight < float("inf"):
        raise UserError("--decision-weight must be a number >= 1: the loss weight of the stop / go-back tokens")
    if not (0 <= args.chat_countdown_share <= 1 and 0 <= args.chat_follow_up_share <= 1):
        raise UserError("--chat-countdown-share and --chat-follow-up-share must be numbers in [0, 1]")
    if not 0 <= args.ema < 1:
        raise UserError("--ema must be a number in [0, 1): 0.995 averages about the last 200 steps, 0 turns it off")
    if not (0 < args.kd_temperature <= 100 and 0 <= args.kd_weight <= 1):
        raise UserError("--kd-temperature must be a number in (0, 100] and --kd-weight one in [0, 1]")
    if args.teacher_problems < 1:
        raise UserError("--teacher-problems must be a positive number of problems per task")
    return args


def training_problems(args, held_out):
    """Distinct training problems per task, none of them in the held-out set."""
    held_out_texts = {p.text for problems in held_out.values() for p in problems}
    difficulties = {"arith": parse_range(args.arith_difficulties, "--arith-difficulties"),
                    "countdown": parse_range(args.countdown_difficulties, "--countdown-difficulties")}
    for task, values in difficulties.items():
        allowed = tasks.module(task).DIFFICULTIES
        if not set(values) <= set(allowed):
            raise UserError(f"--{task}-difficulties {values}: {task} difficulties lie in {allowed[0]}-{allowed[-1]}")
    problems = []
    for i, task in enumerate(tasks.TASKS):
        seen, wanted = set(), round(args.train_problems * (args.arith_ratio if task == "arith" else 1.0))
        for p in tasks.generate(task, int(wanted * 1.1) + 100, seed=args.seed + i, difficulties=difficulties[task]):
            if p.text not in seen and p.text not in held_out_texts and len(seen) < wanted:
                seen.add(p.text)
                problems.append(p)
    return problems


def evaluate_all(model, tokenizer, problems_by_task):
    """Greedy accuracy -> {task: {"all": acc, difficulty: acc}}, and the greedy attempts per task (one per problem)."""
    model.eval()
    accuracy, attempts = {}, {}
    for task, problems in problems_by_task.items():
        accuracy[task], task_attempts = greedy_accuracy(model, tokenizer, problems)
        attempts[task] = [a[0] for a in task_attempts]
    model.train()
    return accuracy, attempts


BUDGETS = (16, 32, 64, 128, 256, None)  # max thinking tokens of the budget sweep (None: as long as the context allows)
SWEEP_PROBLEMS = 100                    # held-out countdown problems of the budget sweep


def evaluate_thinking(model, tokenizer, countdown_attempts, args, init_model=None):
    """What the countdown thinking does (thinking.summarise_thinking), greedy accuracy on held-out problems with
    targets a person might pick (countdown.generate_uniform_targets), and, for a fine-tuning run, the thinking-budget
    sweep of this model and of the policy it started from on SWEEP_PROBLEMS of the held-out problems."""
    model.eval()
    result = {"thinking": summarise_thinking(countdown_attempts, tokenizer.end_think_id)}
    uniform = tasks.countdown.generate_uniform_targets(args.eval_problems, seed=args.seed + 20_000,
                                                       difficulties=EVAL_DIFFICULTIES["countdown"])
    result["uniform_targets"], _ = greedy_accuracy(model, tokenizer, uniform)
    if init_model is not None:
        problems = [a.problem for a in countdown_attempts[:SWEEP_PROBLEMS]]
        result["budget_sweep"] = {"reasoner": budget_sweep(model, tokenizer, problems, BUDGETS),
                                  "start": budget_sweep(init_model, tokenizer, problems, BUDGETS)}
    model.train()
    return result


def evaluate_chat(model, tokenizer, conversations):
    """Three-turn conversations with every earlier turn's thinking dropped (the format trained on) and kept, greedy:
    {"dropped": chat.summarise(...), "kept": ...}; printed as it goes."""
    model.eval()
    summary = {}
    for mode in ("dropped", "kept"):
        t_start = time.time()
        results = chat.evaluate_conversations(model, tokenizer, conversations, keep_thinking=mode == "kept")
        summary[mode] = chat.summarise(results, conversations)
        print(f"  chat, thinking {mode}: {summary[mode]['turn_accuracy']:.1%} of turns, "
              f"{summary[mode]['conversation_accuracy']:.1%} of conversations right; context tokens by turn "
              + ", ".join(f"{row['context_tokens']:.0f}" for row in summary[mode]["by_turn"])
              + f" ({time.time() - t_start:.0f}s)")
    model.train()
    return summary


def chat_report(summary):
    """The chat stage's table for report.md: per turn, accuracy and context tokens, thinking dropped and kept."""
    rows = []
    for mode in ("dropped", "kept"):
        for row in summary[mode]["by_turn"]:
            rows.append([mode, row["turn"], f"{row['accuracy']:.1%}", f"{row['context_tokens']:.0f}",
                         f"{row['prefilled_tokens']:.0f}"])
        rows.append([mode, "all", f"{summary[mode]['turn_accuracy']:.1%} (conversations "
                     f"{summary[mode]['conversation_accuracy']:.1%})", "", ""])
    return [f"Three-turn conversations ({summary['dropped']['conversations']} held-out: a problem with 1-3 "
            f"operations, then two questions with `ans` and 1-2 more), greedy. Context tokens: what the model reads "
            f"before it writes the turn; prefilled: of those, the ones a carried KV cache must still compute.", "",
            markdown_table(["earlier thinking", "turn", "accuracy", "context tokens", "prefilled"], rows), ""]


def main():
    args = parse_args()
    # under torchrun: join the other ranks (rank r drives GPU r, or shares the CPU cores); alone: nothing changes
    device = distributed.setup(pick_device(args.device, args.threads or distributed.threads_per_rank()))
    torch.manual_seed(args.seed)
    make_run_folder(args.out)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    ckpt = None
    if args.resume and os.path.exists(ckpt_path):  # read it before the data work, so a bad one fails at once
        try:
            ckpt = load_checkpoint(ckpt_path, expected_kind="policy")
        except CheckpointError as error:
            raise UserError(str(error)) from None
        if ckpt["optimizer_state"] is None or ckpt["rng_state"] is None:
            raise UserError(f"{ckpt_path} holds no optimizer or RNG state, so it cannot be resumed: choose another --out")

    init = None
    if args.init:  # fine-tuning: read the policy first, so a bad one fails at once
        init_model, init_tokenizer, init = load_policy(args.init, "cpu", for_training=True)
        if args.chat:  # the markers and `ans` join the vocabulary (chat.add_chat_tokens)
            init_model, init_tokenizer = chat.add_chat_tokens(init_model, init_tokenizer)
    teacher = None
    if args.teacher:  # distillation: the frozen teacher, read first so a bad one fails at once
        teacher, teacher_tokenizer, _ = load_policy(args.teacher, device)
        if init is not None and teacher_tokenizer.sha256 != init_tokenizer.sha256:
            raise UserError(f"--init {args.init} and --teacher {args.teacher} have different tokenizers: a student "
                            f"learns from its teacher only over the same vocabulary")
        init_tokenizer = teacher_tokenizer

    # data: held-out problems first, so training never sees them
    t_data, teacher_seconds = time.time(), 0.0
    eval_small = held_out_problems(100, args.seed)
    eval_final = held_out_problems(args.eval_problems, args.seed)
    train = training_problems(args, eval_final) if not args.chat else []  # --chat makes its own (below)
    trace_kinds = {"arith": args.arith_traces, "countdown": args.countdown_traces}
    tokenizer_path = os.path.join(args.out, "tokenizer.model")
    if init is not None or teacher is not None:  # fine-tuning: the policy's own tokenizer; a student: the teacher's
        tokenizer = init_tokenizer
        if distributed.is_main():
            with open(tokenizer_path, "wb") as f:
                f.write(tokenizer.model_bytes)
    else:  # the run's own, trained once by rank 0 and read by every rank
        if distributed.is_main() and not os.path.exists(tokenizer_path):
            train_tokenizer([tasks.full_trace(p, args.granularity, trace_kinds[p.task], args.countdown_products)
                             for p in train[::10]], tokenizer_path)
        distributed.barrier()
        tokenizer = Tokenizer.from_file(tokenizer_path)
    chat_eval = chat.held_out_conversations(args.chat_conversations, args.seed) if args.chat else None
    try:
        if args.chat:  # conversations; no held-out problem (single or first turn) is ever a first turn here
            exclude = {p.text for problems in eval_final.values() for p in problems} | {c[0] for c in chat_eval}
            mix = chat.ChatMix(countdown_share=args.chat_countdown_share, follow_up_share=args.chat_follow_up_share)
            examples = chat.training_examples(tokenizer, args.train_problems, args.seed, mix, exclude, args.granularity,
                                              args.countdown_products, keep_thinking=args.chat_thinking == "kept")
        elif teacher is not None and args.distill == "traces":  # the teacher's verified solutions (distill.py)
            t_teacher = time.time()
            solved = [p for p in train if p.task == "arith"][:round(args.teacher_problems * args.arith_ratio)] \
                + [p for p in train if p.task == "countdown"][:args.teacher_problems]
            examples, kept_share, _ = teacher_examples(teacher, tokenizer, solved, seed=args.seed)
            teacher_seconds = time.time() - t_teacher
            print(f"teacher: solved {len(solved)} problems in {teacher_seconds:.0f}s, kept "
                  + ", ".join(f"{task} {share:.1%}" for task, share in kept_share.items()), flush=True)
        else:
            examples = make_examples(tokenizer, train, args.granularity, trace_kinds, args.retry_share,
                                     args.countdown_products)
    except ValueError as error:
        raise UserError(f"{tokenizer_path} cannot encode the training traces ({error}): delete it, or choose "
                        f"another --out") from None
    too_long = sum(len(ex.tokens) > args.block_size for ex in examples)
    examples = [ex for ex in examples if len(ex.tokens) <= args.block_size]
    if teacher is not None and args.distill == "traces" and len(examples) < args.batch_size:
        raise UserError(f"the teacher solved only {len(examples)} of its problems, fewer than one batch of "
                        f"{args.batch_size}: raise --teacher-problems, or distil a trained policy")
    if len(examples) < args.batch_size:  # the batch stream would wait forever for a first full batch
        raise UserError(f"only {len(examples)} training traces fit in --block-size {args.block_size} ({too_long} are "
                        f"longer), fewer than one batch of {args.batch_size}: raise --block-size or --train-problems, "
                        f"or lower --batch-size")
    n_tokens = sum(len(ex.tokens) for ex in examples)
    print(f"data: {len(examples)} traces ({n_tokens / len(examples):.0f} tokens on average, {too_long} longer than "
          f"the context dropped), vocab {tokenizer.vocab_size}, {time.time() - t_data:.1f}s")

    # model and optimizer
    if init is not None:  # the policy's shape, with the context of this run (RoPE tables are not weights)
        args.n_layer, args.n_head, args.n_embd = (init["model_config"][k] for k in ("n_layer", "n_head", "n_embd"))
        config = GPTConfig(**dict(vars(init_model.config), block_size=args.block_size))
    else:
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config).to(device)
    if init is not None:
        model.load_state_dict(init_model.state_dict())
    optimizer = configure_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))
    # the average handed on (module docstring); without --ema it is the training model itself
    averaged = copy.deepcopy(model) if args.ema > 0 else model
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {args.n_layer} layers, width {args.n_embd}, device {device}")
    if teacher is not None:  # the student must be smaller to be worth it: both counts, embeddings included
        print(f"student {model.num_params():,} parameters, teacher {teacher.num_params():,}: "
              f"1/{teacher.num_params() / model.num_params():.2f} of it")
    step = 0
    metrics = MetricsLogger(args.out)
    if ckpt is not None:
        if ckpt["tokenizer_sha256"] != tokenizer.sha256 or ckpt["model_config"] != vars(config):
            raise UserError(f"{ckpt_path} was made with other settings: resume with the flags of that run")
        # model_state holds the weights handed on; with --ema the training weights are kept beside them. The training
        # weights load last, so that without --ema (averaged is model) they are what the run continues from.
        averaged.load_state_dict(ckpt["model_state"])
        model.load_state_dict(ckpt["extra"].get("training_state", ckpt["model_state"]))
        optimizer.load_state_dict(ckpt["optimizer_state"])
        restore_rng_state(ckpt["rng_state"])
        step = ckpt["step"]
        print(f"resumed from {ckpt_path} at step {step}")
    if distributed.is_main():
        # drop what a killed attempt logged after its checkpoint (or, starting afresh, all it logged): no step twice
        metrics.truncate_after(step)
        write_json(os.path.join(args.out, "config.json"), {"args": vars(args), "model_config": vars(config),
                                                           "params": model.num_params(),
                                                           **({"teacher_params": teacher.num_params()} if teacher else {})})
    # what the optimizer trains through: under torchrun, DDP around the model (gradients averaged over the ranks)
    train_model = distributed.wrap(model)

    def stop_diverged(what):
        kept = f"the last good checkpoint {ckpt_path} is kept" if os.path.exists(ckpt_path) else "no checkpoint was saved"
        return UserError(f"{what}: lower --lr (now {args.lr}); {kept}")

    def save(at_step):
        # a step can blow the weights up to inf/nan while its loss was still finite: never save such weights
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise stop_diverged(f"the weights became inf or nan by step {at_step}")
        if not distributed.is_main():
            return  # every rank holds the same weights; rank 0 writes them
        extra = {"training_state": model.state_dict()} if averaged is not model else None
        save_checkpoint(ckpt_path, kind="policy", model_state=averaged.state_dict(), model_config=vars(config),
                        tokenizer_bytes=tokenizer.model_bytes, step=at_step, args=vars(args),
                        optimizer_state=optimizer.state_dict(), rng_state=capture_rng_state(), extra=extra)

    decision_ids = [tokenizer.end_think_id, tokenizer.encode(tasks.UNDO)[0]]  # stop, or go back (data.decision_weights)
    # the batch stream is a pure function of the seed, so a resumed run skips the batches it already took
    stream = batches(examples, args.batch_size, seed=args.seed, bucket_batches=args.bucket_batches)
    for _ in range(step):
        next(stream)
    # a Ctrl-C is seen by each rank at its own moment: the ranks agree at every step whether to stop (interrupted)
    interrupted, stop_requested = False, False

    def on_sigint(signum, frame):
        nonlocal stop_requested
        stop_requested = True
    signal.signal(signal.SIGINT, on_sigint)

    model.train()
    t_start, tokens_seen, t_window = time.time(), 0, time.time()
    while step < args.steps and not interrupted:
        lr = cosine_lr(step, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = []  # this rank's share of the global batch, in --grad-accum pieces
        for examples in distributed.micro_batches(next(stream), args.grad_accum):
            inputs, targets = collate(examples, tokenizer.pad_id, device)
            loss_mask = decision_weights(targets, decision_ids, args.decision_weight) if args.decision_weight != 1 else None
            micro_batches.append((inputs, targets, loss_mask))
        # the loss is the weighted token mean over the whole global batch, so each micro-batch's mean counts by its
        # share of the weights (distributed.loss_scales; one process, one micro-batch: a factor of exactly 1)
        scales, _ = distributed.loss_scales([distributed.loss_weight(t, m) for _, t, m in micro_batches])
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for index, ((inputs, targets, loss_mask), scale) in enumerate(zip(micro_batches, scales)):
            with distributed.sync_gradients(train_model, index == len(micro_batches) - 1):  # all-reduce on the last
                with autocast(device):
                    logits, loss = train_model(inputs, targets, loss_mask=loss_mask)
                    if teacher is not None and args.distill == "logits":  # w T^2 KL(teacher_T || student_T) + (1 - w) CE
                        with torch.no_grad():
                            teacher_logits, _ = teacher(inputs)  # (B, T, V)
                        loss = args.kd_weight * kd_loss(logits, teacher_logits, targets, args.kd_temperature) \
                            + (1 - args.kd_weight) * loss
                (loss * scale).backward()
            loss_sum += loss.item() * scale / distributed.world_size()
        batch_loss, batch_tokens, stops = distributed.all_reduce_sum(
            [loss_sum, sum(inputs.numel() for inputs, _, _ in micro_batches), stop_requested])
        if not math.isfinite(batch_loss):  # before the step: the weights stay those of the last good step
            raise stop_diverged(f"the loss became {batch_loss} at step {step + 1}")
        interrupted = stops > 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        step += 1
        if averaged is not model:
            update_average(averaged, model, args.ema)
        tokens_seen += batch_tokens
        if (step % args.log_every == 0 or step == args.steps) and distributed.is_main():
            tok_s = tokens_seen / (time.time() - t_window)
            print(progress_line(step, args.steps, time.time() - t_start, loss=batch_loss, lr=lr, tok_s=tok_s), flush=True)
            metrics.log(step=step, loss=batch_loss, lr=lr, tok_s=tok_s)
            tokens_seen, t_window = 0, time.time()
        if step % args.eval_every == 0 and step < args.steps and distributed.is_main():  # the others wait at the next step
            accuracy, _ = evaluate_all(averaged, tokenizer, eval_small)
            metrics.log(step=step, **{f"{task}_acc": acc["all"] for task, acc in accuracy.items()})
            print(f"eval step {step} | " + " | ".join(f"{task} {acc['all']:.1%}" for task, acc in accuracy.items()), flush=True)
            t_window, tokens_seen = time.time(), 0
        if step % args.save_every == 0:
            save(step)
    save(step)
    distributed.teardown()  # the ranks part here: rank 0 evaluates alone
    train_seconds = time.time() - t_start + teacher_seconds  # a student of the teacher's traces pays for them too
    if interrupted:
        if distributed.is_main():
            print(f"interrupted: saved {ckpt_path} at step {step}; continue with --resume", file=sys.stderr)
        sys.exit(130)  # the shell's code for Ctrl-C, so a pipeline stops here instead of going on to the next stage
    if not distributed.is_main():
        distributed.exit_worker()  # rank 0 alone evaluates and reports

    # final evaluation on the held-out problems
    t_eval = time.time()
    accuracy, final_attempts = evaluate_all(averaged, tokenizer, eval_final)
    examples_shown = {task: task_attempts[0] for task, task_attempts in final_attempts.items()}
    thinking = evaluate_thinking(averaged, tokenizer, final_attempts["countdown"], args,
                                 init_model.to(device) if init is not None and not args.chat else None)
    chat_summary = evaluate_chat(averaged, tokenizer, chat_eval) if args.chat else None
    metrics.log(step=step, final=True, train_seconds=train_seconds,
                **{f"{task}_acc": acc["all"] for task, acc in accuracy.items()})
    print(f"final greedy accuracy on {args.eval_problems} held-out problems per task ({time.time() - t_eval:.0f}s):")
    rows = []
    for task, acc in accuracy.items():
        # `if d in acc`: a small --eval-problems sample may hold no problem of some difficulty
        by_difficulty = ", ".join(f"{d}: {acc[d]:.1%}" for d in EVAL_DIFFICULTIES[task] if d in acc)
        print(f"  {task}: {acc['all']:.1%} ({by_difficulty})")
        rows.append([task, f"{acc['all']:.1%}", by_difficulty])
    countdown_thinking = thinking["thinking"]
    uniform = thinking["uniform_targets"]
    print(f"  countdown, targets drawn uniformly among the reachable values: {uniform['all']:.1%} "
          f"({', '.join(f'{d}: {uniform[d]:.1%}' for d in EVAL_DIFFICULTIES['countdown'] if d in uniform)})")
    print("  countdown thinking: " + ", ".join(f"{key} {value:.3g}" for key, value in countdown_thinking.items()))
    write_json(os.path.join(args.out, "eval.json"), {
        **{task: {str(k): v for k, v in acc.items()} for task, acc in accuracy.items()},
        "countdown_uniform_targets": {str(k): v for k, v in uniform.items()},
        "countdown_thinking": countdown_thinking,
        "budget_sweep": {name: [dict(row, accuracy={str(k): v for k, v in row["accuracy"].items()}) for row in rows]
                         for name, rows in thinking.get("budget_sweep", {}).items()},
        **({"chat": chat_summary} if chat_summary else {}),
    })

    history = [m for m in metrics.read() if "loss" in m]
    evals = [m for m in metrics.read() if "arith_acc" in m]
    stage = os.path.basename(os.path.abspath(args.out))  # "pretrain", "reason": the name of its report section
    panels = [
        {"title": "training loss (completion tokens)", "xlabel": "step", "ylabel": "loss",
         "series": {"loss": ([m["step"] for m in history], [m["loss"] for m in history])}},
        {"title": "greedy accuracy, held-out", "xlabel": "step", "ylabel": "accuracy",
         "series": {task: ([m["step"] for m in evals], [m[f"{task}_acc"] for m in evals]) for task in tasks.TASKS}},
    ]
    if chat_summary:
        for key, title in (("context_tokens", "context tokens before the turn"), ("accuracy", "turn accuracy")):
            panels.append({"title": f"chat: {title} ({args.chat_conversations} held-out)", "xlabel": "turn",
                           "ylabel": key.replace("_", " "),
                           "series": {f"thinking {mode}": ([row["turn"] for row in chat_summary[mode]["by_turn"]],
                                                           [row[key] for row in chat_summary[mode]["by_turn"]])
                                      for mode in ("dropped", "kept")}})
    if "budget_sweep" in thinking:
        panels.append({"title": f"countdown: thinking budget (greedy, {SWEEP_PROBLEMS} held-out)", "logx": True,
                       "xlabel": "mean thinking tokens per problem", "ylabel": "accuracy",
                       "series": {name: ([row["mean_thinking_tokens"] for row in rows],
                                         [row["accuracy"]["all"] for row in rows])
                                  for name, rows in thinking["budget_sweep"].items()}})
    plot_panels(os.path.join(args.out, f"{stage}.png"), panels,
                title=f"{'fine-tuning' if init is not None else 'distillation' if teacher else 'pre-training'} ({args.preset}, "
                      f"{model.num_params() / 1e6:.2f}M params)")
    example_text = "\n\n".join(f"{ex.problem.task}: {ex.problem.text}\n{ex.completion}\n-> {'correct' if ex.verdict.is_correct else ex.verdict.reason}"
                               for ex in examples_shown.values())
    kinds = f"arith {args.arith_traces}" + (f" (retry share {args.retry_share})" if args.arith_traces == "retry" else "") \
        + f", countdown {args.countdown_traces} with products {args.countdown_products}"
    if args.chat:
        kinds = (f"conversations of 1-3 turns, earlier thinking {args.chat_thinking}, countdown turns "
                 f"{args.chat_countdown_share:.0%} (search traces), `ans` follow-ups {args.chat_follow_up_share:.0%}")
    sweep_rows = [[name] + [f"{row['accuracy']['all']:.1%} ({row['mean_thinking_tokens']:.0f})" for row in rows]
                  for name, rows in thinking.get("budget_sweep", {}).items()]
    write_report_section(os.path.join(os.path.dirname(os.path.abspath(args.out)), "report.md"), stage, "\n".join([
        f"## {'Fine-tuning from ' + args.init if init is not None else 'Distillation from ' + args.teacher if teacher else 'Pre-training'} ({args.preset}, {stage})", "",
        f"{model.num_params() / 1e6:.2f}M parameters"
        + (f" (the teacher's {teacher.num_params() / 1e6:.2f}M / {teacher.num_params() / model.num_params():.2f}; "
           + {"traces": "its verified solutions", "none": "nothing else from it, the exact traces alone",
              "logits": f"its soft targets at T = {args.kd_temperature}, weight {args.kd_weight}"}[args.distill] + ")"
           if teacher else "") + f", {args.steps} steps of {args.batch_size} traces, "
        f"{train_seconds / 60:.1f} min on {device}, {args.granularity} traces ({kinds})"
        + (f", weights averaged over about the last {round(1 / (1 - args.ema))} steps (--ema {args.ema})" if args.ema > 0 else "")
        + f". Greedy accuracy on {args.eval_problems} held-out problems per task:", "",
        markdown_table(["task", "accuracy", "by difficulty"], rows
                       + [["countdown, uniform targets", f"{uniform['all']:.1%}", ", ".join(
                           f"{d}: {uniform[d]:.1%}" for d in EVAL_DIFFICULTIES["countdown"] if d in uniform)]]), "",
        "Countdown thinking (greedy, held-out): " + ", ".join(f"{key.replace('_', ' ')} {value:.3g}"
                                                             for key, value in countdown_thinking.items()) + ".", "",
        *([f"Thinking budget (greedy accuracy on {SWEEP_PROBLEMS} held-out countdown problems, mean thinking tokens in brackets; "
           f"columns: at most N thinking tokens):", "",
           markdown_table(["policy"] + [str(b or "no cap") for b in BUDGETS], sweep_rows), ""] if sweep_rows else []),
        *(chat_report(chat_summary) if chat_summary else []),
        f"![{stage}]({stage}/{stage}.png)", "", "Example greedy outputs:", "", "```", example_text, "```", ""]))
    print(f"wrote {ckpt_path}, {args.out}/{stage}.png, report.md ({train_seconds / 60:.1f} min of training)")


if __name__ == "__main__":
    run_main(main)
