"""Intermediate features for distillation: forward hooks that record them, and adapters.

A `FeatureRecorder` hooks named submodules and keeps what each produced in the last forward:
its output (hints, spatial attention maps), or, for a transformer attention module (one with
`q_proj`, `k_proj` and `n_head`, like the zoo gpt's `CausalSelfAttention`), its softmax
attention probabilities, recomputed from the module's input because fused attention
(`scaled_dot_product_attention`) never materialises them.

`make_adapter` builds the learned map (FitNets' regressor) from a student feature's width to a
teacher feature's: a Linear over the last dimension, or a 1x1 convolution over channels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from netchisel.core.errors import ConfigError
from netchisel.distill.losses import attention_probabilities


def is_attention_module(module: nn.Module) -> bool:
    """True for modules whose attention probabilities can be recomputed (q_proj, k_proj, n_head).

    Example:
        >>> is_attention_module(nn.Linear(2, 2))
        False
    """
    return all(hasattr(module, a) for a in ("q_proj", "k_proj", "n_head"))


def attention_of(module: nn.Module, x: Tensor) -> Tensor:
    """The causal attention probabilities (B, H, T, T) that `module` computes on input `x`."""
    b, t, _ = x.shape
    heads = int(module.n_head)  # type: ignore[arg-type]
    q = module.q_proj(x).view(b, t, heads, -1).transpose(1, 2)  # type: ignore[operator]
    k = module.k_proj(x).view(b, t, heads, -1).transpose(1, 2)  # type: ignore[operator]
    causal = bool(getattr(module, "is_causal", True))
    return attention_probabilities(q, k, causal=causal)


def submodule(model: nn.Module, name: str, where: str) -> nn.Module:
    """`model.get_submodule(name)`, or a ConfigError naming the field and a few valid names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ConfigError(
            f"{where}: the model has no module {name!r} (modules include: {', '.join(names)})"
        ) from None


class FeatureRecorder:
    """Forward hooks on named modules; `features[name]` is what the last forward produced.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> import torch
        >>> with FeatureRecorder(net, [("0", "output")], "hints") as rec:
        ...     _ = net(torch.zeros(4, 2))
        ...     rec.features["0"].shape
        torch.Size([4, 3])
    """

    def __init__(self, model: nn.Module, wanted: Iterable[tuple[str, str]], where: str) -> None:
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name, what in wanted:
            module = submodule(model, name, where)
            if what == "attention" and is_attention_module(module):
                hook = self._attention_hook(name)
            else:
                hook = self._output_hook(name)
            self._handles.append(module.register_forward_hook(hook))

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.features[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def _attention_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.features[name] = attention_of(module, args[0])

        return hook

    def clear(self) -> None:
        self.features.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.features.clear()

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def make_adapter(student: Tensor, teacher: Tensor, where: str) -> nn.Module:
    """The learned map from a student feature's width to the teacher's (Identity if equal).

    (N, C, H, W) features get a 1x1 Conv2d over channels (spatial sizes must agree); other
    features a Linear over the last dimension (all other dimensions must agree).

    Example:
        >>> import torch
        >>> make_adapter(torch.zeros(2, 8), torch.zeros(2, 32), "hints")
        Linear(in_features=8, out_features=32, bias=True)
    """
    if student.shape == teacher.shape:
        return nn.Identity()
    s, t = tuple(student.shape), tuple(teacher.shape)
    if student.dim() == 4 and teacher.dim() == 4 and s[2:] == t[2:]:
        return nn.Conv2d(s[1], t[1], kernel_size=1)
    if student.dim() == teacher.dim() and student.dim() in (2, 3) and s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])
    raise ConfigError(
        f"{where}: cannot map student feature {s} to teacher feature {t} (only the channel or "
        "last dimension may differ): choose layers of matching spatial or sequence size"
    )
