"""
Weight-only quantization: store each weight matrix as small integers and a few float scales, and turn them back into
floats when the layer runs.

A trained weight matrix W (out_features x in_features) holds 32-bit floats, but a layer does not need that precision:
its output y = W x changes little if every weight moves by a small amount. Quantization maps each weight onto a grid
of 2^bits evenly spaced values, keeps the grid's position and spacing (the scale) in float, and stores only the
integer index of each weight. Only the weights are quantized; activations, the KV cache and every matmul stay in
float ("weight-only", W8A16 / W4A16 in the notation of "Quantization Hurts Reasoning?", Liu et al., arXiv
2504.04823, which finds both nearly lossless on reasoning models and lower bits hurting harder tasks most).

Two schemes, the two that gpt-fast ("Accelerating Generative AI with PyTorch II: GPT, Fast", PyTorch blog, 2023)
runs in a few dozen lines:

**int8, symmetric, one scale per output channel.** Row i of W gets the scale s_i = max_j |W_ij| / 127, and

    q_ij = round(W_ij / s_i)  in [-127, 127],    W_hat_ij = s_i * q_ij.

Round-to-nearest moves a weight by at most half a grid step, and |W_ij / s_i| <= 127 never needs clamping, so

    |W_ij - W_hat_ij| <= s_i / 2 = max_j |W_ij| / 254,    and for the output    |y_i - y_hat_i| <= (s_i / 2) ||x||_1.

The layer multiplies the scales back into the weight and runs the float matmul. Applying them to the output instead,
y_i = s_i (q x)_i (gpt-fast does), is the same sum, but it multiplies every output, 64 x 256 x 512 numbers in a
prefill against the weight's 128 x 512; on this CPU it was the slower of the two at every batch size measured.

**int4, group-wise, a scale and an offset per group of G input weights.** One large weight in a row stretches that
row's grid for every other weight, and 16 levels across a 512-wide row are too coarse, so every G consecutive
weights of a row (a group) get their own grid from their own minimum and maximum:

    lo = min(group),  s = (max(group) - lo) / 15,  q = round((w - lo) / s)  in [0, 15],  w_hat = lo + s * q,

    |w - w_hat| <= s / 2 = (max(group) - min(group)) / 30.

The grid is asymmetric (an offset, not a zero at 0), so a group of all-positive weights uses all 16 levels. Two 4-bit
values are packed into one byte: the even column in the low four bits, the odd column in the high four. The same
group-wise rule at b bits (2^b - 1 steps) bounds the error by (max - min) / (2 (2^b - 1)); benchmarks/compress_sweep.py
runs it at 2 and 3 bits to show where it breaks, without packing (those are not a checkpoint format).

Storage per weight: int8 8 + 32 / in_features bits (one float32 scale per row); int4 4 + 64 / G bits (a float32 scale
and offset per group): 6 bits at G = 32, 5 at G = 64, 4.5 at G = 128.

What is quantized: the four matrices of every block (attention c_attn, c_proj; MLP c_fc, c_proj), 99% of the weights
of the tiny model. The token embedding, which is also the output head (tied), and the RMSNorm gains stay in float:
they are 1% of the weights here, and the head's errors land on the logits directly.

Simplifications: round-to-nearest with no calibration data (GPTQ, arXiv 2210.17323, and AWQ, arXiv 2306.00978, pick
the integers to minimise the layer's output error instead); float32 scales (gpt-fast keeps them in bf16); the
weight is dequantized in PyTorch at every call, with no fused integer kernel. That last one decides the speed: a
GPU at batch 1 is memory-bound, and reading 1 byte per weight instead of 4 is what makes gpt-fast faster; here the
dequantized copy costs time on top of the float matmul (benchmarks/bench_compress.py measures it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMES = ("int8", "int4")
INT8_MAX = 127
TINY = 1e-12  # the scale of an all-zero row or group, instead of 0: q = 0 and the weight comes back exactly 0


# ----------------------------------------------------------------------------------------------------------------------
# int8: symmetric, per output channel

def quantize_int8(weight):
    """(out, in) float weight -> q (out, in) int8, scale (out, 1) float32."""
    assert weight.dim() == 2, f"a weight matrix is (out, in), got {tuple(weight.shape)}"
    # BEGIN SOLUTION part 15
    weight = weight.float()
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=TINY) / INT8_MAX  # s_i = max_j |W_ij| / 127, (out, 1)
    q = torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)  # (out, in)
    return q, scale
    # END SOLUTION


def dequantize_int8(q, scale):
    """q (out, in) int8, scale (out, 1) -> W_hat (out, in) float32."""
    # BEGIN SOLUTION part 15
    return q.float() * scale
    # END SOLUTION


# ----------------------------------------------------------------------------------------------------------------------
# int4 (and any b <= 8 bits): asymmetric, per group of G input weights

def check_group_size(in_features, group_size):
    """ValueError unless groups of group_size tile a row of in_features and pair up for packing."""
    if group_size < 2 or group_size % 2 or in_features % group_size:
        fitting = [size for size in (32, 16, 8, 4, 2) if in_features % size == 0]
        hint = f"an even divisor of {in_features}, such as {fitting[0]}" if fitting else "rows of an even width"
        raise ValueError(f"groups of {group_size} do not tile a row of {in_features} weights in whole groups of an "
                         f"even size: int4 needs {hint}")


def quantize_groupwise(weight, group_size, bits=4):
    """(out, in) float weight -> q (out, in) uint8 in [0, 2^bits - 1], scale (out, in / G), offset (out, in / G)."""
    assert weight.dim() == 2 and 1 <= bits <= 8
    out_features, in_features = weight.shape
    check_group_size(in_features, group_size)
    steps = 2 ** bits - 1
    groups = weight.float().view(out_features, in_features // group_size, group_size)  # (out, in / G, G)
    low = groups.amin(dim=2, keepdim=True)                                                # (out, in / G, 1)
    scale = ((groups.amax(dim=2, keepdim=True) - low) / steps).clamp(min=TINY)           # s = (max - min) / steps
    q = torch.round((groups - low) / scale).clamp(0, steps).to(torch.uint8)              # (out, in / G, G)
    return q.view(out_features, in_features), scale.squeeze(2), low.squeeze(2)


def dequantize_groupwise(q, scale, offset):
    """q (out, in) integers, scale and offset (out, in / G) -> W_hat (out, in) float32: w_hat = lo + s * q."""
    out_features, in_features = q.shape
    groups = q.float().view(out_features, scale.shape[1], -1)  # (out, in / G, G)
    return (offset[:, :, None] + scale[:, :, None] * groups).view(out_features, in_features)


def pack_int4(q):
    """(..., in) uint8 values in [0, 15] -> (..., in / 2) uint8: even columns in the low nibble, odd in the high."""
    assert q.dtype == torch.uint8 and q.shape[-1] % 2 == 0
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed):
    """(..., in / 2) uint8 -> (..., in) uint8 in [0, 15], the inverse of pack_int4."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).flatten(-2)  # (..., in / 2, 2) -> (..., in): low, high, low, high...


# ----------------------------------------------------------------------------------------------------------------------
# the bounds of the module docstring

def error_bound(weight, scheme, group_size=None, bits=4):
    """(out, in) float weight -> (out, in): the most that round-to-nearest may move each weight under `scheme`
    ("int8", or "groupwise" at `bits`, int4 being bits=4)."""
    weight = weight.float()
    if scheme == "int8":
        return (weight.abs().amax(dim=1, keepdim=True) / (2 * INT8_MAX)).expand_as(weight)  # s_i / 2
    out_features, in_features = weight.shape
    groups = weight.view(out_features, in_features // group_size, group_size)
    spread = groups.amax(dim=2, keepdim=True) - groups.amin(dim=2, keepdim=True)     # (out, in / G, 1)
    return (spread / (2 * (2 ** bits - 1))).expand_as(groups).reshape(out_features, in_features)  # s / 2


def bits_per_weight(scheme, in_features, group_size=None):
    """Storage bits per weight, scales and offsets (float32) included."""
    if scheme == "int8":
        return 8 + 32 / in_features
    return 4 + 2 * 32 / group_size


# ----------------------------------------------------------------------------------------------------------------------
# the layer and the model

class QuantizedLinear(nn.Module):
    """
    Linear(in_features, out_features, bias=False) with its weight stored quantized, as buffers (so they are saved in
    the state_dict, and no optimizer ever sees them): int8 weight_q (out, in) and scale (out, 1); or int4 weight_q
    (out, in / 2) packed, scale and offset (out, in / G). forward dequantizes and runs the float matmul.
    """

    def __init__(self, weight, scheme, group_size=None):
        super().__init__()
        assert scheme in SCHEMES, f"unknown scheme {scheme!r}: choose from {SCHEMES}"
        self.out_features, self.in_features = weight.shape
        self.scheme, self.group_size = scheme, group_size
        self.weight_count = weight.numel()  # GPT.num_params counts these: they still multiply
        if scheme == "int8":
            q, scale = quantize_int8(weight)
            self.register_buffer("weight_q", q)
            self.register_buffer("scale", scale)
        else:
            q, scale, offset = quantize_groupwise(weight, group_size, bits=4)
            self.register_buffer("weight_q", pack_int4(q))
            self.register_buffer("scale", scale)
            self.register_buffer("offset", offset)

    def dequantized_weight(self):
        """-> W_hat (out, in) float32."""
        if self.scheme == "int8":
            return dequantize_int8(self.weight_q, self.scale)
        return dequantize_groupwise(unpack_int4(self.weight_q), self.scale, self.offset)

    def forward(self, x):
        return F.linear(x, self.dequantized_weight().to(x.dtype))

    def extra_repr(self):
        group = f", group_size={self.group_size}" if self.scheme == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{group}"


def quantized_layers(model):
    """The (parent module, attribute name) of every matrix that quantization replaces: the blocks' four Linears."""
    return [(parent, name) for block in model.blocks for parent in (block.attn, block.mlp)
            for name, child in parent.named_children() if isinstance(child, (nn.Linear, QuantizedLinear))]


def quantize_model(model, scheme, group_size=None):
    """Replace the blocks' Linear layers of a float GPT by QuantizedLinear, in place; returns the model.
    ValueError (nothing replaced) when the scheme is unknown or the group size does not tile every layer's rows."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization {scheme!r}: choose from {', '.join(SCHEMES)}")
    layers = quantized_layers(model)
    if any(isinstance(getattr(parent, name), QuantizedLinear) for parent, name in layers):
        raise ValueError("the model is already quantized")
    if scheme == "int4":
        for parent, name in layers:
            check_group_size(getattr(parent, name).in_features, group_size)
    for parent, name in layers:
        linear = getattr(parent, name)
        quantized = QuantizedLinear(linear.weight.detach(), scheme, group_size).to(linear.weight.device)
        setattr(parent, name, quantized)
    return model
