"""
The parts of the assignment, in the order of the README's story. The code marks each part's regions with
`# BEGIN SOLUTION part N` / `# END SOLUTION`; this table says what each part is, what to read before writing it, and
what a correct solution reaches in the tiny preset (the README's numbers, from the pipeline run of 2026-12-07 on a
2-core CPU unless a part says otherwise).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    number: int
    title: str       # what the student writes, as the stub's message says it
    where: str       # file and function(s) holding the marked regions
    read: str        # what to read first
    reaches: str     # what a correct solution reaches


PARTS = [
    Part(1, "the countdown search-trace generator",
         "nano_reasoner/tasks/countdown.py: search_solve",
         "README: 'A trace' and stage 2b; tasks/trace.py (the trace format, undo lines); Stream of Search "
         "(Gandhi et al., arXiv 2404.03683)",
         "the reasoner fine-tuned on these traces solves 51.4% of 500 held-out countdown problems greedily, against "
         "26.6% for straight traces in the same CPU time (stage 2b)"),
    Part(2, "RoPE: rotate each pair of dimensions by its position's angle",
         "nano_reasoner/model.py: apply_rope",
         "model.py's docstring; RoFormer (Su et al., arXiv 2104.09864), section 3.4",
         "with part 3, pre-training reaches 73.8% arith and 20.2% countdown (stage 2)"),
    Part(3, "causal attention over the KV cache",
         "nano_reasoner/model.py: KVCache.append, CausalSelfAttention.forward",
         "model.py's docstring (KVCache, padding); build_attention_mask; "
         "torch.nn.functional.scaled_dot_product_attention",
         "KV-cached greedy equals the uncached reference token for token; the sampler decodes 17,880 tokens/s "
         "against 862 without a cache at batch 64 (README: Speed)"),
    Part(4, "the sampler's filters: top-k and top-p (nucleus)",
         "nano_reasoner/sampling.py: filter_logits",
         "sampling.py's docstring; 'The Curious Case of Neural Text Degeneration' (Holtzman et al., arXiv 1904.09751)",
         "the filters keep exactly the tokens the tests compute by hand; every sampled strategy of stage 5 uses them"),
    Part(5, "budget forcing: a cap and a floor on thinking tokens",
         "nano_reasoner/sampling.py: force_budget",
         "README stage 2b; s1 (Muennighoff et al., arXiv 2501.19393), section 3",
         "the reasoner's thinking-budget sweep: 0 / 18 / 27 / 45 / 51 / 54% of countdown at caps of 16 / 32 / 64 / "
         "128 / 256 / no cap (stage 2b)"),
    Part(6, "the verifier's loss: binary cross-entropy at every scoring position",
         "nano_reasoner/prm.py: verifier_loss",
         "prm.py's docstring; 'Let's Verify Step by Step' (Lightman et al., arXiv 2305.20050)",
         "the PRM on exact labels ranks countdown steps at AUROC 0.78 (stage 3's report)"),
    Part(7, "aggregating step scores into a solution score (min, prod, last)",
         "nano_reasoner/prm.py: aggregate",
         "prm.py's docstring (why min); Lightman et al. section 2.6",
         "best-of-16 by the PRM on exact labels: 58.3% arith, 37.5% countdown on stage 3's 24 problems"),
    Part(8, "Monte-Carlo step labels from rollouts (hard and soft)",
         "nano_reasoner/prm.py: monte_carlo_labels",
         "Math-Shepherd (Wang et al., arXiv 2312.08935), section 3.3; prm.monte_carlo_rollouts",
         "the PRM on Monte-Carlo labels (k = 4) ranks steps at AUROC 0.67 arith, 0.71 countdown (stage 3's report)"),
    Part(9, "expert iteration's filter: verified, finished, distinct, shortest first",
         "nano_reasoner/expert_iteration.py: filter_verified",
         "expert_iteration.py's docstring; STaR (arXiv 2203.14465); ReST-EM (arXiv 2312.06585)",
         "expert iteration holds the reasoner at 86.6% arith, 50.6% countdown (from 87.8 / 51.4%) in 6.1 minutes "
         "(stage 4)"),
    Part(10, "GRPO's group-relative advantages",
         "nano_reasoner/grpo.py: group_advantages",
         "grpo.py's docstring; DeepSeekMath (arXiv 2402.03300), section 4.1; Dr. GRPO (arXiv 2503.20783)",
         "each group's advantages sum to zero and equal rewards give exactly zero (tests); GRPO's rows of stage 4"),
    Part(11, "GRPO's clipped objective with the k3 KL penalty",
         "nano_reasoner/grpo.py: grpo_loss",
         "grpo.py's docstring; DeepSeekMath equation 3; PPO (Schulman et al., arXiv 1707.06347); "
         "Schulman's note on KL approximation (k3)",
         "the loss equals the tests' hand computation; 50 GRPO steps take the reasoner to 43.4% countdown: at this "
         "scale GRPO loses (stage 4)"),
    Part(12, "majority vote and verifier-weighted vote",
         "nano_reasoner/search.py: pick_from_pool (the vote and wvote branches)",
         "search.py's docstring; self-consistency (Wang et al., arXiv 2203.11171)",
         "majority of 16: 75.0% arith, 56.2% countdown on the sweep's 32 problems (stage 5)"),
    Part(13, "MCTS: the PUCT score and the backup",
         "nano_reasoner/mcts.py: puct, backup",
         "mcts.py's docstring; AlphaZero (Silver et al., arXiv 1712.01815), the PUCT selection rule",
         "MCTS with 16 expansions: 75.0% arith, 46.9% countdown on the sweep's 32 problems (stage 5)"),
    Part(14, "the chat's cache reuse: the longest common prefix still valid",
         "nano_reasoner/chat.py: reusable_prefix",
         "chat.py's docstring (why the cache is cut back where the dropped thinking began)",
         "a three-turn conversation prefills 18 tokens at turn 3 instead of 48; 93.1% of turns right (stage 6)"),
    Part(15, "int8 weight quantization: a scale per output row",
         "nano_reasoner/quantize.py: quantize_int8, dequantize_int8",
         "quantize.py's docstring (symmetric absmax scales, one per output row)",
         "27% of the float model's bytes at 86.2% arith, 50.6% countdown (stage 7)"),
    Part(16, "the distillation loss: KL to the teacher's softened distribution, times T^2",
         "nano_reasoner/distill.py: kd_loss",
         "distill.py's docstring; 'Distilling the Knowledge in a Neural Network' (Hinton et al., arXiv 1503.02531), "
         "section 2",
         "a student of a third of the final policy's size on soft targets (T = 2): 18.4% arith, 4.4% countdown in "
         "about 4 minutes; the pruned policy's recovery of stage 7 uses the same loss at T = 1 (stage 8)"),
    Part(17, "LoRA: a frozen weight plus a trainable low-rank change, and its merge",
         "nano_reasoner/lora.py: LoRALinear.forward, LoRALinear.merged_weight",
         "lora.py's docstring; LoRA (Hu et al., arXiv 2106.09685), section 4.1",
         "rank-8 LoRA adapts the final policy to three-digit arith (8.6% -> 82.8%) and keeps 70.6% of the old arith "
         "(stage 8)"),
]
