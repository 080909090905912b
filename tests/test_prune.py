"""Tests for nano_reasoner/prune.py: masks of the asked sparsity, structured pruning that removes exactly the chosen
units, the importance score, distillation, and a pruned model that samples and loads like any other."""
import copy

import pytest
import torch
import torch.nn.functional as F

from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import load_policy
from nano_reasoner.data import Example
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.prune import (apply_masks, distillation_loss, magnitude_masks, prunable_weights, prune_structured,
                                 recover, sparsity_of, unit_importance)
from nano_reasoner.sampling import generate, generate_reference

CONFIG = dict(vocab_size=32, block_size=64, n_layer=2, n_head=4, n_embd=32)


def tiny_gpt(seed=0):
    """A random tiny GPT with weights scaled up, so that logits are spread out and every unit matters a little."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**CONFIG))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(10.0)
    return model.eval()


def calibration(seed=0, B=3, T=12):
    tokens = torch.randint(1, CONFIG["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))
    is_real = torch.ones(B, T, dtype=torch.bool)
    is_real[0, 9:] = False  # a right-padded row: its last positions must not count
    return [(tokens, is_real)]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_magnitude_masks_remove_exactly_the_asked_share_smallest_first(sparsity):
    model = tiny_gpt()
    masks = magnitude_masks(model, sparsity)
    total = sum(mask.numel() for mask in masks.values())
    removed = sum(int((~mask).sum()) for mask in masks.values())
    assert removed == round(sparsity * total)
    weights = {name: weight.detach() for name, weight in prunable_weights(model).items()}
    largest_removed = max(float(weights[n][~m].abs().max()) for n, m in masks.items() if (~m).any())
    smallest_kept = min(float(weights[n][m].abs().min()) for n, m in masks.items())
    assert largest_removed <= smallest_kept, "one global threshold: nothing kept is smaller than anything removed"
    apply_masks(model, masks)
    assert sparsity_of(model) == pytest.approx(sparsity, abs=1 / total)
    assert model.wte.weight.ne(0).all(), "the embedding (and head) are never pruned"


def test_unit_importance_is_zero_for_a_head_or_neuron_that_writes_nothing():
    model = tiny_gpt()
    head_dim = CONFIG["n_embd"] // CONFIG["n_head"]
    with torch.no_grad():
        model.blocks[1].attn.c_proj.weight[:, 2 * head_dim:3 * head_dim] = 0  # head 2 of layer 1 writes nothing
        model.blocks[0].mlp.c_fc.weight[7] = 0                                 # neuron 7 of layer 0: gelu(0) = 0
    importance = unit_importance(model, calibration())
    assert importance[1][0][2] == 0 and (importance[1][0][[0, 1, 3]] > 0).all()
    assert importance[0][1][7] == 0 and (importance[0][1] > 0).sum() == 4 * CONFIG["n_embd"] - 1


def test_structured_pruning_equals_zeroing_the_removed_units():
    """Removing a head's rows and columns, or a neuron's, computes exactly what the full model computes with that
    unit's output columns set to zero: two routes to the same function."""
    model = tiny_gpt()
    head_dim = CONFIG["n_embd"] // CONFIG["n_head"]
    importance = [(torch.tensor([4.0, 1.0, 3.0, 2.0]), torch.arange(128.0)),         # layer 0: drop heads 1, 3
                  (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.arange(128.0).flip(0))]  # layer 1: drop heads 0, 1
    pruned = prune_structured(model, 0.5, importance)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for layer, heads, neurons in [(0, [1, 3], range(64)), (1, [0, 1], range(64, 128))]:
            for head in heads:
                zeroed.blocks[layer].attn.c_proj.weight[:, head * head_dim:(head + 1) * head_dim] = 0
            zeroed.blocks[layer].mlp.c_proj.weight[:, list(neurons)] = 0
    idx = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(pruned(idx)[0], zeroed(idx)[0], atol=1e-4)


def test_a_structured_pruned_model_has_smaller_shapes_and_samples_like_any_other(tmp_path):
    model = tiny_gpt()
    pruned = prune_structured(model, 0.5, unit_importance(model, calibration()))
    block = pruned.blocks[0]
    head_dim = CONFIG["n_embd"] // CONFIG["n_head"]
    assert (pruned.config.n_head, pruned.config.head_width, pruned.config.mlp_width) == (2, head_dim, 64)
    assert block.attn.c_attn.weight.shape == (3 * 2 * head_dim, 32) and block.attn.c_proj.weight.shape == (32, 16)
    assert block.mlp.c_fc.weight.shape == (64, 32) and block.mlp.c_proj.weight.shape == (32, 64)
    blocks_before = sum(w.numel() for w in prunable_weights(model).values())
    blocks_after = sum(w.numel() for w in prunable_weights(pruned).values())
    assert blocks_after == blocks_before // 2
    # the KV-cached batched sampler still agrees with the uncached reference, token for token
    prompts = [[1, 5, 9], [2, 2]]
    sampled = generate(pruned, prompts, 10, temperature=0.0)
    for row, prompt in enumerate(prompts):
        assert sampled.row_tokens(row) == generate_reference(pruned, prompt, 10)
    # and it goes through a checkpoint like any other policy
    from nano_reasoner import tasks
    from nano_reasoner.tokenizer import train_tokenizer
    tokenizer = train_tokenizer([tasks.full_trace(p) for p in tasks.generate("arith", 60, seed=0)],
                                str(tmp_path / "tok.model"), vocab_size=32)
    path = str(tmp_path / "pruned.pt")
    save_checkpoint(path, kind="policy", model_state=pruned.state_dict(), model_config=vars(pruned.config),
                    tokenizer_bytes=tokenizer.model_bytes, step=0)
    loaded, _, _ = load_policy(path, torch.device("cpu"))
    idx = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(loaded(idx)[0], pruned(idx)[0])


def test_distillation_loss_is_the_kl_on_scored_positions_only():
    teacher = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    student = torch.tensor([[[0.0, 1.0, 0.0], [5.0, -5.0, 0.0]]])
    targets = torch.tensor([[1, -1]])                               # only the first position is scored
    p, log_p, log_q = F.softmax(teacher[0, 0], -1), F.log_softmax(teacher[0, 0], -1), F.log_softmax(student[0, 0], -1)
    assert distillation_loss(student, teacher, targets).item() == pytest.approx(float((p * (log_p - log_q)).sum()))
    assert distillation_loss(teacher, teacher, torch.tensor([[1, 2]])).item() == pytest.approx(0.0, abs=1e-7)


def test_recovery_keeps_the_mask_and_brings_the_student_closer_to_the_teacher():
    teacher = tiny_gpt()
    student = copy.deepcopy(teacher)
    masks = magnitude_masks(student, 0.6)
    apply_masks(student, masks)
    generator = torch.Generator().manual_seed(4)
    examples = [Example(torch.randint(1, 32, (14,), generator=generator).tolist(), 4) for _ in range(8)]
    losses = recover(student, teacher, [examples] * 8, pad_id=0, lr=3e-3, masks=masks)
    assert losses[-1] < 0.5 * losses[0]
    assert sparsity_of(student) == pytest.approx(0.6, abs=1e-3)
    for name, weight in prunable_weights(student).items():
        assert torch.all(weight[~masks[name]] == 0), name
