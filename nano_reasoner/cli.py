"""
What every top-level script shares: picking the device, failing with one clear line, loading a policy checkpoint.

Errors a user can cause (a bad flag value, a missing checkpoint, a problem that is not a problem) end the script with
one line on stderr that names the fix and exit code 2, never a traceback. Scripts raise `UserError` anywhere and wrap
their `main` in `run_main`, which turns it into that line.
"""
import contextlib
import json
import math
import os
import sys

import torch


class UserError(Exception):
    """Something the user can fix; the message says how."""


def run_main(main):
    """Call main(); a UserError (or Ctrl-C outside training) becomes one line on stderr and exit code 2 / 130."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def pick_device(name="auto", threads=None):
    """'auto' -> cuda when present, else cpu. On CPU the thread count is set deliberately (default: all cores)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: use auto, cpu or cuda")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads}: give a positive number of CPU threads")
    if name == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.device(name)


def autocast(device):
    """bf16 autocast on CUDA; on CPU a no-op. fp32 is exact there, and bf16 did not pay on this project's CPU, which
    has bf16 instructions: about 10% faster in the training loop, and lower accuracy (docs/pretraining_log.md)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


MAX_RANGE_VALUES = 1000  # a range is a handful of difficulties; '1-1000000000' would otherwise fill the memory


def parse_range(text, flag):
    """'1-4' -> (1, 2, 3, 4); '3' -> (3,); '1,3' -> (1, 3)."""
    try:
        values = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            values_in_part = range(int(low), int(high or low) + 1)
            if len(values) + len(values_in_part) > MAX_RANGE_VALUES:
                raise UserError(f"{flag} {text!r} holds more than {MAX_RANGE_VALUES} values: give a short range such as 1-4")
            values.extend(values_in_part)
    except ValueError:
        raise UserError(f"{flag} {text!r}: give a range such as 1-4 or a list such as 1,3") from None
    if not values:
        raise UserError(f"{flag} {text!r} is empty")
    return tuple(values)


def read_jsonl(path, what, line_example):
    """The JSON values of a JSONL file, one per non-blank line, as (line number, value) pairs; a missing file or a line
    that is not JSON is a UserError naming the file and line. what: "problems" (for the message); line_example: what
    a line should look like."""
    if not os.path.isfile(path):
        raise UserError(f"no {what} file at {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except (ValueError, RecursionError):  # bad JSON, a number of over 4300 digits, nesting too deep
                raise UserError(f"{path}:{number}: not a JSON object; each line must be {line_example}") from None


def check_output_file(out, input_path, input_flag):
    """UserError unless `out` can be written as a results file: not a folder, in a folder that exists, and not the
    input file it is made from (which would be overwritten while it is read)."""
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a folder: give a file name such as {os.path.join(out, 'out.jsonl')}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise UserError(f"--out {out}: its folder does not exist; create it first")
    if os.path.abspath(out) == os.path.abspath(input_path):
        raise UserError(f"--out is the {input_flag} file: write the results to another file")


def load_policy(path, device, expected_kind="policy", for_training=False):
    """
    A checkpoint -> (model, tokenizer, checkpoint dict), or UserError with the fix.

    A checkpoint written by compress.py loads like any other: a pruned one's config holds its smaller shapes, and a
    quantized one says so in extra["quantization"] ({"scheme", "group_size"}), so its blocks are built quantized
    before the integer weights are read in. for_training: refuse a quantized checkpoint (its weights are not
    parameters any more; training starts from float weights).
    """
    from nano_reasoner.checkpoint import CheckpointError, load_checkpoint
    from nano_reasoner.model import GPT, GPTConfig
    from nano_reasoner.quantize import quantize_model
    from nano_reasoner.tokenizer import Tokenizer

    try:
        ckpt = load_checkpoint(path, expected_kind=expected_kind)
    except CheckpointError as error:
        raise UserError(str(error)) from None
    quantization = ckpt["extra"].get("quantization") if isinstance(ckpt["extra"], dict) else None
    if quantization and for_training:
        raise UserError(f"{path} holds quantized weights (compress.py): training needs float weights; start from the "
                        f"float checkpoint it was made from")
    try:
        model = GPT(GPTConfig(**ckpt["model_config"]))
        if quantization:
            quantize_model(model, quantization["scheme"], quantization.get("group_size"))
        model.load_state_dict(ckpt["model_state"])
    except Exception:  # a damaged config can fail anywhere in GPT's constructor; the fix is the same
        raise UserError(f"{path}: the weights do not match the model config stored with them (corrupt checkpoint)") from None
    try:
        tokenizer = Tokenizer(ckpt["tokenizer_bytes"])
    except (RuntimeError, OSError):  # SentencePiece raises RuntimeError on bytes that are not a model
        raise UserError(f"{path}: the tokenizer stored in it is not a SentencePiece model (corrupt checkpoint)") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but the model only "
                        f"{model.config.vocab_size}: the checkpoint was saved with the wrong tokenizer")
    model.to(device).eval()
    return model, tokenizer, ckpt


def cosine_lr(step, total_steps, peak_lr, warmup_steps, min_lr_frac=0.1):
    """Linear warmup to peak_lr, then cosine decay to min_lr_frac * peak_lr (as in nanoGPT)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak_lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def fill_from_preset(args, preset):
    """Every flag left unset (None) takes the preset's value: a flag given on the command line wins."""
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def make_run_folder(path):
    """--out as a folder, created if missing; a file in its place, or a folder that cannot be made, is a UserError."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {path} is a file: give a folder for the run")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create --out {path} ({error.strerror}): choose another folder") from None
