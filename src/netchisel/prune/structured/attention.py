"""Attention layouts whose heads netchisel cuts itself: separate q/k/v/o projections (with
grouped-query attention), one fused qkv projection (timm), Hugging Face's `Conv1D` c_attn
(GPT-2) and `nn.MultiheadAttention`.

Why by hand: a head is a block of rows of q, k and v and of columns of the output projection,
and the module's head count must follow. Torch-Pruning's dependency graph does not know which
rows form a head: in a fused qkv Linear the three are one output, with grouped-query attention
a key/value head serves several query heads through `repeat_kv`, and tracing the rotary
embedding and the expand of `repeat_kv` takes minutes on a 2-layer Llama. Slicing the known
layouts directly is exact and instant; other attention modules (BERT's, split across
`attention.self` and `attention.output`) still go through the graph (`units.py`).

Grouped-query attention (`num_key_value_heads` < `num_attention_heads`): the unit is a whole
key/value group, one k/v head with the query heads that read it, so every group keeps the same
number of query heads and `num_key_value_groups` is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from netchisel.core.conv1d import is_conv1d

HEAD_ATTRS = ("n_head", "num_heads", "n_heads", "num_attention_heads")
"""An attention module is one with an integer attribute of one of these names."""
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_SEPARATE = (("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))
_OUTPUT = ("o_proj", "out_proj", "o", "c_proj", "proj", "dense")

Kind = Literal["separate", "fused", "conv1d", "mha"]


@dataclass(frozen=True)
class Layout:
    """Where one attention module keeps its heads: q/k/v (one name each, or the fused one
    three times), the output projection, head and key/value head counts, head width."""

    kind: Kind
    q: str
    k: str
    v: str
    o: str
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def units(self) -> int:
        """Keep-decisions: key/value groups (grouped-query attention) or heads."""
        return self.kv_heads

    @property
    def per_unit(self) -> int:
        """Query heads per unit."""
        return self.heads // self.kv_heads

    @property
    def inputs(self) -> tuple[str, ...]:
        """The projections whose outputs are the heads (q, k, v; one when fused)."""
        return tuple(dict.fromkeys((self.q, self.k, self.v)))


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = vars(module).get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _config_int(module: nn.Module, name: str) -> int | None:
    value = getattr(getattr(module, "config", None), name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _out_width(module: Any) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if is_conv1d(module):
        return int(module.nf)
    return None


def _layout(name: str, module: nn.Module) -> Layout | None:
    """The layout of `module` if it is one netchisel cuts itself, else None."""
    join = (lambda child: f"{name}.{child}") if name else (lambda child: child)
    children: dict[str, Any] = dict(module.named_children())
    if isinstance(module, nn.MultiheadAttention):
        plain = module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        if not plain or module.in_proj_weight is None:
            return None
        h = module.num_heads
        return Layout("mha", name, name, name, join("out_proj"), h, h, module.embed_dim // h)
    if module._parameters:  # e.g. a relative position bias per head (Swin): not ours to cut
        return None
    heads = _int_attr(module, HEAD_ATTRS)
    out = next((children[o] for o in _OUTPUT if o in children), None)
    o_name = next((join(o) for o in _OUTPUT if o in children), "")
    if out is None:
        return None
    fused = children.get("qkv", children.get("c_attn"))
    if fused is not None and heads is not None and not vars(module).get("is_cross_attention"):
        width = _out_width(fused)
        if width is None or width % (3 * heads):
            return None
        kind: Kind = "conv1d" if is_conv1d(fused) else "fused"
        n = join("qkv" if "qkv" in children else "c_attn")
        return Layout(kind, n, n, n, o_name, heads, heads, width // (3 * heads))
    for q, k, v in _SEPARATE:
        if not all(isinstance(children.get(p), nn.Linear) for p in (q, k, v)):
            continue
        head_dim = _int_attr(module, ("head_dim", "key_value_proj_dim", "attention_head_size"))
        q_out: int = children[q].out_features
        if heads is None and head_dim:  # the module's own width outlives a stale config count
            heads = q_out // head_dim
        heads = heads or _config_int(module, "num_attention_heads")
        if not heads or q_out % heads:
            return None
        head_dim = q_out // heads
        kv: int = _int_attr(module, KV_ATTRS) or children[k].out_features // head_dim
        if kv < 1 or heads % kv or children[v].out_features != kv * head_dim:
            return None
        return Layout("separate", join(q), join(k), join(v), o_name, heads, kv, head_dim)
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """Why an attention module with a head count is not one netchisel cuts, when known."""
    own = [n for n, p in module._parameters.items() if p is not None]
    if own:
        return (
            f"its heads also index its own parameter {own[0]} (a per-head bias table, as in "
            "Swin and LeViT), which netchisel does not cut: prune its channels or exclude it"
        )
    return None


def tie_key(model: nn.Module, name: str) -> str | None:
    """Attention modules that must keep the same heads share a key, others have None.

    T5 computes one relative position bias per head in the first layer of a stack and hands
    it to every later layer (`has_relative_attention_bias`), so the layers of one stack and
    kind (encoder self-attention, decoder cross-attention, ...) keep the same heads.

    Example:
        >>> tie_key(nn.Sequential(nn.Linear(2, 2)), "0") is None
        True
    """
    if not isinstance(vars(model.get_submodule(name)).get("has_relative_attention_bias"), bool):
        return None
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def attention_layouts(model: nn.Module) -> dict[str, Layout]:
    """Attention modules whose heads netchisel cuts itself, by name.

    Example:
        >>> mha = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
        >>> attention_layouts(mha)["0"].head_dim
        4
    """
    found: dict[str, Layout] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{n}.") for n in found):
            continue
        layout = _layout(name, module)
        if layout is not None:
            found[name] = layout
    return found


def _rows(layout: Layout, units: list[int]) -> tuple[list[int], list[int]]:
    """Query rows (= output-projection columns) and key/value rows of the kept units."""
    d, g = layout.head_dim, layout.per_unit
    q = [(u * g + j) * d + i for u in units for j in range(g) for i in range(d)]
    kv = [u * d + i for u in units for i in range(d)]
    return q, kv


def _fused_rows(layout: Layout, units: list[int]) -> list[int]:
    q, _ = _rows(layout, units)
    width = layout.heads * layout.head_dim
    return [s * width + r for s in range(3) for r in q]


def head_scores(
    model: nn.Module, layout: Layout, score: Callable[[nn.Module, Tensor], Tensor]
) -> Tensor:
    """One score per unit: the element scores (`score(layer, weight)`, weight-shaped) summed
    over the unit's q/k/v rows and output-projection columns."""
    totals = torch.zeros(layout.units, dtype=torch.float64)
    for unit in range(layout.units):
        for layer, weight, index, dim in _slices(model, layout, [unit]):
            totals[unit] += float(score(layer, weight).index_select(dim, index).double().sum())
    return totals.float()


def _slices(
    model: nn.Module, layout: Layout, units: list[int]
) -> list[tuple[Any, Tensor, Tensor, int]]:
    """(layer, weight, index, dim) of every weight slice that belongs to `units`."""
    q_rows, kv_rows = _rows(layout, units)
    out: Any = model.get_submodule(layout.o)
    q_idx, kv_idx = torch.tensor(q_rows), torch.tensor(kv_rows)
    o_dim = 0 if is_conv1d(out) else 1
    if layout.kind == "separate":
        q, k, v = (_sub(model, p) for p in (layout.q, layout.k, layout.v))
        return [
            (q, q.weight, q_idx, 0),
            (k, k.weight, kv_idx, 0),
            (v, v.weight, kv_idx, 0),
            (out, out.weight, q_idx, o_dim),
        ]
    fused = _sub(model, layout.q)
    fused_idx = torch.tensor(_fused_rows(layout, units))
    weight = fused.in_proj_weight if layout.kind == "mha" else fused.weight
    dim = 1 if layout.kind == "conv1d" else 0  # Conv1D stores its weight (in, out)
    return [(fused, weight, fused_idx, dim), (out, out.weight, q_idx, o_dim)]


def _sub(model: nn.Module, name: str) -> Any:
    """A submodule, typed Any: its weights are reassigned by attribute below."""
    return model.get_submodule(name)


def _narrow(param: Tensor | None, index: Tensor, dim: int) -> nn.Parameter | None:
    if param is None:
        return None
    return nn.Parameter(param.detach().index_select(dim, index).clone(), param.requires_grad)


def cut_heads(model: nn.Module, name: str, layout: Layout, keep: Tensor) -> None:
    """Keep the units of `keep` (a bool mask over `layout.units`) in attention module `name`,
    slicing every projection and lowering its head counts so that it still runs."""
    kept = keep.nonzero().flatten().tolist()
    q_rows, kv_rows = _rows(layout, kept)
    q_idx, kv_idx = torch.tensor(q_rows), torch.tensor(kv_rows)
    module = _sub(model, name)
    out = _sub(model, layout.o)
    heads = len(kept) * layout.per_unit
    width = heads * layout.head_dim
    if layout.kind == "separate":
        for proj, idx in ((layout.q, q_idx), (layout.k, kv_idx), (layout.v, kv_idx)):
            linear = _sub(model, proj)
            linear.weight = _narrow(linear.weight, idx, 0)
            linear.bias = _narrow(linear.bias, idx, 0)
            linear.out_features = len(idx)
    else:
        fused_idx = torch.tensor(_fused_rows(layout, kept))
        fused = _sub(model, layout.q)
        if layout.kind == "mha":
            module.in_proj_weight = _narrow(module.in_proj_weight, fused_idx, 0)
            module.in_proj_bias = _narrow(module.in_proj_bias, fused_idx, 0)
            module.__class__ = PrunedMultiheadAttention
        elif layout.kind == "conv1d":
            fused.weight = _narrow(fused.weight, fused_idx, 1)
            fused.bias = _narrow(fused.bias, fused_idx, 0)
            fused.nf = len(fused_idx)
        else:
            fused.weight = _narrow(fused.weight, fused_idx, 0)
            fused.bias = _narrow(fused.bias, fused_idx, 0)
            fused.out_features = len(fused_idx)
    conv1d_out = is_conv1d(out)
    out.weight = _narrow(out.weight, q_idx, 0 if conv1d_out else 1)
    if isinstance(out, nn.Linear):
        out.in_features = width
    bias: Any = getattr(module, "relative_attention_bias", None)  # T5's, one column per head
    if type(bias).__name__ == "Embedding" and bias.embedding_dim == layout.heads:
        heads_idx = torch.tensor(
            [u * layout.per_unit + j for u in kept for j in range(layout.per_unit)]
        )
        bias.weight = _narrow(bias.weight, heads_idx, 1)
        bias.embedding_dim = heads
    norm: Any = getattr(module, "norm", None)  # timm's optional norm over the attention width
    if type(norm).__name__ == "LayerNorm" and norm.normalized_shape == (
        layout.heads * layout.head_dim,
    ):
        norm.weight = _narrow(norm.weight, q_idx, 0)
        norm.bias = _narrow(norm.bias, q_idx, 0)
        norm.normalized_shape = (width,)
    _set_counts(module, layout, heads, len(kept), width)


def _set_counts(module: nn.Module, layout: Layout, heads: int, units: int, width: int) -> None:
    attrs = vars(module)
    for attr in HEAD_ATTRS:
        if isinstance(attrs.get(attr), int):
            attrs[attr] = heads
    for attr in KV_ATTRS:
        if isinstance(attrs.get(attr), int):
            attrs[attr] = units
    # Widths some attention modules keep: timm's attn_dim, GPT-2's split_size, HF's
    # all_head_size / inner_dim. embed_dim stays for every module but nn.MultiheadAttention,
    # whose own width is the heads' (its input width lives in kdim/vdim and the weights).
    for attr in ("attn_dim", "split_size", "all_head_size", "inner_dim"):
        if isinstance(attrs.get(attr), int) and attrs[attr] == layout.heads * layout.head_dim:
            attrs[attr] = width
    if layout.kind == "mha":
        attrs["head_dim"] = layout.head_dim


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` with fewer heads than its input width allows.

    torch's own forward derives the head width as embed_dim / num_heads and requires the
    projections to be embed_dim wide, so after heads are removed it cannot run. This forward
    reads the head count and width from the attributes; inputs, masks and outputs are as in
    `nn.MultiheadAttention` (no bias_k/bias_v, no zero attention, as `attention_layouts`
    requires). Its attributes are plain data, so an artifact rebuilds it.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> cut_heads(nn.Sequential(mha), "0", attention_layouts(nn.Sequential(mha))["0"],
        ...           torch.tensor([True, False]))
        >>> type(mha).__name__, mha.num_heads, mha(*[torch.zeros(1, 3, 8)] * 3)[0].shape
        ('PrunedMultiheadAttention', 1, torch.Size([1, 3, 8]))
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if not self.batch_first or not batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        lk = key.shape[1]
        h, d = self.num_heads, self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q = F.linear(query, w_q, b_q).view(b, lq, h, d).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, lk, h, d).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, lk, h, d).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, b, h, lq, lk, q.dtype, is_causal)
        dropout = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                scores = scores + mask
            attn = F.dropout(scores.softmax(dim=-1), dropout, self.training)
            y = attn @ v
            weights = attn.mean(dim=1) if average_attn_weights else attn
            if not batched:
                weights = weights.squeeze(0)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(y.transpose(1, 2).reshape(b, lq, h * d))
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        return out, weights


def _additive_mask(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    b: int,
    h: int,
    lq: int,
    lk: int,
    dtype: torch.dtype,
    is_causal: bool,
) -> Tensor | None:
    """torch's masks (bool: True = masked out; float: added) as one additive mask."""

    def additive(mask: Tensor) -> Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    total: Tensor | None = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, lk, dtype=torch.bool).triu(1)
    if attn_mask is not None:
        mask = additive(attn_mask)
        total = mask.view(b, h, lq, lk) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        pad = additive(key_padding_mask).view(b, 1, 1, lk)
        total = pad if total is None else total + pad
    return total
