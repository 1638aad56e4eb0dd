"""Exit heads: the smallest classifier that reads a backbone's intermediate features.

A conv feature map (N, C, L) or (N, C, H, W) is pooled to `pool` positions per spatial axis
(global average pooling for `pool=1`, as BranchyNet's and Shallow-Deep Networks' internal
classifiers reduce features before their linear layer) and fed to one Linear; features that are
already (N, F) get one Linear. Token features (N, T, H) of a transformer's layer are read at one
position (`token`: "first", BERT's [CLS] or ViT's class token, as DeeBERT's off-ramps read it;
"last", the position a causal decoder has seen everything at; or "mean" over positions),
layer-normalised (a pre-norm layer's output is not) and fed to one Linear. With `hidden` > 0
that Linear becomes two with a ReLU between (`hidden` units; BranchyNet's branches have more
than one layer). Heads are plain torch layers in an `nn.Sequential`, so they save, load and
count like any other layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from netchisel.core.errors import ConfigError

TOKENS = ("first", "last", "mean")


class Token(nn.Module):
    """(N, T, H) -> (N, H): the features at the first or the last position, or their mean.

    Example:
        >>> import torch
        >>> Token("last")(torch.arange(6.0).view(1, 3, 2)).tolist()
        [[4.0, 5.0]]
    """

    def __init__(self, how: str = "first") -> None:
        super().__init__()
        if how not in TOKENS:
            raise ConfigError(f"dynamic.early_exit: token must be one of {TOKENS}, got {how!r}")
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "mean":
            return x.mean(1)
        return x[:, 0] if self.how == "first" else x[:, -1]

    def check_loaded(self) -> None:
        """`how` is one of `TOKENS` (a manifest sets it)."""
        if self.how not in TOKENS:
            raise ConfigError(
                f"dynamic.early_exit: token must be one of {TOKENS}, got {self.how!r}"
            )


def make_head(
    feature: Tensor,
    num_classes: int,
    pool: int,
    where: str,
    hidden: int = 0,
    token: str | None = None,
) -> nn.Sequential:
    """A head for features shaped like `feature` (a batch), ending in `num_classes` logits;
    3-D features read as tokens at `token` where given (else as a 1-D conv's channels).

    Example:
        >>> import torch
        >>> head = make_head(torch.zeros(2, 8, 5, 5), 10, 1, "x")
        >>> head(torch.zeros(3, 8, 5, 5)).shape, sum(p.numel() for p in head.parameters())
        (torch.Size([3, 10]), 90)
        >>> sum(p.numel() for p in make_head(torch.zeros(2, 8), 10, 1, "x", hidden=4).parameters())
        86
        >>> make_head(torch.zeros(2, 5, 8), 3, 1, "x", token="first")(torch.zeros(4, 5, 8)).shape
        torch.Size([4, 3])
    """
    if not isinstance(feature, Tensor) or not feature.is_floating_point():
        what = str(feature.dtype) if isinstance(feature, Tensor) else type(feature).__name__
        raise ConfigError(
            f"dynamic.early_exit: the output of {where!r} is a {what}, not a "
            "float tensor, so it cannot feed an exit head; choose another module"
        )
    shape = tuple(feature.shape)
    if token is not None and feature.dim() == 3:
        width = shape[2]
        return nn.Sequential(
            Token(token), nn.LayerNorm(width), *_classifier(width, num_classes, hidden)
        )
    if feature.dim() == 2:
        return nn.Sequential(*_classifier(shape[1], num_classes, hidden))
    if feature.dim() not in (3, 4):
        raise ConfigError(
            f"dynamic.early_exit: the output of {where!r} has shape {shape}, which cannot feed "
            "an exit head (it needs (N, features), (N, C, L) or (N, C, H, W)); choose another "
            "module"
        )
    spatial = feature.dim() - 2
    pooling: nn.Module = (
        nn.AdaptiveAvgPool1d(pool) if spatial == 1 else nn.AdaptiveAvgPool2d((pool, pool))
    )
    features = shape[1] * pool**spatial
    return nn.Sequential(pooling, nn.Flatten(), *_classifier(features, num_classes, hidden))


def _classifier(features: int, num_classes: int, hidden: int) -> list[nn.Module]:
    if hidden == 0:
        return [nn.Linear(features, num_classes)]
    return [nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
