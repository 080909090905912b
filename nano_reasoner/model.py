"""
The GPT: a decoder-only transformer that predicts the next token.

Every stage of nano-reasoner runs this one network. Pretraining and SFT teach it to continue reasoning traces, GRPO
sharpens it with rewards, and with a scalar head on top it becomes a verifier (a PRM or ORM) that scores each
position. The architecture is the GPT of "Language Models are Unsupervised Multitask Learners" (Radford et al. 2019)
with the small modern changes that LLaMA ("LLaMA: Open and Efficient Foundation Language Models", arXiv 2302.13971)
and DeepSeek models use:

- **Pre-norm residual blocks.** x = x + attn(norm(x)); x = x + mlp(norm(x)). The residual stream is never normalised
  itself, so gradients flow straight from the loss to the embedding.
- **RMSNorm** ("Root Mean Square Layer Normalization", Zhang & Sennrich, arXiv 1910.07467): y = x / rms(x) * g,
  with rms(x) = sqrt(mean(x^2) + eps). LayerNorm without the mean subtraction and without a bias.
- **RoPE** ("RoFormer: Enhanced Transformer with Rotary Position Embedding", Su et al., arXiv 2104.09864): no position
  embedding is added to the tokens. Instead each query and key is rotated by an angle proportional to its position,
  so the score q_m . k_n depends only on the content and on the offset m - n. Positions are an explicit input
  (`positions`, shape (B, T)): a row padded on the left starts counting at 0 at its first real token, so it runs
  the very same computation as the row unpadded, and it never reaches past the block_size rows of the RoPE table.
- **Causal self-attention** through `torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel.
- **Tied embeddings**: the output layer reuses the token embedding matrix ("Using the Output Embedding to Improve
  Language Models", Press & Wolf, arXiv 1608.05859).
- No biases anywhere; weights start at N(0, 0.02) and the projections that write into the residual stream at
  N(0, 0.02 / sqrt(2 * n_layer)), so the stream's variance does not grow with depth (GPT-2 paper, nanoGPT).

Two extras for the later stages:

- **KVCache**: during generation the keys and values of past tokens never change, so they are kept in a
  preallocated buffer and each new token attends to them instead of recomputing the whole sequence. A forward call
  with a cache appends its chunk of T tokens (T > 1 for the prompt "prefill", T = 1 per decode step) and attends over
  everything cached so far. `select_rows` keeps some rows of the batch: sampling uses it to drop finished rows and to
  fork one prompt into N samples.
- **Scalar head** (`has_scalar_head`): a Linear(n_embd, 1) read off the final hidden state at every position, for
  reward models and value estimates.

Structured pruning (prune.py) leaves a model with fewer heads (of the same head_dim) and fewer MLP neurons per block;
the config records them (`head_dim`, `mlp_hidden`), so such a model is built, cached and sampled like any other.

Padding. `attn_mask` (B, T_keys) says which keys are real tokens (False for left padding). A real query never attends
to a pad key. A pad query attends only to itself: its output is never used, but it must stay finite. Some attention
kernels (and older PyTorch versions) return NaN for a query whose every key is masked, and a NaN that reaches a key
or value poisons every query that reads it, even with weight 0 (0 * NaN = NaN).

Simplifications against the papers: no dropout (the datasets are generated, fresh every epoch), the RoPE pairs
dimension i with i + head_dim/2 instead of neighbours 2i, 2i+1 (the same rotation up to a fixed permutation of
dimensions, as in GPT-NeoX and LLaMA code), and a plain GELU MLP instead of SwiGLU.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 128
    block_size: int = 256           # the longest sequence the model ever sees (prompt + generated tokens)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    has_scalar_head: bool = False   # a Linear(n_embd, 1) head for reward models / values (PRM, ORM)
    # structured pruning (prune.py) keeps fewer heads of the same size and fewer MLP neurons than the defaults
    head_dim: int | None = None     # width of one head (None: n_embd // n_head)
    mlp_hidden: int | None = None   # neurons of every MLP (None: 4 * n_embd)

    @property
    def head_width(self):
        return self.head_dim or self.n_embd // self.n_head

    @property
    def mlp_width(self):
        return self.mlp_hidden or 4 * self.n_embd


class KVCache:
    """
    Keys and values of every token seen so far, for all layers, in one preallocated buffer.

    keys, values: (n_layer, B, n_head, max_len, head_dim). Slots [0, pos) hold tokens already pushed through the
    model; a forward call with T new tokens writes slots [pos, pos + T) in every layer, then `advance(T)` moves pos.
    All rows share pos: with left padding the prompts end in the same slot, so every row writes the same column.
    """

    def __init__(self, config, batch_size, max_len, device, dtype):
        assert max_len <= config.block_size, f"cache of {max_len} slots exceeds block_size {config.block_size}"
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_width)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    @property
    def batch_size(self):
        return self.keys.shape[1]

    def append(self, layer, new_keys, new_values):
        """Write this chunk's (B, n_head, T, head_dim) keys and values at pos; return all keys and values so far."""
        # BEGIN SOLUTION part 3
        T = new_keys.shape[2]
        assert self.pos + T <= self.max_len, f"KV cache full: {self.pos} + {T} > {self.max_len} slots"
        self.keys[layer, :, :, self.pos:self.pos + T] = new_keys
        self.values[layer, :, :, self.pos:self.pos + T] = new_values
        return self.keys[layer, :, :, :self.pos + T], self.values[layer, :, :, :self.pos + T]
        # END SOLUTION

    def advance(self, num_tokens):
        self.pos += num_tokens

    def select_rows(self, row_index):
        """
        Keep rows `row_index` (a 1-D LongTensor), in that order. Dropping indices removes finished rows; repeating
        them (torch.arange(B).repeat_interleave(N)) forks every row into N copies that share the same past.
        """
        assert row_index.dim() == 1 and row_index.dtype == torch.long
        # only slots [0, pos) hold anything: copy those into fresh buffers rather than the whole max_len
        shape = (self.keys.shape[0], row_index.numel()) + self.keys.shape[2:]
        keys, values = self.keys.new_zeros(shape), self.values.new_zeros(shape)
        keys[:, :, :, :self.pos] = self.keys[:, :, :, :self.pos].index_select(1, row_index)
        values[:, :, :, :self.pos] = self.values[:, :, :, :self.pos].index_select(1, row_index)
        self.keys, self.values = keys, values


def positions_from_mask(attn_mask):
    """
    RoPE positions for a (B, T) "is a real token" mask: 0 at each row's first real token, then counting up.
    Pad slots get 0 before the first real token and repeat the last position after the last one; any value would
    do, since no real query reads a pad key.
    """
    assert attn_mask.dim() == 2 and attn_mask.dtype == torch.bool
    return (attn_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)


def build_attention_mask(attn_mask, num_queries, num_past, device):
    """
    Which keys each query may read, as a boolean mask for scaled_dot_product_attention (True = attend).

    Queries sit in slots [num_past, num_past + num_queries); keys in slots [0, num_past + num_queries).
    A query reads key k if k is not in its future and (k is a real token or k is the query itself).
    Returns (T, T_keys), broadcast over batch and heads, without padding; (B, 1, T, T_keys) with it.
    """
    T = num_queries
    num_keys = num_past + T
    query_slot = torch.arange(num_past, num_keys, device=device)  # (T,)
    key_slot = torch.arange(num_keys, device=device)              # (T_keys,)
    is_past_or_self = key_slot[None, :] <= query_slot[:, None]   # (T, T_keys)
    if attn_mask is None:
        return is_past_or_self
    assert attn_mask.shape[1] == num_keys, f"attn_mask covers {attn_mask.shape[1]} keys, expected {num_keys}"
    is_self = key_slot[None, :] == query_slot[:, None]            # (T, T_keys)
    allowed = is_past_or_self[None] & (attn_mask[:, None, :] | is_self[None])  # (B, T, T_keys)
    return allowed[:, None]                                       # (B, 1, T, T_keys)


def rope_tables(head_dim, max_positions, base=10000.0):
    """cos and sin of angle(m, i) = m * base^(-2i / head_dim), each (max_positions, head_dim / 2)."""
    assert head_dim % 2 == 0, "RoPE rotates pairs of dimensions, head_dim must be even"
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim/2,)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)   # (max_positions, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i + head_dim/2}) of x (B, n_head, T, head_dim); cos, sin are (B, T, head_dim/2)."""
    # BEGIN SOLUTION part 2
    half = x.shape[-1] // 2
    cos = cos[:, None].to(x.dtype)  # (B, 1, T, head_dim/2), shared by all heads
    sin = sin[:, None].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    # [x1; x2] -> [x1 cos - x2 sin; x1 sin + x2 cos], a 2-D rotation of each pair
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    # END SOLUTION


class RMSNorm(nn.Module):
    def __init__(self, n_embd, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.eps = eps

    def forward(self, x):
        # y = x / sqrt(mean(x^2) + eps) * g, computed in float32 so bf16 activations do not lose the scale
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (normed * self.weight).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.head_dim is not None or config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.head_dim = config.head_width
        heads_width = self.n_head * self.head_dim  # n_embd, unless structured pruning removed heads
        self.c_attn = nn.Linear(config.n_embd, 3 * heads_width, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(heads_width, config.n_embd, bias=False)

    def forward(self, x, cos, sin, mask, kv_cache, layer):
        B, T, C = x.shape
        heads_width = self.n_head * self.head_dim
        q, k, v = self.c_attn(x).split(heads_width, dim=2)             # each (B, T, n_head * head_dim)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)   # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # BEGIN SOLUTION part 3
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v)                        # (B, n_head, T_keys, head_dim)
        if mask is None:  # no padding, no cache: the fused kernel builds the causal mask itself
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # END SOLUTION
        y = y.transpose(1, 2).contiguous().view(B, T, heads_width)     # heads side by side again
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_width, bias=False)
        self.c_proj = nn.Linear(config.mlp_width, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm_attn = RMSNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.norm_mlp = RMSNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, kv_cache, layer):
        x = x + self.attn(self.norm_attn(x), cos, sin, mask, kv_cache, layer)
        x = x + self.mlp(self.norm_mlp(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix reads tokens in and writes logits out
        self.scalar_head = nn.Linear(config.n_embd, 1, bias=False) if config.has_scalar_head else None
        cos, sin = rope_tables(config.head_width, config.block_size)
        # not persistent: recomputed from the config, so they never take space in a checkpoint
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, head_dim/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)  # two residual writes per block
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameter count; the tied embedding counts once. non_embedding=True leaves it out (as in scaling laws).
        Weights that quantize.py stores as integers (buffers, not parameters) count too: they still multiply."""
        total = sum(p.numel() for p in self.parameters())
        total += sum(module.weight_count for module in self.modules() if hasattr(module, "weight_count"))
        return total - self.wte.weight.numel() if non_embedding else total

    def _trunk(self, idx, positions, attn_mask, kv_cache):
        """Embed, run every block, final norm: (B, T) token ids -> (B, T, C) hidden states."""
        B, T = idx.shape
        num_past = kv_cache.pos if kv_cache is not None else 0
        block_size = self.config.block_size
        assert num_past + T <= block_size, f"{num_past + T} tokens exceed block_size {block_size}"
        if attn_mask is not None:
            assert attn_mask.shape == (B, num_past + T), f"attn_mask {tuple(attn_mask.shape)} != {(B, num_past + T)}"
        if kv_cache is not None:
            assert kv_cache.batch_size == B, f"cache holds {kv_cache.batch_size} rows, idx has {B}"
        if positions is None:
            if attn_mask is not None:
                positions = positions_from_mask(attn_mask)[:, num_past:]   # (B, T)
            else:
                positions = torch.arange(num_past, num_past + T, device=idx.device).expand(B, T)
        assert positions.shape == (B, T), f"positions {tuple(positions.shape)} != {(B, T)}"
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, head_dim/2) each
        if attn_mask is None and kv_cache is None:
            mask = None  # plain causal attention
        else:
            mask = build_attention_mask(attn_mask, T, num_past, idx.device)  # (T, T_keys) or (B, 1, T, T_keys)
        x = self.wte(idx)  # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm_f(x)  # (B, T, C)

    def forward(self, idx, targets=None, *, positions=None, attn_mask=None, kv_cache=None, loss_mask=None):
        """
        idx (B, T) token ids. Returns (logits (B, T, V), loss or None).

        positions (B, T): RoPE positions; default is counting from 0 at the first real token (from attn_mask), or
            from kv_cache.pos when there is a cache and no mask.
        attn_mask (B, T_keys) bool: True where the key is a real token. T_keys = T without a cache and
            kv_cache.pos + T with one (the mask covers cached and new tokens). Causality is added inside.
        kv_cache: append this chunk's keys and values at kv_cache.pos and attend over everything cached so far.
        targets (B, T): next-token ids, -1 where no loss is taken.
        loss_mask (B, T) float: per-position weights; loss = sum(w * ce) / sum(w) over positions with targets != -1.
        """
        assert idx.dim() == 2 and idx.dtype == torch.long, f"idx must be (B, T) long: {idx.dtype}"
        hidden = self._trunk(idx, positions, attn_mask, kv_cache)  # (B, T, C)
        logits = self.lm_head(hidden)                               # (B, T, V)
        if targets is None:
            return logits, None
        assert targets.shape == idx.shape, f"targets {tuple(targets.shape)} != idx {tuple(idx.shape)}"
        token_losses = F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none"
        ).view_as(targets)  # (B, T), 0 where targets == -1
        weights = (targets != -1).float()
        if loss_mask is not None:
            assert loss_mask.shape == targets.shape, f"loss_mask {tuple(loss_mask.shape)} != {tuple(targets.shape)}"
            weights = weights * loss_mask.float()
        loss = (token_losses * weights).sum() / weights.sum().clamp(min=1e-8)
        return logits, loss

    def hidden_states(self, idx, *, positions=None, attn_mask=None):
        """(B, T) token ids -> (B, T, C) hidden states after the final RMSNorm (no cache)."""
        assert idx.dim() == 2 and idx.dtype == torch.long
        return self._trunk(idx, positions, attn_mask, kv_cache=None)

    def scalar_scores(self, idx, *, attn_mask=None):
        """(B, T) token ids -> (B, T) raw (pre-sigmoid) scalar head outputs at every position."""
        assert self.scalar_head is not None, "this model was built with has_scalar_head=False"
        hidden = self.hidden_states(idx, attn_mask=attn_mask)  # (B, T, C)
        return self.scalar_head(hidden).squeeze(-1)            # (B, T)


def configure_optimizer(model, lr, weight_decay, betas):
    """
    AdamW ("Decoupled Weight Decay Regularization", Loshchilov & Hutter, arXiv 1711.05101) with weight decay only
    on 2-D weights (matmuls and the embedding). Norm gains are left alone: pulling them toward 0 would shrink
    the signal rather than regularise.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    is_cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=is_cuda)


@torch.no_grad()
def update_average(averaged, model, decay):
    """One step of a weight average (Polyak & Juditsky, 1992; train_pretrain.py's docstring says why):
    ema <- decay * ema + (1 - decay) * weights, in place; the training weights are left alone."""
    for average, weight in zip(averaged.parameters(), model.parameters()):
        average.lerp_(weight, 1 - decay)  # average + (1 - decay) * (weight - average)


@torch.no_grad()
def grow_vocab(model, vocab_size):
    """A copy of `model` whose vocabulary has `vocab_size` tokens: the old rows of the tied embedding are kept, each
    new row starts at the mean of the old ones. A new token then gets about the average logit instead of a random
    one, so adding it leaves the model's predictions nearly as they were ("Initializing New Word Embeddings for
    Pretrained Language Models", Hewitt 2021). Used when a fine-tuning stage adds tokens (tokenizer.add_symbols)."""
    old_size = model.config.vocab_size
    assert vocab_size >= old_size, f"cannot shrink the vocabulary from {old_size} to {vocab_size}"
    grown = GPT(GPTConfig(**dict(vars(model.config), vocab_size=vocab_size))).to(model.wte.weight.device)
    state = model.state_dict()
    old_embedding = state.pop("wte.weight")  # (old V, C)
    state.pop("lm_head.weight")              # the same matrix (tied)
    new_rows = old_embedding.mean(dim=0, keepdim=True).expand(vocab_size - old_size, -1)  # (new V - old V, C)
    state["wte.weight"] = torch.cat([old_embedding, new_rows])
    state["lm_head.weight"] = state["wte.weight"]
    grown.load_state_dict(state)
    return grown
