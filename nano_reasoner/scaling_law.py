"""
The pre-training scaling law: held-out loss as a power law in parameters, tokens and compute.

Kaplan et al. ("Scaling Laws for Neural Language Models", arXiv 2001.08361) trained transformers over seven orders of
magnitude and found the loss falls as a power law in each resource when the others do not bind: L(N) ~ (N_c / N)^a,
L(D) ~ (D_c / D)^b, L(C) ~ (C_c / C)^c. Chinchilla (Hoffmann et al., "Training Compute-Optimal Large Language
Models", arXiv 2203.15556) fitted one surface,

    L(N, D) = E + A / N^alpha + B / D^beta,

E the loss of a perfect model (the entropy of the data), and asked the question that matters for a budget: with
C = 6 N D training FLOPs, which N? Minimising L(N, C / 6N) over N gives N_opt ~ C^(beta / (alpha + beta)), about
C^0.5 for language: parameters and tokens should grow together (about 20 tokens a parameter). Their "approach 2"
reads the same answer off iso-FLOP curves: train several sizes at one budget, and the loss against log N is a
valley whose bottom is N_opt.

Our tasks are not language: their data are generated and exact, the loss on a completion is mostly the cost of the
steps the model cannot yet compute, and E is far below natural text's. Whether the laws hold here at 0.05-3M
parameters is the experiment (benchmarks/pretrain_scaling.py); this file holds the arithmetic:

- `training_flops`: C = 6 N D (forward 2 N D, backward twice that), N the non-embedding parameters as in Kaplan,
  plus the attention term Kaplan counts, 6 * n_layer * context * d_model per token (the scores and the weighted sum,
  forward and backward), which matters at our widths;
- `fit_power_law`: y = a * x^b by least squares on log y against log x (a line in log-log), with r2 in log space;
- `fit_loss_vs_compute`: L(C) = E + a * C^b, the irreducible E chosen by a scan that maximises the fit of the rest;
- `fit_chinchilla`: the surface L(N, D) by minimising the Huber loss of log predictions (Chinchilla's approach 3),
  from a grid of starting points, with L-BFGS in torch;
- `iso_flop_minimum`: a parabola in log N through one budget's best run and its two neighbours, and its bottom;
- `break_even_problems`: Snell et al.'s exchange (arXiv 2408.03314, section 7) in totals: a small model that spends
  more FLOPs per answer at test time and a larger one that spent more in pre-training cost the same after Q answers.
"""
import math
from dataclasses import dataclass

import torch


def non_embedding_params(config):
    """Parameters of the blocks (attention and MLP weights, norms) of a GPTConfig: what Kaplan's N counts."""
    heads_width = config.n_head * config.head_width
    attention = config.n_embd * 3 * heads_width + heads_width * config.n_embd
    mlp = 2 * config.n_embd * config.mlp_width
    norms = 2 * config.n_embd
    return config.n_layer * (attention + mlp + norms) + config.n_embd  # + the final norm


def flops_per_token(config, context):
    """Training FLOPs of one token: 6 N for the weights plus 6 * n_layer * context * (heads * head_dim) for
    attention's scores and weighted sum (each 2 * context * width forward, times 3 with backward); the embedding
    lookup is free and the tied output layer counts 6 * n_embd * vocab."""
    heads_width = config.n_head * config.head_width
    return (6 * non_embedding_params(config) + 6 * config.n_layer * context * heads_width
            + 6 * config.n_embd * config.vocab_size)


def training_flops(config, tokens, context):
    """C of a run that trains on `tokens` tokens whose mean attention context is `context`."""
    return flops_per_token(config, context) * tokens


@dataclass
class PowerLaw:
    coefficient: float   # a in y = a * x^b
    exponent: float      # b
    r2: float            # of log y against log x

    def __call__(self, x):
        return self.coefficient * x ** self.exponent


def fit_power_law(x, y):
    """y = a * x^b through positive points: a line log y = log a + b log x by least squares."""
    assert len(x) == len(y) >= 2 and all(v > 0 for v in list(x) + list(y)), "positive points, at least two"
    log_x, log_y = [math.log(v) for v in x], [math.log(v) for v in y]
    mean_x, mean_y = sum(log_x) / len(log_x), sum(log_y) / len(log_y)
    sxx = sum((u - mean_x) ** 2 for u in log_x)
    assert sxx > 0, "all x are equal: no slope to fit"
    slope = sum((u - mean_x) * (v - mean_y) for u, v in zip(log_x, log_y)) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((v - intercept - slope * u) ** 2 for u, v in zip(log_x, log_y))
    total = sum((v - mean_y) ** 2 for v in log_y)
    return PowerLaw(math.exp(intercept), slope, 1.0 - residual / total if total > 0 else 1.0)


@dataclass
class ComputeLaw:
    irreducible: float   # E
    law: PowerLaw        # L - E = a * C^b

    def __call__(self, compute):
        return self.irreducible + self.law(compute)


def fit_loss_vs_compute(compute, loss, steps=200):
    """L(C) = E + a * C^b: for each E on a grid from 0 to just below min(L), fit log(L - E) against log C; keep the E
    with the best r2 (the fit is a line in log-log only once E is taken off)."""
    floor = min(loss)
    best = None
    for i in range(steps):
        irreducible = floor * i / steps  # 0 <= E < min L
        law = fit_power_law(compute, [value - irreducible for value in loss])
        if best is None or law.r2 > best.law.r2:
            best = ComputeLaw(irreducible, law)
    return best


@dataclass
class Chinchilla:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def __call__(self, params, tokens):
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def optimal_params(self, compute, flops_per_param_token=6.0):
        """argmin over N of L(N, C / (6 N)): N_opt = G * (C / 6)^(beta / (alpha + beta)), G from the fit."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        return g * (compute / flops_per_param_token) ** (self.beta / (self.alpha + self.beta))


def fit_chinchilla(params, tokens, loss, delta=1e-3, iterations=200):
    """L(N, D) = E + A/N^alpha + B/D^beta, by minimising sum Huber_delta(log L_hat - log L) over a grid of starting
    points (Chinchilla approach 3; they used delta 1e-3 and L-BFGS). Parameters are fitted as log A, log B, log E."""
    log_n = torch.tensor([math.log(v) for v in params], dtype=torch.float64)
    log_d = torch.tensor([math.log(v) for v in tokens], dtype=torch.float64)
    log_l = torch.tensor([math.log(v) for v in loss], dtype=torch.float64)
    best, best_objective = None, float("inf")
    for alpha0 in (0.2, 0.5, 1.0):
        for beta0 in (0.2, 0.5, 1.0):
            for e0 in (-2.0, -0.5, 0.5):
                theta = torch.tensor([e0, 2.0, alpha0, 2.0, beta0], dtype=torch.float64, requires_grad=True)
                optimizer = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

                def objective():
                    optimizer.zero_grad()
                    value = _huber_objective(theta, log_n, log_d, log_l, delta)
                    value.backward()
                    return value
                optimizer.step(objective)
                with torch.no_grad():
                    value = float(_huber_objective(theta, log_n, log_d, log_l, delta))
                if math.isfinite(value) and value < best_objective:
                    best_objective, best = value, theta.detach().tolist()
    log_e, log_a, alpha, log_b, beta = best
    return Chinchilla(math.exp(log_e), math.exp(log_a), alpha, math.exp(log_b), beta)


def _huber_objective(theta, log_n, log_d, log_l, delta):
    """sum Huber(log L_hat - log L), log L_hat = log(E + A N^-alpha + B D^-beta) as a logsumexp of the three logs."""
    log_e, log_a, alpha, log_b, beta = theta
    terms = torch.stack([log_e.expand_as(log_n), log_a - alpha * log_n, log_b - beta * log_d])  # (3, runs)
    return torch.nn.functional.huber_loss(torch.logsumexp(terms, dim=0), log_l, delta=delta, reduction="sum")


def iso_flop_minimum(params, loss):
    """One budget's runs (sizes in increasing order): the N at the bottom of its valley, from the parabola in log N
    through the best run and its two neighbours; None when the best run is the smallest or the largest size (the
    bottom lies outside the sizes tried). Only the neighbours: far from the bottom the curve is no parabola (a size
    far too large for its budget takes so few steps that its loss rises steeply), and a parabola through every run
    would put its bottom where the far runs pull it."""
    assert len(params) == len(loss) >= 3, "a valley needs three sizes at least"
    assert list(params) == sorted(params), "give the runs in increasing size"
    best = min(range(len(loss)), key=lambda i: loss[i])
    if best in (0, len(loss) - 1):
        return None
    x = torch.tensor([math.log(v) for v in params[best - 1:best + 2]], dtype=torch.float64)   # (3,)
    design = torch.stack([x ** 2, x, torch.ones_like(x)], dim=1)                               # (3, 3)
    target = torch.tensor(loss[best - 1:best + 2], dtype=torch.float64)[:, None]               # (3, 1)
    p, q, _ = torch.linalg.solve(design, target)[:, 0].tolist()
    return math.exp(-q / (2 * p)) if p > 0 else None  # p = 0 only when the three lie on a line (a tie)

def break_even_problems(small_pretrain, small_per_problem, large_pretrain, large_per_problem):
    """Up to how many answered problems Q the small model costs fewer FLOPs in all than the larger one,
    small_pretrain + Q * small_per_problem <= large_pretrain + Q * large_per_problem; math.inf when it is cheaper
    to answer with too. The small model is the one that spent less in pre-training."""
    assert small_pretrain <= large_pretrain, "the small model is the one with the smaller pre-training cost"
    extra_per_problem = small_per_problem - large_per_problem
    if extra_per_problem <= 0:
        return math.inf
    return (large_pretrain - small_pretrain) / extra_per_problem
