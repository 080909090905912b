"""
Every script meets bad input with one clear line on stderr, a non-zero exit code, no traceback, and no file written
over.

The bad inputs are a table (CASES): unknown flags, wrong types, missing, corrupt, malicious or wrong-kind checkpoints,
a tokenizer that does not match, problems the tokenizer cannot encode or the context cannot hold, bad problems, bad
problem files. Starting Python and torch costs more than a second, so the table runs in ONE child process that runs
each script as `__main__` (runpy) with its own argv and captures what it prints, its exit code, any exception that
escapes (which a real run would print as a traceback) and every file of the work folder before and after. Two cases
also run as plain separate processes and must print exactly the same, which shows the two routes agree.

    PYTHONPATH=. python tests/test_scripts.py   # prints the table of docs/bad_inputs.md from a fresh run
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from nano_reasoner import tasks
from nano_reasoner.checkpoint import capture_rng_state, save_checkpoint
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.quantize import quantize_model
from nano_reasoner.chat import CHAT_SYMBOLS
from nano_reasoner.tokenizer import add_symbols, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--steps", "2", "--batch-size", "4",
            "--train-problems", "30", "--eval-problems", "2", "--threads", "1"]
POLICY = ["--ckpt", "policy.pt", "--threads", "1"]
ARITH = POLICY + ["--task", "arith"]

# (name, script, argv, what the last line of stderr must hold). Paths are relative to the work folder that
# `workspace` fills: policy.pt, prm.pt, problems files, a run folder that already holds a checkpoint...
CASES = [
    # --- infer.py: flags
    ("unknown flag", "infer.py", ARITH + ["--bogus", "7+3"], "unrecognized arguments: --bogus"),
    ("flag of the wrong type", "infer.py", ARITH + ["--temperature", "warm", "7+3"], "invalid float value: 'warm'"),
    ("temperature nan", "infer.py", ARITH + ["--temperature", "nan", "7+3"], "--temperature"),
    ("negative temperature", "infer.py", ARITH + ["--temperature", "-1", "7+3"], "--temperature"),
    ("zero budget", "infer.py", ARITH + ["--budget", "0", "7+3"], "--budget"),
    ("negative threads", "infer.py", ARITH + ["--threads", "-1", "7+3"], "--threads -1: give a positive number"),
    ("unknown device", "infer.py", ARITH + ["--device", "tpu", "7+3"], "use auto, cpu or cuda"),
    ("unknown task", "infer.py", POLICY + ["--task", "chess", "7+3"], "invalid choice: 'chess'"),
    ("no task", "infer.py", POLICY + ["7+3"], "--task is required"),
    ("problem and --problems", "infer.py", ARITH + ["--problems", "good.jsonl", "7+3"], "not both or neither"),
    ("neither problem nor --problems", "infer.py", ARITH, "not both or neither"),
    ("--out without --problems", "infer.py", ARITH + ["--out", "out.jsonl", "7+3"], "--out goes with --problems"),
    ("strategy that needs a verifier, none given", "infer.py", ARITH + ["--strategy", "bon", "7+3"], "needs a verifier"),
    ("thinking budget of zero tokens", "infer.py", ARITH + ["--max-think", "0", "7+3"], "--max-think must be at least 1"),
    ("thinking floor above the cap", "infer.py", ARITH + ["--max-think", "8", "--min-think", "20", "7+3"],
     "--min-think 20 is above --max-think 8"),
    ("thinking budget with a step-level search", "infer.py",
     ARITH + ["--max-think", "8", "--strategy", "beam", "--verifier", "prm.pt", "7+3"],
     "apply to strategies that sample whole solutions"),
    ("sweep budgets that are not numbers", "infer.py", POLICY + ["--scaling", "--verifier", "prm.pt",
                                                                  "--scaling-budgets", "1,2,x"], "--scaling-budgets 1,2,x"),
    ("sweep budgets without 16", "infer.py", POLICY + ["--scaling", "--verifier", "prm.pt", "--scaling-budgets", "1,2,4"],
     "16 among them"),
    # --- infer.py: checkpoints
    ("missing checkpoint", "infer.py", ["--ckpt", "nope.pt", "--task", "arith", "7+3"], "no checkpoint at nope.pt"),
    ("checkpoint path is a folder", "infer.py", ["--ckpt", "run", "--task", "arith", "7+3"], "is a folder"),
    ("empty checkpoint file", "infer.py", ["--ckpt", "empty.pt", "--task", "arith", "7+3"], "cannot read empty.pt"),
    ("checkpoint of random bytes", "infer.py", ["--ckpt", "random.pt", "--task", "arith", "7+3"], "cannot read random.pt"),
    ("truncated checkpoint", "infer.py", ["--ckpt", "truncated.pt", "--task", "arith", "7+3"], "truncated or corrupt"),
    ("pickle that would run code", "infer.py", ["--ckpt", "evil.pt", "--task", "arith", "7+3"], "refusing to load evil.pt"),
    ("checkpoint with a damaged field", "infer.py", ["--ckpt", "damaged.pt", "--task", "arith", "7+3"], "is damaged"),
    ("checkpoint of the wrong kind (a PRM)", "infer.py", ["--ckpt", "prm.pt", "--task", "arith", "7+3"],
     "holds a prm checkpoint, expected policy"),
    ("tokenizer bytes that fail their checksum", "infer.py", ["--ckpt", "bad_sha.pt", "--task", "arith", "7+3"],
     "do not match their stored sha256"),
    ("tokenizer larger than the model's vocabulary", "infer.py", ["--ckpt", "small_vocab.pt", "--task", "arith", "7+3"],
     "saved with the wrong tokenizer"),
    ("policy given as the verifier", "infer.py", ARITH + ["--strategy", "bon", "--verifier", "policy.pt", "7+3"],
     "expected a verifier"),
    ("verifier trained with another tokenizer", "infer.py",
     ARITH + ["--strategy", "bon", "--verifier", "prm_other_tokenizer.pt", "7+3"], "another tokenizer"),
    ("generative verifier grown from another policy", "infer.py",
     ARITH + ["--strategy", "bon", "--verifier", "genrm_other_policy.pt", "7+3"], "generative verifier of another policy"),
    # --- infer.py: problems
    ("problem the tokenizer cannot encode", "infer.py", ["--ckpt", "countdown_only.pt", "--task", "arith", "7+3"],
     "characters the tokenizer does not know"),
    ("prompt longer than the context", "infer.py", ARITH + ["+".join(["1"] * 40)], "too long for the model's 64-token context"),
    ("incomplete expression", "infer.py", ARITH + ["7+"], "not an arith problem (expression ends too early)"),
    ("empty problem", "infer.py", ARITH + [""], "empty problem"),
    ("code as a problem", "infer.py", ARITH + ["__import__('os')"], "unexpected character '_'"),
    ("countdown target not a number", "infer.py", POLICY + ["--task", "countdown", "3 7 -> x"], "must be whole numbers"),
    ("countdown with too many numbers", "infer.py", POLICY + ["--task", "countdown", "1 2 3 4 5 6 7 -> 10"],
     "give 2 to 6 numbers"),
    ("missing problems file", "infer.py", ARITH + ["--problems", "nope.jsonl"], "no problems file at nope.jsonl"),
    ("problems line that is not JSON", "infer.py", ARITH + ["--problems", "not_json.jsonl"], "not_json.jsonl:2: not a JSON"),
    ("problems line without a string problem", "infer.py", ARITH + ["--problems", "not_string.jsonl"],
     "not_string.jsonl:1: each line must be"),
    ("problems line nested 100,000 deep", "infer.py", ARITH + ["--problems", "deep.jsonl"], "deep.jsonl:1:"),
    ("problems line with a 5,000-digit number", "infer.py", ARITH + ["--problems", "huge_int.jsonl"], "huge_int.jsonl:1:"),
    ("problems line with a bad problem", "infer.py", ARITH + ["--problems", "bad_problem.jsonl"],
     "bad_problem.jsonl:2: not an arith problem"),
    ("problems file of non-UTF-8 bytes", "infer.py", ARITH + ["--problems", "binary.jsonl"], "binary.jsonl:1:"),
    ("empty problems file", "infer.py", ARITH + ["--problems", "empty.jsonl"], "holds no problems"),
    ("--out is a folder", "infer.py", ARITH + ["--problems", "good.jsonl", "--out", "run"], "--out run is a folder"),
    ("--out is the problems file", "infer.py", ARITH + ["--problems", "good.jsonl", "--out", "good.jsonl"],
     "--out is the --problems file"),
    ("--out in a missing folder", "infer.py", ARITH + ["--problems", "good.jsonl", "--out", "no/such/out.jsonl"],
     "its folder does not exist"),
    # --- train_pretrain.py: flags
    ("unknown flag", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--bogus"], "unrecognized arguments: --bogus"),
    ("flag of the wrong type", "train_pretrain.py", ["--out", "new", "--steps", "abc"], "invalid int value: 'abc'"),
    ("unknown preset", "train_pretrain.py", ["--out", "new", "--preset", "huge"], "invalid choice: 'huge'"),
    ("zero steps", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--steps", "0"], "--steps must be positive"),
    ("learning rate nan", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--lr", "nan"], "--lr must be a positive"),
    ("negative learning rate", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--lr", "-1"], "--lr must be a positive"),
    ("negative gradient clip", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--grad-clip", "-1"],
     "--grad-clip must be a positive"),
    ("weight average of 1 (it would never move)", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--ema", "1"],
     "--ema must be a number in [0, 1)"),
    ("decision weight below 1", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--decision-weight", "0.5"],
     "--decision-weight must be a number >= 1"),
    ("width not a multiple of 2 x heads", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--n-embd", "30", "--n-head", "4"],
     "multiple of 2 * --n-head"),
    ("difficulty out of range", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--arith-difficulties", "1-9"],
     "arith difficulties lie in 1-6"),
    ("difficulty that is not a range", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--arith-difficulties", "x"],
     "give a range such as 1-4"),
    ("range of a billion values", "train_pretrain.py",
     ["--out", "new"] + TINY_RUN + ["--countdown-difficulties", "1-1000000000"], "holds more than 1000 values"),
    ("negative threads", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--threads", "-1"], "--threads -1"),
    ("cuda without a GPU", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--device", "cuda"], "no CUDA GPU"),
    ("zero batches per length bucket", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--bucket-batches", "0"],
     "--bucket-batches must be positive"),
    ("arith ratio of 0", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--arith-ratio", "0"],
     "--arith-ratio must be a number in (0, 100]"),
    ("retry share above 1", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--retry-share", "1.5"],
     "--retry-share must be a number in [0, 1]"),
    ("unknown trace kind", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--countdown-traces", "retry"],
     "invalid choice: 'retry'"),
    ("fine-tuning from a missing checkpoint", "train_pretrain.py", ["--out", "new", "--init", "nope.pt"] + TINY_RUN,
     "no checkpoint at nope.pt"),
    ("fine-tuning from a PRM checkpoint", "train_pretrain.py", ["--out", "new", "--init", "prm.pt"] + TINY_RUN,
     "holds a prm checkpoint, expected policy"),
    ("distilling into a student of another tokenizer", "train_pretrain.py",
     ["--out", "new", "--teacher", "policy.pt", "--init", "countdown_only.pt"] + TINY_RUN, "have different tokenizers"),
    ("distilling in a chat run", "train_pretrain.py", ["--out", "new", "--teacher", "policy.pt", "--init", "policy.pt",
                                                       "--chat"] + TINY_RUN, "--teacher and --chat are two different runs"),
    ("distilling at temperature 0", "train_pretrain.py", ["--out", "new", "--teacher", "policy.pt"] + TINY_RUN
     + ["--kd-temperature", "0"], "--kd-temperature must be a number in (0, 100]"),
    ("distilling from a missing teacher", "train_pretrain.py", ["--out", "new", "--teacher", "nope.pt"] + TINY_RUN,
     "no checkpoint at nope.pt"),
    ("distilling from a PRM checkpoint", "train_pretrain.py", ["--out", "new", "--teacher", "prm.pt"] + TINY_RUN,
     "holds a prm checkpoint, expected policy"),
    # --- train_pretrain.py: run folders and checkpoints
    ("--out is a file", "train_pretrain.py", ["--out", "good.jsonl"] + TINY_RUN, "--out good.jsonl is a file"),
    ("run folder that holds a checkpoint, no --resume", "train_pretrain.py", ["--out", "run"] + TINY_RUN,
     "run/ckpt.pt exists: pass --resume"),
    ("--resume from a corrupt checkpoint", "train_pretrain.py", ["--out", "run_corrupt", "--resume"] + TINY_RUN,
     "cannot read run_corrupt/ckpt.pt"),
    ("--resume from a PRM checkpoint", "train_pretrain.py", ["--out", "run_prm", "--resume"] + TINY_RUN,
     "holds a prm checkpoint, expected policy"),
    ("--resume from a pickle that would run code", "train_pretrain.py", ["--out", "run_evil", "--resume"] + TINY_RUN,
     "refusing to load run_evil/ckpt.pt"),
    ("--resume from a checkpoint with no optimizer state", "train_pretrain.py",
     ["--out", "run_no_optimizer", "--resume"] + TINY_RUN, "cannot be resumed"),
    ("--resume with another tokenizer in the folder", "train_pretrain.py",
     ["--out", "run_other_tokenizer", "--resume"] + TINY_RUN, "was made with other settings"),
    ("context too short for any trace", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--block-size", "8"],
     "only 0 training traces fit in --block-size 8"),
    ("fewer traces than one batch", "train_pretrain.py",
     ["--out", "new"] + TINY_RUN + ["--train-problems", "3", "--batch-size", "64"], "fewer than one batch of 64"),
    ("micro-batches that do not split the batch", "train_pretrain.py", ["--out", "new"] + TINY_RUN + ["--grad-accum", "3"],
     "--batch-size 4 does not split into 1 rank x --grad-accum 3"),
    ("torchrun's 3 ranks (WORLD_SIZE=3) for a batch of 4", "train_pretrain.py", ["--out", "new"] + TINY_RUN,
     "--batch-size 4 does not split into 3 ranks x --grad-accum 1 equal micro-batches: give a multiple of 3"),
    ("WORLD_SIZE that is not a number", "train_pretrain.py", ["--out", "new"] + TINY_RUN, "WORLD_SIZE='two'"),
    # --- train_prm.py
    ("unknown task for the verifiers", "train_prm.py", ["--out", "new", "--policy", "policy.pt", "--tasks", "chess"],
     "--tasks chess: choose among arith, countdown"),
    ("ranking pairs from one sample per problem", "train_prm.py",
     ["--out", "new", "--policy", "policy.pt", "--rank-samples", "1"], "--rank-samples at least 2"),
    ("negative problems for the generative verifier", "train_prm.py",
     ["--out", "new", "--policy", "policy.pt", "--genrm-problems", "-1"], "--genrm-problems must be >= 0"),
    # --- train_rl.py
    ("missing initial checkpoint", "train_rl.py", ["--out", "new", "--init", "nope.pt", "--threads", "1"],
     "no checkpoint at nope.pt"),
    ("group of one sample", "train_rl.py", ["--out", "new", "--init", "policy.pt", "--group-size", "1"],
     "--group-size must be at least 2"),
    ("process rewards from a PRM and from the exact labels", "train_rl.py",
     ["--out", "new", "--init", "policy.pt", "--prm", "prm.pt", "--exact-process-rewards"], "choose one"),
    ("generative verifier for process rewards", "train_rl.py",
     ["--out", "new", "--init", "policy.pt", "--prm", "genrm_other_policy.pt", "--steps", "1"],
     "is a generative verifier, which scores by writing a check"),
    ("negative process weight", "train_rl.py",
     ["--out", "new", "--init", "policy.pt", "--exact-process-rewards", "--process-weight", "-1"],
     "--process-weight must be >= 0"),
    ("expert-iteration round of two problems", "train_rl.py", ["--out", "new", "--init", "policy.pt", "--ei-problems", "2"],
     "--ei-problems must be at least 3"),
    ("weight average that never moves", "train_rl.py", ["--out", "new", "--init", "policy.pt", "--ei-ema", "1"],
     "--ei-replay-share and --ei-ema in [0, 1)"),
    ("torchrun's 3 ranks (WORLD_SIZE=3) for 16 GRPO prompts", "train_rl.py",
     ["--out", "new", "--init", "policy.pt", "--algo", "grpo", "--prompts-per-step", "16"],
     "--prompts-per-step 16 does not split evenly into 3 ranks"),
    ("torchrun's 3 ranks (WORLD_SIZE=3) for EI batches of 16", "train_rl.py",
     ["--out", "new", "--init", "policy.pt", "--algo", "ei", "--ei-batch-size", "16"],
     "--ei-batch-size 16 does not split evenly into 3 ranks"),
    ("initial checkpoint with quantized weights", "train_rl.py", ["--out", "new", "--init", "quantized.pt"],
     "quantized.pt holds quantized weights (compress.py): training needs float weights"),
    # --- compress.py
    ("quantization to 3 bits", "compress.py", ["--ckpt", "policy.pt", "--quantize", "int3", "--out", "new"],
     "--quantize int3: choose int8 or int4"),
    ("pruning more than everything", "compress.py", ["--ckpt", "policy.pt", "--prune", "1.5", "--out", "new"],
     "--prune 1.5: give the share to remove, a number between 0 and 1"),
    ("pruning share nan", "compress.py", ["--ckpt", "policy.pt", "--prune", "nan", "--out", "new"], "--prune nan"),
    ("neither quantization nor pruning", "compress.py", ["--ckpt", "policy.pt", "--out", "new"],
     "give one of --quantize int8|int4 and --prune FRACTION"),
    ("both quantization and pruning", "compress.py",
     ["--ckpt", "policy.pt", "--quantize", "int8", "--prune", "0.5", "--out", "new"], "give one of --quantize"),
    ("odd int4 group size", "compress.py", ["--ckpt", "policy.pt", "--quantize", "int4", "--group-size", "7",
                                             "--out", "new"], "--group-size 7: give an even number"),
    ("int4 groups that do not tile the rows", "compress.py",
     ["--ckpt", "policy.pt", "--quantize", "int4", "--group-size", "48", "--out", "new"],
     "do not tile a row of 32 weights"),
    ("group size with int8", "compress.py", ["--ckpt", "policy.pt", "--quantize", "int8", "--group-size", "32",
                                             "--out", "new"], "--group-size goes with --quantize int4"),
    ("structured with quantization", "compress.py",
     ["--ckpt", "policy.pt", "--quantize", "int8", "--structured", "--out", "new"], "go with --prune"),
    ("negative recovery steps", "compress.py", ["--ckpt", "policy.pt", "--prune", "0.5", "--recover-steps", "-1",
                                                "--out", "new"], "--recover-steps must be >= 0"),
    ("recovery learning rate nan", "compress.py", ["--ckpt", "policy.pt", "--prune", "0.5", "--recover-lr", "nan",
                                                   "--out", "new"], "--recover-lr nan"),
    ("compressing a quantized checkpoint", "compress.py", ["--ckpt", "quantized.pt", "--quantize", "int4",
                                                           "--out", "new"], "is quantized already"),
    ("compressing a PRM", "compress.py", ["--ckpt", "prm.pt", "--quantize", "int8", "--out", "new"],
     "holds a prm checkpoint, expected policy"),
    ("compress --out is a file", "compress.py", ["--ckpt", "policy.pt", "--quantize", "int8", "--out", "good.jsonl"],
     "--out good.jsonl is a file"),
    ("quantized checkpoint of an unknown scheme", "infer.py", ["--ckpt", "bad_scheme.pt", "--task", "arith", "7+3"],
     "the weights do not match the model config"),
    ("chat fine-tune without a policy to start from", "train_pretrain.py", ["--out", "new", "--chat"] + TINY_RUN,
     "--chat fine-tunes a trained policy: pass --init"),
    # --- chat.py
    ("policy not fine-tuned for conversation", "chat.py", POLICY, "was not fine-tuned for conversation"),
    ("missing chat checkpoint", "chat.py", ["--ckpt", "nope.pt"], "no checkpoint at nope.pt"),
    ("script without --out", "chat.py", ["--ckpt", "chat_policy.pt", "--script", "convs.jsonl"], "--script needs --out"),
    ("--out without --script", "chat.py", ["--ckpt", "chat_policy.pt", "--out", "new.jsonl"], "--out goes with --script"),
    ("missing script file", "chat.py", ["--ckpt", "chat_policy.pt", "--script", "nope.jsonl", "--out", "new.jsonl"],
     "no script file at nope.jsonl"),
    ("script line that is not JSON", "chat.py",
     ["--ckpt", "chat_policy.pt", "--script", "convs_not_json.jsonl", "--out", "new.jsonl"], "convs_not_json.jsonl:2: not a JSON"),
    ("script turns that are not a list of strings", "chat.py",
     ["--ckpt", "chat_policy.pt", "--script", "convs_bad_turns.jsonl", "--out", "new.jsonl"],
     "\"turns\" must be a non-empty list of strings"),
    ("chat turn of zero tokens", "chat.py", ["--ckpt", "chat_policy.pt", "--max-new-tokens", "0"],
     "--max-new-tokens must be at least 1"),
    # --- train_adapt.py
    ("no policy to adapt", "train_adapt.py", ["--out", "new"], "the following arguments are required: --init"),
    ("adapting a missing checkpoint", "train_adapt.py", ["--out", "new", "--init", "nope.pt"], "no checkpoint at nope.pt"),
    ("adapting a quantized checkpoint", "train_adapt.py", ["--out", "new", "--init", "quantized.pt"],
     "holds quantized weights"),
    ("replay share of 1", "train_adapt.py", ["--out", "new", "--init", "policy.pt", "--replay-share", "1"],
     "--replay-share must be a number in [0, 1)"),
    ("LoRA on a matrix that does not exist", "train_adapt.py",
     ["--out", "new", "--init", "policy.pt", "--lora-targets", "attn.c_q"], "--lora-targets 'attn.c_q'"),
    ("LoRA of rank 0", "train_adapt.py", ["--out", "new", "--init", "policy.pt", "--lora-rank", "0"],
     "--lora-rank must be a positive number"),
    ("fewer new problems than one batch", "train_adapt.py", ["--out", "new", "--init", "policy.pt", "--train-problems",
                                                             "4", "--eval-problems", "2", "--threads", "1"],
     "fewer than one batch of 16"),
    ("operands that are not a range", "train_adapt.py", ["--out", "new", "--init", "policy.pt", "--operands", "big"],
     "--operands 'big': give a range such as 100-999"),
]
# the environment a case runs in, besides the argv: what torchrun would set
CASE_ENV = {("train_pretrain.py", "torchrun's 3 ranks (WORLD_SIZE=3) for a batch of 4"): {"WORLD_SIZE": "3"},
            ("train_pretrain.py", "WORLD_SIZE that is not a number"): {"WORLD_SIZE": "two"},
            ("train_rl.py", "torchrun's 3 ranks (WORLD_SIZE=3) for 16 GRPO prompts"): {"WORLD_SIZE": "3"},
            ("train_rl.py", "torchrun's 3 ranks (WORLD_SIZE=3) for EI batches of 16"): {"WORLD_SIZE": "3"}}
REAL_PROCESS_CASES = [("unknown flag", "train_pretrain.py"), ("pickle that would run code", "infer.py")]

# runs every case in this one process; writes one result per case as JSON
DRIVER = r"""
import contextlib, hashlib, io, json, os, runpy, sys, traceback
repo, cases_path, results_path = sys.argv[1:4]
sys.path.insert(0, repo)

def snapshot():
    files = {}
    for folder, _, names in os.walk("."):
        for name in names:
            path = os.path.normpath(os.path.join(folder, name))
            with open(path, "rb") as f:
                files[path] = hashlib.sha256(f.read()).hexdigest()
    return files

results = []
for name, script, argv, env in json.load(open(cases_path)):
    before, stdout, stderr, code = snapshot(), io.StringIO(), io.StringIO(), 0
    sys.argv = [script] + argv
    saved_env = dict(os.environ)
    os.environ.update(env)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(os.path.join(repo, script), run_name="__main__")
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = "escaped"
    os.environ.clear()
    os.environ.update(saved_env)
    after = snapshot()
    results.append({"name": name, "script": script, "code": code, "stderr": stderr.getvalue(),
                    "changed": sorted(p for p in before if after.get(p) != before[p]),
                    "created": sorted(p for p in after if p not in before)})
json.dump(results, open(results_path, "w"))
"""


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.makedirs("code_ran"): the marker the tests look for."""

    def __reduce__(self):
        return (os.makedirs, ("code_ran",))


def save_tiny(path, tokenizer_bytes, vocab_size, *, kind="policy", with_optimizer=False, **config_overrides):
    """A 2-layer width-32 model with random weights: the scripts only need something of the right shape."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32,
                       has_scalar_head=kind not in ("policy", "genrm"), **config_overrides)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters()) if with_optimizer else None
    save_checkpoint(str(path), kind=kind, model_state=model.state_dict(), model_config=vars(config),
                    tokenizer_bytes=tokenizer_bytes, step=0, optimizer_state=optimizer and optimizer.state_dict(),
                    rng_state=capture_rng_state() if with_optimizer else None)


def edit_raw(path, change):
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def make_workspace(work):
    """Fill `work` with every file the cases name."""
    problems = tasks.generate("arith", 150, seed=0) + tasks.generate("countdown", 150, seed=0, difficulties=(3, 4))
    traces = [tasks.full_trace(p) for p in problems]
    tokenizer = train_tokenizer(traces, str(work / "tok.model"))
    other = train_tokenizer(traces[::2], str(work / "other.model"), vocab_size=48)
    countdown_only = train_tokenizer([t for t in traces if t.startswith("countdown")], str(work / "countdown.model"))
    assert tokenizer.sha256 != other.sha256
    policy_bytes = tokenizer.model_bytes
    save_tiny(work / "policy.pt", policy_bytes, tokenizer.vocab_size)
    save_tiny(work / "prm.pt", policy_bytes, tokenizer.vocab_size, kind="prm")
    save_tiny(work / "prm_other_tokenizer.pt", other.model_bytes, other.vocab_size, kind="prm")
    save_tiny(work / "genrm_other_policy.pt", add_symbols(other.model_bytes, ["<good>", "<bad>"]), other.vocab_size + 2,
              kind="genrm")
    save_tiny(work / "countdown_only.pt", countdown_only.model_bytes, countdown_only.vocab_size)
    save_tiny(work / "small_vocab.pt", policy_bytes, 10)
    save_tiny(work / "chat_policy.pt", add_symbols(policy_bytes, CHAT_SYMBOLS), tokenizer.vocab_size + len(CHAT_SYMBOLS))
    for name, change in [("bad_sha.pt", lambda raw: raw.update(tokenizer_sha256="0" * 64)),
                         ("damaged.pt", lambda raw: raw.update(model_config=[1, 2]))]:
        save_tiny(work / name, policy_bytes, tokenizer.vocab_size)
        edit_raw(work / name, change)
    (work / "empty.pt").write_bytes(b"")
    (work / "random.pt").write_bytes(bytes(range(256)) * 40)
    (work / "truncated.pt").write_bytes((work / "policy.pt").read_bytes()[:3000])
    torch.save({"model_state": RunsCodeWhenUnpickled()}, work / "evil.pt")
    quantized = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    quantize_model(quantized, "int4", group_size=32)  # int4, not int8: the bad inputs need no part of the assignment
    for name, scheme in [("quantized.pt", "int4"), ("bad_scheme.pt", "int3")]:
        save_checkpoint(str(work / name), kind="policy", model_state=quantized.state_dict(),
                        model_config=vars(quantized.config), tokenizer_bytes=policy_bytes, step=0,
                        extra={"quantization": {"scheme": scheme, "group_size": 32}})

    (work / "good.jsonl").write_text('{"problem": "7+3"}\n')
    (work / "not_json.jsonl").write_text('{"problem": "7+3"}\nproblem: 7+3\n')
    (work / "not_string.jsonl").write_text('{"problem": 7}\n')
    (work / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (work / "huge_int.jsonl").write_text('{"problem": "1", "id": ' + "9" * 5000 + "}\n")
    (work / "bad_problem.jsonl").write_text('{"problem": "7+3"}\n{"problem": "7+"}\n')
    (work / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81 problem\n")
    (work / "empty.jsonl").write_text("")
    (work / "convs.jsonl").write_text('{"turns": ["7+3", "ans*2"]}\n')
    (work / "convs_not_json.jsonl").write_text('{"turns": ["7+3"]}\nturns: 7+3\n')
    (work / "convs_bad_turns.jsonl").write_text('{"turns": "7+3"}\n')

    run = work / "run"
    run.mkdir()
    save_tiny(run / "ckpt.pt", policy_bytes, tokenizer.vocab_size, with_optimizer=True)
    for folder, kind, with_optimizer in [("run_prm", "prm", True), ("run_no_optimizer", "policy", False),
                                         ("run_other_tokenizer", "policy", True)]:
        (work / folder).mkdir()
        save_tiny(work / folder / "ckpt.pt", policy_bytes, tokenizer.vocab_size, kind=kind, with_optimizer=with_optimizer)
    (work / "run_other_tokenizer" / "tokenizer.model").write_bytes(other.model_bytes)
    (work / "run_corrupt").mkdir()
    (work / "run_corrupt" / "ckpt.pt").write_bytes(bytes(range(256)) * 40)
    (work / "run_evil").mkdir()
    torch.save({"model_state": RunsCodeWhenUnpickled()}, work / "run_evil" / "ckpt.pt")


def run_cases(work):
    """Run every case in one child process -> {(script, name): result}."""
    cases_path, results_path = work / "cases.json", work.parent / f"{work.name}-results.json"
    cases_path.write_text(json.dumps([[name, script, argv, CASE_ENV.get((script, name), {})]
                                      for name, script, argv, _ in CASES]))
    subprocess.run([sys.executable, "-c", DRIVER, REPO, str(cases_path), str(results_path)], cwd=work, check=True,
                   timeout=300, capture_output=True)
    return {(result["script"], result["name"]): result for result in json.loads(results_path.read_text())}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("scripts")
    make_workspace(work)
    return work, run_cases(work)


@pytest.mark.parametrize("name, script, argv, expected", CASES, ids=[f"{s}: {n}" for n, s, _, _ in CASES])
def test_bad_input_gives_one_clear_line_and_writes_nothing_over(workspace, name, script, argv, expected):
    work, results = workspace
    result = results[(script, name)]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert lines and expected in lines[-1], result["stderr"]
    if lines[-1].startswith("error: "):  # our own errors are the only line; argparse's come after its usage lines
        assert len(lines) == 1, result["stderr"]
    else:
        assert lines[-1].startswith(f"{script}: error: ") and lines[0].startswith("usage: ")
    assert result["changed"] == [], "an existing file was written over or deleted"
    assert not any(path.startswith("code_ran") for path in result["created"])
    assert all(path.startswith("new") for path in result["created"]), result["created"]
    assert not os.path.exists(work / "code_ran"), "a checkpoint ran code on load"


@pytest.mark.parametrize("name, script", REAL_PROCESS_CASES)
def test_a_separate_process_prints_the_same_as_the_shared_one(workspace, name, script):
    work, results = workspace
    argv = next(argv for n, s, argv, _ in CASES if (n, s) == (name, script))
    process = subprocess.run([sys.executable, os.path.join(REPO, script), *argv], cwd=work, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == results[(script, name)]["code"] == 2
    assert process.stderr == results[(script, name)]["stderr"]


def markdown_table(results):
    rows = ["| script | bad input | exit | what the user sees (last line of stderr) |", "|---|---|---|---|"]
    for name, script, _, _ in CASES:
        result = results[(script, name)]
        seen = result["stderr"].strip().splitlines()[-1].replace("|", "\\|") if result["stderr"].strip() else ""
        rows.append(f"| {script} | {name} | {result['code']} | `{seen}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder) / "work"
        work.mkdir()
        make_workspace(work)
        print(markdown_table(run_cases(work)))
