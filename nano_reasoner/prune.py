"""
Pruning: remove the weights, or whole heads and neurons, that the model needs least, then let it recover briefly.

A trained network has many weights that barely matter. Pruning sets them to zero, or removes them, and checks what
it costs. Two kinds, and they buy different things:

**Unstructured: single weights, by magnitude** ("Learning both Weights and Connections for Efficient Neural
Networks", Han et al., arXiv 1506.02626). Rank every weight of the blocks' four matrices together by |w| and zero the
smallest `sparsity` share of them: one global threshold, so a layer whose weights are all small loses more of them.
Exactly round(sparsity x N) weights are removed (ties broken by position). The shapes stay the same, and a dense
matmul multiplies a zero as fast as any other number, so this saves no time and, stored densely, no bytes; it needs
sparse kernels at very high sparsity, or the 2:4 pattern of recent GPUs, to pay (benchmarks/bench_compress.py
measures it). Wanda ("A Simple and Effective Pruning Approach for Large Language Models", Sun et al., arXiv
2306.11695) ranks by |W_ij| x ||X_j|| (the weight times the norm of its input over calibration data) within each
output row instead; on this model it lost to plain magnitude, with and without recovery (docs/compress_log.md;
benchmarks/compress_sweep.py runs it).

**Structured: whole attention heads and MLP neurons** ("Are Sixteen Heads Really Better than One?", Michel et al.,
arXiv 1905.10650, for heads). Removing head h removes its rows of q, k, v in c_attn and its columns of c_proj;
removing MLP neuron i removes row i of c_fc and column i of c_proj. The matrices shrink and the model is a smaller
dense model (model.GPTConfig's n_head, head_dim, mlp_hidden), which is faster at once. A unit's importance is the
mean size of what it writes into the residual stream on calibration traces:

    head h:    E_t || W_proj[:, h] y_h(t) ||_2      (y_h: the head's attention output, W_proj[:, h]: its columns)
    neuron i:  E_t | a_i(t) | x || W_proj[:, i] ||_2   (a_i: the neuron's activation after GELU)

Every block keeps the same number of heads (the KV cache holds n_head heads in every layer) and of neurons: the
`fraction` of each is removed in every block, so the blocks' weights shrink by about that fraction.

**Recovery** ("Distilling the Knowledge in a Neural Network", Hinton et al., arXiv 1503.02531). A few hundred steps of
knowledge distillation from the unpruned model: on the tasks' own traces, the pruned student matches the teacher's
next-token distribution at every completion position,

    loss = mean over completion positions t of  KL(p_teacher(. | x_<t) || p_student(. | x_<t)),

so it relearns the function it lost rather than a new one. Unstructured pruning keeps its mask fixed during recovery:
the removed weights are set back to zero after every optimizer step.

Simplifications against the papers: one-shot pruning (Han et al. prune and retrain in several rounds); uniform
per-block shares for structured pruning (no search over which layers to cut more); the importance is measured once,
before any unit is removed; recovery is full fine-tuning at a constant learning rate (LLM-Pruner, arXiv
2305.11627, recovers with LoRA).
"""
from dataclasses import replace

import torch

from nano_reasoner.data import collate
from nano_reasoner.distill import kd_loss
from nano_reasoner.model import GPT


def prunable_weights(model):
    """{name: weight} of the blocks' four matrices (the embedding, tied to the head, and the norms are never pruned)."""
    return {name: param for name, param in model.named_parameters()
            if name.startswith("blocks.") and param.dim() == 2}


# ----------------------------------------------------------------------------------------------------------------------
# unstructured

@torch.no_grad()
def magnitude_masks(model, sparsity):
    """-> {name: bool mask, True = kept} removing exactly round(sparsity x N) of the N prunable weights, the
    smallest |w| across all blocks."""
    assert 0 <= sparsity < 1, "sparsity is the share removed, in [0, 1)"
    weights = prunable_weights(model)
    magnitudes = torch.cat([w.abs().flatten() for w in weights.values()])  # (N,)
    n_removed = round(sparsity * magnitudes.numel())
    is_kept = torch.ones_like(magnitudes, dtype=torch.bool)
    is_kept[magnitudes.topk(n_removed, largest=False).indices] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = is_kept[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


@torch.no_grad()
def apply_masks(model, masks):
    """Zero every weight whose mask is False, in place."""
    weights = prunable_weights(model)
    for name, mask in masks.items():
        weights[name].mul_(mask)


def sparsity_of(model):
    """Share of the prunable weights that are exactly zero."""
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


# ----------------------------------------------------------------------------------------------------------------------
# calibration: what each unit writes, measured on traces

def capture_inputs(model, names):
    """Register forward pre-hooks storing the input of each named module -> (captured dict, hook handles)."""
    captured, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(module, inputs, name=name):
            captured[name] = inputs[0].detach()
        handles.append(modules[name].register_forward_pre_hook(hook))
    return captured, handles


@torch.no_grad()
def unit_importance(model, batches):
    """
    The importance of every head and MLP neuron (module docstring), averaged over the real tokens of `batches`, a
    list of (inputs (B, T) long, is_real (B, T) bool). -> list over layers of (head scores (n_head,),
    neuron scores (mlp_hidden,)).
    """
    model.eval()
    n_head, head_dim = model.config.n_head, model.config.head_width
    names = [f"blocks.{i}.{part}.c_proj" for i in range(model.config.n_layer) for part in ("attn", "mlp")]
    captured, handles = capture_inputs(model, names)
    totals = [[torch.zeros(n_head), torch.zeros(model.config.mlp_width)] for _ in range(model.config.n_layer)]
    n_tokens = 0
    try:
        for inputs, is_real in batches:
            model(inputs)
            real = is_real.float()                                          # (B, T)
            n_tokens += int(is_real.sum())
            for layer, block in enumerate(model.blocks):
                y = captured[f"blocks.{layer}.attn.c_proj"]                 # (B, T, n_head * head_dim)
                B, T, _ = y.shape
                w_proj = block.attn.c_proj.weight.view(-1, n_head, head_dim)  # (C, n_head, head_dim)
                # what head h adds to the residual stream: W_proj[:, h] y_h, for every token
                written = torch.einsum("bthd,chd->bthc", y.view(B, T, n_head, head_dim), w_proj)  # (B, T, n_head, C)
                totals[layer][0] += (written.norm(dim=-1) * real[:, :, None]).sum(dim=(0, 1)).cpu()
                a = captured[f"blocks.{layer}.mlp.c_proj"]                  # (B, T, mlp_hidden)
                column_norms = block.mlp.c_proj.weight.norm(dim=0)          # (mlp_hidden,)
                totals[layer][1] += ((a.abs() * real[:, :, None]).sum(dim=(0, 1)) * column_norms).cpu()
    finally:
        for handle in handles:
            handle.remove()
    return [(heads / n_tokens, neurons / n_tokens) for heads, neurons in totals]


# ----------------------------------------------------------------------------------------------------------------------
# structured

@torch.no_grad()
def prune_structured(model, fraction, importance):
    """A new, smaller GPT without the `fraction` least important heads and MLP neurons of every block (at least one
    of each is kept). importance: unit_importance's output."""
    config = model.config
    n_head, head_dim = config.n_head, config.head_width
    heads_kept = max(1, round(n_head * (1 - fraction)))
    neurons_kept = max(1, round(config.mlp_width * (1 - fraction)))
    state = dict(model.state_dict())
    for layer, (head_scores, neuron_scores) in enumerate(importance):
        prefix = f"blocks.{layer}."
        heads = head_scores.topk(heads_kept).indices.sort().values                    # kept heads, in their order
        columns = (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()      # (heads_kept * head_dim,)
        width = n_head * head_dim                                                     # c_attn: [q; k; v] rows
        qkv_rows = torch.cat([columns, columns + width, columns + 2 * width])
        state[prefix + "attn.c_attn.weight"] = state[prefix + "attn.c_attn.weight"][qkv_rows]
        state[prefix + "attn.c_proj.weight"] = state[prefix + "attn.c_proj.weight"][:, columns]
        neurons = neuron_scores.topk(neurons_kept).indices.sort().values
        state[prefix + "mlp.c_fc.weight"] = state[prefix + "mlp.c_fc.weight"][neurons]
        state[prefix + "mlp.c_proj.weight"] = state[prefix + "mlp.c_proj.weight"][:, neurons]
    smaller = GPT(replace(config, n_head=heads_kept, head_dim=head_dim, mlp_hidden=neurons_kept))
    smaller.load_state_dict(state)
    return smaller.to(next(model.parameters()).device)


# ----------------------------------------------------------------------------------------------------------------------
# recovery

def distillation_loss(student_logits, teacher_logits, targets):
    """Mean over the positions with a target (!= -1) of KL(teacher || student) over the vocabulary; logits (B, T, V):
    distill.kd_loss at temperature 1."""
    return kd_loss(student_logits, teacher_logits, targets, temperature=1.0)


def recover(student, teacher, batch_list, pad_id, lr, masks=None, grad_clip=1.0, on_step=None):
    """One AdamW step of distillation_loss per batch (lists of data.Example), at a constant lr; the teacher is
    frozen. masks: re-applied after every step, so unstructured sparsity stays. -> the losses."""
    device = next(student.parameters()).device
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    losses = []
    for step, batch in enumerate(batch_list):
        inputs, targets = collate(batch, pad_id, device)   # (B, T) each
        with torch.no_grad():
            teacher_logits, _ = teacher(inputs)             # (B, T, V)
        student_logits, _ = student(inputs)
        loss = distillation_loss(student_logits, teacher_logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
        optimizer.step()
        if masks is not None:
            apply_masks(student, masks)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, loss.item())
    student.eval()
    return losses
