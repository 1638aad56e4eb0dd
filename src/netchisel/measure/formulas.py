"""The price of every op `count_flops` counts: one table entry per op, keyed by its name.

A formula reads one op call (its arguments bound to their schema names, and its output) and
returns its `Cost`: FLOPs, MACs, and where known the weight whose module did the work. The
engine (`netchisel.measure.flops`) only runs the model and adds the costs up; the conventions
behind each number (1 MAC = 2 FLOPs, softmax = 5 FLOPs per element, ...) and the reason for
each are in `docs/measurement.md`. This file is long because it is a table: to price a new op,
add one entry to `FORMULAS` (aten), `QUANTIZED_FORMULAS` (torch.ops.quantized) or
`LIBRARY_FORMULAS` (namespaces a library registers), reusing a builder below where one fits.

Example:
    >>> import torch
    >>> a, b = torch.zeros(3, 4), torch.zeros(4, 2)
    >>> cost = FORMULAS["mm"](Call(torch.ops.aten.mm.default, (a, b), {}, a @ b))
    >>> cost.flops, cost.macs  # 3*2 outputs of 4 MACs each, 2 FLOPs per MAC
    (48, 24)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch._ops import OpOverload
from torch.utils._pytree import tree_leaves

__all__ = [
    "FORMULAS",
    "LIBRARY_FORMULAS",
    "NESTED_AWARE",
    "NORM_FLOPS_PER_ELEMENT",
    "NORM_FLOPS_PER_GROUP",
    "QUANTIZED_FORMULAS",
    "SOFTMAX_FLOPS",
    "ZERO_COST",
    "Call",
    "Cost",
    "Formula",
    "Result",
    "dtype_name",
]

# softmax(x)_i = exp(x_i - max) / sum_j exp(x_j - max): five passes over the row
# (max, subtract, exp, sum, divide), one FLOP per element each.
SOFTMAX_FLOPS = 5
# Statistics of a normalisation over a group of n elements: mean (n adds, 1 divide), deviation
# (n subtracts), variance (n squares, n adds, 1 divide), eps add and rsqrt (1 each), and the
# normalising multiply (n): 5 per element + 4 per group, before the affine weight and bias.
NORM_FLOPS_PER_ELEMENT = 5
NORM_FLOPS_PER_GROUP = 4


# -- one op call ------------------------------------------------------------------------------


@dataclass(eq=False)
class Cost:
    """Work of one op call; `owner` is a weight whose module the work belongs to, if known;
    `dtype` overrides the call's compute dtype (int8 MACs inside a float op)."""

    flops: int
    macs: int = 0
    owner: Tensor | None = None
    dtype: str | None = None


# A formula returns the cost of one call, a breakdown into owned parts (fused ops), or None
# when this particular call cannot be priced (it is then reported as uncounted).
Result = Cost | tuple[Cost, ...] | None


class Call:
    """One op call: its arguments bound to their schema names, and its first output tensor."""

    def __init__(
        self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        self.args: dict[str, Any] = {}
        positional = iter(args)
        for arg in func._schema.arguments:
            if not arg.kwarg_only and (value := next(positional, _MISSING)) is not _MISSING:
                self.args[arg.name] = value
            elif arg.name in kwargs:
                self.args[arg.name] = kwargs[arg.name]
            elif arg.has_default_value():
                self.args[arg.name] = arg.default_value
        first = next((leaf for leaf in tree_leaves(out) if isinstance(leaf, Tensor)), None)
        self.out = first if first is not None else torch.empty(0)

    def __getitem__(self, name: str) -> Any:
        return self.args.get(name)

    def tensor(self, *names: str) -> Tensor:
        """The first of `names` bound to a tensor (ops name their input `self` or `input`)."""
        for name in names:
            value = self.args.get(name)
            if isinstance(value, Tensor):
                return value
        raise KeyError(f"no tensor argument among {names}")

    def optional(self, name: str) -> Tensor | None:
        value = self.args.get(name)
        return value if isinstance(value, Tensor) else None


_MISSING = object()
Formula = Callable[[Call], Result]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _ints(value: Any, n: int) -> list[int]:
    # Schema int[n] arguments may arrive as one int or a shorter list meaning "repeat".
    values = [int(v) for v in value] if isinstance(value, Sequence) else [int(value)]
    return values * n if len(values) == 1 else values


# -- building blocks shared by formulas and fused ops -----------------------------------------


def _linear_cost(rows: int, weight: Tensor, bias: Tensor | None) -> Cost:
    # x (rows, in) @ W^T (in, out): rows*in*out MACs; the bias is one add per output element.
    out_features, in_features = weight.shape[0], weight.shape[-1]
    macs = rows * in_features * out_features
    bias_adds = rows * out_features if bias is not None else 0
    return Cost(2 * macs + bias_adds, macs, owner=weight)


def _norm_cost(elements: int, groups: int, weight: Tensor | None, bias: Tensor | None) -> Cost:
    affine = elements * ((weight is not None) + (bias is not None))
    flops = NORM_FLOPS_PER_ELEMENT * elements + NORM_FLOPS_PER_GROUP * groups + affine
    return Cost(flops, owner=weight)


def _causal_pairs(q_len: int, k_len: int, bottom_right: bool = False) -> int:
    # PyTorch's is_causal mask is top-left aligned (tril of ones(L, S)): query i sees keys
    # 0..i. Bottom-right alignment (efficient attention's mask type 2) shifts it by S - L.
    shift = k_len - q_len if bottom_right else 0
    return sum(min(max(i + 1 + shift, 0), k_len) for i in range(q_len))


def _attention_core(
    batch_heads: int,
    q_len: int,
    k_len: int,
    head_dim: int,
    v_dim: int,
    *,
    mask: bool,
    causal: int = 0,
    dropout: bool = False,
    scale_flops: int | None = None,
) -> Cost:
    """softmax(scale * Q K^T + mask) V over the (query, key) pairs the kernel evaluates.

    `causal`: 0 none, 1 top-left aligned, 2 bottom-right aligned (efficient attention's codes).
    """
    kept = _causal_pairs(q_len, k_len, causal == 2) if causal else q_len * k_len
    pairs = batch_heads * kept
    macs = pairs * head_dim + pairs * v_dim  # Q K^T, then P V
    flops = 2 * macs + (pairs if scale_flops is None else scale_flops) + SOFTMAX_FLOPS * pairs
    flops += pairs * (mask + dropout)
    return Cost(flops, macs)


# -- matmuls and convolutions -----------------------------------------------------------------


def _epilogue(out_elements: int, alpha: Any, beta: Any, bias: bool = True) -> int:
    # out = beta * bias + alpha * (A @ B): the bias add and each scale that is not 1 cost one
    # FLOP per output element (None: the op has no such scale, i.e. 1).
    alpha, beta = 1 if alpha is None else alpha, 1 if beta is None else beta
    flops = out_elements * bool(alpha != 1)
    if bias and beta != 0:
        flops += out_elements * (1 + bool(beta != 1))
    return flops


def _matmul(a_name: str, bias_name: str | None = None) -> Formula:
    # Every matmul-like op: out elements times the contracted length K of its first operand.
    def formula(call: Call) -> Result:
        a = call.tensor(a_name)
        macs = call.out.numel() * (a.shape[-1] if a.dim() else 1)
        has_bias = bias_name is not None and call.optional(bias_name) is not None
        extra = _epilogue(call.out.numel(), call["alpha"], call["beta"], has_bias)
        return Cost(2 * macs + extra, macs)

    return formula


def _addbmm(call: Call) -> Result:
    # Sums b batched products into one (n, p) matrix: the cross-batch adds are part of the MACs.
    b1, b2 = call.tensor("batch1"), call.tensor("batch2")
    macs = b1.numel() * b2.shape[-1]
    return Cost(2 * macs + _epilogue(call.out.numel(), call["alpha"], call["beta"]), macs)


def _addr(call: Call) -> Result:
    # beta * self + alpha * vec1 (x) vec2: a matmul with K = 1, priced like addmm.
    macs = call.out.numel()
    return Cost(2 * macs + _epilogue(macs, call["alpha"], call["beta"]), macs)


def _linear(call: Call) -> Result:
    x, weight = call.tensor("input"), call.tensor("weight")
    return _linear_cost(x.numel() // max(x.shape[-1], 1), weight, call.optional("bias"))


def _addmm_activation(call: Call) -> Result:
    cost = _matmul("mat1", "self")(call)
    assert isinstance(cost, Cost)
    return Cost(cost.flops + call.out.numel(), cost.macs)


def _scaled_mm(call: Call) -> Result:
    # fp8 matmul: the two dequantising scales and the optional bias are one FLOP per output each.
    out = call.out.numel()
    macs = out * call.tensor("self").shape[-1]
    return Cost(2 * macs + 2 * out + out * (call.optional("bias") is not None), macs)


def _weight_int8pack_mm(call: Call) -> Result:
    # Weight-only int8: the per-output-channel scale is applied once per output element.
    out = call.out.numel()
    macs = out * call.tensor("self").shape[-1]
    return Cost(2 * macs + out, macs)


def _weight_int4pack_mm(call: Call) -> Result:
    # Weight-only int4: dequantising each weight ((q - zero) * scale) costs 2 FLOPs, counted once.
    x = call.tensor("self")
    in_features, out_features = x.shape[-1], call.out.shape[-1]
    macs = call.out.numel() * in_features
    return Cost(2 * macs + 2 * in_features * out_features, macs)


def _convolution(transposed: bool | None = None) -> Formula:
    """Dense convolution: each output element is a dot product of C_in/groups * prod(kernel)
    taps (padding zeros included, as dense kernels compute them). A transposed convolution is the
    adjoint of a convolution and costs the same: each input element times C_out/groups *
    prod(kernel) taps. Bias: one add per output element."""

    def formula(call: Call) -> Result:
        x, weight = call.tensor("input", "self"), call.tensor("weight")
        is_transposed = bool(call["transposed"]) if transposed is None else transposed
        taps = weight.shape[1] * math.prod(weight.shape[2:])
        macs = (x.numel() if is_transposed else call.out.numel()) * taps
        bias = call.out.numel() if call.optional("bias") is not None else 0
        return Cost(2 * macs + bias, macs)

    return formula


# -- attention --------------------------------------------------------------------------------


def _sdpa(mask_name: str | None) -> Formula:
    # Fused SDPA kernels, layout (..., heads, L, E); grouped-query K/V are broadcast over heads.
    def formula(call: Call) -> Result:
        q, k, v = call.tensor("query"), call.tensor("key"), call.tensor("value")
        mask = mask_name is not None and call.optional(mask_name) is not None
        return _attention_core(
            q.numel() // (q.shape[-2] * q.shape[-1]),
            q.shape[-2],
            k.shape[-2],
            q.shape[-1],
            v.shape[-1],
            mask=mask,
            causal=int(bool(call["is_causal"])),
            dropout=bool(call["dropout_p"]),
        )

    return formula


def _sequence_lengths(offsets: Tensor | None, x: Tensor) -> list[int]:
    # Packed batches carry cumulative offsets; dense ones are (B, L, H, E).
    if offsets is not None:
        return [int(n) for n in offsets.diff().tolist()]
    return [x.shape[-3]] * (x.numel() // math.prod(x.shape[-3:]))


def _first_tensor(call: Call, *names: str) -> Tensor | None:
    return next((t for name in names if (t := call.optional(name)) is not None), None)


def _varlen_attention(mask_name: str | None, causal_name: str) -> Formula:
    # Low-level flash/efficient kernels: layout (B, L, H, E), or packed sequences with offsets.
    def formula(call: Call) -> Result:
        q, k, v = call.tensor("query"), call.tensor("key"), call.tensor("value")
        q_lens = _sequence_lengths(_first_tensor(call, "cum_seq_q", "cu_seqlens_q"), q)
        k_lens = _sequence_lengths(_first_tensor(call, "cum_seq_k", "cu_seqlens_k"), k)
        mask = mask_name is not None and call.optional(mask_name) is not None
        costs = [
            _attention_core(
                q.shape[-2],
                q_len,
                k_len,
                q.shape[-1],
                v.shape[-1],
                mask=mask,
                causal=int(call[causal_name] or 0),
                dropout=bool(call["dropout_p"]),
            )
            for q_len, k_len in zip(q_lens, k_lens, strict=True)
        ]
        return Cost(sum(c.flops for c in costs), sum(c.macs for c in costs))

    return formula


def _lengths(x: Tensor) -> list[int]:
    """Sequence length of each batch element of a (B, L, E) tensor, ragged if nested."""
    if x.is_nested:
        return [int(n) for n in x._nested_tensor_size()[:, 0].tolist()]
    batch = x.numel() // (x.shape[-2] * x.shape[-1])
    return [x.shape[-2]] * batch


def _mha_parts(
    query: Tensor,
    key: Tensor,
    num_heads: int,
    qkv_weight: Tensor,
    qkv_bias: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor | None,
    *,
    mask: bool,
    need_weights: bool,
    average_weights: bool,
) -> Cost:
    """nn.MultiheadAttention as its unfused path computes it (F.multi_head_attention_forward).

    The cost is owned by the attention module (its in_proj_weight): the unfused path calls the
    output projection functionally, not through `out_proj`'s forward. Nested (ragged) batches
    are priced sequence by sequence, which is what the fused kernels compute.
    """
    embed = qkv_weight.shape[-1]
    head_dim = embed // num_heads
    q_lens, k_lens = _lengths(query), _lengths(key)
    q_rows, k_rows = sum(q_lens), sum(k_lens)
    in_macs = (q_rows + 2 * k_rows) * embed * embed
    in_bias = (q_rows + 2 * k_rows) * embed if qkv_bias is not None else 0
    out = _linear_cost(q_rows, proj_weight, proj_bias)
    flops, macs = 2 * in_macs + in_bias + out.flops, in_macs + out.macs
    for q_len, k_len in zip(q_lens, k_lens, strict=True):
        # With need_weights the unfused path materialises the weights: it scales q (not the
        # scores) and runs bmm/softmax/bmm; without, it calls fused SDPA, which scales scores.
        attention = _attention_core(
            num_heads,
            q_len,
            k_len,
            head_dim,
            head_dim,
            mask=mask,
            scale_flops=q_len * embed if need_weights else None,
        )
        flops, macs = flops + attention.flops, macs + attention.macs
        if need_weights and average_weights:  # mean over heads: N adds + 1 divide per output
            flops += num_heads * q_len * k_len + q_len * k_len
    return Cost(flops, macs, owner=qkv_weight)


def _native_multi_head_attention(call: Call) -> Result:
    return _mha_parts(
        call.tensor("query"),
        call.tensor("key"),
        int(call["num_head"]),
        call.tensor("qkv_weight"),
        call.optional("qkv_bias"),
        call.tensor("proj_weight"),
        call.optional("proj_bias"),
        mask=call.optional("mask") is not None,
        need_weights=bool(call["need_weights"]),
        average_weights=bool(call["average_attn_weights"]),
    )


def _transformer_encoder_layer(call: Call) -> Result:
    """nn.TransformerEncoderLayer's fused eval path, priced as its unfused forward: attention
    block, residual add, norm, linear, activation, linear, residual add, norm (norm_first only
    reorders these). Each part is owned by the weight of the submodule that computes it unfused.
    """
    src = call.tensor("src")
    embed = src.size(-1)
    tokens = sum(_lengths(src))
    elements = tokens * embed
    ffn_1, ffn_2 = call.tensor("ffn_weight_1"), call.tensor("ffn_weight_2")
    attention = _mha_parts(
        src,
        src,
        int(call["num_heads"]),
        call.tensor("qkv_weight"),
        call.optional("qkv_bias"),
        call.tensor("proj_weight"),
        call.optional("proj_bias"),
        mask=call.optional("mask") is not None,
        need_weights=False,
        average_weights=False,
    )
    norm_1 = _norm_cost(
        elements, tokens, call.optional("norm_weight_1"), call.optional("norm_bias_1")
    )
    norm_2 = _norm_cost(
        elements, tokens, call.optional("norm_weight_2"), call.optional("norm_bias_2")
    )
    linear_1 = _linear_cost(tokens, ffn_1, call.optional("ffn_bias_1"))
    linear_2 = _linear_cost(tokens, ffn_2, call.optional("ffn_bias_2"))
    # Unowned: the two residual adds and the activation (a function, not a module, unfused).
    layer = Cost(2 * elements + tokens * ffn_1.shape[0])
    return (attention, norm_1, norm_2, linear_1, linear_2, layer)


def _left_aligned_mask(call: Call) -> Result:
    # Checking that a padding mask is left aligned: one compare per mask element.
    return Cost(call.tensor("mask").numel())


# -- normalisation, softmax, pooling ----------------------------------------------------------


def _layer_norm(call: Call) -> Result:
    x = call.tensor("input")
    width = math.prod(_ints(call["normalized_shape"], 1))
    return _norm_cost(x.numel(), x.numel() // width, call.optional("weight"), call.optional("bias"))


def _group_norm(call: Call) -> Result:
    x = call.tensor("input")
    groups = int(call["N"]) * int(call["group"])
    return _norm_cost(x.numel(), groups, call.optional("weight"), call.optional("bias"))


def _rms_norm(call: Call) -> Result:
    # x * rsqrt(mean(x^2) + eps) [* weight]: square, mean's add, normalise: 3 per element;
    # mean's divide, eps add, rsqrt: 3 per row; the weight: 1 per element.
    x = call.tensor("input")
    rows = x.numel() // math.prod(_ints(call["normalized_shape"], 1))
    weight = x.numel() if call.optional("weight") is not None else 0
    return Cost(3 * x.numel() + 3 * rows + weight)


def _batch_norm(training: bool | None = None, update: bool | None = None) -> Formula:
    """Training: batch statistics per channel (as a norm), plus, when running statistics are
    given, their momentum update (3 FLOPs each, +1 for the unbiased variance correction).
    Eval: (x - mean) * rsqrt(var + eps): 2 per element + 2 per channel. Affine: +1 per element
    each for weight and bias."""

    def formula(call: Call) -> Result:
        x = call.tensor("input")
        weight, bias = call.optional("weight"), call.optional("bias")
        running = call.optional("running_mean")
        channels = x.shape[1] if x.dim() > 1 else x.shape[0]
        is_training = bool(call["training"]) if training is None else training
        if training is None and "training" not in call.args:  # _batch_norm_no_update
            is_training = running is None
        if is_training:
            cost = _norm_cost(x.numel(), channels, weight, bias)
            updates = running is not None if update is None else update
            return Cost(cost.flops + 7 * channels * updates)
        affine = x.numel() * ((weight is not None) + (bias is not None))
        return Cost(2 * x.numel() + 2 * channels + affine)

    return formula


def _softmax(per_element: int, per_row: int = 0) -> Formula:
    # Elements per row is the size of the softmax dim; rows is everything else.
    def formula(call: Call) -> Result:
        x = call.tensor("self")
        dim = call["dim"]
        rows = x.numel() // x.shape[int(dim)] if x.dim() and dim is not None else 1
        return Cost(per_element * x.numel() + per_row * rows)

    return formula


def _window_reads(in_size: int, out_size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    # Elements every window of one dimension reads inside the input (padding reads nothing).
    return sum(
        sum(1 for k in range(kernel) if 0 <= o * stride - pad + k * dil < in_size)
        for o in range(out_size)
    )


def _pool(dims: int, average: bool) -> Formula:
    """Max pooling: one compare per element read; average: one add per element read and one
    divide per output. Windows are clipped to the input, so padding costs nothing."""

    def formula(call: Call) -> Result:
        x = call.tensor("self")
        kernel = _ints(call["kernel_size"], dims)
        stride = _ints(call["stride"] or kernel, dims)
        pad = _ints(call["padding"] or 0, dims)
        dil = _ints(call["dilation"] or 1, dims)
        out = call.out
        reads = call.out.numel() // math.prod(out.shape[-dims:])  # batch * channels
        for d in range(dims):
            reads *= _window_reads(
                x.shape[d - dims], out.shape[d - dims], kernel[d], stride[d], pad[d], dil[d]
            )
        return Cost(reads + (out.numel() if average else 0))

    return formula


def _adaptive_pool(dims: int, average: bool) -> Formula:
    # PyTorch's adaptive windows: start = floor(o * in / out), end = ceil((o + 1) * in / out).
    def formula(call: Call) -> Result:
        x, out = call.tensor("self"), call.out
        reads = out.numel() // math.prod(out.shape[-dims:])
        for d in range(dims):
            n_in, n_out = x.shape[d - dims], out.shape[d - dims]
            reads *= sum(-(-(o + 1) * n_in // n_out) - (o * n_in // n_out) for o in range(n_out))
        return Cost(reads + (out.numel() if average else 0))

    return formula


def _interpolate(taps: int) -> Formula:
    # Each output element is a weighted sum of `taps` inputs: taps multiplies, taps - 1 adds.
    def formula(call: Call) -> Result:
        return Cost((2 * taps - 1) * call.out.numel())

    return formula


# -- elementwise, reductions, losses ----------------------------------------------------------


def _per_output(flops: int) -> Formula:
    def formula(call: Call) -> Result:
        return Cost(flops * call.out.numel())

    return formula


def _add_sub(call: Call) -> Result:
    # a + alpha * b: the alpha multiply is a second FLOP per element.
    return Cost(call.out.numel() * (1 + (call["alpha"] not in (None, 1))))


def _addcmul_addcdiv(call: Call) -> Result:
    # self + value * t1 (*|/) t2
    return Cost(call.out.numel() * (2 + (call["value"] not in (None, 1))))


def _per_input(per_element: int, per_output: int = 0) -> Formula:
    # Reductions: one FLOP per element read per pass, plus per-output epilogues.
    def formula(call: Call) -> Result:
        if call.optional("other") is not None:  # max/min(self, other) are elementwise
            return Cost(call.out.numel())
        return Cost(per_element * call.tensor("self").numel() + per_output * call.out.numel())

    return formula


def _vector_norm(call: Call) -> Result:
    # |x|^p accumulated, then the p-th root: ord 2 squares (1) + adds (1) + sqrt per output;
    # ord 1/inf/-inf/0 take abs (or compare) + accumulate, no root; other p add a pow.
    order = call["ord"] if "ord" in call.args else call["p"]
    order = 2.0 if order is None else float(order)
    n, outputs = call.tensor("self").numel(), call.out.numel()
    if order == 2.0:
        return Cost(2 * n + outputs)
    if order in (1.0, 0.0, math.inf, -math.inf):
        return Cost(2 * n)
    return Cost(3 * n + outputs)


def _nll_loss(call: Call) -> Result:
    """Per counted target (ignore_index excluded): one negate-accumulate, plus one multiply by
    the class weight; mean reduction adds the weight total (with weights) and one divide."""
    target = call.tensor("target")
    ignore = call["ignore_index"]
    counted = int((target != ignore).sum()) if ignore is not None else target.numel()
    weighted = call.optional("weight") is not None
    flops = counted * (1 + weighted)
    if call["reduction"] == 1:  # mean
        flops += counted * weighted + 1
    return Cost(flops)


def _mse_loss(call: Call) -> Result:
    # (x - y)^2: 2 per element; sum adds 1 per element; mean also 1 divide.
    n = call.tensor("self").numel()
    reduction = call["reduction"]
    return Cost(2 * n + (n if reduction else 0) + (reduction == 1))


def _native_dropout(call: Call) -> Result:
    # Only in training: x * mask / (1 - p), one fused multiply per element (sampling is not
    # arithmetic).
    return Cost(call.out.numel() if call["train"] is not False else 0)


def _index_accumulate(source: str) -> Formula:
    # scatter_add / index_add: one add per source element.
    def formula(call: Call) -> Result:
        return Cost(call.tensor(source).numel())

    return formula


def _scatter(call: Call) -> Result:
    # Plain scatter only moves data; with reduce= it combines one source element per write.
    if call["reduce"] is None:
        return Cost(0)
    src = call.optional("src")
    return Cost(src.numel() if src is not None else call.tensor("index").numel())


def _index_put(call: Call) -> Result:
    if not call["accumulate"]:
        return Cost(0)
    return None  # the number of accumulated writes depends on index broadcasting: not priced


# -- quantized kernels (torch.ao eager quantization) ------------------------------------------
# int8 MACs are attributed to "int8"; the float work around them to "float32": dynamic
# quantization of the activation (min and max, then scale and shift: 4 per input element), and
# per output element the dequantize/requantize (scale and zero point: 2), bias (1), fused relu (1).


def _quantized_linear(dynamic: bool, relu: bool = False) -> Formula:
    def formula(call: Call) -> Result:
        weight, bias = call["W_prepack"].unpack()
        outputs = call.out.numel()
        macs = outputs * weight.shape[-1]
        around = 4 * call.tensor("X").numel() if dynamic else 0
        around += outputs * (2 + (bias is not None) + relu)
        return (Cost(2 * macs, macs, dtype="int8"), Cost(around, dtype="float32"))

    return formula


def _linear_dynamic_fp16(call: Call) -> Result:
    # fp16-stored weights, fp32 arithmetic: an ordinary linear.
    weight, bias = call["W_prepack"].unpack()
    outputs = call.out.numel()
    macs = outputs * weight.shape[-1]
    return Cost(2 * macs + outputs * (bias is not None), macs)


def _quantized_conv(relu: bool) -> Formula:
    def formula(call: Call) -> Result:
        packed = call["packed_weight"] if "packed_weight" in call.args else call["weight"]
        weight, bias = packed.unpack()
        outputs = call.out.numel()
        macs = outputs * math.prod(weight.shape[1:])
        around = outputs * (2 + (bias is not None) + relu)
        return (Cost(2 * macs, macs, dtype="int8"), Cost(around, dtype="float32"))

    return formula


def _onednn_qconv(call: Call) -> Result:
    # oneDNN's int8 convolution (what static int8 layers and inductor's frozen int8 graphs run):
    # uint8 input x int8 weight; per output element the requantize/dequantize (2), the bias (1),
    # a fused add (1) and a fused unary op (1), as for the torch.ao kernels above.
    x, weight = call.tensor("qx"), call.tensor("qw")
    outputs = call.out.numel()
    macs = outputs * (x.shape[1] // int(call["groups"] or 1)) * math.prod(weight.shape[2:])
    epilogue = Cost(outputs * _onednn_epilogue(call), dtype="float32")
    return (Cost(2 * macs, macs, dtype="int8"), epilogue)


def _onednn_qlinear(call: Call) -> Result:
    outputs = call.out.numel()
    macs = outputs * call.tensor("qx").shape[-1]
    epilogue = Cost(outputs * _onednn_epilogue(call), dtype="float32")
    return (Cost(2 * macs, macs, dtype="int8"), epilogue)


def _onednn_epilogue(call: Call) -> int:
    unary = call["attr"] or call["post_op_name"] or call["unary_attr"] or call["unary_post_op"]
    binary = call["binary_attr"] or call["binary_post_op"]
    fused = int(unary not in (None, "none")) + int(binary not in (None, "none"))
    return 2 + (call.optional("bias") is not None) + fused


def _decomposed_quantize(call: Call) -> Result:
    # quantized_decomposed (q)dequantize on plain integer tensors: 2 float FLOPs per element.
    return Cost(2 * call.out.numel(), dtype="float32")


def _quantize_dequantize(call: Call) -> Result:
    # x / scale + zero_point, or (q - zero_point) * scale: 2 per element, on the float side.
    x = call.tensor("self", "input")
    real = call.out if x.is_quantized else x
    return Cost(2 * call.out.numel(), dtype=dtype_name(real.dtype))


def _words(text: str) -> list[str]:
    return text.split()


# -- the tables -------------------------------------------------------------------------------

# One FLOP per output element whatever the function (transcendentals and activations
# included): per-function costs have no agreed values and would make counts incomparable.
_ELEMENTWISE = _words(
    "neg abs sgn sign reciprocal mul div floor_divide remainder fmod pow float_power sqrt rsqrt "
    "exp exp2 expm1 log log2 log10 log1p sin cos tan asin acos atan atan2 sinh cosh tanh asinh "
    "acosh atanh erf erfc erfinv sigmoid logit hypot copysign xlogy nan_to_num floor ceil round "
    "trunc frac clamp clamp_min clamp_max clip maximum minimum fmax fmin relu gelu silu mish "
    "softplus elu leaky_relu hardtanh hardswish hardsigmoid hardshrink softshrink threshold "
    "log_sigmoid_forward _prelu_kernel glu eq ne lt le gt ge logical_and logical_or logical_not "
    "logical_xor bitwise_and bitwise_or bitwise_xor bitwise_not isnan isinf isposinf isneginf "
    "signbit where masked_fill"
)

# Ops that only move, view, create or convert data: 0 FLOPs, and not "uncounted".
ZERO_COST = _words(
    "view _unsafe_view reshape _reshape_alias view_as as_strided permute transpose t expand "
    "expand_as squeeze unsqueeze flatten unflatten select slice narrow split split_with_sizes "
    "unsafe_split chunk unbind diagonal movedim alias detach lift_fresh lift_fresh_copy "
    "contiguous clone copy _to_copy to _copy_from _copy_from_and_resize cat stack index "
    "index_select gather take masked_select masked_scatter embedding empty empty_like "
    "empty_strided new_empty new_empty_strided zeros zeros_like new_zeros ones ones_like new_ones "
    "full full_like new_full fill zero scalar_tensor arange eye _local_scalar_dense repeat "
    "repeat_interleave roll flip constant_pad_nd reflection_pad1d reflection_pad2d "
    "reflection_pad3d replication_pad1d replication_pad2d replication_pad3d tril triu "
    "upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact1d "
    "_upsample_nearest_exact2d _upsample_nearest_exact3d pixel_shuffle pixel_unshuffle "
    "channel_shuffle native_channel_shuffle unfold index_fill dropout bernoulli rand randn "
    "randint rand_like randn_like randint_like normal uniform random resize resize_as set "
    "view_copy expand_copy permute_copy transpose_copy t_copy slice_copy select_copy "
    "unsqueeze_copy squeeze_copy alias_copy detach_copy split_copy unbind_copy "
    "_assert_async _assert_tensor_metadata _functional_assert_async sym_constrain_range "
    "_nested_tensor_from_mask _nested_tensor_from_tensor_list to_padded_tensor "
    "_nested_view_from_buffer _nested_get_values"
)

FORMULAS: dict[str, Formula] = {
    **{name: _per_output(1) for name in _ELEMENTWISE},
    "add": _add_sub,
    "sub": _add_sub,
    "rsub": _add_sub,
    "addcmul": _addcmul_addcdiv,
    "addcdiv": _addcmul_addcdiv,
    "lerp": _per_output(3),  # start + weight * (end - start)
    # matmuls
    "mm": _matmul("self"),
    "bmm": _matmul("self"),
    "mv": _matmul("self"),
    "dot": _matmul("self"),
    "vdot": _matmul("self"),
    "matmul": _matmul("self"),
    "addmm": _matmul("mat1", "self"),
    "baddbmm": _matmul("batch1", "self"),
    "addmv": _matmul("mat", "self"),
    "addbmm": _addbmm,
    "addr": _addr,
    "linear": _linear,
    "_addmm_activation": _addmm_activation,
    "_int_mm": _matmul("self"),
    "_scaled_mm": _scaled_mm,
    "_weight_int8pack_mm": _weight_int8pack_mm,
    "_weight_int4pack_mm": _weight_int4pack_mm,
    "_weight_int4pack_mm_for_cpu": _weight_int4pack_mm,
    # convolutions
    "convolution": _convolution(),
    "_convolution": _convolution(),
    "mkldnn_convolution": _convolution(False),
    "cudnn_convolution": _convolution(False),
    "cudnn_convolution_transpose": _convolution(True),
    "miopen_convolution": _convolution(False),
    "miopen_convolution_transpose": _convolution(True),
    "miopen_depthwise_convolution": _convolution(False),
    "_slow_conv2d_forward": _convolution(False),
    "slow_conv3d_forward": _convolution(False),
    "slow_conv_dilated2d": _convolution(False),
    "slow_conv_dilated3d": _convolution(False),
    "slow_conv_transpose2d": _convolution(True),
    "slow_conv_transpose3d": _convolution(True),
    "_conv_depthwise2d": _convolution(False),
    "conv_depthwise3d": _convolution(False),
    "thnn_conv2d": _convolution(False),
    # attention
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa("attn_mask"),
    "_scaled_dot_product_flash_attention": _sdpa(None),
    "_scaled_dot_product_efficient_attention": _sdpa("attn_bias"),
    "_scaled_dot_product_cudnn_attention": _sdpa("attn_bias"),
    "_scaled_dot_product_fused_attention_overrideable": _sdpa("attn_bias"),
    "_flash_attention_forward": _varlen_attention(None, "is_causal"),
    "_efficient_attention_forward": _varlen_attention("bias", "custom_mask_type"),
    "_native_multi_head_attention": _native_multi_head_attention,
    "_transformer_encoder_layer_fwd": _transformer_encoder_layer,
    "_nested_tensor_from_mask_left_aligned": _left_aligned_mask,
    # normalisation
    "native_layer_norm": _layer_norm,
    "layer_norm": _layer_norm,
    "native_group_norm": _group_norm,
    "_fused_rms_norm": _rms_norm,
    "rms_norm": _rms_norm,
    "native_batch_norm": _batch_norm(),
    "_native_batch_norm_legit": _batch_norm(),
    "_native_batch_norm_legit_functional": _batch_norm(),
    "_native_batch_norm_legit_no_training": _batch_norm(training=False),
    "_batch_norm_with_update": _batch_norm(training=True, update=True),
    "_batch_norm_with_update_functional": _batch_norm(training=True, update=True),
    "_batch_norm_no_update": _batch_norm(),
    "cudnn_batch_norm": _batch_norm(),
    "miopen_batch_norm": _batch_norm(),
    # softmax
    "_softmax": _softmax(SOFTMAX_FLOPS),
    "softmax": _softmax(SOFTMAX_FLOPS),
    # the all -inf row guard is a branch on the row max, not arithmetic
    "_safe_softmax": _softmax(SOFTMAX_FLOPS),
    "_masked_softmax": _softmax(SOFTMAX_FLOPS + 1),  # + applying the mask
    # log_softmax: max, subtract, exp, sum, subtract per element; the log once per row
    "_log_softmax": _softmax(SOFTMAX_FLOPS, per_row=1),
    "log_softmax": _softmax(SOFTMAX_FLOPS, per_row=1),
    # pooling
    "max_pool1d": _pool(1, average=False),
    "max_pool2d": _pool(2, average=False),
    "max_pool3d": _pool(3, average=False),
    "max_pool1d_with_indices": _pool(1, average=False),
    "max_pool2d_with_indices": _pool(2, average=False),
    "max_pool3d_with_indices": _pool(3, average=False),
    "avg_pool1d": _pool(1, average=True),
    "avg_pool2d": _pool(2, average=True),
    "avg_pool3d": _pool(3, average=True),
    "adaptive_avg_pool1d": _adaptive_pool(1, average=True),
    "_adaptive_avg_pool2d": _adaptive_pool(2, average=True),
    "_adaptive_avg_pool3d": _adaptive_pool(3, average=True),
    "adaptive_max_pool1d": _adaptive_pool(1, average=False),
    "adaptive_max_pool2d": _adaptive_pool(2, average=False),
    "adaptive_max_pool3d": _adaptive_pool(3, average=False),
    "upsample_linear1d": _interpolate(2),
    "upsample_bilinear2d": _interpolate(4),
    "upsample_trilinear3d": _interpolate(8),
    "upsample_bicubic2d": _interpolate(16),
    # reductions
    "sum": _per_input(1),
    "nansum": _per_input(1),
    "prod": _per_input(1),
    "amax": _per_input(1),
    "amin": _per_input(1),
    "max": _per_input(1),
    "min": _per_input(1),
    "argmax": _per_input(1),
    "argmin": _per_input(1),
    "all": _per_input(1),
    "any": _per_input(1),
    "count_nonzero": _per_input(1),
    "nonzero": _per_input(1),
    "cumsum": _per_input(1),
    "cumprod": _per_input(1),
    "cummax": _per_input(1),
    "cummin": _per_input(1),
    "aminmax": _per_input(2),
    "mean": _per_input(1, per_output=1),
    "nanmean": _per_input(1, per_output=1),
    # var: mean (n + 1/out), subtract, square, add (3n), divide (1/out); std adds a sqrt
    "var": _per_input(4, per_output=2),
    "var_mean": _per_input(4, per_output=2),
    "std": _per_input(4, per_output=3),
    "std_mean": _per_input(4, per_output=3),
    # max, subtract, exp, add per element; log and add-back-the-max per output
    "logsumexp": _per_input(4, per_output=2),
    "linalg_vector_norm": _vector_norm,
    "norm": _vector_norm,
    # losses and indexed accumulation
    "nll_loss_forward": _nll_loss,
    "nll_loss2d_forward": _nll_loss,
    "mse_loss": _mse_loss,
    "native_dropout": _native_dropout,
    "scatter_add": _index_accumulate("src"),
    "index_add": _index_accumulate("source"),
    "scatter": _scatter,
    "scatter_reduce": _index_accumulate("src"),
    "index_put": _index_put,
    "quantize_per_tensor": _quantize_dequantize,
    "quantize_per_channel": _quantize_dequantize,
    "dequantize": _quantize_dequantize,
}


QUANTIZED_FORMULAS: dict[str, Formula] = {
    "linear_dynamic": _quantized_linear(dynamic=True),
    "linear_relu_dynamic": _quantized_linear(dynamic=True, relu=True),
    "linear": _quantized_linear(dynamic=False),
    "linear_relu": _quantized_linear(dynamic=False, relu=True),
    "linear_dynamic_fp16": _linear_dynamic_fp16,
    "conv1d": _quantized_conv(relu=False),
    "conv2d": _quantized_conv(relu=False),
    "conv3d": _quantized_conv(relu=False),
    "conv1d_relu": _quantized_conv(relu=True),
    "conv2d_relu": _quantized_conv(relu=True),
    "conv3d_relu": _quantized_conv(relu=True),
    "add": _per_output(1),
    "mul": _per_output(1),
    "add_relu": _per_output(2),
    "mul_relu": _per_output(2),
}


# Ops of namespaces that exist only once a library registers them, looked up by name.
LIBRARY_FORMULAS: dict[str, Formula] = {
    "onednn.qconv_pointwise": _onednn_qconv,
    "onednn.qconv2d_pointwise": _onednn_qconv,
    "onednn.qlinear_pointwise": _onednn_qlinear,
    **{
        f"quantized_decomposed.{op}": _decomposed_quantize
        for op in (
            "quantize_per_tensor",
            "dequantize_per_tensor",
            "quantize_per_channel",
            "dequantize_per_channel",
        )
    },
}

# aten ops whose formula prices ragged (nested-tensor) inputs; any other op given one is
# reported as uncounted.
NESTED_AWARE = ("_native_multi_head_attention", "_transformer_encoder_layer_fwd")
