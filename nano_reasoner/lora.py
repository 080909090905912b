"""
LoRA: adapt a trained model by learning a small low-rank change to its weights, the weights themselves frozen.

Fine-tuning every weight to a new distribution (domain adaptation: here arith with three-digit operands, which the
policy never saw) moves all of them, and what the model knew drifts with them: it forgets. LoRA ("LoRA: Low-Rank
Adaptation of Large Language Models", Hu et al., arXiv 2106.09685) freezes each pretrained matrix W (d_out, d_in)
and learns only a change of rank r:

    h = W x + (alpha / r) * B A x          A: (r, d_in), B: (d_out, r), r << min(d_in, d_out)

B starts at zero, so at step 0 the adapted model is exactly the pretrained one, and A starts random (small, Gaussian),
so the gradient with respect to B is not zero and learning starts at once. alpha / r keeps the size of the change
about the same when r changes, so a learning rate found at one rank carries to another. For inference the change is
merged into the weight, W' = W + (alpha / r) B A: a plain model again, with no extra cost per token.

A rank-r change can only move W within r directions, so LoRA learns less than full fine-tuning and also forgets less
("LoRA Learns Less and Forgets Less", Biderman et al., arXiv 2405.09673): the trade the adaptation stage measures,
against full fine-tuning and full fine-tuning with replay of the original traces (data.replay_batches).

Which matrices: the four of every block (attention's c_attn and c_proj, the MLP's c_fc and c_proj) by default; the
paper adapts only the attention projections W_q and W_v of GPT-3. The tied embedding and the norm gains stay frozen.
Simplifications: no dropout on the LoRA path; the change is added in float32 like the rest of the model.
"""
import copy
import math

import torch
import torch.nn as nn

from nano_reasoner.model import GPT

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # the four matrices of a block


class LoRALinear(nn.Module):
    """A frozen nn.Linear (no bias) plus the trainable low-rank change (alpha / r) B A."""

    def __init__(self, base, rank, alpha, generator=None):
        super().__init__()
        assert isinstance(base, nn.Linear) and base.bias is None, "LoRA wraps the model's bias-free Linear layers"
        d_out, d_in = base.weight.shape
        self.base = base
        self.base.weight.requires_grad_(False)
        self.rank, self.scale = rank, alpha / rank
        # A ~ N(0, 1/d_in): A x has about the size of x's entries; B = 0: the change starts at exactly zero
        self.lora_A = nn.Parameter(torch.randn(rank, d_in, generator=generator) / math.sqrt(d_in))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(d_out, rank))                                         # (d_out, r)

    def forward(self, x):
        # h = W x + (alpha / r) B A x, without ever forming B A
        # BEGIN SOLUTION part 17
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale
        # END SOLUTION

    def merged_weight(self):
        """W' = W + (alpha / r) B A, (d_out, d_in)."""
        # BEGIN SOLUTION part 17
        return self.base.weight + self.scale * self.lora_B @ self.lora_A
        # END SOLUTION


def add_lora(model, rank, alpha, targets=TARGETS, seed=0):
    """Freeze every parameter of `model` and wrap the blocks' matrices named by `targets` (TARGETS) in LoRALinear,
    in place. -> the model; only the LoRA matrices require a gradient."""
    assert rank >= 1 and alpha > 0
    unknown = set(targets) - set(TARGETS)
    assert not unknown, f"LoRA targets {sorted(unknown)}: choose among {', '.join(TARGETS)}"
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for block in model.blocks:
        for target in targets:
            parent_name, name = target.split(".")
            parent = getattr(block, parent_name)
            wrapped = LoRALinear(getattr(parent, name), rank, alpha, generator)
            setattr(parent, name, wrapped.to(wrapped.base.weight.device))
    return model


def lora_parameters(model):
    """The trainable LoRA matrices, {name: parameter}."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


@torch.no_grad()
def merged_state_dict(model):
    """The state dict of the plain GPT that `model` computes: every LoRALinear's W + (alpha / r) B A written back
    under the name of the Linear it wraps. A model without LoRA gives its own state dict."""
    state = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        if name.endswith(".base.weight"):
            module = model.get_submodule(name[:-len(".base.weight")])
            name, tensor = name.replace(".base.weight", ".weight"), module.merged_weight()
        state[name] = tensor.detach().clone()
    return state


def merge(model):
    """A plain GPT (a new model, same device) with the LoRA changes merged into its weights: for inference."""
    merged = GPT(copy.deepcopy(model.config)).to(next(model.parameters()).device)
    merged.load_state_dict(merged_state_dict(model))
    return merged
