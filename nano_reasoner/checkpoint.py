"""
Checkpoints: atomic save, safe load, exact resume.

Every stage hands its model to the next through one file, `ckpt.pt`, plus a JSON sidecar `ckpt.pt.json` that a
person can read (kind, format version, model config, arguments, step, tokenizer sha256, creation time). The `.pt` file
is the truth; the sidecar is only for people and is never read back. Three rules keep a run safe:

1. **Atomic writes.** A file is written under a temporary name in the same folder, flushed and fsync-ed to disk, then
   renamed onto its real name with os.replace, which is atomic on POSIX and Windows: a reader sees the old file or the
   new one, never half of one. The `.pt` is renamed first and the `.json` second, so the sidecar never describes a
   checkpoint that is not there (after a kill between the two renames it may describe the previous save, one behind).
   A kill mid-write can leave a stale `*.tmp-<pid>` file behind; it is harmless and can be deleted.
2. **No code runs on load.** torch.load unpickles, and a pickle can call any Python function on load. Every load here
   uses `weights_only=True`, which only rebuilds tensors and plain containers and refuses anything else, so a file
   from a stranger cannot run code. To keep our own files loadable that way, save_checkpoint checks at the door that
   everything it stores is a tensor, dict, list, tuple, str, int, float, bool or None (a numpy scalar in the
   arguments would otherwise only fail at resume time, hours later).
3. **Everything needed to go on.** Model and optimizer state, the step, the arguments, every RNG state (torch CPU,
   CUDA, Python's `random`, named torch.Generators) and the tokenizer's own `.model` bytes, so a checkpoint is
   self-contained; the bytes' sha256 is stored too and checked on load.

What a checkpoint file holds (format 2): kind, format_version, model_state, model_config, tokenizer_bytes (a uint8
tensor), tokenizer_sha256, step, args, optimizer_state, rng_state, extra. Format 2 has the same fields as format 1;
it marks models trained on prompts that show an arith problem units digit first (tasks/trace.py), which a format-1
model would misread, so format-1 files are refused with a message instead of giving silently wrong answers.
"""
import collections
import hashlib
import json
import os
import pickle
import random
import re
import warnings
from datetime import datetime, timezone

import torch

FORMAT_VERSION = 2
CHECKPOINT_KEYS = ("kind", "format_version", "model_state", "model_config", "tokenizer_bytes", "tokenizer_sha256",
                   "step", "args", "optimizer_state", "rng_state", "extra")
FIELD_TYPES = {"kind": str, "format_version": int, "model_state": dict, "model_config": dict,
               "tokenizer_bytes": torch.Tensor, "tokenizer_sha256": str, "step": int}  # checked on load
SCRIPT_THAT_WRITES = {"policy": "train_pretrain.py", "prm": "train_prm.py", "orm": "train_prm.py",
                      "genrm": "benchmarks/genrm.py"}  # for messages
PLAIN_LEAF_TYPES = (str, int, float, bool, type(None))
PLAIN_CONTAINER_TYPES = (dict, collections.OrderedDict, list, tuple)  # OrderedDict: what state_dict() returns


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line that names the fix."""


# ----------------------------------------------------------------------------------------------------------------------
# atomic writes

def atomic_write(path, write_to):
    """
    Write a file so that readers only ever see its old version or the complete new one.

    write_to(file) writes the content into an open binary file. That file is a temporary one in the same folder as
    `path` (a rename is atomic only within one file system), named with the process id so that two processes never
    share it. fsync puts its bytes on disk before the rename makes them visible under `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp_path = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temp_path, "wb") as temp_file:
            write_to(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_path, path)
    except BaseException:  # BaseException: a Ctrl-C mid-write also leaves no temporary file
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # the new name is an entry of the folder: fsync the folder so the rename also survives a power cut (POSIX only;
    # a killed process needs no more than the rename)
    if hasattr(os, "O_DIRECTORY"):
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)


# ----------------------------------------------------------------------------------------------------------------------
# save and load

def _check_plain(value, where):
    """TypeError unless `value` is built only from what torch.load(weights_only=True) reads back."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_LEAF_TYPES:
        return
    if type(value) not in PLAIN_CONTAINER_TYPES:
        raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds only tensors, dicts, lists, tuples, "
                        f"str, int, float, bool and None (convert it, e.g. float(x) or x.tolist())")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"a key of {where}")
            _check_plain(item, f"{where}[{key!r}]")
    else:
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")


def save_checkpoint(path, *, kind, model_state, model_config, tokenizer_bytes, step, args=None, optimizer_state=None,
                    rng_state=None, extra=None):
    """
    Write the checkpoint `path` and its sidecar `path`.json, each atomically, the .pt first.

    kind: what the weights are ("policy", "prm", "orm"); load_checkpoint can insist on one.
    tokenizer_bytes: the SentencePiece .model file's bytes, stored inside the checkpoint with their sha256.
    optimizer_state, rng_state: needed to resume training; None for a checkpoint that is only ever evaluated.
    """
    if not tokenizer_bytes:
        raise ValueError("tokenizer_bytes is empty: pass the bytes of the SentencePiece .model file")
    tokenizer_sha256 = hashlib.sha256(tokenizer_bytes).hexdigest()
    checkpoint = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "model_state": model_state,
        "model_config": model_config,
        "tokenizer_bytes": torch.frombuffer(bytearray(tokenizer_bytes), dtype=torch.uint8),  # (number of bytes,)
        "tokenizer_sha256": tokenizer_sha256,
        "step": step,
        "args": args if args is not None else {},
        "optimizer_state": optimizer_state,
        "rng_state": rng_state,
        "extra": extra if extra is not None else {},
    }
    for key, value in checkpoint.items():
        _check_plain(value, key)
    # the sidecar's text is made before anything is written, so a value JSON cannot hold fails with no file touched
    sidecar_text = json.dumps({
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "model_config": model_config,
        "args": checkpoint["args"],
        "step": step,
        "tokenizer_sha256": tokenizer_sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }, indent=2) + "\n"
    atomic_write(path, lambda file: torch.save(checkpoint, file))
    atomic_write(path + ".json", lambda file: file.write(sidecar_text.encode("utf-8")))


def sidecar_kind(path):
    """The kind a checkpoint's sidecar (path.json) names, without reading the weights; None when there is no readable
    sidecar (load_checkpoint then says what is wrong with the checkpoint itself)."""
    try:
        with open(path + ".json") as f:
            kind = json.load(f).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def load_checkpoint(path, *, expected_kind=None, map_location="cpu"):
    """
    Read a checkpoint without running any code from it -> dict with the keys in CHECKPOINT_KEYS, tokenizer_bytes as
    bytes. Anything wrong with the file raises CheckpointError with a one-line message that says what to do.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder: pass the checkpoint file inside it, e.g. {os.path.join(path, 'ckpt.pt')}")
    if not os.path.exists(path):
        script = SCRIPT_THAT_WRITES.get(expected_kind, "the stage that writes it")
        raise CheckpointError(f"no checkpoint at {path}: run {script} first, or give the path of one that exists")
    try:
        with warnings.catch_warnings():  # torch warns about some raw pickles before refusing them: one line is enough
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only names the function or class the pickle asked for ("GLOBAL os.system"); we never import it
        wanted = re.search(r"GLOBAL ([\w.]+)", str(error))
        if wanted is None:
            raise CheckpointError(f"cannot read {path}: it is corrupt; re-run the stage that wrote it") from error
        raise CheckpointError(f"refusing to load {path}: it is not a plain-tensor checkpoint (weights_only; it asks "
                              f"for {wanted.group(1)}); use a checkpoint written by nano-reasoner") from error
    except Exception as error:  # a truncated zip, a text file, an empty file: each fails with its own exception type
        raise CheckpointError(f"cannot read {path} ({type(error).__name__}): it is truncated or corrupt; re-run the "
                              f"stage that wrote it") from error

    if not isinstance(checkpoint, dict) or not set(CHECKPOINT_KEYS) <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a nano-reasoner checkpoint: pass a ckpt.pt written by a train_*.py script")
    # a file with the right keys but a damaged or hand-made value would fail later, deep in a script, with a traceback
    misshapen = [key for key, key_type in FIELD_TYPES.items() if not isinstance(checkpoint[key], key_type)]
    if misshapen:
        raise CheckpointError(f"{path} is damaged: {', '.join(misshapen)} has the wrong type; re-run the stage that "
                              f"wrote it")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {checkpoint['format_version']}, this code reads format "
                              f"{FORMAT_VERSION}: re-run the stage that wrote it with this code")
    if expected_kind is not None and checkpoint["kind"] != expected_kind:
        raise CheckpointError(f"{path} holds a {checkpoint['kind']} checkpoint, expected {expected_kind}")
    tokenizer_bytes = checkpoint["tokenizer_bytes"].cpu().numpy().tobytes()
    if hashlib.sha256(tokenizer_bytes).hexdigest() != checkpoint["tokenizer_sha256"]:
        raise CheckpointError(f"{path} is corrupt: its tokenizer bytes do not match their stored sha256; re-run the "
                              f"stage that wrote it")
    checkpoint["tokenizer_bytes"] = tokenizer_bytes
    return checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# random number generator states, for a resume that draws the same numbers as an unbroken run

def capture_rng_state(generators=None):
    """
    Every random state a run draws from -> a dict that save_checkpoint accepts (tensors, lists, ints, floats).

    generators: named torch.Generators the run owns (e.g. {"sampling": generator}), captured besides the global ones.
    Python's random.getstate() is (version, tuple of 625 ints, gauss_next); it is stored with the tuple as a list.
    """
    version, internal_state, gauss_next = random.getstate()
    rng_state = {
        "torch": torch.get_rng_state(),  # a uint8 tensor
        "python": {"version": version, "internal_state": list(internal_state), "gauss_next": gauss_next},
        "generators": {name: generator.get_state() for name, generator in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        rng_state["cuda"] = torch.cuda.get_rng_state_all()  # one uint8 tensor per GPU
    return rng_state


def restore_rng_state(rng_state, generators=None):
    """Put back the states from capture_rng_state; every name in `generators` must have been captured."""
    # .cpu(): the states are uint8 CPU tensors even for CUDA generators, whatever map_location moved them to
    torch.set_rng_state(rng_state["torch"].cpu())
    python_state = rng_state["python"]
    random.setstate((python_state["version"], tuple(python_state["internal_state"]), python_state["gauss_next"]))
    for name, generator in (generators or {}).items():
        if name not in rng_state["generators"]:
            raise KeyError(f"the saved RNG state holds no generator named {name!r} (it holds "
                           f"{sorted(rng_state['generators'])})")
        generator.set_state(rng_state["generators"][name].cpu())
    if "cuda" in rng_state and torch.cuda.is_available():
        # a run resumed on fewer GPUs restores the ones it has
        torch.cuda.set_rng_state_all([state.cpu() for state in rng_state["cuda"][:torch.cuda.device_count()]])
