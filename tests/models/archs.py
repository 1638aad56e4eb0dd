"""The architectures of the model matrix (issue 20): real classes of torchvision, timm and
Hugging Face transformers, in tiny configurations, with seeded random weights.

Nothing is downloaded: every model is built from its library's own class with `weights=None` /
a config object. Sizes are chosen for CI: each forward takes a few milliseconds on one thread
(image models at 32x32 or 64x64, transformers with hidden size 32 and 2 layers), while keeping
the structure that makes each architecture what it is (grouped convolutions, channel shuffle,
squeeze-excitation, fused qkv, grouped-query attention, attention-bias caches, ...).

Each `Arch` is one row of the matrix: `build()` returns the model in eval mode, `inputs()` its
example inputs (a tuple of tensors, passed positionally), `output(y)` the tensor the checks
compare (the logits of a Hugging Face output object).

Example:
    >>> arch = ARCHS["resnet18"]
    >>> tuple(arch.output(arch.build()(*arch.inputs())).shape)
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tests.models._torchvision import timm, torchvision

Library = Literal["torchvision", "timm", "transformers"]
Kind = Literal["image", "text"]

BATCH = 2
SEQ = 8
VOCAB = 128


@dataclass(frozen=True)
class Arch:
    """One architecture of the matrix."""

    name: str
    library: Library
    kind: Kind
    attention: bool
    make: Callable[[], nn.Module]
    shape: tuple[int, ...] = ()  # image input (C, H, W); text models take (SEQ,) token ids
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        """The model with seeded random weights, in eval mode."""
        torch.manual_seed(seed)
        model = self.make()
        # Random BatchNorm statistics, so folding or calibrating them is not trivially exact.
        with torch.no_grad():
            # Zero-initialised weights (torchvision ViT's head) would make every output 0 and
            # every relative error undefined: random values as a trained model would have.
            for p in model.parameters():
                if p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 0.02)
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    m.running_mean.uniform_(-0.1, 0.1)
                    assert m.running_var is not None
                    m.running_var.uniform_(0.5, 1.5)
        return model.eval()

    def inputs(self, seed: int = 1, batch: int = BATCH) -> tuple[Tensor, ...]:
        """Example inputs: images in [-1, 1) or token ids in [0, VOCAB)."""
        g = torch.Generator().manual_seed(seed)
        if self.kind == "image":
            return (torch.rand(batch, *self.shape, generator=g) * 2 - 1,)
        return (torch.randint(0, VOCAB, (batch, SEQ), generator=g),)

    @staticmethod
    def output(y: Any) -> Tensor:
        """The tensor to compare: the model's output, or its logits / last hidden state."""
        if isinstance(y, Tensor):
            return y
        for key in ("logits", "last_hidden_state"):
            value = getattr(y, key, None)
            if isinstance(value, Tensor):
                return value
        if isinstance(y, (tuple, list)) and isinstance(y[0], Tensor):
            return y[0]
        raise TypeError(f"no tensor output in {type(y).__name__}")


# --- torchvision -----------------------------------------------------------------------------


def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return getattr(torchvision().models, name)(weights=None, num_classes=10, **kwargs)  # type: ignore[no-any-return]

    return make


def _tv_vit() -> nn.Module:
    tv = torchvision()
    return tv.models.VisionTransformer(  # type: ignore[no-any-return]
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip


def _tv_swin() -> nn.Module:
    tv = torchvision()
    return tv.models.SwinTransformer(  # type: ignore[no-any-return]
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
        num_classes=10,
    )  # fmt: skip


def _tv_convnext() -> nn.Module:
    tv = torchvision()
    from torchvision.models.convnext import CNBlockConfig

    settings = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
    return tv.models.ConvNeXt(settings, num_classes=10)  # type: ignore[no-any-return]


# --- timm ------------------------------------------------------------------------------------


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return timm().create_model(name, pretrained=False, num_classes=10, **kwargs)  # type: ignore[no-any-return]

    return make


def _timm_mixer() -> nn.Module:
    timm()
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=32)


def _timm_vit() -> nn.Module:
    timm()
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10
    )


def _timm_levit() -> nn.Module:
    timm()
    from timm.models.levit import Levit

    return Levit(
        img_size=64, num_classes=10, embed_dim=(32, 48), key_dim=8, num_heads=(2, 3),
        depth=(1, 1), down_op="subsample",
    )  # fmt: skip


# --- transformers ----------------------------------------------------------------------------

_TINY = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64}


def _hf(model_cls: str, config_cls: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        config = getattr(transformers, config_cls)(**kwargs)
        return getattr(transformers, model_cls)(config)  # type: ignore[no-any-return]

    return make


_DECODER = {**_TINY, "num_attention_heads": 4, "max_position_embeddings": 64}
_GQA = {**_DECODER, "num_key_value_heads": 2}

_BERT = {**_TINY, "num_attention_heads": 4, "max_position_embeddings": 64}
_GPT2 = {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
_GPT2 |= {"bos_token_id": 0, "eos_token_id": 0}  # GPT-2's default ids lie outside VOCAB
_OPT = {**_DECODER, "ffn_dim": 64, "word_embed_proj_dim": 32}
_BART = {"vocab_size": VOCAB, "d_model": 32, "encoder_layers": 1, "decoder_layers": 1}
_BART |= {"encoder_attention_heads": 4, "decoder_attention_heads": 4, "max_position_embeddings": 64}
_BART |= {"encoder_ffn_dim": 64, "decoder_ffn_dim": 64}
_T5 = {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
_VIT = {**_TINY, "num_attention_heads": 4, "image_size": 32, "patch_size": 8, "num_labels": 10}
_IMG = (3, 32, 32)
_TV, _TM, _HF = "torchvision", "timm", "transformers"

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("resnet18", _TV, "image", False, _tv("resnet18"), _IMG),
        Arch("mobilenet_v3_small", _TV, "image", False, _tv("mobilenet_v3_small"), _IMG),
        Arch("mnasnet0_5", _TV, "image", False, _tv("mnasnet0_5"), _IMG),
        Arch("shufflenet_v2_x0_5", _TV, "image", False, _tv("shufflenet_v2_x0_5"), _IMG),
        Arch("regnet_x_400mf", _TV, "image", False, _tv("regnet_x_400mf"), _IMG),
        Arch("efficientnet_b0", _TV, "image", False, _tv("efficientnet_b0"), _IMG),
        Arch("tv_vit", _TV, "image", True, _tv_vit, _IMG),
        Arch("tv_swin", _TV, "image", True, _tv_swin, _IMG),
        Arch("tv_convnext", _TV, "image", False, _tv_convnext, _IMG),
        Arch("timm_mixer", _TM, "image", False, _timm_mixer, _IMG),
        Arch("timm_levit", _TM, "image", True, _timm_levit, (3, 64, 64)),
        Arch("timm_ghostnet", _TM, "image", False, _timm("ghostnet_050"), _IMG),
        Arch("timm_vit", _TM, "image", True, _timm_vit, _IMG),
        Arch("hf_bert", _HF, "text", True, _hf("BertModel", "BertConfig", **_BERT)),
        Arch("hf_gpt2", _HF, "text", True, _hf("GPT2LMHeadModel", "GPT2Config", **_GPT2)),
        Arch("hf_llama", _HF, "text", True, _hf("LlamaForCausalLM", "LlamaConfig", **_GQA)),
        Arch("hf_mistral", _HF, "text", True, _hf("MistralForCausalLM", "MistralConfig", **_GQA)),
        Arch("hf_qwen2", _HF, "text", True, _hf("Qwen2ForCausalLM", "Qwen2Config", **_GQA)),
        Arch("hf_opt", _HF, "text", True, _hf("OPTForCausalLM", "OPTConfig", **_OPT)),
        Arch(
            "hf_bart",
            _HF,
            "text",
            True,
            _hf("BartForConditionalGeneration", "BartConfig", **_BART),
        ),
        Arch("hf_t5", _HF, "text", True, _hf("T5EncoderModel", "T5Config", **_T5)),
        Arch(
            "hf_vit",
            _HF,
            "image",
            True,
            _hf("ViTForImageClassification", "ViTConfig", **_VIT),
            _IMG,
        ),
    ]
}

ATTENTION = [name for name, a in ARCHS.items() if a.attention]
IMAGE = [name for name, a in ARCHS.items() if a.kind == "image"]
