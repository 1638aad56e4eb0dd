"""Distillation losses: pure functions on tensors, no model in sight.

- `soft_target_loss`: Hinton, Vinyals & Dean 2015 ("Distilling the knowledge in a neural
  network"): KL(teacher || student) between the two distributions softened by a temperature T,
  times T^2 so that its gradients keep the hard loss's scale when T changes (section 2).
- `token_kl_loss`: the same per token for language models, averaged over the tokens that are
  not padding; forward KL(teacher || student) spreads the student over every mode the teacher
  has, reverse KL(student || teacher) makes it pick modes (Gu et al. 2024, MiniLLM).
- `hint_loss`: FitNets (Romero et al. 2015): mean squared error between a student feature
  (through a learned adapter where the widths differ) and a teacher feature.
- `spatial_attention_map` / `attention_transfer_loss`: Zagoruyko & Komodakis 2017 ("Paying more
  attention to attention"): a conv feature map becomes the normalised spatial map of
  sum_c |A_c|^p, and the student's map is pulled to the teacher's.
- `attention_probabilities` / `attention_probability_loss`: for transformers, the softmax
  attention of a layer, compared row by row with KL (as MiniLM, Wang et al. 2020, does).

Written here because these are a few lines each and no maintained library ships them as plain
functions on tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError


def _kl_rows(target_log: Tensor, model_log: Tensor) -> Tensor:
    """KL(target || model) along the last dimension, from log-probabilities; one value per row."""
    return (target_log.exp() * (target_log - model_log)).sum(dim=-1)


def check_temperature(temperature: float) -> None:
    """A ConfigError naming the value unless the temperature is a finite number > 0."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"distill: temperature must be > 0, got {temperature}")


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the rows.

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0 * math.log(3.0), 0.0]])
        >>> round(float(soft_target_loss(s, t, 2.0)), 6)  # 4 * (0.75 ln 1.5 + 0.25 ln 0.5)
        0.523248
    """
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"distill: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ"
        )
    s = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    rows = _kl_rows(t, s).reshape(-1)
    return temperature**2 * rows.mean()


def token_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    *,
    reverse: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Token-level KL for language models (B, T, V), times T^2, averaged over kept tokens.

    Forward (default) is KL(teacher || student); `reverse=True` is KL(student || teacher).
    `mask` (B, T) is True at the tokens that count (padding False); with no mask all count.

    Example:
        >>> s = torch.zeros(1, 2, 2)
        >>> t = torch.tensor([[[math.log(3.0), 0.0], [9.0, 9.0]]])
        >>> mask = torch.tensor([[True, False]])
        >>> round(float(token_kl_loss(s, t, mask=mask)), 6)  # 0.75 ln 1.5 + 0.25 ln 0.5
        0.130812
    """
    check_temperature(temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"distill: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ"
        )
    s = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    t = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = _kl_rows(s, t) if reverse else _kl_rows(t, s)
    if mask is None:
        return temperature**2 * per_token.mean()
    if mask.shape != per_token.shape:
        raise ConfigError(
            f"distill: token mask {tuple(mask.shape)} does not match the logits' "
            f"tokens {tuple(per_token.shape)}"
        )
    keep = mask.to(per_token.dtype)
    # A batch of padding only contributes nothing (not NaN).
    return temperature**2 * (per_token * keep).sum() / keep.sum().clamp(min=1.0)


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between an (adapted) student feature and a teacher feature.

    Example:
        >>> float(hint_loss(torch.zeros(2, 3), torch.ones(2, 3)))
        1.0
    """
    if student_feature.shape != teacher_feature.shape:
        raise ConfigError(
            f"distill: hint features differ: student {tuple(student_feature.shape)}, "
            f"teacher {tuple(teacher_feature.shape)}"
        )
    return nn.functional.mse_loss(student_feature.float(), teacher_feature.float())


def spatial_attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """(N, C, H, W) -> (N, H*W): sum over channels of |A_c|^p, flattened, L2-normalised.

    Example:
        >>> a = torch.zeros(1, 2, 1, 2)
        >>> a[0, :, 0, 0] = torch.tensor([3.0, 4.0])
        >>> spatial_attention_map(a).tolist()
        [[1.0, 0.0]]
    """
    if feature.dim() != 4:
        raise ConfigError(
            f"distill: attention maps need a (N, C, H, W) feature, got {tuple(feature.shape)}"
        )
    q = feature.float().abs().pow(p).sum(dim=1).flatten(1)
    return nn.functional.normalize(q, p=2.0, dim=1)


def attention_transfer_loss(
    student_feature: Tensor, teacher_feature: Tensor, p: float = 2.0
) -> Tensor:
    """Mean over the batch of ||Q_s - Q_t||^2 between normalised spatial attention maps.

    Channel counts may differ (the maps sum over channels); spatial sizes must agree.

    Example:
        >>> a = torch.rand(2, 4, 3, 3)
        >>> float(attention_transfer_loss(a, 2.0 * a[:, :1].repeat(1, 8, 1, 1))) < 2.0
        True
    """
    if student_feature.shape[2:] != teacher_feature.shape[2:]:
        raise ConfigError(
            f"distill: attention transfer needs equal spatial sizes: student "
            f"{tuple(student_feature.shape)}, teacher {tuple(teacher_feature.shape)}"
        )
    diff = spatial_attention_map(student_feature, p) - spatial_attention_map(teacher_feature, p)
    return diff.pow(2).sum(dim=1).mean()


def attention_probabilities(q: Tensor, k: Tensor, *, causal: bool = True) -> Tensor:
    """Softmax attention (B, H, T, T) of queries and keys shaped (B, H, T, D).

    Example:
        >>> x = torch.zeros(1, 1, 2, 4)
        >>> attention_probabilities(x, x)[0, 0].tolist()
        [[1.0, 0.0], [0.5, 0.5]]
    """
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        t_q, t_k = scores.shape[-2:]
        above = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(above, float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention_probability_loss(student_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL(teacher || student) per attention row (B, H, T, T), averaged over rows and heads.

    With different head counts both are first averaged over heads.

    Example:
        >>> p = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
        >>> float(attention_probability_loss(p, p))
        0.0
    """
    if student_probs.shape[1] != teacher_probs.shape[1]:
        student_probs = student_probs.mean(dim=1, keepdim=True)
        teacher_probs = teacher_probs.mean(dim=1, keepdim=True)
    if student_probs.shape != teacher_probs.shape:
        raise ConfigError(
            f"distill: attention maps differ: student {tuple(student_probs.shape)}, "
            f"teacher {tuple(teacher_probs.shape)}"
        )
    # xlogy: masked (zero-probability) entries contribute 0, not NaN.
    t = teacher_probs.float()
    s = student_probs.float().clamp(min=1e-12)
    rows = (torch.xlogy(t, t) - t * s.log()).sum(dim=-1)
    return rows.mean()
