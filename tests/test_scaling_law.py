"""The scaling-law arithmetic (nano_reasoner/scaling_law.py): FLOP counts by hand, fits that recover known laws."""
import math

import pytest

from nano_reasoner import scaling_law
from nano_reasoner.model import GPT, GPTConfig


def test_non_embedding_params_are_the_model_minus_its_embedding():
    for config in (GPTConfig(vocab_size=64, n_layer=4, n_head=4, n_embd=128),
                   GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=32, head_dim=8, mlp_hidden=40)):
        assert scaling_law.non_embedding_params(config) == GPT(config).num_params(non_embedding=True)


def test_flops_per_token_by_hand():
    config = GPTConfig(vocab_size=64, block_size=320, n_layer=4, n_head=4, n_embd=128)
    # per block: qkv 128*384 + out 128*128 + mlp 2*128*512 + two norms 2*128; then the final norm 128
    blocks = 4 * (128 * 384 + 128 * 128 + 2 * 128 * 512 + 2 * 128) + 128
    assert blocks == 787_584
    hand = 6 * blocks + 6 * 4 * 100 * 128 + 6 * 128 * 64   # weights, attention over 100 tokens, the output layer
    assert scaling_law.flops_per_token(config, context=100) == hand == 5_081_856
    assert scaling_law.training_flops(config, tokens=1000, context=100) == 1000 * hand


def test_power_law_fit_recovers_a_known_exponent():
    x = [1e3, 3e3, 1e4, 3e4, 1e5]
    law = scaling_law.fit_power_law(x, [3.0 * v ** -0.3 for v in x])
    assert law.exponent == pytest.approx(-0.3, abs=1e-12)
    assert law.coefficient == pytest.approx(3.0, rel=1e-10)
    assert law.r2 == pytest.approx(1.0, abs=1e-12)
    noisy = scaling_law.fit_power_law(x, [3.0 * v ** -0.3 * (1 + 0.05 * (-1) ** i) for i, v in enumerate(x)])
    assert 0.9 < noisy.r2 < 1.0 and noisy.exponent == pytest.approx(-0.3, abs=0.03)


def test_loss_vs_compute_fit_finds_the_floor_and_the_exponent():
    compute = [10 ** (9 + k / 2) for k in range(8)]
    loss = [0.4 + 20.0 * c ** -0.15 for c in compute]
    fit = scaling_law.fit_loss_vs_compute(compute, loss, steps=2000)
    assert fit.irreducible == pytest.approx(0.4, abs=0.01)
    assert fit.law.exponent == pytest.approx(-0.15, abs=0.01)
    assert fit.law.r2 > 0.999


def test_chinchilla_fit_recovers_a_known_surface_and_its_optimal_size():
    truth = scaling_law.Chinchilla(E=0.3, A=40.0, alpha=0.35, B=60.0, beta=0.3)
    params = [n for n in (5e4, 2e5, 8e5, 3e6) for _ in range(3)]
    tokens = [d for _ in range(4) for d in (1e6, 1e7, 1e8)]
    fit = scaling_law.fit_chinchilla(params, tokens, [truth(n, d) for n, d in zip(params, tokens)])
    for n, d in zip(params, tokens):
        assert fit(n, d) == pytest.approx(truth(n, d), rel=1e-3)
    assert fit.alpha == pytest.approx(0.35, abs=0.05) and fit.beta == pytest.approx(0.3, abs=0.05)
    # N_opt = G (C/6)^(beta / (alpha + beta)): the fitted law sends a 100x budget to 100^(0.3/0.65) = 8.4x the size
    ratio = fit.optimal_params(1e15) / fit.optimal_params(1e13)
    assert ratio == pytest.approx(100 ** (0.3 / 0.65), rel=0.1)


def test_iso_flop_minimum_is_the_bottom_of_the_valley():
    params = [1e5, 3e5, 1e6, 3e6, 1e7]
    loss = [0.2 * (math.log(n) - math.log(8e5)) ** 2 + 1.0 for n in params]
    assert scaling_law.iso_flop_minimum(params, loss) == pytest.approx(8e5, rel=1e-6)
    # a loss that only falls with size has no valley: the best size is beyond the sizes tried
    assert scaling_law.iso_flop_minimum(params, [2.0 - 0.1 * math.log(n) for n in params]) is None


def test_iso_flop_minimum_reads_the_valley_near_its_best_run():
    # a valley at 8e5 whose largest size is far off it (too few steps): only the best run and its neighbours count
    params = [1e5, 3e5, 1e6, 3e6, 1e7]
    loss = [0.2 * (math.log(n) - math.log(8e5)) ** 2 + 1.0 for n in params[:4]] + [50.0]
    assert scaling_law.iso_flop_minimum(params, loss) == pytest.approx(8e5, rel=1e-6)
    # the best run at the edge of the grid: no bottom inside it
    assert scaling_law.iso_flop_minimum(params, [1.0, 1.1, 1.3, 1.6, 2.0]) is None


def test_break_even_problems_by_hand():
    # small: 1e13 to train, 3e6 a problem; large: 5e13 to train, 1e6 a problem -> equal after 4e13 / 2e6 = 2e7
    assert scaling_law.break_even_problems(1e13, 3e6, 5e13, 1e6) == pytest.approx(2e7)
    totals = [(1e13 + q * 3e6, 5e13 + q * 1e6) for q in (1.9e7, 2.1e7)]
    assert totals[0][0] < totals[0][1] and totals[1][0] > totals[1][1]
    # cheaper to answer with too: cheaper at any number of problems
    assert scaling_law.break_even_problems(1e13, 1e6, 5e13, 1e6) == math.inf
