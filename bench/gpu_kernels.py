"""The CUDA int4 weight-only and 2:4 semi-structured sparse kernels: correct, and faster than
fp16? (issue 21, "When a CUDA GPU is available").

Run (on a CUDA machine, < 5 min on one H100):
    .venv/bin/python bench/gpu_kernels.py  ->  bench/results/gpu_kernels.json
Without a CUDA device it prints one line saying so and writes nothing.

What it checks, on the first CUDA device (its name goes in the JSON):
- int4 weight-only: netchisel's `Int4WeightOnlyLinear` (RTN, groups of 128 on the 4096x4096
  layer, 32 on the zoo llama as in bench/llm_peer.py) runs `aten._weight_int4pack_mm`.
  Correct: the kernel's output against `x @ W_q^T` in float32 on its own dequantized weight
  (the kernel's error, bf16 activations) and against the float weight (that plus the 4-bit
  rounding). Speed: against `F.linear` in fp16 on the float weight.
- 2:4 semi-structured: the weight pruned 2:4 by magnitude (`prune.select.keep_n_of_m`),
  `torch.sparse.to_sparse_semi_structured` in fp16. Correct: against `F.linear` on the same
  pruned weight kept dense. Speed: against dense fp16 on the same weight.
- Both at batch 1 and 32 on one 4096x4096 layer (no bias), and on the zoo llama (4 layers,
  hidden 128, MLP 352; batches of 1 and 32 windows of 128 tokens, test perplexity): int4 by
  `quantize.rtn` (bits 4, group 32), 2:4 by `prune.unstructured` (pattern 2:4) with every
  decoder Linear the sparse kernel accepts converted (refusals are recorded per layer).
  Kernels that refuse a shape are recorded as errors, not hidden.

Timing: CUDA events, each arm `ITERS` calls after a warm-up, arms alternated in `ROUNDS`
rounds; medians and their ratio. On a 128-wide model the layers are too small for any
kernel to matter: the zoo llama's numbers check that the path runs end to end and how much
overhead it adds; the 4096 layer shows the kernels' speed.

Anchors: PyTorch's semi-structured sparsity tutorial reports about 1.1-1.6x over dense fp16
for large Linear layers on A100 (pytorch.org/tutorials/advanced/semi_structured_sparse.html);
gpt-fast reports int4 weight-only decoding about 1.9x faster than bf16 at batch 1 on A100
(github.com/pytorch-labs/gpt-fast README). Targets: correctness within fp16/bf16 rounding
(relative error < 1e-2 against the matching float computation), and a speedup > 1 at batch 1
for int4 on the 4096 layer.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

ITERS = 50
ROUNDS = 5
BATCHES = (1, 32)
SIZE = 4096


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """||y - reference|| / ||reference|| in float32."""
    y, reference = y.float(), reference.float()
    return float((y - reference).norm() / reference.norm().clamp_min(1e-30))


def alternated_ms(arms: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Median milliseconds per call of each arm, arms alternated round by round."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    with torch.no_grad():
        for fn in arms.values():
            for _ in range(5):
                fn()
        for _ in range(ROUNDS):
            for name, fn in arms.items():
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(ITERS):
                    fn()
                end.record()
                torch.cuda.synchronize()
                times[name].append(start.elapsed_time(end) / ITERS)
    return {name: statistics.median(t) for name, t in times.items()}


def attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """fn()'s record, or the error a kernel raised (a refusal is a finding, not a crash)."""
    try:
        return fn()
    except Exception as e:  # any kernel refusal is recorded as it is
        return {"error": f"{type(e).__name__}: {e}"[:400]}


def layer_int4(batch: int) -> dict[str, Any]:
    from netchisel.quantize.formats import Int4WeightOnlyLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(SIZE, SIZE, bias=False)
    int4 = Int4WeightOnlyLinear.from_float(linear, group_size=128).cuda()
    w = linear.weight.detach().cuda()
    w16, deq = w.half(), int4.dequantized_weight().cuda()
    x = torch.randn(batch, SIZE).cuda()
    x16, xb = x.half(), x.bfloat16()
    with torch.no_grad():
        y = int4(xb)
    ms = alternated_ms(
        {"fp16": lambda: torch.nn.functional.linear(x16, w16), "int4": lambda: int4(xb)}
    )
    return {
        "error_vs_dequantized": relative_error(y, xb.float() @ deq.T),
        "error_vs_float": relative_error(y, x @ w.T),
        "fp16_ms": ms["fp16"],
        "int4_ms": ms["int4"],
        "speedup": ms["fp16"] / ms["int4"],
    }


def layer_2of4(batch: int) -> dict[str, Any]:
    from netchisel.prune.select import keep_n_of_m

    torch.manual_seed(0)
    w = torch.randn(SIZE, SIZE)
    pruned = (w * keep_n_of_m(w.abs(), 2, 4)).half().cuda()
    sparse = torch.sparse.to_sparse_semi_structured(pruned)
    x = torch.randn(batch, SIZE).cuda().half()
    with torch.no_grad():
        y = torch.nn.functional.linear(x, sparse)
        reference = torch.nn.functional.linear(x, pruned)
    ms = alternated_ms(
        {
            "fp16": lambda: torch.nn.functional.linear(x, pruned),
            "2of4": lambda: torch.nn.functional.linear(x, sparse),
        }
    )
    return {
        "error_vs_dense_pruned": relative_error(y, reference),
        "fp16_ms": ms["fp16"],
        "2of4_ms": ms["2of4"],
        "speedup": ms["fp16"] / ms["2of4"],
    }


def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """exp(summed next-token cross-entropy / tokens), as bench/llm_peer.py computes it."""
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(32):
            logits = model(chunk[:, :-1]).logits.float()
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
                )
            )
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def semi_structured(model: torch.nn.Module) -> dict[str, str]:
    """Swap every decoder Linear's weight for its semi-structured form; the refusals by name."""
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            try:
                sparse = torch.sparse.to_sparse_semi_structured(module.weight.detach())
                module.weight = torch.nn.Parameter(sparse, requires_grad=False)
            except Exception as e:  # a shape the kernel refuses stays dense
                refused[name] = f"{type(e).__name__}: {e}"[:200]
    return refused


def zoo_llama() -> dict[str, Any]:
    import netchisel as nc
    from netchisel.prune import UnstructuredConfig
    from netchisel.quantize import RTNConfig
    from netchisel.zoo import data, train

    base = train.pretrained("llama").eval()
    x, y = data.text(128)["test"].tensors
    windows = torch.cat([x, y[:, -1:]], dim=1).cuda()
    models: dict[str, Any] = {"fp16": copy.deepcopy(base).half().cuda()}
    out: dict[str, Any] = {}

    def int4() -> dict[str, Any]:
        model = copy.deepcopy(base)
        nc.quantize_(model, RTNConfig(bits=4, group_size=32, exclude=("lm_head",)))
        model = model.to(torch.bfloat16).cuda()
        ppl = perplexity(model, windows)
        models["int4"] = model
        return {"test_ppl": ppl}

    def two_of_four() -> dict[str, Any]:
        model = copy.deepcopy(base)
        nc.prune_(model, UnstructuredConfig(pattern="2:4", exclude=("lm_head",)))
        dense = model.half().cuda()
        sparse = copy.deepcopy(dense)
        refused = semi_structured(sparse)
        models["2of4_dense"], models["2of4"] = dense, sparse
        dense_ppl, sparse_ppl = perplexity(dense, windows), perplexity(sparse, windows)
        return {
            "test_ppl_dense_kernel": dense_ppl,
            "test_ppl": sparse_ppl,
            "ppl_relative_difference": abs(sparse_ppl - dense_ppl) / dense_ppl,
            "refused_layers": refused,
        }

    out["fp16"] = {"test_ppl": perplexity(models["fp16"], windows)}
    out["int4"] = attempt(int4)
    out["2of4"] = attempt(two_of_four)
    for batch in BATCHES:
        tokens = windows[:batch, :-1]
        arms = {k: (lambda m=m, t=tokens: m(t)) for k, m in models.items()}
        ms = attempt(lambda arms=arms: alternated_ms(arms))  # type: ignore[misc]
        out[f"batch_{batch}_ms"] = ms
        if "error" not in ms:
            out[f"batch_{batch}_tokens_per_s"] = {
                k: tokens.numel() / (v / 1000) for k, v in ms.items()
            }
    return out


def main() -> None:
    if not torch.cuda.is_available():
        print(
            f"gpu_kernels: no CUDA device (torch {torch.__version__}): nothing measured, "
            "nothing written; run `.venv/bin/python bench/gpu_kernels.py` on a CUDA machine"
        )
        return
    from common import write_result

    torch.backends.cuda.matmul.allow_tf32 = False
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        # to_sparse_semi_structured uses cuSPARSELt when torch has it, else CUTLASS (whose fp16
        # shapes must be multiples of 32 x 64 rather than 16 x 16)
        "semi_structured_backend": "cusparselt"
        if torch.backends.cusparselt.is_available()
        else "cutlass",
        "iters": ITERS,
        "rounds": ROUNDS,
        "layer_4096": {
            f"{kind}_batch_{b}": attempt(lambda fn=fn, b=b: fn(b))  # type: ignore[misc]
            for kind, fn in (("int4", layer_int4), ("2of4", layer_2of4))
            for b in BATCHES
        },
    }
    print(result["layer_4096"], flush=True)
    result["zoo_llama"] = attempt(zoo_llama)
    print(result["zoo_llama"], flush=True)
    write_result("gpu_kernels", result)


def render(r: dict[str, Any]) -> str:
    """BENCHMARKS.md section."""
    lines = [
        "## CUDA int4 and 2:4 kernels (`bench/gpu_kernels.py`)",
        "",
        f"{r['device']} (sm {r['capability']}), torch {r['torch']}, CUDA {r['cuda']}; "
        f"medians of {r['rounds']} alternated rounds of {r['iters']} calls.",
        "",
        "| 4096x4096 layer | rel. error | fp16 ms | kernel ms | speedup |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, a in r["layer_4096"].items():
        if "error" in a:
            lines.append(f"| {name} | {a['error']} | - | - | - |")
            continue
        err = a.get("error_vs_dequantized", a.get("error_vs_dense_pruned"))
        kernel = a.get("int4_ms", a.get("2of4_ms"))
        lines.append(
            f"| {name} | {err:.2e} | {a['fp16_ms']:.4f} | {kernel:.4f} | {a['speedup']:.2f}x |"
        )
    z = r["zoo_llama"]
    lines += [
        "",
        f"Zoo llama: `{z}`"
        if "error" in z
        else "Zoo llama test perplexity: "
        + ", ".join(
            f"{k} {v['test_ppl']:.4f}" if "test_ppl" in v else f"{k}: {v.get('error')}"
            for k, v in z.items()
            if k in ("fp16", "int4", "2of4")
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
