"""Tests for nano_reasoner/quantize.py: the error bounds, exact int4 packing, the layer, the model and its checkpoint."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from nano_reasoner.checkpoint import save_checkpoint
from nano_reasoner.cli import UserError, load_policy
from nano_reasoner.model import GPT, GPTConfig
from nano_reasoner.quantize import (QuantizedLinear, check_group_size, dequantize_groupwise, dequantize_int8,
                                    error_bound, pack_int4, quantize_groupwise, quantize_int8, quantize_model,
                                    unpack_int4)
from nano_reasoner.sampling import generate

FLOAT_SLACK = 1e-6  # float32 rounding in w / s and s * q, far below any grid step here


def weights_with_outliers(seed, out_features=48, in_features=128):
    """Gaussian weights with a few large ones and an all-zero row: what makes per-row and per-group scales differ."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.05
    weight[3, 17] = 1.5
    weight[7, 100] = -2.0
    weight[11] = 0.0
    return weight


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_error_is_within_half_a_step_of_each_rows_grid(seed):
    weight = weights_with_outliers(seed)
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and scale.shape == (weight.shape[0], 1)
    error = (weight - dequantize_int8(q, scale)).abs()
    bound = error_bound(weight, "int8")
    assert torch.all(error <= bound + FLOAT_SLACK)
    assert torch.allclose(bound[:, 0], weight.abs().amax(dim=1) / 254)  # s_i / 2 = max_j |W_ij| / 254
    nonzero_rows = weight.abs().amax(dim=1) > 0
    assert torch.all(q[nonzero_rows].abs().amax(dim=1) == 127), "each row's largest weight sits on the grid's end"


@pytest.mark.parametrize("bits, group_size", [(4, 32), (4, 128), (3, 32), (2, 64)])
def test_groupwise_error_is_within_half_a_step_of_each_groups_grid(bits, group_size):
    weight = weights_with_outliers(bits + group_size)
    q, scale, offset = quantize_groupwise(weight, group_size, bits)
    assert q.max() <= 2 ** bits - 1 and scale.shape == offset.shape == (48, 128 // group_size)
    error = (weight - dequantize_groupwise(q, scale, offset)).abs()
    assert torch.all(error <= error_bound(weight, "groupwise", group_size, bits) + FLOAT_SLACK)


def test_smaller_groups_and_more_bits_give_smaller_errors():
    weight = weights_with_outliers(5)

    def mean_error(group_size, bits):
        return (weight - dequantize_groupwise(*quantize_groupwise(weight, group_size, bits))).abs().mean()
    assert mean_error(32, 4) < mean_error(128, 4) < mean_error(128, 3) < mean_error(128, 2)
    q, scale = quantize_int8(weight)
    assert (weight - dequantize_int8(q, scale)).abs().mean() < mean_error(32, 4)


def test_all_zero_rows_and_groups_come_back_exactly_zero():
    weight = torch.zeros(4, 64)
    assert torch.equal(dequantize_int8(*quantize_int8(weight)), weight)
    assert torch.equal(dequantize_groupwise(*quantize_groupwise(weight, 32)), weight)


def test_int4_packing_round_trips_exactly():
    every_pair = torch.tensor([[low, high] for low in range(16) for high in range(16)], dtype=torch.uint8)  # (256, 2)
    packed = pack_int4(every_pair)
    assert packed.shape == (256, 1) and packed.dtype == torch.uint8
    assert sorted(packed.flatten().tolist()) == list(range(256)), "each pair of nibbles is its own byte"
    assert pack_int4(torch.tensor([[1, 2]], dtype=torch.uint8)).item() == 0x21  # even column low, odd column high
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (7, 64), generator=generator, dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    assert torch.equal(unpack_int4(pack_int4(every_pair)), every_pair)


def test_group_size_must_tile_the_rows_in_even_groups():
    check_group_size(128, 32)
    for group_size in (48, 3, 256):
        with pytest.raises(ValueError, match="do not tile a row of 128 weights"):
            check_group_size(128, group_size)


@pytest.mark.parametrize("scheme, group_size", [("int8", None), ("int4", 32)])
def test_quantized_linear_computes_with_its_dequantized_weight(scheme, group_size):
    weight = weights_with_outliers(7)
    layer = QuantizedLinear(weight, scheme, group_size)
    x = torch.randn(5, 3, 128, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(layer(x), x @ layer.dequantized_weight().T, atol=1e-5)
    # and the output error obeys the layer bound |y_i - y_hat_i| <= sum_j bound_ij |x_j|
    output_bound = x.abs() @ error_bound(weight, "int8" if scheme == "int8" else "groupwise", group_size).T
    assert torch.all((layer(x) - x @ weight.T).abs() <= output_bound + 1e-5)


def tiny_gpt(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=32, block_size=64, n_layer=2, n_head=2, n_embd=32), **overrides}))


def test_quantize_model_replaces_the_blocks_matrices_and_keeps_the_parameter_count():
    model = tiny_gpt()
    n_params = model.num_params()
    quantize_model(model, "int4", 32)
    layers = [module for module in model.modules() if isinstance(module, QuantizedLinear)]
    assert len(layers) == 4 * 2
    assert model.num_params() == n_params, "quantized weights still count: they still multiply"
    assert [p.dtype for p in model.parameters()] == [torch.float32] * len(list(model.parameters()))
    assert isinstance(model.lm_head, torch.nn.Linear) and model.lm_head.weight is model.wte.weight
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(model, "int8")
    with pytest.raises(ValueError, match="do not tile a row of 32 weights"):
        quantize_model(tiny_gpt(), "int4", 64)


# ----------------------------------------------------------------------------------------------------------------------
# a toy where the bound decides greedy decoding

GELU_LIPSCHITZ = 1.13  # max_x |gelu'(x)| = 1.1289...


def successor_model(noise_seed=0):
    """A one-block GPT whose greedy continuation of token v is v + 1 (mod 16), with a wide margin.

    The embedding is 10 x identity (V = C = 16). Attention is switched off (c_attn = 0, so q = k = v = 0 and it adds
    exactly nothing), which makes the next token a function of the current one. MLP neuron j < 16 fires on token j
    (c_fc row j = one-hot(j)) and writes 10 x one-hot(j + 1) (c_proj). Every matrix also gets Gaussian noise, so
    the weights are off the quantization grids and quantization really moves them."""
    torch.manual_seed(noise_seed)
    V = C = 16
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=1, n_head=2, n_embd=C))
    block = model.blocks[0]
    with torch.no_grad():
        model.wte.weight.copy_(10 * torch.eye(V))
        block.attn.c_attn.weight.zero_()
        block.attn.c_proj.weight.normal_(0, 0.02)
        block.mlp.c_fc.weight.normal_(0, 0.02)
        block.mlp.c_fc.weight[:V] += torch.eye(V)
        block.mlp.c_proj.weight.normal_(0, 0.02)
        for j in range(V):
            block.mlp.c_proj.weight[(j + 1) % V, j] += 10.0
    return model.eval()


def logit_error_bound(model, scheme, group_size, token):
    """A bound on |logits_quantized - logits_float| for the one-block successor_model at `token`, from the weights'
    error bounds: through c_fc (the bound times |input|), GELU (Lipschitz), c_proj (the quantized weights times the
    activation error, plus the bound times |activation|), the final RMSNorm (||f(x + d) - f(x)|| <= 2 sqrt(C) ||d|| /
    ||x||) and the tied head (Cauchy-Schwarz)."""
    block, kind = model.blocks[0], "int8" if scheme == "int8" else "groupwise"
    with torch.no_grad():
        x = model.wte.weight[token]                              # (C,) attention adds exactly 0
        m = block.norm_mlp(x)                                    # (C,)
        a = F.gelu(block.mlp.c_fc.weight @ m)                    # (H,)
        h_error = error_bound(block.mlp.c_fc.weight, kind, group_size) @ m.abs()        # (H,)
        a_error = GELU_LIPSCHITZ * h_error
        w_proj = block.mlp.c_proj.weight
        w_proj_quantized = QuantizedLinear(w_proj, scheme, group_size).dequantized_weight()
        stream_error = w_proj_quantized.abs() @ a_error + error_bound(w_proj, kind, group_size) @ a.abs()  # (C,)
        stream = x + block.mlp.c_proj.weight @ a                 # (C,) the residual stream before the final norm
        C = stream.numel()
        normed_error = 2 * math.sqrt(C) * stream_error.norm() / stream.norm() * model.norm_f.weight.abs().max()
        return float(model.wte.weight.norm(dim=1).max() * normed_error)


# int4 in groups of 4: with 16 levels, the premise below needs small groups (at 16 the bound is 24 logits, loose)
@pytest.mark.parametrize("scheme, group_size", [("int8", None), ("int4", 4)])
def test_quantized_greedy_output_equals_float_where_the_bound_says_it_must(scheme, group_size):
    model = successor_model()
    quantized = quantize_model(successor_model(), scheme, group_size)
    for token in range(16):  # the premise: at every token the float margin exceeds twice the worst logit error
        logits, _ = model(torch.tensor([[token]]))
        top2 = logits[0, -1].topk(2).values
        assert top2[0] - top2[1] > 2 * logit_error_bound(model, scheme, group_size, token), token
    moved = (model.blocks[0].mlp.c_proj.weight - quantized.blocks[0].mlp.c_proj.dequantized_weight()).abs().max()
    assert moved > 1e-3, "quantization must actually move the weights, or the test proves nothing"
    prompts = [[0], [5, 6], [15]]
    float_tokens = generate(model, prompts, 24, temperature=0.0).tokens
    assert torch.equal(generate(quantized, prompts, 24, temperature=0.0).tokens, float_tokens)
    assert float_tokens[0, :3].tolist() == [1, 2, 3], "the toy counts up"


# ----------------------------------------------------------------------------------------------------------------------
# the checkpoint

def test_a_quantized_checkpoint_stores_integers_and_loads_through_load_policy(tmp_path, tokenizer_bytes):
    model = tiny_gpt(vocab_size=64, n_layer=4, n_head=4, n_embd=128)  # the tiny preset's shape
    float_path, int8_path = str(tmp_path / "float.pt"), str(tmp_path / "int8.pt")
    save_checkpoint(float_path, kind="policy", model_state=model.state_dict(), model_config=vars(model.config),
                    tokenizer_bytes=tokenizer_bytes, step=0)
    quantize_model(model, "int8")
    save_checkpoint(int8_path, kind="policy", model_state=model.state_dict(), model_config=vars(model.config),
                    tokenizer_bytes=tokenizer_bytes, step=0,
                    extra={"quantization": {"scheme": "int8", "group_size": None}})
    loaded, _, ckpt = load_policy(int8_path, torch.device("cpu"))
    assert ckpt["model_state"]["blocks.0.mlp.c_fc.weight_q"].dtype == torch.int8
    idx = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])
    # the blocks hold 99% of the weights: a quarter of their bytes, plus the scales and the float embedding
    assert os.path.getsize(int8_path) < 0.30 * os.path.getsize(float_path)
    with pytest.raises(UserError, match="holds quantized weights"):
        load_policy(int8_path, torch.device("cpu"), for_training=True)


@pytest.fixture(scope="module")
def tokenizer_bytes(tmp_path_factory):
    from nano_reasoner import tasks
    from nano_reasoner.tokenizer import train_tokenizer
    problems = tasks.generate("arith", 100, seed=0)
    folder = tmp_path_factory.mktemp("tok")
    return train_tokenizer([tasks.full_trace(p) for p in problems], str(folder / "tok.model")).model_bytes
