"""Quantization benchmark: weight-only LLM quantization of the zoo gpt, side by side with peers.

The zoo gpt (4 pre-LN blocks, 128 wide, byte tokens, 875k parameters) on the pydoc text, from
the same trained model and the same calibration set for every calibrated method (the task's
first 128 shuffled train windows of 128 bytes, as `bench/prune_llm.py`). No fine-tuning.

Rows: fp32; int8 weight-only RTN (`quantize.rtn` bits 8, per channel, int8 kernel); int4 RTN,
GPTQ and AWQ (groups of 128 inputs, asymmetric, int4 kernel); 3-bit RTN and GPTQ (g128,
stored bit-packed, computed in float: simulated speed). The zoo gpt's Linear layers are 128 or
512 inputs wide, so g128 is a whole row of q/k/v/o, fc_in and the head, and 4 groups of
fc_out: g128 is used as is (no padding). Every Linear is quantized, the LM head included
(the head is 32,768 of the 819,200 Linear weights); the two embedding tables stay float32
unless a row says `+ int8 embeddings` (`embeddings: true`, `Int8Embedding`). Also: dynamic
int8 (int8 x int8 on `torch._int_mm`) with and without SmoothQuant, on the gpt and on the real
all-MiniLM-L6-v2 (embedding fidelity to the fp32 model on held-out sentences).

Measured per row: perplexity (val and test), artifact bytes (the real files `netchisel.save`
writes; ratio to the fp32 artifact), the bytes of the tensors that stay floating point, and
forward throughput (tokens/s at batch 8 x 128 tokens, one thread, eager) timed alternately
against fp32 in one run (`compare_latency`; medians and the ratio).

Peers on the same model, same layers, same data, in the same run: HQQ (half-quadratic
optimised zero points, data-free; `hqq` 0.2.8.post1) and optimum-quanto (`optimum-quanto`
0.2.7), 4-bit g128 and 8-bit, float32 compute on CPU. Their bytes are their state dicts saved
with safetensors (scales and zeros in float32, as they hold them for a float32 model).

Targets (issue 4): GPTQ closes >= 50% of RTN's perplexity gap to fp32 at 4 bits; the int4
artifact is <= 1/6 of fp32's bytes. Published anchor (Frantar et al. 2022, Table 3, OPT-125M on
WikiText-2): FP16 27.65, RTN 4-bit 37.28, GPTQ 4-bit 31.12 (GPTQ closes 64% of the gap).

Run: .venv/bin/python bench/quant_llm.py   ->  bench/results/quant_llm.json  (about 10 min)
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import write_result  # bench/ is on sys.path when a script in it runs
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import netchisel as nc
from netchisel.artifact.store import artifact_bytes
from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.registry import handler
from netchisel.measure.latency import compare_latency, make_runner
from netchisel.quantize import (
    AWQConfig,
    DynamicInt8Config,
    GPTQConfig,
    RTNConfig,
    SmoothQuantConfig,
)
from netchisel.zoo import data, models, train

CALIBRATION = 128  # windows of 128 bytes: 16,384 calibration tokens
BATCH, TOKENS = 8, 128  # throughput shape
ANCHOR = {
    "source": "Frantar et al. 2022 (GPTQ), Table 3: OPT-125M, WikiText-2 perplexity, 4-bit",
    "fp16": 27.65,
    "rtn_4bit": 37.28,
    "gptq_4bit": 31.12,
}
FLOAT_DTYPES = {"F32", "F16", "BF16", "F64"}


def methods() -> dict[str, StageConfig | None]:
    """Our rows: name -> config (None is the fp32 model)."""
    g128: dict[str, Any] = {"group_size": 128}
    calibrated: dict[str, Any] = {**g128, "calibration_samples": CALIBRATION}
    return {
        "fp32": None,
        "int8 RTN": RTNConfig(bits=8),
        "int4 RTN g128": RTNConfig(bits=4, **g128),
        "int4 GPTQ g128": GPTQConfig(bits=4, **calibrated),
        "int4 GPTQ g128 act-order": GPTQConfig(bits=4, act_order=True, **calibrated),
        "int4 AWQ g128": AWQConfig(bits=4, **calibrated),
        "int4 AWQ g128 no clip": AWQConfig(bits=4, clip=False, **calibrated),
        "3-bit RTN g128": RTNConfig(bits=3, **g128),
        "3-bit GPTQ g128": GPTQConfig(bits=3, **calibrated),
        "int4 GPTQ g128 + int8 embeddings": GPTQConfig(bits=4, embeddings=True, **calibrated),
        "dynamic int8": DynamicInt8Config(),
        "SmoothQuant a=0.5 + dynamic int8": SmoothQuantConfig(calibration_samples=CALIBRATION),
    }


# -- peers ------------------------------------------------------------------------------------


def hqq_model(dense: nn.Module, bits: int) -> nn.Module:
    """Every Linear replaced by hqq's HQQLinear (g128 at 4 bits, per channel at 8)."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    model = copy.deepcopy(dense)
    config = BaseQuantizeConfig(nbits=bits, group_size=128 if bits == 4 else None)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            new = HQQLinear(module, config, compute_dtype=torch.float32, device="cpu")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def quanto_model(dense: nn.Module, bits: int) -> nn.Module:
    """optimum-quanto qint4 (its default groups of 128) or qint8 weights on every Linear."""
    from optimum.quanto import freeze, qint4, qint8, quantize

    model = copy.deepcopy(dense)
    quantize(model, weights=qint4 if bits == 4 else qint8, exclude=["tok_emb", "pos_emb"])
    freeze(model)
    return model


PEERS: dict[str, tuple[str, Callable[[nn.Module, int], nn.Module], int]] = {
    "hqq 4-bit g128": ("hqq", hqq_model, 4),
    "hqq 8-bit": ("hqq", hqq_model, 8),
    "quanto qint4 g128": ("optimum-quanto", quanto_model, 4),
    "quanto qint8": ("optimum-quanto", quanto_model, 8),
}


# -- measurements -----------------------------------------------------------------------------


def perplexities(model: nn.Module, task: Any) -> dict[str, float]:
    return {split: task.evaluate(model, split)["perplexity"] for split in ("val", "test")}


def float_tensors(weights: Path) -> dict[str, int]:
    """Bytes of every floating-point tensor in a safetensors file, by name."""
    out: dict[str, int] = {}
    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            sl = f.get_slice(name)
            if sl.get_dtype() in FLOAT_DTYPES:
                t = f.get_tensor(name)
                out[name] = t.numel() * t.element_size()
    return out


def artifact_info(model: nn.Module, root: Path, name: str) -> dict[str, Any]:
    """Save with netchisel, load back, and count the bytes (all files, and float tensors)."""
    path = nc.save(model, root / name)
    floats = float_tensors(path / "model.safetensors")
    big = {k: v for k, v in floats.items() if v >= 4096}
    return {
        "artifact_bytes": artifact_bytes(path),
        "weights_file_bytes": (path / "model.safetensors").stat().st_size,
        "float_tensor_bytes": sum(floats.values()),
        "float_tensors_over_4kb": big,
        "path": path,
    }


def peer_bytes(model: nn.Module, root: Path, name: str) -> int:
    """A peer's state dict saved with safetensors (tensors only), in bytes."""
    tensors = {
        k: v.detach().contiguous().clone()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    path = root / f"{name.replace(' ', '_')}.safetensors"
    save_file(tensors, str(path))
    return path.stat().st_size


def no_grad_runner(model: nn.Module, tokens: torch.Tensor) -> Callable[[], Any]:
    """A forward under no_grad (quanto's qint4 fails under inference_mode)."""

    def run() -> Any:
        with torch.no_grad():
            return model(tokens)

    return run


def throughput(
    model: nn.Module, reference: nn.Module, tokens: torch.Tensor, peer: bool = False
) -> dict[str, Any]:
    """Tokens/s of `model` and of fp32, timed alternately in one run."""
    if peer:
        ours, theirs = no_grad_runner(model, tokens), no_grad_runner(reference, tokens)
    else:
        ours = make_runner(model, (tokens,), threads=1)
        theirs = make_runner(reference, (tokens,), threads=1)
    cmp = compare_latency(
        theirs, ours, batch_size=BATCH, threads=1, rounds=8, calls_per_round=3,
        labels=("fp32", "quantized"),
    )  # fmt: skip
    per_call = BATCH * TOKENS
    return {
        "tokens_per_s": per_call / (cmp.b.median_ms / 1e3),
        "fp32_tokens_per_s_same_run": per_call / (cmp.a.median_ms / 1e3),
        "speedup_vs_fp32": cmp.speedup,
        "median_ms": cmp.b.median_ms,
        "fp32_median_ms": cmp.a.median_ms,
    }


# -- the runs ---------------------------------------------------------------------------------


def gpt_rows(root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    dense = train.pretrained("gpt").eval()
    task = data.task("text", block_size=128)
    tokens = torch.randint(0, 256, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    fp32_bytes = 0
    rows: list[dict[str, Any]] = []
    for name, config in methods().items():
        model = copy.deepcopy(dense)
        ctx = Context(task, quiet=True, seed=0)
        t0 = time.perf_counter()
        if config is not None:
            handler(type(config))(model, config, ctx)
        seconds = time.perf_counter() - t0
        info = artifact_info(model, root, name.replace(" ", "_").replace("+", "plus"))
        loaded = nc.load(info.pop("path"))  # what ships is what is measured
        ppl = perplexities(loaded, task)
        fp32_bytes = fp32_bytes or info["artifact_bytes"]
        row: dict[str, Any] = {
            "method": name,
            "library": "netchisel",
            "quantize_seconds": round(seconds, 2),
            "val_perplexity": ppl["val"],
            "test_perplexity": ppl["test"],
            **info,
            "size_ratio_fp32_over_this": fp32_bytes / info["artifact_bytes"],
            "simulated": any(getattr(m, "simulated", False) for m in loaded.modules()),
        }
        for key in ("layer_output_error", "rtn_layer_output_error"):
            if key in ctx.records:
                errors = ctx.records[key]
                row[f"mean_{key}"] = sum(errors.values()) / len(errors)
        if "alpha" in ctx.records:
            row["awq_alpha"] = ctx.records["alpha"]
            row["input_scale_modules"] = ctx.records["input_scale_modules"]
        if config is not None:
            row.update(throughput(loaded, dense, tokens))
        rows.append(row)
        print(
            f"{name:34s} val {ppl['val']:.4f} test {ppl['test']:.4f} "
            f"{info['artifact_bytes']:>9,} B ({seconds:5.1f} s)"
        )
    peers: dict[str, Any] = {}
    for name, (package, build, bits) in PEERS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                model = build(dense, bits).eval()
                seconds = time.perf_counter() - t0
                ppl = perplexities(model, task)
                size = peer_bytes(model, root, name)
                row = {
                    "method": name,
                    "library": package,
                    "quantize_seconds": round(seconds, 2),
                    "val_perplexity": ppl["val"],
                    "test_perplexity": ppl["test"],
                    "weights_file_bytes": size,
                    "size_ratio_fp32_over_this": fp32_bytes / size,
                    **throughput(model, dense, tokens, peer=True),
                }
        except Exception as e:  # a peer that fails is reported, not fatal
            peers[name] = f"{type(e).__name__}: {e}"
            print(f"{name:34s} failed: {peers[name]}")
            continue
        rows.append(row)
        print(f"{name:34s} val {ppl['val']:.4f} test {ppl['test']:.4f} {size:>9,} B")
    return rows, peers


def minilm_rows() -> dict[str, Any]:
    """Embedding fidelity of int8 MiniLM to fp32, with and without SmoothQuant."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        reference = models.minilm()
    except ConfigError as e:
        return {"skipped": str(e)}
    task = data.task("sentences", reference=reference)
    configs: dict[str, StageConfig] = {
        "dynamic int8": DynamicInt8Config(),
        "SmoothQuant a=0.5, fold only": SmoothQuantConfig(),
        "SmoothQuant a=0.5, InputScale where no fold": SmoothQuantConfig(fold_only=False),
    }
    out: dict[str, Any] = {}
    for name, config in configs.items():
        model = copy.deepcopy(reference)
        ctx = Context(task, quiet=True)
        handler(type(config))(model, config, ctx)
        metrics = {split: task.evaluate(model, split) for split in ("val", "test")}
        out[name] = {
            **{f"{s}_{k}": v for s, m in metrics.items() for k, v in m.items()},
            "smoothed_groups": len(ctx.records.get("smoothed", {})),
            "input_scale_modules": len(ctx.records.get("input_scale_modules", [])),
        }
        test = metrics["test"]
        print(f"minilm {name:44s} cosine {test['cosine']:.5f} top-5 {test['topk_agreement']:.3f}")
    return out


def main() -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, failed_peers = gpt_rows(Path(tmp))
    by = {r["method"]: r for r in rows}
    target: dict[str, Any] = {}
    for split in ("val", "test"):
        fp = by["fp32"][f"{split}_perplexity"]
        rtn = by["int4 RTN g128"][f"{split}_perplexity"] - fp
        target[split] = {
            name: 1.0 - (by[name][f"{split}_perplexity"] - fp) / rtn
            for name in ("int4 GPTQ g128", "int4 GPTQ g128 act-order", "int4 AWQ g128")
        }
    target["gptq_closes_half_the_gap"] = all(
        target[s]["int4 GPTQ g128"] >= 0.5 for s in ("val", "test")
    )
    target["int4_artifact_at_most_a_sixth"] = {
        name: by[name]["size_ratio_fp32_over_this"] >= 6.0
        for name in ("int4 RTN g128", "int4 GPTQ g128", "int4 GPTQ g128 + int8 embeddings")
    }
    anchor_closed = (ANCHOR["rtn_4bit"] - ANCHOR["gptq_4bit"]) / (
        ANCHOR["rtn_4bit"] - ANCHOR["fp16"]
    )
    minilm = minilm_rows()
    path = write_result(
        "quant_llm",
        {
            "model": "zoo gpt (4 layers, 128 wide, byte tokens, 875,264 params), trained by "
            "netchisel.zoo",
            "text_fingerprint": data.text_fingerprint(),
            "calibration": f"{CALIBRATION} train windows of 128 bytes (task.calibration_batches)",
            "group_size_note": "g128 as is: every Linear has 128 or 512 inputs",
            "quantized": "every nn.Linear (24 in the blocks + the LM head); embeddings float32 "
            "unless the row says int8 embeddings",
            "throughput": f"batch {BATCH} x {TOKENS} tokens, 1 thread, eager, alternating A/B "
            "against fp32 (compare_latency: 8 rounds x 3 calls)",
            "threads": torch.get_num_threads(),
            "rows": rows,
            "failed_peers": failed_peers,
            "gap_closed_vs_rtn_4bit": target,
            "minilm_smoothquant": minilm,
            "anchor": {**ANCHOR, "gap_closed_by_gptq": anchor_closed},
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )
    print(json.dumps(target, indent=1))
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d` (bench/results/quant_llm.json)."""
    lines = [
        "## LLM weight quantization, zoo gpt on the pydoc text (`bench/quant_llm.py`)",
        "",
        "Every Linear quantized (24 in the blocks + the LM head), embeddings float32 unless the"
        " row says otherwise; groups of 128 inputs (the gpt's Linear layers have 128 or 512"
        f" inputs, so no padding). Calibration: {d['calibration']}. Bytes: the artifact"
        " `netchisel.save` writes (peers: their state dict saved with safetensors). Throughput:"
        f" {d['throughput']}; `x fp32` is the same-run ratio (the machine was shared: compare"
        " ratios, not tokens/s across rows). `simulated`: stored packed, computed in float.",
        "",
        "| method | library | val ppl | test ppl | bytes | fp32 / bytes |"
        " float tensors B (bf16 scales incl.) | tokens/s | x fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        size = r.get("artifact_bytes", r.get("weights_file_bytes", 0))
        floats = f"{r['float_tensor_bytes']:,}" if "float_tensor_bytes" in r else "-"
        speed = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "-"
        ratio = f"{r['speedup_vs_fp32']:.2f}" if "speedup_vs_fp32" in r else "-"
        name = r["method"] + (" (simulated)" if r.get("simulated") else "")
        lines.append(
            f"| {name} | {r['library']} | {r['val_perplexity']:.4f} | {r['test_perplexity']:.4f} |"
            f" {size:,} | {r['size_ratio_fp32_over_this']:.2f} | {floats} | {speed} | {ratio} |"
        )
    gap = d["gap_closed_vs_rtn_4bit"]
    lines += [
        "",
        "Fraction of int4 RTN's perplexity gap to fp32 that each method closes (target for GPTQ:"
        " >= 0.5; published anchor, OPT-125M on WikiText-2:"
        f" {d['anchor']['gap_closed_by_gptq']:.2f} = (37.28 - 31.12) / (37.28 - 27.65)):",
        "",
        "| method | val | test |",
        "|---|---:|---:|",
    ]
    for name, value in gap["val"].items():
        lines.append(f"| {name} | {value:.2f} | {gap['test'][name]:.2f} |")
    sixth = gap["int4_artifact_at_most_a_sixth"]
    lines += [
        "",
        "Artifact <= 1/6 of fp32: "
        + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in sixth.items())
        + ". With float32 embeddings, the two tables (196,608 B) are most of the float bytes"
        " left; `embeddings: true` stores them as int8 rows.",
    ]
    if d.get("failed_peers"):
        lines += [
            "",
            "Peers that failed: " + "; ".join(f"{k}: {v}" for k, v in d["failed_peers"].items()),
        ]
    minilm = d.get("minilm_smoothquant", {})
    if minilm and "skipped" not in minilm:
        lines += [
            "",
            "SmoothQuant on all-MiniLM-L6-v2 (dynamic int8 everywhere; fidelity to fp32 on 51"
            " held-out sentences). Post-LN BERT: the LayerNorm outputs also feed residuals, so"
            " only v_proj -> attention output folds; `InputScale` keeps the other 1/s as a"
            " multiply at run time:",
            "",
            "| variant | test cosine | min cosine | top-5 agreement | smoothed groups |"
            " InputScale modules |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, r in minilm.items():
            lines.append(
                f"| {name} | {r['test_cosine']:.5f} | {r['test_cosine_min']:.4f} |"
                f" {r['test_topk_agreement']:.3f} | {r['smoothed_groups']} |"
                f" {r['input_scale_modules']} |"
            )
    lines += [
        "",
        "Methods, choices and limits: [docs/quantization.md](docs/quantization.md#gptq).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
