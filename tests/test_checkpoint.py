import json
import os
import pickle
import random
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from nano_reasoner.checkpoint import (FORMAT_VERSION, CheckpointError, capture_rng_state, load_checkpoint,
                                      restore_rng_state, save_checkpoint)

TOKENIZER_BYTES = bytes(range(256)) * 3  # stands in for a SentencePiece .model file


def make_model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()  # so the optimizer state holds moment tensors
    return model, optimizer


def save(path, model, optimizer, *, kind="policy", step=7, **overrides):
    fields = dict(kind=kind, model_state=model.state_dict(), model_config={"n_layer": 2, "n_embd": 8},
                  tokenizer_bytes=TOKENIZER_BYTES, step=step, args={"lr": 1e-3, "out": "runs/x", "resume": False},
                  optimizer_state=optimizer.state_dict(), rng_state=capture_rng_state(), extra={"note": "test"})
    fields.update(overrides)
    save_checkpoint(path, **fields)


def test_round_trip_keeps_weights_optimizer_and_tokenizer(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer)
    ckpt = load_checkpoint(path, expected_kind="policy")
    assert ckpt["kind"] == "policy" and ckpt["format_version"] == FORMAT_VERSION and ckpt["step"] == 7
    assert ckpt["model_state"].keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(ckpt["model_state"][name], tensor)
    moments = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(ckpt["optimizer_state"]["state"][0]["exp_avg"], moments)
    assert ckpt["optimizer_state"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert ckpt["tokenizer_bytes"] == TOKENIZER_BYTES
    assert ckpt["model_config"] == {"n_layer": 2, "n_embd": 8}
    assert ckpt["args"] == {"lr": 1e-3, "out": "runs/x", "resume": False}
    assert ckpt["extra"] == {"note": "test"}


def test_sidecar_describes_the_checkpoint(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer, kind="prm", step=42)
    with open(path + ".json") as f:
        sidecar = json.load(f)
    assert sidecar["kind"] == "prm" and sidecar["step"] == 42 and sidecar["format_version"] == FORMAT_VERSION
    assert sidecar["tokenizer_sha256"] == load_checkpoint(path)["tokenizer_sha256"]
    assert sidecar["model_config"] == {"n_layer": 2, "n_embd": 8} and sidecar["args"]["out"] == "runs/x"


def test_save_leaves_no_temporary_files(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    save(str(tmp_path / "ckpt.pt"), model, optimizer)
    save(str(tmp_path / "ckpt.pt"), model, optimizer, step=8)  # an overwrite too
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.json"]


def test_crash_during_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    old_model, optimizer = make_model_and_optimizer(seed=0)
    save(path, old_model, optimizer, step=5)
    new_model, optimizer = make_model_and_optimizer(seed=1)

    def crash(src, dst):
        raise OSError("simulated crash before the rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save(path, new_model, optimizer, step=6)
    monkeypatch.undo()

    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 5
    for name, tensor in old_model.state_dict().items():
        assert torch.equal(ckpt["model_state"][name], tensor)
    assert json.load(open(path + ".json"))["step"] == 5
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "ckpt.pt.json"]


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it calls os.makedirs(marker), which a plain checkpoint must never do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "evil.pt")
    torch.save({"model_state": RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing to load .* not a plain-tensor checkpoint.*os.makedirs"):
        load_checkpoint(path)
    assert not os.path.exists(marker)
    # the payload is real: the pickle inside the file names os.makedirs, which a plain unpickler would call
    with zipfile.ZipFile(path) as archive:
        pickled = archive.read(next(name for name in archive.namelist() if name.endswith("data.pkl")))
    assert b"makedirs" in pickled


def test_truncated_file_is_a_checkpoint_error(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n"])
def test_file_that_is_not_a_torch_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(path))


def test_missing_file_names_the_script_to_run(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*: run train_pretrain.py first, or give the path of one that exists"):
        load_checkpoint(str(tmp_path / "nothing.pt"), expected_kind="policy")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(str(tmp_path))


def test_wrong_kind_is_refused(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer, kind="prm")
    with pytest.raises(CheckpointError, match="holds a prm checkpoint, expected policy"):
        load_checkpoint(path, expected_kind="policy")


def rewrite_raw(path, change):
    """Edit a checkpoint behind save_checkpoint's back."""
    raw = torch.load(path, weights_only=True)
    change(raw)
    torch.save(raw, path)


def test_wrong_format_version_is_refused(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer)
    rewrite_raw(path, lambda raw: raw.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}, this code reads format {FORMAT_VERSION}"):
        load_checkpoint(path)


def test_tokenizer_bytes_that_do_not_match_their_sha256_are_refused(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer)

    def flip_one_byte(raw):
        raw["tokenizer_bytes"][10] ^= 1
    rewrite_raw(path, flip_one_byte)
    with pytest.raises(CheckpointError, match="do not match their stored sha256"):
        load_checkpoint(path)


def test_value_that_weights_only_cannot_load_is_refused_at_save_time(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    with pytest.raises(TypeError, match=r"args\['seed'\] is a int64"):
        save(path, model, optimizer, args={"seed": np.int64(3)})
    assert os.listdir(tmp_path) == []


def draw_numbers(generator):
    return (torch.rand(4).tolist(), [random.random() for _ in range(4)], random.gauss(0, 1),
            torch.rand(4, generator=generator).tolist())


def test_rng_state_restored_from_a_checkpoint_draws_the_same_numbers(tmp_path):
    torch.manual_seed(0)
    random.seed(0)
    random.gauss(0, 1)  # leaves gauss_next set, the float part of Python's state
    generator = torch.Generator().manual_seed(5)
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer, rng_state=capture_rng_state({"sampling": generator}))
    first_draws = draw_numbers(generator)

    other_generator = torch.Generator().manual_seed(99)
    restore_rng_state(load_checkpoint(path)["rng_state"], {"sampling": other_generator})
    assert draw_numbers(other_generator) == first_draws


@pytest.mark.parametrize("protocol", [2, 4])
def test_raw_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, monkeypatch, protocol):
    # not written by torch.save: a plain pickle file, the other way a stranger can hand over a "checkpoint"
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model_state": RunsCodeWhenUnpickled("code_ran")}, f, protocol=protocol)
    with pytest.raises(CheckpointError, match="evil.pkl"):
        load_checkpoint(str(path))
    assert not os.path.exists(tmp_path / "code_ran")


def test_field_of_the_wrong_type_is_a_checkpoint_error(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = str(tmp_path / "ckpt.pt")
    save(path, model, optimizer)
    rewrite_raw(path, lambda raw: raw.update(model_config=[2, 8], step="7"))
    with pytest.raises(CheckpointError, match="is damaged: model_config, step has the wrong type"):
        load_checkpoint(path)


# saves step 1, then starts saving step 2 with a torch.save that writes part of the file and waits to be killed
SAVE_THEN_DIE_MID_WRITE = """
import sys, time, torch
sys.path.insert(0, {repo!r})
from nano_reasoner.checkpoint import save_checkpoint
path = sys.argv[1]
def save(step):
    save_checkpoint(path, kind="policy", model_state={{"w": torch.full((250_000,), float(step))}}, model_config={{}},
                    tokenizer_bytes=b"tokenizer", step=step)
save(1)
def write_part_then_wait(obj, file):
    file.write(b"PK" + bytes(100_000))
    file.flush()
    print("mid-write", flush=True)
    time.sleep(120)
torch.save = write_part_then_wait
save(2)
"""


def test_sigkill_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-c", SAVE_THEN_DIE_MID_WRITE.format(repo=repo), path],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "mid-write"
        process.send_signal(signal.SIGKILL)  # no cleanup code runs
    finally:
        process.wait(timeout=60)
    leftovers = [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert leftovers == [f"ckpt.pt.tmp-{process.pid}"], "the kill landed mid-write, in the temporary file"
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["model_state"]["w"], torch.full((250_000,), 1.0))
    assert json.load(open(path + ".json"))["step"] == 1
    # the stale temporary file does not get in the way of the next save
    save_checkpoint(path, kind="policy", model_state={"w": torch.zeros(2)}, model_config={}, tokenizer_bytes=b"t", step=3)
    assert load_checkpoint(path)["step"] == 3
