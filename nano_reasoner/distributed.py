"""
Data-parallel training: the same model on N processes, each with its own share of every batch.

One process trains on a batch of B sequences: the loss is a mean over the batch, its gradient too. Data parallelism
runs N copies of the process ("ranks"), each holding the same weights, and gives each rank B/N of the batch. Every
rank computes the gradient of its share; an all-reduce (every rank sends its gradient and gets back the sum, in one
collective call) leaves the same averaged gradient on every rank, so the same optimizer step keeps the copies
identical. Nothing else is shared: each rank has its own optimizer, its own weight average, its own sampler.

The average equals the one-process gradient only if the loss is split right. Our losses are means over tokens (the
pre-training loss: sum of w * ce over the completion tokens / sum of w), and a mean of per-rank means is not the mean
of the whole batch when the ranks hold different numbers of tokens. So every rank counts the tokens (or rows) of its
share, the counts are summed over the ranks, and rank r backpropagates its own mean times N * count_r / total
(`loss_scales`): the average over the N ranks is then sum_r count_r / total * grad(mean_r), the gradient of the mean
over the whole batch, to float rounding. With one process the factor is count / count = 1 exactly.

torchrun starts the N processes and tells each who it is through environment variables: RANK (0..N-1 over all
machines), LOCAL_RANK (0..N-1 on this machine: which GPU to use), WORLD_SIZE (N), and MASTER_ADDR / MASTER_PORT (where
rank 0 listens, so that the ranks can find each other). `setup` reads them and joins the group; without WORLD_SIZE
the script is a single process and nothing here does anything. The backend carries the collectives: NCCL between
GPUs (GPU memory to GPU memory, over NVLink or the network), gloo between CPU processes.

Two ways to average gradients, the plain one first:
  - `average_gradients`: after backward, all-reduce every parameter's gradient and divide by N. The reference; the RL
    updates use it (grpo.py, expert_iteration.py), because there a rank may have nothing to learn from in a step
    (all its groups dropped) and must still take part with a zero gradient.
  - DistributedDataParallel (`wrap`), what train_pretrain.py uses: it cuts the gradients into buckets and starts each
    bucket's all-reduce as soon as backward has filled it, so communication overlaps with the rest of backward
    ("PyTorch Distributed: Experiences on Accelerating Data Parallel Training", Li et al., arXiv 2006.15704).
    With gradient accumulation (several micro-batches per optimizer step), only the last micro-step's backward needs
    the all-reduce: the earlier ones only add into .grad, so they run under `no_sync` (`sync_gradients`) and the
    gradients of all micro-steps are averaged once, as the paper's section on no_sync describes.
tests/test_distributed.py checks that the two give the same gradient, and both the gradient of one process.

This is nanoGPT's recipe (train.py): torchrun, init_process_group from the environment, one GPU per LOCAL_RANK,
DDP around the model, require_backward_grad_sync only on the last micro-step, rank 0 alone logging, evaluating and
writing checkpoints. Where this departs from it: each rank takes a strided slice of the one global batch that a single
process would take (nanoGPT's ranks draw their own random batches with their own seeds), so N ranks train on exactly
the batches of one process and a run can be checked against it; and the loss is weighted by token counts as above.
"""
import atexit
import contextlib
import datetime
import os
import sys

import torch
import torch.distributed as dist


def env_world_size():
    """WORLD_SIZE as torchrun sets it, 1 when unset (a plain `python script.py`)."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE={text!r} is not a positive whole number")
    return int(text)


def threads_per_rank():
    """CPU threads for each of the processes torchrun started on this machine: the cores shared out among them."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def setup(device):
    """Join the group that torchrun describes in the environment -> this rank's device. A single process (WORLD_SIZE
    unset or 1) joins nothing and keeps `device`. On CUDA rank r drives GPU LOCAL_RANK, with NCCL; on CPU, gloo."""
    if env_world_size() == 1:
        return device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # env:// : RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT come from the environment
    # timeout: rank 0 evaluates alone while the others wait at the next collective, which may take minutes
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://",
                            timeout=datetime.timedelta(hours=1))
    atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())  # a rank that stops on an error
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints progress; every rank's errors still reach stderr
    return device


def teardown():
    """Leave the group together, once every rank is done with the collectives (a single process has none). After it,
    rank 0 goes on alone (the final evaluation) and the others may exit."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_worker():
    """A rank other than 0, after `teardown`, has nothing left to do: flush its streams and leave at once, with code 0,
    skipping the interpreter's shutdown. That shutdown destroys the backend's C++ objects while rank 0 is still
    running, and once in the CI (a two-rank train_rl.py run, 2026-12-07) a gloo thread aborted it there: SIGABRT,
    "terminate called without an active exception", so a run whose work was all done exited -6. os._exit skips
    atexit handlers and C++ static destructors alike; every file this rank wrote is already closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank():
    """This process's rank, 0..N-1 (0 for a single process; still known after teardown, from torchrun's RANK)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    """Rank 0 alone prints, evaluates and writes files."""
    return rank() == 0


def barrier():
    """Wait until every rank is here (e.g. rank 0 has written the tokenizer the others read)."""
    if world_size() > 1:
        dist.barrier()


def rank_seed(seed):
    """A seed of this rank's own: ranks that sample must not draw the same random numbers. Rank 0 keeps `seed`, so a
    single process is unchanged."""
    return seed + 1_000_003 * rank()


# ----------------------------------------------------------------------------------------------------------------------
# sharing out work and gathering it back

def shard(items):
    """This rank's share of a list: every N-th item from position `rank` (a strided slice, so that a batch sorted by
    length gives each rank as much padding as the others). One process: the whole list."""
    if world_size() == 1:
        return list(items)
    return list(items[rank()::world_size()])


def gather(local_items):
    """The inverse of `shard`: every rank passes its share and gets back the whole list in its original order."""
    if world_size() == 1:
        return list(local_items)
    shares = [None] * world_size()
    dist.all_gather_object(shares, list(local_items))  # pickles arbitrary Python objects (verdicts, token lists)
    whole = [None] * sum(len(share) for share in shares)
    for r, share in enumerate(shares):
        whole[r::world_size()] = share
    return whole


def micro_batches(batch, accum_steps):
    """This rank's share of a global batch, cut into accum_steps micro-batches of equal size."""
    share = shard(batch)
    assert len(share) % accum_steps == 0, f"{len(share)} sequences do not cut into {accum_steps} micro-batches"
    size = len(share) // accum_steps
    return [share[k * size:(k + 1) * size] for k in range(accum_steps)]


# ----------------------------------------------------------------------------------------------------------------------
# collectives on numbers

def _comm_device():
    # NCCL only moves CUDA tensors; gloo moves CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values):
    """Sum a list of numbers (floats or 0-d tensors) over the ranks -> list of floats, in float64."""
    if world_size() == 1:
        return [float(value) for value in values]
    packed = torch.tensor([float(value) for value in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.tolist()


def any_rank(flag):
    """True on every rank when it is True on any (a Ctrl-C seen by one rank stops them all at the same step)."""
    return all_reduce_sum([float(flag)])[0] > 0


def weighted_means(means, weights):
    """Metrics averaged over the ranks: for each key, sum_r w_r * m_r / sum_r w_r, with w_r what the rank's mean was
    taken over (rows, tokens). means, weights: dicts of floats with the same keys. One process: means unchanged."""
    if world_size() == 1:
        return dict(means)
    keys = sorted(means)
    sums = all_reduce_sum([means[key] * weights[key] for key in keys] + [weights[key] for key in keys])
    return {key: sums[i] / sums[len(keys) + i] if sums[len(keys) + i] > 0 else 0.0 for i, key in enumerate(keys)}


# ----------------------------------------------------------------------------------------------------------------------
# gradients

def loss_weight(targets, loss_mask=None):
    """What GPT.forward divides its loss by: the summed weights of the positions that carry a loss. targets (B, T)
    with -1 where no loss is taken, loss_mask (B, T) or None -> 0-d float tensor."""
    weights = (targets != -1).float()
    if loss_mask is not None:
        weights = weights * loss_mask.float()
    return weights.sum()


def loss_scales(counts):
    """Per micro-batch of this rank, the factor on its mean loss that makes the gradients, once averaged over the
    ranks, those of the mean over the whole global batch: N * count / (sum of the counts of every micro-batch of
    every rank). counts: what each micro-batch's mean is taken over (loss_weight, kept rows, kept tokens).
    -> (scales, total). One process, one micro-batch: [1.0] exactly."""
    total = all_reduce_sum([sum(float(count) for count in counts)])[0]
    return [world_size() * float(count) / total if total > 0 else 0.0 for count in counts], total


def average_gradients(model):
    """All-reduce every parameter's gradient and divide by N: the plain form of what DDP does. A parameter with no
    gradient on this rank (it had no data this step) takes part with zeros, so that every rank makes the same calls."""
    if world_size() == 1:
        return
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= world_size()


def wrap(model):
    """The model to train through: DistributedDataParallel around it under torchrun, the model itself otherwise.
    Checkpoints, evaluation and the weight average keep using `model` (the wrapper's .module)."""
    if world_size() == 1:
        return model
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_gradients(train_model, is_last_micro_step):
    """Around a micro-step's forward and backward: DDP all-reduces only on the last micro-step (no_sync before it,
    where backward only adds into .grad). A plain model: nothing to do."""
    if isinstance(train_model, torch.nn.parallel.DistributedDataParallel) and not is_last_micro_step:
        return train_model.no_sync()
    return contextlib.nullcontext()
