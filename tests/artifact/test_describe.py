from __future__ import annotations

import pytest
import torch
from torch import nn

from netchisel.artifact.describe import describe, rebuild
from netchisel.artifact.values import decode_value, encode_value
from netchisel.core.errors import ArtifactError


@pytest.mark.parametrize(
    "value",
    [
        1,
        2.5,
        "x",
        None,
        True,
        (1, 2),
        [1, (2, 3)],
        {"a": (1,)},
        torch.bfloat16,
        float("inf"),
        nn.functional.relu,
        {1, 2},
    ],
)
def test_values_round_trip(value: object) -> None:
    assert decode_value(encode_value(value)) == value


def test_unstorable_value_is_refused() -> None:
    with pytest.raises(TypeError):
        encode_value(object())


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
        nn.ConvTranspose2d(4, 2, 3, output_padding=1, stride=2),
        nn.MultiheadAttention(16, 4, batch_first=True),
        nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation="gelu"),
        nn.GRU(4, 8),
    ],
)
def test_rebuilt_module_computes_the_same(module: nn.Module) -> None:
    copy = rebuild(describe(module))
    copy.load_state_dict(module.state_dict())
    module.eval()
    copy.eval()
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        x = torch.randn(2, 4, 9, 9)
        assert torch.equal(module(x), copy(x))
    elif isinstance(module, nn.MultiheadAttention):
        x = torch.randn(2, 5, 16)
        assert torch.equal(module(x, x, x)[0], copy(x, x, x)[0])
    elif isinstance(module, nn.GRU):
        x = torch.randn(3, 2, 4)
        assert torch.equal(module(x)[0], copy(x)[0])
    else:
        x = torch.randn(2, 5, 16)
        assert torch.equal(module(x), copy(x))


def test_a_partial_of_a_layer_class_round_trips() -> None:
    """torchvision's ViT keeps `norm_layer = partial(nn.LayerNorm, eps=1e-6)`."""
    import functools

    value = functools.partial(nn.LayerNorm, eps=1e-6, elementwise_affine=True)
    encoded = encode_value(value)
    assert encoded == {
        "__partial__": {
            "func": {"__callable__": "torch.nn.modules.normalization:LayerNorm"},
            "args": [],
            "keywords": {"eps": 1e-6, "elementwise_affine": True},
        }
    }
    back = decode_value(encoded)
    assert back.func is nn.LayerNorm and back.args == () and back.keywords == value.keywords
    assert back(8).eps == 1e-6


def test_a_partial_with_a_callable_argument_is_not_stored() -> None:
    import functools

    with pytest.raises(TypeError, match="not plain data"):
        encode_value(functools.partial(nn.LayerNorm, nn.functional.relu))


def test_a_dict_cache_of_tensors_is_stored_empty() -> None:
    from tests.artifact._user_models import Rotary

    module = Rotary()
    module(torch.ones(4))
    assert module.scale_cache
    assert describe(module)["attrs"] == {"scale_cache": {"__dict__": {}}}


def test_a_dict_of_tensors_not_named_a_cache_is_refused() -> None:
    from netchisel.core.errors import ModelError

    module = nn.Linear(2, 2)
    module.table = {"a": torch.zeros(1)}  # type: ignore[assignment]
    with pytest.raises(ModelError, match="attribute 'table'"):
        describe(nn.Sequential(module))


def test_a_hugging_face_config_is_stored_as_its_json() -> None:
    transformers = pytest.importorskip("transformers")
    from netchisel.artifact.trust import Allowed

    config = transformers.BertConfig(hidden_size=8, num_attention_heads=2)
    config._attn_implementation_internal = "eager"
    encoded = encode_value(config)
    inner = encoded["__config__"]
    assert inner["class"] == "transformers.models.bert.configuration_bert:BertConfig"
    with pytest.raises(ArtifactError, match=r"configuration class .* not trusted"):
        decode_value(encoded)
    allowed = Allowed.with_trust([transformers.BertModel])
    back = decode_value(encoded, allowed)
    assert type(back) is transformers.BertConfig and back.hidden_size == 8
    assert back._attn_implementation == "eager"
    assert decode_value(encoded, allowed) is back  # one object per distinct config in a load
