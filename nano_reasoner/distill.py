"""
Knowledge distillation: a small "student" learns from a big "teacher" instead of (or as well as) from the data.

A trained model knows more than its top answer. At every position its next-token distribution also says which
wrong tokens are nearly right (after `38*2=`, a `7` for 76 is far likelier than a `3`): "dark knowledge" that a
one-hot target throws away. Two ways to hand it to a student, both here:

**Token level: soft targets** ("Distilling the Knowledge in a Neural Network", Hinton, Vinyals & Dean, arXiv
1503.02531). On the same traces the student would train on, it matches the teacher's distribution softened by a
temperature T at every completion position t:

    p_T(v) = softmax(z_v / T)                         (z: logits; T > 1 flattens, so the small probabilities count)
    L_KD   = T^2 * mean_t KL( p_T^teacher(. | x_<t) || p_T^student(. | x_<t) )
    L      = w * L_KD + (1 - w) * CE(student, the trace's tokens)

The T^2 keeps the gradient of L_KD the same size whatever T (its gradient with respect to the logits scales as
1 / T^2), so that w means the same at every temperature (Hinton et al., section 2). The student must share the
teacher's tokenizer: the two distributions are over the same vocabulary.

**Sequence level: the teacher's traces** (DeepSeek-R1, arXiv 2501.12948, section 2.4 and 4.1): let the teacher solve
fresh problems, keep the solutions the exact verifier accepts (rejection sampling) and fine-tune the student on them
with the plain next-token loss. This is how R1's small models were made: Qwen-32B fine-tuned on 800k samples from R1
scored 72.6% on AIME 2024 where the same Qwen-32B trained with RL alone (R1-Zero's recipe, 10k+ steps) scored 47.0%.
The paper's lesson: a big model's reasoning patterns, distilled, beat what RL discovers in a small model, and
distilling is far cheaper. benchmarks/distill_compare.py asks whether that holds at our scale, at equal CPU time.

train_pretrain.py wires both: `--teacher CKPT --distill logits` (soft targets on the task's exact traces) and
`--distill traces` (the teacher's verified greedy traces instead of the exact ones).

Simplifications against the papers: Hinton et al. distil class probabilities of an image classifier, here every
completion token is one "classification"; the KL is taken on the completion tokens only (the prompt is not
predicted, as in data.py). R1 sampled several solutions per problem and also filtered for readability; here the
teacher writes one greedy solution per problem, kept if the verifier accepts it and it ended with eos.
"""
import torch.nn.functional as F

from nano_reasoner.data import Example
from nano_reasoner.expert_iteration import EIConfig, attempt, filter_verified


def kd_loss(student_logits, teacher_logits, targets, temperature=1.0):
    """T^2 * the mean, over the positions with a target (!= -1), of KL(teacher_T || student_T) over the vocabulary.
    logits (B, T, V) each (T here is time; the temperature is `temperature`), targets (B, T). The teacher's side
    carries no gradient: pass its logits computed under torch.no_grad()."""
    assert student_logits.shape == teacher_logits.shape, \
        f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} logits differ: one tokenizer?"
    assert targets.shape == student_logits.shape[:2]
    # BEGIN SOLUTION part 16
    teacher_logprobs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # log p_T^teacher, (B, T, V)
    student_logprobs = F.log_softmax(student_logits.float() / temperature, dim=-1)  # log p_T^student, (B, T, V)
    # KL(p || q) = sum_v p_v (log p_v - log q_v), per position
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student_logprobs)).sum(dim=-1)  # (B, T)
    is_scored = (targets != -1).float()
    return temperature ** 2 * (kl * is_scored).sum() / is_scored.sum().clamp(min=1)
    # END SOLUTION


def teacher_examples(teacher, tokenizer, problems, seed=0, temperature=0.0, max_new_tokens=None):
    """Sequence-level distillation data: the teacher's solution of each problem (greedy at temperature 0), kept when
    the exact verifier accepts it and it ended with eos. -> (list of data.Example, {task: share of problems kept},
    decode tokens spent). Uses expert iteration's stages (1) attempt and (2) filter (nano_reasoner/expert_iteration.py):
    rejection sampling is expert iteration with the teacher as the sampler."""
    config = EIConfig(samples_per_problem=1, temperature=temperature,
                      max_new_tokens=max_new_tokens or teacher.config.block_size)
    prompts, per_problem, decode_tokens = attempt(teacher, tokenizer, problems, config, seed)
    kept = filter_verified(problems, prompts, per_problem, keep_per_problem=1, eos_id=tokenizer.eos_id)
    kept_share = {}
    for task in sorted({p.task for p in problems}):
        total = sum(p.task == task for p in problems)
        kept_share[task] = sum(k.problem.task == task for k in kept) / total
    return [Example(k.tokens, k.prompt_length) for k in kept], kept_share, decode_tokens
