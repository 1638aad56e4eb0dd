"""count_flops against hand formulas written out here, independently of the counter's helpers.

Conventions under test (docs/measurement.md): 1 MAC = 2 FLOPs; bias +1 per output element;
elementwise 1 per output element; softmax 5 per element; normalisation statistics 5 per
element + 4 per group, eval batch norm 2 per element + 2 per channel, affine +1 per element
each; pooling 1 per element read (+1 divide per output for averages).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from netchisel.measure.flops import FlopCount, count_flops

SOFTMAX = 5


def _count_unfused(model: nn.Module, inputs: object) -> FlopCount:
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return count_flops(model, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def _conv_out(size: int, kernel: int, stride: int = 1, pad: int = 0, dil: int = 1) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def _nonzero(d: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in d.items() if v}


class _Fn(nn.Module):
    """Wraps a function so count_flops can run it as a model."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Tensor) -> object:
        return self.fn(*args)  # type: ignore[operator]


# -- matmuls and convolutions -----------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 12), (2, 7, 12)])
def test_linear(bias: bool, shape: tuple[int, ...]) -> None:
    rows = math.prod(shape[:-1])
    count = count_flops(nn.Linear(12, 9, bias=bias), torch.randn(shape))
    macs = rows * 12 * 9
    assert count.macs == macs
    assert count.flops == 2 * macs + (rows * 9 if bias else 0)


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv1d(3, 8, 5), (2, 3, 20)),
        (nn.Conv2d(3, 8, 3), (2, 3, 16, 12)),
        (nn.Conv3d(2, 4, (3, 2, 3)), (1, 2, 6, 7, 8)),
        (nn.Conv2d(8, 12, 3, groups=4), (2, 8, 10, 10)),  # grouped
        (nn.Conv2d(16, 16, 3, groups=16, bias=False), (2, 16, 9, 9)),  # depthwise
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (1, 4, 15, 15)),  # strided, padded
        (nn.Conv2d(4, 6, 3, dilation=2, padding=2), (1, 4, 11, 13)),  # dilated
        (nn.Conv2d(4, 6, (5, 3), stride=(3, 1), padding=(2, 0), dilation=(1, 2)), (2, 4, 17, 11)),
    ],
)
def test_convolution(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, shape: tuple[int, ...]) -> None:
    assert isinstance(conv.padding, tuple)
    out_spatial = [
        _conv_out(n, k, s, p, d)
        for n, k, s, p, d in zip(
            shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
        )
    ]
    out_elements = shape[0] * conv.out_channels * math.prod(out_spatial)
    macs = out_elements * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    count = count_flops(conv, torch.randn(shape))
    assert count.macs == macs
    assert count.flops == 2 * macs + (out_elements if conv.bias is not None else 0)


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (2, 2)])
def test_conv_transpose(stride: int, groups: int) -> None:
    conv = nn.ConvTranspose2d(4, 6, 3, stride=stride, padding=1, output_padding=stride - 1,
                              groups=groups)  # fmt: skip
    n, h, w = 2, 7, 5
    out_h, out_w = ((h - 1) * stride - 2 + 3 + stride - 1), ((w - 1) * stride - 2 + 3 + stride - 1)
    # Each input element meets every tap of its group's C_out/groups output channels.
    macs = n * 4 * h * w * (6 // groups) * 9
    count = count_flops(conv, torch.randn(n, 4, h, w))
    assert count.macs == macs
    assert count.flops == 2 * macs + n * 6 * out_h * out_w


def test_matmul_ops() -> None:
    a, b = torch.randn(3, 5, 7), torch.randn(3, 7, 4)
    bias = torch.randn(5, 4)
    count = count_flops(
        _Fn(lambda a, b, c: (a @ b, torch.baddbmm(c, a, b, alpha=2.0))), (a, b, bias)
    )
    macs = 3 * 5 * 7 * 4
    assert count.macs == 2 * macs
    # baddbmm: the bias add and the alpha scale are one FLOP per output element each
    assert count.flops == 2 * macs + (2 * macs + 2 * 3 * 5 * 4)
    assert count.flops_by_op == {"aten.bmm": 2 * macs, "aten.baddbmm": 2 * macs + 120}


def test_einsum_counts_its_contraction() -> None:
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    count = count_flops(_Fn(lambda a, b: torch.einsum("bij,bjk->bik", a, b)), (a, b))
    assert count.macs == 2 * 3 * 4 * 5


# -- normalisation ----------------------------------------------------------------------------


def test_batch_norm_eval() -> None:
    bn = nn.BatchNorm2d(6)
    x = torch.randn(4, 6, 5, 3)
    n = x.numel()
    # (x - mean) * rsqrt(var + eps): 2 per element, 2 per channel; weight and bias: 1 each
    assert count_flops(bn, x).flops == 2 * n + 2 * 6 + 2 * n


def test_batch_norm_batch_statistics() -> None:
    # No running statistics: even in eval the batch statistics are computed.
    bn = nn.BatchNorm2d(6, track_running_stats=False)
    x = torch.randn(4, 6, 5, 3)
    n = x.numel()
    assert count_flops(bn, x).flops == 5 * n + 4 * 6 + 2 * n


def test_layer_norm() -> None:
    x = torch.randn(3, 7, 16)
    n, rows = x.numel(), 3 * 7
    assert count_flops(nn.LayerNorm(16), x).flops == 5 * n + 4 * rows + 2 * n
    no_affine = nn.LayerNorm(16, elementwise_affine=False)
    assert count_flops(no_affine, x).flops == 5 * n + 4 * rows
    # normalising over the last two dims: rows are the leading dims
    assert count_flops(nn.LayerNorm((7, 16)), x).flops == 5 * n + 4 * 3 + 2 * n


def test_group_norm() -> None:
    x = torch.randn(2, 8, 5, 5)
    n = x.numel()
    assert count_flops(nn.GroupNorm(4, 8), x).flops == 5 * n + 4 * (2 * 4) + 2 * n


def test_instance_norm() -> None:
    x = torch.randn(2, 8, 5, 5)
    n = x.numel()
    assert count_flops(nn.InstanceNorm2d(8, affine=True), x).flops == 5 * n + 4 * (2 * 8) + 2 * n


def test_rms_norm() -> None:
    # x * rsqrt(mean(x^2) + eps) * w: square, mean's add, normalise, weight per element;
    # mean's divide, eps add, rsqrt per row.
    x = torch.randn(3, 5, 16)
    n, rows = x.numel(), 15
    assert count_flops(nn.RMSNorm(16), x).flops == 4 * n + 3 * rows


# -- pooling ----------------------------------------------------------------------------------


def _window_reads_2d(
    h: int, w: int, kernel: int, stride: int, pad: int, out: tuple[int, int]
) -> int:
    # Brute force: every (output, tap) pair whose input position lies inside the image.
    return sum(
        1
        for oh in range(out[0])
        for ow in range(out[1])
        for kh in range(kernel)
        for kw in range(kernel)
        if 0 <= oh * stride - pad + kh < h and 0 <= ow * stride - pad + kw < w
    )


@pytest.mark.parametrize(("kernel", "stride", "pad", "ceil"), [(2, 2, 0, False), (3, 2, 1, True)])
def test_max_and_avg_pool(kernel: int, stride: int, pad: int, ceil: bool) -> None:
    x = torch.randn(2, 3, 9, 8)
    pools = (
        nn.MaxPool2d(kernel, stride, pad, ceil_mode=ceil),
        nn.AvgPool2d(kernel, stride, pad, ceil),
    )
    out = pools[0](x).shape[-2:]
    reads = 2 * 3 * _window_reads_2d(9, 8, kernel, stride, pad, (out[0], out[1]))
    if pad == 0:
        assert reads == 2 * 3 * out[0] * out[1] * kernel * kernel
    outputs = 2 * 3 * out[0] * out[1]
    assert count_flops(pools[0], x).flops == reads
    assert count_flops(pools[1], x).flops == reads + outputs


def test_adaptive_avg_pool_non_divisible() -> None:
    x = torch.randn(2, 3, 7, 5)
    out_h, out_w = 4, 3
    # PyTorch's windows: [floor(i * in / out), ceil((i + 1) * in / out))
    h_windows = [math.ceil((i + 1) * 7 / out_h) - math.floor(i * 7 / out_h) for i in range(out_h)]
    w_windows = [math.ceil((j + 1) * 5 / out_w) - math.floor(j * 5 / out_w) for j in range(out_w)]
    assert h_windows == [2, 3, 3, 2] and w_windows == [2, 3, 2]  # overlapping, uneven
    reads = 2 * 3 * sum(a * b for a in h_windows for b in w_windows)
    outputs = 2 * 3 * out_h * out_w
    assert count_flops(nn.AdaptiveAvgPool2d((out_h, out_w)), x).flops == reads + outputs
    assert count_flops(nn.AdaptiveMaxPool2d((out_h, out_w)), x).flops == reads
    # output 1x1 runs as a mean: the same count, all elements + one divide per output
    assert count_flops(nn.AdaptiveAvgPool2d(1), x).flops == x.numel() + 2 * 3


# -- elementwise, softmax, reductions, losses -------------------------------------------------


@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.ReLU6()])
def test_activations(act: nn.Module) -> None:
    x = torch.randn(3, 4, 5)
    assert count_flops(act, x).flops == x.numel()


def test_in_place_and_broadcast_elementwise() -> None:
    def fn(x: Tensor, b: Tensor) -> Tensor:
        y = x + b  # broadcast: one FLOP per output element
        y.relu_()
        return y.mul_(2.0).add(b, alpha=3.0)  # alpha: a second FLOP per element

    x, b = torch.randn(4, 6), torch.randn(6)
    count = count_flops(_Fn(fn), (x, b))
    assert count.flops_by_op == {"aten.add": 24 + 48, "aten.relu_": 24, "aten.mul_": 24}


def test_softmax() -> None:
    x = torch.randn(3, 4, 10)
    assert count_flops(nn.Softmax(-1), x).flops == SOFTMAX * x.numel()
    # log_softmax: the log runs once per row
    assert count_flops(nn.LogSoftmax(1), x).flops == SOFTMAX * x.numel() + 3 * 10


def test_reductions() -> None:
    x = torch.randn(4, 5, 6)
    n = x.numel()
    count = count_flops(_Fn(lambda x: (x.sum(), x.mean(-1), x.amax(0), x.var(-1), x.std(-1))), x)
    assert count.flops_by_op == {
        "aten.sum": n,
        "aten.mean": n + 20,  # accumulate, then one divide per output
        "aten.amax": n,
        "aten.var": 4 * n + 2 * 20,
        "aten.std": 4 * n + 3 * 20,
    }


def test_cross_entropy() -> None:
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    target[0] = -100  # ignored: not counted
    count = count_flops(nn.CrossEntropyLoss(), (logits, target))
    # log_softmax, then per counted target one negate-accumulate, then the mean's divide
    assert count.flops == SOFTMAX * 40 + 8 + 7 + 1


def test_zero_cost_ops() -> None:
    def fn(x: Tensor, idx: Tensor) -> Tensor:
        y = torch.cat([x, x]).view(4, -1).transpose(0, 1).contiguous()
        return y[idx].clone().to(torch.float64).expand(3, -1, -1).flatten()

    count = count_flops(_Fn(fn), (torch.randn(2, 6), torch.tensor([0, 2])))
    emb = count_flops(nn.Embedding(10, 4), torch.tensor([[1, 2, 3]]))
    assert (count.flops, count.uncounted_ops, emb.flops, emb.uncounted_ops) == (0, (), 0, ())


def test_uncounted_op_is_reported() -> None:
    count = count_flops(_Fn(lambda x: torch.fft.rfft(x).abs()), torch.randn(4, 16))
    assert count.uncounted_ops == ("aten._fft_r2c",)
    assert count.flops == 4 * 9  # the abs is still counted


# -- attention --------------------------------------------------------------------------------


def _sdpa_hand(b: int, h: int, q_len: int, k_len: int, e: int, ev: int, mask: bool) -> int:
    pairs = b * h * q_len * k_len
    # Q K^T, scale, [mask add], softmax, P V
    return 2 * pairs * e + pairs + (pairs if mask else 0) + SOFTMAX * pairs + 2 * pairs * ev


def test_sdpa() -> None:
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    sdpa = _Fn(F.scaled_dot_product_attention)
    plain = count_flops(sdpa, (q, k, v))
    assert plain.flops == _sdpa_hand(2, 3, 10, 12, 8, 8, mask=False)
    assert plain.macs == 2 * 3 * 10 * 12 * (8 + 8)
    assert plain.flops_by_op == {"aten._scaled_dot_product_flash_attention_for_cpu": plain.flops}
    float_mask = count_flops(sdpa, (q, k, v, torch.randn(10, 12)))
    assert float_mask.flops == _sdpa_hand(2, 3, 10, 12, 8, 8, mask=True)
    # a bool mask is first turned into an additive one: one `where` per mask element
    bool_mask = count_flops(sdpa, (q, k, v, torch.rand(10, 12) > 0.5))
    assert bool_mask.flops == _sdpa_hand(2, 3, 10, 12, 8, 8, mask=True) + 10 * 12


def test_sdpa_causal_counts_kept_pairs() -> None:
    q = torch.randn(1, 2, 6, 4)
    count = count_flops(_Fn(lambda q: F.scaled_dot_product_attention(q, q, q, is_causal=True)), q)
    kept = 2 * (1 + 2 + 3 + 4 + 5 + 6)  # query i attends to keys 0..i
    assert count.flops == kept * (2 * 4 + 1 + SOFTMAX + 2 * 4)


def test_sdpa_math_backend_counts_its_decomposition() -> None:
    # Unbatched 3-D inputs take the math path: sqrt(scale) on q and on k, bmm, softmax, bmm.
    q = torch.randn(3, 5, 4)
    count = count_flops(_Fn(F.scaled_dot_product_attention), (q, q, q))
    pairs = 3 * 5 * 5
    assert count.flops == 2 * 3 * 5 * 4 + 2 * pairs * 4 + SOFTMAX * pairs + 2 * pairs * 4


_ATEN = torch.ops.aten


@pytest.mark.parametrize(
    ("kernel", "mask", "kept_per_head"),
    [
        (lambda q, k, b: _ATEN._scaled_dot_product_flash_attention(q, k, k), False, 120),
        (
            lambda q, k, b: _ATEN._scaled_dot_product_efficient_attention(q, k, k, b, False),
            True,
            120,
        ),
        (lambda q, k, b: _ATEN._scaled_dot_product_cudnn_attention(q, k, k, b, False), True, 120),
        # causal, top-left aligned: query i sees keys 0..i
        (
            lambda q, k, b: _ATEN._scaled_dot_product_efficient_attention(
                q, k, k, None, False, is_causal=True
            ),
            False,
            sum(range(1, 11)),
        ),
        # (B, L, H, E) kernel, causal bottom-right aligned (mask type 2): query i sees 0..i+2
        (
            lambda q, k, b: _ATEN._efficient_attention_forward(
                q.transpose(1, 2),
                k.transpose(1, 2),
                k.transpose(1, 2),
                None,
                None,
                None,
                None,
                None,
                0.0,
                2,
            ),
            False,
            sum(range(3, 13)),
        ),
    ],
)
def test_gpu_attention_kernels_on_meta(kernel: object, mask: bool, kept_per_head: int) -> None:
    # The CUDA-only SDPA variants have meta kernels: their formulas only need shapes.
    q, k = torch.empty(2, 3, 10, 8, device="meta"), torch.empty(2, 3, 12, 8, device="meta")
    bias = torch.empty(2, 3, 10, 12, device="meta")
    count = count_flops(_Fn(kernel), (q, k, bias))
    pairs = 2 * 3 * kept_per_head
    assert count.macs == 2 * pairs * 8
    assert count.flops == 4 * pairs * 8 + pairs * (1 + SOFTMAX + mask)


def _mha_hand(b: int, length: int, e: int, h: int, need_weights: bool) -> int:
    tokens, pairs = b * length, b * h * length * length
    in_proj = 2 * tokens * e * 3 * e + tokens * 3 * e
    out_proj = 2 * tokens * e * e + tokens * e
    head = e // h
    scale = tokens * e if need_weights else pairs  # unfused: q scaled vs. scores scaled
    attention = 2 * pairs * head + scale + SOFTMAX * pairs + 2 * pairs * head
    average = pairs + b * length * length if need_weights else 0
    return in_proj + attention + out_proj + average


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_fast_path(need_weights: bool) -> None:
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)

        def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
            out: Tensor = self.attn(x, x, x, need_weights=need_weights, key_padding_mask=mask)[0]
            return out

    model, x = SelfAttention(), torch.randn(2, 9, 32)
    fast = count_flops(model, x)
    assert "aten._native_multi_head_attention" in fast.flops_by_op
    assert fast.flops == _mha_hand(2, 9, 32, 4, need_weights)
    unfused = _count_unfused(model, x)
    assert "aten._native_multi_head_attention" not in unfused.flops_by_op
    assert (fast.flops, fast.macs, fast.flops_by_module) == (
        unfused.flops,
        unfused.macs,
        unfused.flops_by_module,
    )
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, -2:] = True
    masked = count_flops(model, (x, padding))
    assert masked.flops == _count_unfused(model, (x, padding)).flops
    # the bool padding mask becomes additive (one fill per element), then one add per score
    assert masked.flops == fast.flops + 2 * 9 + 2 * 4 * 9 * 9


class _AttentionWithMasks(nn.Module):
    def __init__(self, need_weights: bool, average: bool, attn_mask: bool, padding: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.flags = need_weights, average, attn_mask, padding

    def forward(self, x: Tensor) -> Tensor:
        need_weights, average, attn_mask, padding = self.flags
        length = x.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool).triu(1) if attn_mask else None
        pad = torch.zeros(x.shape[:2], dtype=torch.bool)
        pad[0, -2:] = True
        out: Tensor
        out, _ = self.attn(
            x,
            x,
            x,
            need_weights=need_weights,
            average_attn_weights=average,
            attn_mask=mask,
            key_padding_mask=pad if padding else None,
        )
        return out


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=4)))
def test_multihead_attention_fast_path_every_variant(flags: tuple[bool, bool, bool, bool]) -> None:
    model, x = _AttentionWithMasks(*flags), torch.randn(2, 7, 32)
    fast = count_flops(model, x)
    assert "aten._native_multi_head_attention" in fast.flops_by_op
    unfused = _count_unfused(model, x)
    assert (fast.flops, fast.macs) == (unfused.flops, unfused.macs)


def _encoder_layer_hand(b: int, length: int, e: int, h: int, ff: int) -> int:
    tokens = b * length
    layer_norm = 5 * tokens * e + 4 * tokens + 2 * tokens * e
    ffn = (2 * tokens * e * ff + tokens * ff) + tokens * ff + (2 * tokens * ff * e + tokens * e)
    residuals = 2 * tokens * e
    return _mha_hand(b, length, e, h, need_weights=False) + 2 * layer_norm + ffn + residuals


@pytest.mark.parametrize(("norm_first", "activation"), [(False, "relu"), (True, "gelu")])
def test_transformer_encoder_layer_fast_path(norm_first: bool, activation: str) -> None:
    layer = nn.TransformerEncoderLayer(
        64, 4, 128, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first
    )
    x = torch.randn(2, 12, 64)
    fast = count_flops(layer, x)
    assert list(fast.flops_by_op) == ["aten._transformer_encoder_layer_fwd"]
    assert fast.flops == _encoder_layer_hand(2, 12, 64, 4, 128)
    # The same layer unfused (eval, fast path off) runs ~15 separate ops: identical counts,
    # per module too (the fused op's parts go to the submodules that compute them unfused).
    unfused = _count_unfused(layer, x)
    assert "aten._transformer_encoder_layer_fwd" not in unfused.flops_by_op
    assert (fast.flops, fast.macs) == (unfused.flops, unfused.macs)
    assert _nonzero(fast.flops_by_module) == _nonzero(unfused.flops_by_module)
    assert _nonzero(fast.macs_by_module) == _nonzero(unfused.macs_by_module)
    # torch's FlopCounterMode sees the fused op and counts nothing for it
    with torch.no_grad(), FlopCounterMode(display=False) as peer:
        layer.eval()(x)
    assert peer.get_total_flops() < fast.flops // 10


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=4)))
def test_transformer_encoder_layer_every_variant(flags: tuple[bool, bool, bool, bool]) -> None:
    norm_first, gelu, causal, padding = flags
    layer = nn.TransformerEncoderLayer(
        32, 4, 64, activation="gelu" if gelu else "relu", batch_first=True, norm_first=norm_first
    )
    x = torch.randn(2, 7, 32)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, -2:] = True
    mask = torch.ones(7, 7, dtype=torch.bool).triu(1)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(  # type: ignore[no-any-return]
                x, src_mask=mask if causal else None, src_key_padding_mask=pad if padding else None
            )

    fast = count_flops(Wrapped(), x)
    assert "aten._transformer_encoder_layer_fwd" in fast.flops_by_op
    unfused = _count_unfused(Wrapped(), x)
    assert (fast.flops, fast.macs) == (unfused.flops, unfused.macs)
    if not (causal and padding):  # with both, the mask-merging add moves (docs/measurement.md)
        assert _nonzero(fast.flops_by_module) == _nonzero(unfused.flops_by_module)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_tensor_encoder_counts_real_tokens() -> None:
    # With a padding mask, nn.TransformerEncoder packs the batch into a nested tensor: only
    # real tokens are computed, as if each sequence ran alone.
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    x = torch.randn(2, 10, 32)
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[0, -4:] = True
    packed = count_flops(encoder, (x, None, padding))
    assert packed.uncounted_ops == ()
    fused = "aten._transformer_encoder_layer_fwd"
    alone = [count_flops(encoder, seq).flops_by_op[fused] for seq in (x[:1, :6], x[1:])]
    assert packed.flops_by_op[fused] == sum(alone)


# -- attribution, dtypes, model state ---------------------------------------------------------


def test_per_module_attribution_is_inclusive() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Sequential(nn.Linear(20, 5)))
    count = count_flops(model, torch.randn(3, 10))
    first, relu, second = 2 * 3 * 10 * 20 + 3 * 20, 3 * 20, 2 * 3 * 20 * 5 + 3 * 5
    assert count.flops_by_module == {
        "": first + relu + second,
        "0": first,
        "1": relu,
        "2": second,
        "2.0": second,
    }
    assert count.macs_by_module == {"": 900, "0": 600, "1": 0, "2": 300, "2.0": 300}
    assert count.flops == sum(count.flops_by_op.values())


def test_dtype_attribution() -> None:
    model = nn.Sequential(nn.Linear(8, 4).to(torch.bfloat16), nn.Flatten())
    count = count_flops(model, torch.randn(2, 8, dtype=torch.bfloat16))
    assert count.flops_by_dtype == {"bfloat16": 2 * 2 * 8 * 4 + 2 * 4}
    assert count.macs_by_dtype == {"bfloat16": 2 * 8 * 4}
    # comparisons produce bool but compute in their inputs' dtype
    cmp = count_flops(
        _Fn(lambda x: torch.where(x > 0, x, 0.0)), torch.randn(5, dtype=torch.float64)
    )
    assert cmp.flops_by_dtype == {"float64": 10}


def test_int8_matmul_dtype() -> None:
    a = torch.randint(-128, 127, (32, 64), dtype=torch.int8)
    b = torch.randint(-128, 127, (64, 32), dtype=torch.int8)
    count = count_flops(_Fn(torch._int_mm), (a, b))
    assert count.macs_by_dtype == {"int8": 32 * 64 * 32}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_dynamic_int8_linear() -> None:
    model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(64, 32)), {nn.Linear})
    count = count_flops(model, torch.randn(4, 64))
    macs = 4 * 64 * 32
    assert count.macs_by_dtype == {"int8": macs}
    # float side: quantise the activation (min, max, scale, shift: 4 per input element);
    # per output: dequantise (2) and bias (1)
    assert count.flops_by_dtype == {"int8": 2 * macs, "float32": 4 * 4 * 64 + 3 * 4 * 32}


def test_inputs_as_tuple_and_dict() -> None:
    class Two(nn.Module):
        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return a * b

    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert count_flops(Two(), (a, b)).flops == 12
    assert count_flops(Two(), {"a": a, "b": b}).flops == 12


def test_training_flags_and_hooks_restored() -> None:
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), bn)
    model.train()
    bn.eval()  # mixed flags survive
    assert bn.running_mean is not None
    before = bn.running_mean.clone()
    count_flops(model, torch.randn(8, 4))
    assert [m.training for m in model.modules()] == [True, True, True, False]
    assert torch.equal(bn.running_mean, before)  # ran in eval: stats untouched

    class Broken(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom")

    module_globals = nn.modules.module
    hooks = (module_globals._global_forward_pre_hooks, module_globals._global_forward_hooks)
    before_hooks = [dict(h) for h in hooks]
    with pytest.raises(RuntimeError, match="boom"):
        count_flops(Broken(), torch.randn(2))
    assert [dict(h) for h in hooks] == before_hooks
    assert count_flops(nn.ReLU(), torch.randn(3)).flops == 3  # a clean stack afterwards


def test_a_container_never_called_counts_its_children() -> None:
    class _Blocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            for block in self.blocks:
                x = block(x)
            return self.head(x)  # type: ignore[no-any-return]

    count = count_flops(_Blocks(), (torch.zeros(1, 4),))
    assert count.macs_by_module == {
        "": 56, "blocks": 48, "blocks.0": 16, "blocks.1": 16, "blocks.2": 16, "head": 8
    }  # fmt: skip
    assert count.flops_by_module["blocks"] == 3 * 36
