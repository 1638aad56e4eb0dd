"""Write BENCHMARKS.md from the JSON results in bench/results/ (no number is typed by hand).

Run: .venv/bin/python bench/summary.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent
RESULTS = ROOT / "results"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pct(x: float) -> str:
    return "exact" if x == 0 else f"{100 * x:+.1f}%"


def flops_section(d: dict[str, Any]) -> list[str]:
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
                cells.append(f"{pct(r['rel_err_vs_full'])} / {pct(r['rel_err_vs_matmul_conv'])}")
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
    return lines


def zoo_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Reference models (`bench/zoo_reference.py`)",
        "",
        "Trained deterministically by `netchisel.zoo.train` on 2 CPU cores (wall times are from a",
        "shared machine and vary).",
        "",
        "| model | params | task | steps | train s | val | test |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for name, m in d["models"].items():
        if "val" not in m:
            lines.append(
                f"| {name} | {m['params']:,} | pretrained by its authors | - | - | - | - |"
            )
            continue
        if "perplexity" in m["val"]:
            val = f"ppl {m['val']['perplexity']:.2f}, {m['val']['bits_per_char']:.3f} bits/char"
            test = f"ppl {m['test']['perplexity']:.2f}, {m['test']['bits_per_char']:.3f} bits/char"
        else:
            val = f"{m['val']['accuracy']:.2f}%"
            test = f"{m['test']['accuracy']:.2f}%"
        lines.append(
            f"| {name} | {m['params']:,} | {m['task']} | {m['steps']} | {m['train_seconds']:.1f}"
            f" | {val} | {test} |"
        )
    lines.append("")
    return lines


def latency_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Latency backends (`bench/latency.py`)",
        "",
        f"Untrained zoo models, {d['threads']} thread, A/B alternating (`compare_latency`): eager",
        "PyTorch vs torch.compile (inductor, with freezing) and vs ONNX Runtime. Speedup = eager",
        "median / backend median; absolute milliseconds are from a 2-core CPU and only indicative.",
        "",
        "| model | batch | eager ms | backend | backend ms | speedup |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['a']['median_ms']:.3f} | {r['backend']} |"
            f" {r['b']['median_ms']:.3f} | {r['speedup']:.2f}x |"
        )
    lines.append("")
    return lines


def prune_structured_section(d: dict[str, Any]) -> list[str]:
    o = d["original"]
    lines = [
        "## Structured pruning, ResNet-20 on digits32 (`bench/prune_structured.py`)",
        "",
        f"{d['importance']}, ratio {d['ratio']}, fine-tune {d['finetune']['epochs']} epochs "
        f"(SGD lr {d['finetune']['lr']}), seeds {d['finetune']['seeds']}; latency A/B with "
        f"{d['threads']} thread. Original: {o['macs']:,} MACs, {o['accuracy']:.2f}% test.",
        "",
        "| model | MACs | speed-up b1 | speed-up b64 | test % (median) | val % (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in d["rows"].items():
        b1 = d["latency"][f"original/{name}@1"]["speedup"]
        b64 = d["latency"][f"original/{name}@64"]["speedup"]
        lines.append(
            f"| {name} | {r['macs']:,} | {b1:.2f}x | {b64:.2f}x | {r['accuracy_median']:.2f} |"
            f" {r['val_accuracy_median']:.2f} |"
        )
    same = d["latency"]["torch_pruning/netchisel@64"]["speedup"]
    lines += ["", f"Torch-Pruning / netchisel latency at batch 64: {same:.3f}.", ""]
    return lines


def prune_unstructured_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Unstructured pruning, LeNet-300-100 on digits (`bench/prune_unstructured.py`)",
        "",
        f"Global magnitude. Dense: {d['dense_test_accuracy']:.2f}% test, "
        f"{d['dense_artifact_bytes']:,} B artifact. Targets: drop <= "
        f"{d['targets']['max_drop_points']} points, artifact <= "
        f"{100 * d['targets']['max_artifact_ratio']:.0f}% of dense. Median and worst of the seeds.",
        "",
        "| schedule | sparsity | median test % | median drop (pts, − = gain) | worst drop |"
        " artifact / dense |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["summary"]:
        lines.append(
            f"| {r['method']} | {100 * r['sparsity']:.0f}% | {r['median_test_accuracy']:.2f} |"
            f" {r['median_drop_points']:+.2f} | {r['worst_drop_points']:+.2f} |"
            f" {100 * r['artifact_ratio']:.3f}% |"
        )
    for lat in d["latency"]:
        lines.append("")
        lines.append(
            f"Latency at batch {lat['batch']}, dense {lat['a']['median_ms']:.4f} ms vs sparse "
            f"{lat['b']['median_ms']:.4f} ms: {lat['speedup']:.2f}x. {d['latency_note']}."
        )
    lines.append("")
    return lines


def arms_section(title: str, d: dict[str, Any], with_steps: bool) -> list[str]:
    head = "| arm | sparsity |" + (" steps |" if with_steps else "") + " mean test % | min | max |"
    lines = [title, "", head, "|---|---:|" + ("---:|" if with_steps else "") + "---:|---:|---:|"]
    for r in d["table"]:
        steps = f" {r['steps']} |" if with_steps else ""
        lines.append(
            f"| {r['arm']} | {100 * r['sparsity']:.0f}% |{steps} {r['mean_test_accuracy']:.2f} |"
            f" {r['min']:.2f} | {r['max']:.2f} |"
        )
    lines.append("")
    return lines


def lottery_section(d: dict[str, Any]) -> list[str]:
    title = "## Lottery tickets, LeNet-300-100 on digits (`bench/prune_lottery.py`)"
    return arms_section(title, d, with_steps=False)


def sparse_training_section(d: dict[str, Any]) -> list[str]:
    title = "## Sparse training at 90% from scratch (`bench/prune_sparse_training.py`)"
    return arms_section(title, d, with_steps=True)


def prune_llm_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## LLM pruning, zoo gpt on the pydoc text (`bench/prune_llm.py`)",
        "",
        f"Perplexity val / test; dense {d['dense']['val_perplexity']:.3f} /"
        f" {d['dense']['test_perplexity']:.3f}. No fine-tuning; same calibration windows for all.",
        "",
        "| pattern | method | val ppl | test ppl |",
        "|---|---|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['pattern']} | {r['method']} | {r['val_perplexity']:.3f} |"
            f" {r['test_perplexity']:.3f} |"
        )
    lines += ["", "At 50%: each method's perplexity increase as a fraction of magnitude's"]
    lines += ["(target <= 0.333):", "", "| method | val | test |", "|---|---:|---:|"]
    target = d["target_at_50pct"]
    for method, ratio in target["val"]["ratio_to_magnitude_increase"].items():
        test = target["test"]["ratio_to_magnitude_increase"][method]
        lines.append(f"| {method} | {ratio:.2f} | {test:.2f} |")
    lines += [
        "",
        "Missed with the paper's defaults (block size 128); see docs/pruning.md for why this",
        "small model differs from the published OPT-125M anchor.",
    ]
    wide = d.get("width_check")
    if wide:
        ratios = wide["ratio_to_magnitude_increase"]
        lines += [
            "",
            f"Width check, a zoo gpt {wide['n_embd']} wide ({wide['params']:,} parameters, same"
            f" recipe), 50%: largest input-feature norm over the median at most"
            f" {wide['input_norm_spread_max']:.1f}x; increase over magnitude's, val / test:"
            f" Wanda {ratios['val']['wanda']:.2f} / {ratios['test']['wanda']:.2f}, SparseGPT"
            f" {ratios['val']['sparsegpt']:.2f} / {ratios['test']['sparsegpt']:.2f}.",
        ]
    return [*lines, ""]


def prune_minilm_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## One-shot pruning of all-MiniLM-L6-v2 (`bench/prune_minilm.py`)",
        "",
        f"{d['model']}; 50% sparsity, no fine-tuning; embedding cosine to the dense model."
        f" Largest input-feature norm over the median, per layer: median"
        f" {d['input_norm_spread_median']:.1f}x, up to {max(d['input_norm_spread'].values()):.1f}x"
        " (the zoo gpt: at most 4.4x).",
        "",
        "| pattern | method | val cosine | test cosine | test min cosine | top-5 agreement |"
        " (1 - cosine) / magnitude's, test |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    ratios = d["one_minus_cosine_over_magnitude"]
    for r in d["rows"]:
        ratio = ratios[r["pattern"]].get(r["method"], {}).get("test", 1.0)
        lines.append(
            f"| {r['pattern']} | {r['method']} | {r['val_cosine']:.4f} | {r['test_cosine']:.4f}"
            f" | {r['test_cosine_min']:.4f} | {r['test_topk_agreement']:.3f} | {ratio:.2f} |"
        )
    return [*lines, ""]


def prune_global_local_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Global vs local magnitude pruning (`bench/prune_global_local.py`)",
        "",
        f"{d['importance']} magnitude over every Linear/Conv weight at equal overall sparsity: "
        "local (the same ratio per layer), global (one threshold, every layer keeps "
        f"{100 * d['global_min_keep']:.0f}%), and sensitivity (per-layer ratios chosen from "
        "`prune.sensitivity` curves on val for the least predicted loss). Test accuracy %, "
        "before and after a short fine-tune (median of the seeds). Plots: "
        + ", ".join(f"`{p}`" for p in d["plots"])
        + ".",
        "",
    ]
    for name, m in d["models"].items():
        ft = m["finetune"]
        lines += [
            f"**{name}** on {m['task']} ({m['params']:,} params; dense test "
            f"{m['dense']['test']:.2f}%; fine-tune {ft['steps']} steps, seeds {m['seeds']})",
            "",
            "| sparsity | local | global | sensitivity | local FT | global FT | sensitivity FT |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for sparsity in d["sparsities"]:
            rows = {r["arm"]: r for r in m["rows"] if r["sparsity"] == sparsity}
            cells = [f"{rows[a]['test_no_ft']:.2f}" for a in ("local", "global", "sensitivity")]
            cells += [
                f"{rows[a]['test_ft_median']:.2f}" for a in ("local", "global", "sensitivity")
            ]
            lines.append(f"| {100 * sparsity:.0f}% | " + " | ".join(cells) + " |")
        sens = [r for r in m["rows"] if r["arm"] == "sensitivity"]
        pairs = ", ".join(
            f"{100 * r['sparsity']:.0f}%: {r['predicted_val_loss']:.1f} / "
            f"{r['measured_val_loss']:.1f}"
            for r in sens
        )
        lines += ["", f"Sensitivity arm, val points lost predicted / measured: {pairs}.", ""]
    return lines


def quant_deep_compression_section(d: dict[str, Any]) -> list[str]:
    t = d["targets"]
    lines = [
        "## Deep Compression, LeNet-300-100 on digits (`bench/quant_deep_compression.py`)",
        "",
        f"Prune 95% (global magnitude, 8 rounds with fine-tuning), share weights by k-means "
        f"({d['kmeans']['bits']}-bit indices, centroids fine-tuned), then Huffman-code the "
        "indices (relative-index sparse layout). Sizes are saved files: artifact = "
        "model.safetensors + manifest.json; ratios against the fp32 file of the same kind; "
        f"test % median of seeds {d['seeds']}. Targets: >= {t['min_ratio']}x with <= "
        f"{t['max_drop_points']} points drop. Published (MNIST, 784 inputs): 40x (Han et al., "
        "ICLR 2016, table 1).",
        "",
    ]
    for m in d["models"]:
        lines += [
            f"**{m['model']}**, {m['params']:,} params",
            "",
            "| stage | test % | drop (pts, − = gain) | artifact B | ratio | safetensors B"
            " | ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in m["table"]:
            lines.append(
                f"| {r['stage']} | {r['median_test_accuracy']:.2f} |"
                f" {r['median_drop_points']:+.2f} | {r['artifact_bytes']:,} |"
                f" {r['artifact_ratio']:.1f}x | {r['safetensors_bytes']:,} |"
                f" {r['safetensors_ratio']:.1f}x |"
            )
        layouts = m["rows"][0]["layouts"].values()
        dense = sum(x["dense_huffman"] for x in layouts)
        relative = sum(min(x["dense_huffman"], x["relative_huffman"]) for x in layouts)
        lat = m["latency_batch64"]
        lines += [
            "",
            f"Indices of seed 0: {dense:,} B Huffman-coding every index, {relative:,} B in "
            "the relative-index layout (what is stored). Speed of the clustered model vs dense "
            f"at batch 64: {lat['speedup']:.2f}x (it computes with a gathered float weight; "
            "< 1 is slower).",
            "",
        ]
    return lines


def factorize_gpt_section(d: dict[str, Any]) -> list[str]:
    o, s, r = d["original"], d["svd"], d["recovery"]
    ranks = sorted(set(s["ranks"].values()))
    lines = [
        "## SVD of the gpt's MLP layers at half their parameters (`bench/factorize_gpt.py`)",
        "",
        f"`factorize.svd` (param_ratio {d['param_ratio']}) on the 8 MLP Linears of the zoo gpt "
        f"(ranks {', '.join(map(str, ranks))}), then recovery by `{r['stage']}` (token KL to the "
        f"original, temperature {r['temperature']}, alpha {r['alpha']}, {r['steps']} AdamW steps "
        f"of {r['batch_size_used']} windows, lr {r['lr']}). Perplexity per byte; MACs of one "
        "128-byte window; latency A/B on one thread (original / SVD; > 1 is faster).",
        "",
        "| model | params | MLP params | MACs | val ppl | test ppl | artifact B |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| original | {o['params']:,} | {o['mlp_params']:,} | {o['macs']:,} "
        f"| {o['perplexity']['val']:.3f} | {o['perplexity']['test']:.3f} "
        f"| {o['artifact_bytes']:,} |",
        f"| SVD, before recovery | {s['params']:,} | {s['mlp_params']:,} | {s['macs']:,} "
        f"| {s['perplexity_before_recovery']['val']:.3f} "
        f"| {s['perplexity_before_recovery']['test']:.3f} | |",
        f"| SVD, after recovery | {s['params']:,} | {s['mlp_params']:,} | {s['macs']:,} "
        f"| {s['perplexity_after_recovery']['val']:.3f} "
        f"| {s['perplexity_after_recovery']['test']:.3f} | {s['artifact_bytes']:,} |",
        "",
    ]
    for key, lat in d["latency"].items():
        batch = key.split("@")[1]
        lines.append(
            f"- batch {batch}: {lat['a_median_ms']:.2f} ms -> {lat['b_median_ms']:.2f} ms "
            f"(original / SVD = {lat['speedup']:.2f}x)"
        )
    return [*lines, ""]


def factorize_resnet_section(d: dict[str, Any]) -> list[str]:
    o, r = d["original"], d["recovery"]
    lat = d["latency"]
    lines = [
        "## Tucker-2, CP and depthwise-separable rewrites of ResNet-20"
        " (`bench/factorize_resnet.py`)",
        "",
        "The 18 3x3 convs of the residual blocks of the zoo resnet (digits32) rewritten by "
        "`factorize.tucker` (param_ratio 0.5), by `factorize.cp` (param_ratio 0.5, 1x1 -> "
        "depthwise 3x3 -> 1x1) and by `factorize.separable` (per-channel rank-1 "
        f"least-squares init), then recovered by `{r['stage']}` (Hinton KD, temperature "
        f"{r['temperature']}, alpha {r['alpha']}, {r['epochs']:g} epochs, SGD lr {r['lr']}). "
        "Accuracy % on test / val (270 images each; the recovered models as saved artifacts): "
        "right after the rewrite (weights only), after re-estimating BatchNorm statistics "
        "(`recalibrate_bn`, 512 train images), after recovery. MACs of one 32x32 image; "
        "latency A/B on one thread (original / rewrite; > 1 is faster).",
        "",
        "| model | params | MACs | weights only | BN re-estimated | recovered "
        "| speed-up b64 | speed-up b1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| original | {o['params']:,} | {o['macs']:,} | {o['accuracy']['test']:.2f} / "
        f"{o['accuracy']['val']:.2f} | | | 1.00 | 1.00 |",
    ]
    for name, row in d["rows"].items():
        before, after = row["accuracy_before_recovery"], row["accuracy_after_recovery"]
        raw = row.get("accuracy_weights_only", {"test": float("nan"), "val": float("nan")})
        lines.append(
            f"| {name} | {row['params']:,} | {row['macs']:,} "
            f"| {raw['test']:.2f} / {raw['val']:.2f} "
            f"| {before['test']:.2f} / {before['val']:.2f} "
            f"| {after['test']:.2f} / {after['val']:.2f} "
            f"| {lat[f'original/{name}@64']['speedup']:.2f} "
            f"| {lat[f'original/{name}@1']['speedup']:.2f} |"
        )
    return [*lines, ""]


def quant_qat_section(d: dict[str, Any]) -> list[str]:
    b = d["budget"]
    rows = {r["variant"]: r for r in d["rows"]}

    def cell(name: str) -> str:
        r = rows[name]
        return f"{r['median_test_accuracy']:.2f} / {r['median_val_accuracy']:.2f}"

    def codes(r: dict[str, Any]) -> str:
        return f"{r['code_bytes']:,}" if "code_bytes" in r else "-"

    spread = max(
        r["median_test_accuracy"] - r["min_test_accuracy"] for r in d["rows"] if r["trained"]
    )

    lines = [
        "## Quantization-aware training and binary/ternary weights, cnn on digits32"
        " (`bench/quant_qat.py`)",
        "",
        f"Zoo cnn ({d['float_test_accuracy']:.2f}% test, {d['float_artifact_bytes']:,} B fp32"
        f" artifact). Every trained variant: {b['steps']} steps of {b['optimizer'].upper()}"
        f" (lr {b['lr']}, momentum {b['momentum']}, {b['lr_schedule']}, batch"
        f" {b['batch_size']}), seeds {b['seeds']}. Cells: test % / val % of the saved-and-loaded"
        " model, medians over the seeds (the lowest seed is at most"
        f" {spread:.2f} points below the median); 270 images each, one image = 0.37 points."
        " rtn changes the Linear only (convs stay float, its artifact is in brackets); ptq is"
        " the QAT format with no training; convs are per output channel, the Linear per channel"
        " at 8 bits and in groups of 128 below (int8 / int4 kernels at 8 / 4 bits, packed float"
        " compute otherwise).",
        "",
        "| bits | rtn (Linear only) | ptq | qat-ste | lsq | artifact B (ptq/qat/lsq) | / fp32 |"
        " integer codes B |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    for bits in (8, 4, 2):
        lsq = rows[f"lsq-{bits}"]
        lines.append(
            f"| {bits} | {cell(f'rtn-{bits}')} ({rows[f'rtn-{bits}']['artifact_bytes']:,} B) |"
            f" {cell(f'ptq-{bits}')} |"
            f" {cell(f'qat-ste-{bits}')} | {cell(f'lsq-{bits}')} | {lsq['artifact_bytes']:,} |"
            f" {lsq['artifact_ratio']:.1%} | {codes(lsq)} |"
        )
    if "lsq-2-channel" in rows:
        r = rows["lsq-2-channel"]
        lines.append(
            f"| 2, per channel | - | {cell('ptq-2-channel')} | {cell('qat-ste-2-channel')} |"
            f" {cell('lsq-2-channel')} | {r['artifact_bytes']:,} | {r['artifact_ratio']:.1%} |"
            f" {codes(r)} |"
        )
    lines += [
        "",
        "| binary / ternary (conv2, conv3; conv1 and Linear float) | test / val % |"
        " artifact B | / fp32 | integer codes B |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (
        "binary-untrained",
        "binary",
        "ternary-untrained",
        "ternary",
        "ptq-2-inner",
        "lsq-2-inner",
    ):
        r = rows[name]
        lines.append(
            f"| {name} | {cell(name)} | {r['artifact_bytes']:,} | {r['artifact_ratio']:.1%} |"
            f" {codes(r)} |"
        )
    if "lsq-4-a8" in rows:
        lines += [
            "",
            f"LSQ 4-bit with 8-bit fake-quantized layer inputs: {cell('lsq-4-a8')} test / val %"
            " (simulated activations, float compute).",
        ]
    lines += [
        "",
        "Integer codes = the stored integer weights alone (packed codes, int8 and int4 buffers);"
        " the rest of an artifact is scales, float layers, batch norms and the manifest. Packed"
        " layers (convs; binary, ternary and 2-bit weights) are stored at their real size and"
        " computed in float: no speed-up is claimed for them.",
        "",
    ]
    return lines


def quant_static_cnn_section(d: dict[str, Any]) -> list[str]:
    t = d["targets"]
    v = d["versions"]
    lines = [
        "## Static int8 and ONNX Runtime int8, zoo CNNs on digits (`bench/quant_static_cnn.py`)",
        "",
        f"`quantize.static_int8` (torchao {v['torchao']} PT2E, x86 quantizer) against ONNX"
        f" Runtime {v['onnxruntime']}'s `quantize_static` and NNCF {v['nncf']}, all calibrated"
        f" on the same {d['calibration_samples']} training images; torch {v['torch']}."
        f" Targets: drop <= {t['max_drop_points']} points, >= {t['min_speedup_b64']}x vs fp32"
        " eager at batch 64. Bytes: netchisel artifacts (weights + manifest) or ONNX files.",
        "",
    ]
    for name, m in d["models"].items():
        lines += [
            f"**{name}** ({m['params']:,} params, {m['task']}):",
            "",
            "| method | runtime | test % | drop (pts, − = gain) | bytes |",
            "|---|---|---:|---:|---:|",
        ]
        for r in m["rows"]:
            size = f"{r['bytes']:,}" if r["bytes"] else "-"
            lines.append(
                f"| {r['method']} | {r['runtime']} | {r['test_accuracy']:.2f} |"
                f" {r['drop_points']:+.2f} | {size} |"
            )
        lines += [
            "",
            f"Latency, {d['threads']} thread, A/B alternating; speed-up = A / B (median):",
            "",
            "| A | B | b64: A ms | b64: B ms | b64 speed-up | b1 speed-up |",
            "|---|---|---:|---:|---:|---:|",
        ]
        by_pair: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for r in m["latency"]:
            by_pair.setdefault((r["a"]["backend"], r["b"]["backend"]), {})[r["batch"]] = r
        for (a, b), runs in by_pair.items():
            big, one = runs.get(64), runs.get(1)
            cells = (
                f"{big['a']['median_ms']:.3f} | {big['b']['median_ms']:.3f} | {big['speedup']:.2f}x"
                if big
                else "- | - | -"
            )
            small = f"{one['speedup']:.2f}x" if one else "-"
            lines.append(f"| {a} | {b} | {cells} | {small} |")
        ok = {True: "met", False: "missed"}
        lines += [
            "",
            f"Targets: accuracy {ok[m['meets_accuracy']]}; speed {ok[m['meets_speed_compiled']]}"
            f" compiled with freezing, {ok[m['meets_speed_eager']]} in eager.",
            "",
        ]
    lines += [f"- {note}" for note in d["notes"]]
    lines.append("")
    return lines


def distill_digits_section(d: dict[str, Any]) -> list[str]:
    s, best, alone = d["setup"], d["best"], d["alone"]
    pub = d["published_mnist"]
    lines = [
        "## Distillation: Hinton soft targets on digits (`bench/distill_digits.py`)",
        "",
        f"Teacher: {s['teacher']} ({s['teacher_params']:,} params). Student: {s['student']} "
        f"({s['student_params']:,} params), trained on {s['labels']} labelled images for "
        f"{s['steps']} steps (lr {s['lr']}, batch {s['batch_size']}) alone or distilled (soft "
        f"targets on the same images). Test errors of {s['test_images']}, median of seeds "
        f"{s['seeds']}; (T, alpha) chosen by median validation errors. Target: the distilled "
        f"student closes >= {100 * d['target_gap_closed']:.0f}% of the gap. Published (Hinton "
        f"et al. 2015, MNIST): teacher {pub['teacher']}, alone {pub['alone']}, distilled "
        f"{pub['distilled']} errors. Plot: `bench/results/distill_digits.svg`.",
        "",
        "| model | test errors (median) | per seed |",
        "|---|---:|---|",
        f"| teacher | {d['teacher_errors']['test']} | |",
        f"| student alone | {alone['median_test_errors']} | {alone['test_errors']} |",
        f"| student distilled, T={best['temperature']:g}, alpha={best['alpha']:g} |"
        f" {best['median_test_errors']} | {best['test_errors']} |",
        "",
        f"Gap closed: {100 * d['gap_closed']:.0f}% "
        f"({'meets' if d['meets_target'] else 'misses'} the target).",
        "",
        "Sweep, median test errors (rows T, columns alpha):",
        "",
    ]
    alphas = sorted({r["alpha"] for r in d["sweep"]})
    temps = sorted({r["temperature"] for r in d["sweep"]})
    by = {(r["temperature"], r["alpha"]): r["median_test_errors"] for r in d["sweep"]}
    lines += [
        "| T | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
        "|---:|" + "---:|" * len(alphas),
    ]
    lines += [f"| {t:g} | " + " | ".join(f"{by[(t, a)]:g}" for a in alphas) + " |" for t in temps]
    return [*lines, ""]


def distill_gpt_section(d: dict[str, Any]) -> list[str]:
    s, arms, teacher = d["setup"], d["arms"], d["teacher"]
    lines = [
        "## Distillation: a 4x smaller gpt on the pydoc text (`bench/distill_gpt.py`)",
        "",
        f"Teacher: {s['teacher']}, {s['teacher_params']:,} params. Student: {s['student']}, "
        f"{s['student_params']:,} params ({s['param_ratio']:.2f}x fewer), fresh, same seed in "
        f"both arms. Same {s['steps']} steps of {s['batch_size']} x {s['block_size']} bytes "
        f"(lr {s['lr']}, cosine) alone (alpha 1) or distilled ({s['divergence']}, T "
        f"{s['temperature']:g}, alpha {s['alpha']:g}). A short budget (the reference trained "
        "1,000 steps of 32 x 128): both students are far from converged. Perplexity per byte "
        f"on {s['block_size']}-byte windows.",
        "",
        "| model | params | val perplexity | test perplexity | train s (wall, loaded CPU) |",
        "|---|---:|---:|---:|---:|",
        f"| teacher | {s['teacher_params']:,} | {teacher['val']['perplexity']:.2f} |"
        f" {teacher['test']['perplexity']:.2f} | |",
    ]
    for name, arm in arms.items():
        lines.append(
            f"| student {name} | {s['student_params']:,} | {arm['val']['perplexity']:.2f} |"
            f" {arm['test']['perplexity']:.2f} | {arm['train_seconds']:.0f} |"
        )
    lines += [
        "",
        f"Distilled / alone test perplexity: {d['test_perplexity_ratio']:.3f}.",
        "",
    ]
    return lines


def prune_distill_quantize_section(d: dict[str, Any]) -> list[str]:
    stages, ab = d["stages"], d["latency_side_by_side"]
    p = d["profile"]

    def test_val(acc: dict[str, float | None]) -> str:
        test = "-" if acc["test"] is None else f"{acc['test']:.2f}"
        return f"{test} / {acc['val']:.2f}"

    cnn = d["recipe"].endswith("/demo.yaml")
    lines = [
        "## One recipe: prune -> distill -> static int8 on "
        + ("the zoo CNN, the demo" if cnn else "ResNet-20")
        + " (`bench/prune_distill_quantize_resnet.py"
        + (" --model cnn" if cnn else "")
        + "`)",
        "",
        f"`{d['recipe']}` run as it is (`run_recipe`) on the {d['model']} (digits32). Each row"
        " is the report's profile after that stage: accuracy % test / val (270 images each;"
        " the recipe evaluates test after distill and int8 only),"
        f" bytes of the saved artifact, latency at batch {p['batch_size']} ({p['backend']},"
        f" {p['threads']} thread, median of {p['repeats']} with p10-p90; stages timed one after"
        " the other on a shared machine), energy an estimate from per-operation energies.",
        "",
        "| stage | accuracy | params | MACs | FLOPs | bytes on disk | latency ms | energy µJ (est.)"
        " | stage s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in stages:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['stage']} | {test_val(r['accuracy'])} |"
            f" {r['params']:,} | {r['macs']:,} | {r['flops']:,} | {r['bytes_on_disk']:,} |"
            f" {lat['median']:.1f} ({lat['p10']:.1f}-{lat['p90']:.1f}) | {r['energy_uj']:.1f} |"
            f" {r['seconds']:.0f} |"
        )
    first, last = stages[0], stages[-1]
    lines += [
        "",
        f"Original -> final: {first['bytes_on_disk'] / last['bytes_on_disk']:.1f}x fewer bytes,"
        f" {first['macs'] / last['macs']:.2f}x fewer MACs; side by side (alternating A/B, one"
        f" thread, eager) the final artifact runs {ab['original/final@64']['speedup']:.2f}x"
        f" faster at batch 64 and {ab['original/final@1']['speedup']:.2f}x at batch 1.",
        "",
    ]
    return lines


def quant_llm_section(d: dict[str, Any]) -> list[str]:
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
    return lines


def quant_kernels_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Quantized Linear kernels on one 4096 x 4096 layer (`bench/quant_kernels.py`)",
        "",
        "Each netchisel module against fp32 `F.linear` in the alternating A/B harness; error is",
        "the relative Frobenius error of the output against fp32 on the same random input.",
        f"Medians of {d['passes']} passes over the whole table, with their min-max.",
        f"Target: {d['target']} - {'met' if d['target_met'] else 'not met'}; on one thread "
        f"{'met too' if d['target_met_on_one_thread'] else 'not met'}.",
        "",
        "| kernel | batch | threads | fp32 ms | ms | speed-up vs fp32 (min-max) | error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        low, high = r["speedup_min_max"]
        lines.append(
            f"| {r['kernel']} | {r['batch']} | {r['threads']} | {r['fp32_ms']:.3f} "
            f"| {r['ms']:.3f} | {r['speedup_vs_fp32']:.2f}x ({low:.2f}-{high:.2f}) "
            f"| {r['relative_error']:.4f} |"
        )
    return [*lines, ""]


def quant_minilm_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## MiniLM (all-MiniLM-L6-v2) int8 and int4 (`bench/quant_minilm.py`)",
        "",
        "Embedding fidelity to the fp32 model on the zoo's held-out sentences; speed-up A/B "
        f"against fp32 on {d['batch']} sentences x {d['tokens_per_sentence']} tokens, "
        f"{d['threads']} thread; bytes of the saved artifact (torch's `quantize_dynamic` "
        "cannot be saved as one: `torch.save` of its state dict).",
        "",
        "| variant | cosine | min cosine | top-5 agreement | speed-up | MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['variant']} | {r['cosine']:.4f} | {r['cosine_min']:.4f} "
            f"| {r['topk_agreement']:.3f} | {r['speedup_vs_fp32']:.2f}x | {r['bytes'] / 1e6:.2f} |"
        )
    h2h = d["head_to_head"]
    lines += [
        "",
        f"Target: {d['target']}. The peer and netchisel's three dynamic int8 modes (activation "
        f"scales, weight scales) timed in turns in one loop ({h2h['rounds']} rounds of "
        f"{h2h['calls_per_round']} calls); speed over the peer's is the median of the per-round "
        "ratios, with their p10-p90:",
        "",
        "| mode | cosine above peer | eager ms | eager speed / peer | compiled ms "
        "| compiled speed / peer |",
        "|---|---|---:|---:|---:|---:|",
        f"| peer | - | {h2h['eager']['peer_ms']:.1f} | 1 "
        f"| {h2h['torch.compile']['peer_ms']:.1f} | 1 |",
    ]
    for mode, fidelity in d["fidelity_met"].items():
        e, c = h2h["eager"][mode], h2h["torch.compile"][mode]
        lines.append(
            f"| {mode} | {'yes' if fidelity else 'no'} | {e['ms']:.1f} "
            f"| {_ratio_spread(e)} | {c['ms']:.1f} | {_ratio_spread(c)} |"
        )
    lines += [
        "",
        "Profiled matmul time per forward (self CPU ms): "
        + ", ".join(f"{op} {ms:.0f}" for op, ms in h2h["matmul_ms_per_forward"].items())
        + ".",
    ]
    return [*lines, ""]


def quant_dynamic_layers_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Dynamic int8 per layer, MiniLM shapes (`bench/quant_dynamic_layers.py`)",
        "",
        "Each Linear of one MiniLM block timed alone, torch's `quantize_dynamic` layer and "
        f"netchisel's three modes in turns, {d['threads']} thread; full 8-bit activation range: "
        f"{d['full_activation_range']}. Microseconds per call (relative output error to float).",
        "",
        "| in x out | rows | peer | per-token, per-channel | per-tensor, per-channel "
        "| per-tensor, per-tensor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        cells = " | ".join(f"{us:.1f} ({r['relative_error'][k]:.4f})" for k, us in r["us"].items())
        lines.append(f"| {r['in']} x {r['out']} | {r['rows']} | {cells} |")
    lines += ["", "A block (4 x 384x384, 384x1536, 1536x384), speed over the peer's:", ""]
    for rows, b in d["blocks"].items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in b["speed_ratio_ours_over_peer"].items())
        lines.append(f"- {rows} rows: {ratios}")
    return [*lines, ""]


def _ratio_spread(r: dict[str, Any]) -> str:
    low, high = r["ratio_p10_p90"]
    return f"{r['speed_ratio_ours_over_peer']:.2f}x ({low:.2f}-{high:.2f})"


def search_tabular_section(d: dict[str, Any]) -> list[str]:
    s, t = d["setup"], d["table"]
    meta = s["table_meta"]
    expect = t["random_expectation"]
    tol = s["tolerance_points"]
    ref = d["random_reference"]

    def count(x: float | None) -> str:
        return "not reached" if x is None else f"{x:g}"

    lines = [
        "## Search: strategies on the tabular NAS benchmark (`bench/search_tabular.py`)",
        "",
        f"Table `bench/data/{s['table']}`: all {s['architectures']} architectures of "
        f"`tabular_space()` trained on digits (8x8), {meta['budget']['steps']} steps, seeds "
        f"{meta['seeds']}. Optimum: {t['optimum_val']:.2f}% mean val ({t['optimum_test']:.2f}% "
        f"test); {expect['architectures_within_tolerance']} architectures lie within {tol} "
        f"points of it. Each strategy (default options) runs {s['evaluations']} evaluations "
        f"with seeds 0..{s['seeds'] - 1}; regret = {s['regret']}. Target: "
        f"{', '.join(s['targeted'])} reach {tol} points in fewer evaluations (median) than "
        f"random. Reference: {s['reference']}, median {count(ref['median_evaluations'])} "
        f"evaluations ({count(ref['median_distinct_to_reach'])} distinct architectures), "
        f"reached in {ref['reached']}/{ref['runs']}; in theory (each active dimension uniform, "
        f"p = {expect['hit_probability']} per draw) {expect['median_draws']}. p: one-sided "
        "Mann-Whitney U test that a strategy needs fewer evaluations than the reference runs. "
        "Plot: `bench/results/search_tabular.svg`.",
        "",
        f"| strategy | median evals to {tol} | distinct archs to {tol} | reached | p |"
        " median regret @10 | @25 | @50 | @100 | test regret @100 | s / run | beats random |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in d["strategies"].items():
        at, test = r["median_regret_at"], r["median_test_regret_at"]
        p = r.get("p_fewer_than_random")
        verdict = "no"
        if r["beats_random"]:
            verdict = "yes" if p is not None and p < 0.05 else f"median only (p {p:.2f})"
        lines.append(
            f"| {name} | {count(r['median_evaluations'])} |"
            f" {count(r['median_distinct_to_reach'])} | {r['reached']}/{r['runs']} |"
            f" {'' if p is None else '<0.001' if p < 0.001 else f'{p:.3f}'} |"
            f" {at['10']:.2f} | {at['25']:.2f} | {at['50']:.2f} | {at['100']:.2f} |"
            f" {test['100']:+.2f} | {r['median_seconds_per_run']:g} | {verdict} |"
        )
    missed = [name for name, met in d["target_met"].items() if not met]
    lines += [
        "",
        f"Target missed by: {', '.join(missed)}." if missed else "Target met by all three.",
        "",
    ]
    return lines


def search_nas_digits32_section(d: dict[str, Any]) -> list[str]:
    spec = yaml.safe_load(d["spec_text"])
    budget = spec["recipe"]["stages"][0]["finetune"]
    prof = spec["recipe"]["profile"]
    ab, rr = d["ab"], d["round_robin"]
    lines = [
        "## Search: multi-objective NAS on digits32 (`bench/search_nas_digits32.py`)",
        "",
        f"`{d['spec']}` as shipped: the macro space under the zoo ResNet's widths, every"
        f" candidate trained from scratch for {budget['epochs']:g} epochs (AdamW lr"
        f" {budget['lr']:g}), objectives val accuracy and latency (batch {prof['batch_size']},"
        f" {prof['threads']} thread, {prof['backend']}, median of {prof['repeats']}), strategy"
        f" {d['strategy']}, {d['trials']} trials. The zoo ResNet-20 and MobileNetV2, built at"
        " their macro-space points, are trained and measured the same way in the same run. The"
        " latencies the search saw are single timings minutes apart on a shared machine, so every"
        f" saved model is timed again round-robin ({rr['rounds']} rounds of"
        f" {rr['calls_per_round']} calls each, rotating order). A front point dominates a zoo"
        " model when its val accuracy is >= and it is faster both round-robin and in an"
        f" alternating A/B timing of the two ({ab['rounds']} x {ab['calls_per_round']} calls);"
        " the speed-up quoted is the A/B one. Test accuracy never selects. Search"
        f" {d['search_seconds'] / 60:.1f} min, whole benchmark {d['wall_seconds'] / 60:.1f} min"
        " on a shared 2-core machine. Plot: `bench/results/search_nas_digits32.svg`.",
        "",
        "| model | val % | test % | ms in search | ms round-robin | MACs | params | architecture |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = [(f"zoo {name}", z) for name, z in d["zoo"].items()]
    rows += [(f"front: trial {p['trial']}", p) for p in d["front"]]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['val_accuracy']:.2f} | {r['test_accuracy']:.2f} |"
            f" {r['latency_ms']:.2f} | {r['remeasured_ms']:.2f} | {r['macs']:,} | {r['params']:,} |"
            f" {r['architecture'].replace('|', chr(92) + '|')} |"
        )
    lines.append("")
    for name, dom in d["dominance"].items():
        if not dom["dominated"]:
            lines.append(f"- zoo {name}: **not dominated** by the front found.")
            continue
        fast, acc = dom["fastest"], dom["most_accurate"]
        lines.append(
            f"- zoo {name}: dominated by {dom['dominating_points']} front points. Fastest: trial"
            f" {fast['trial']}, {fast['ab']['speedup']:.2f}x faster A/B"
            f" ({fast['ab']['zoo_median_ms']:.2f} vs {fast['ab']['point_median_ms']:.2f} ms),"
            f" val {fast['val_gain_points']:+.2f} points (test {fast['test_gain_points']:+.2f})."
            f" Most accurate: trial {acc['trial']}, val {acc['val_gain_points']:+.2f} points"
            f" (test {acc['test_gain_points']:+.2f}), {acc['ab']['speedup']:.2f}x faster."
        )
    met = all(dom["dominated"] for dom in d["dominance"].values())
    zoo = load("zoo_reference")
    reference = zoo["models"]["mobilenet"] if zoo else None
    trained = (
        f" ({reference['val']['accuracy']:.2f}% after its {reference['settings']['epochs']}-epoch"
        " reference recipe)"
        if reference
        else ""
    )
    lines += [
        "",
        f"Median test accuracy of the front: {d['front_test_accuracy_median']:.2f}%. Target (the"
        " front dominates both zoo models at >= 1 point each): "
        + ("met." if met else "**not met**.")
        + " The budget is short for the 17-block MobileNetV2: it reaches"
        f" {d['zoo']['mobilenet']['val_accuracy']:.2f}% val here{trained}, so its domination"
        " says as much about the budget as about the search. One image of the 270 is"
        f" {100 / 270:.2f} points, within training noise.",
        "",
    ]
    return lines


def search_policy_resnet_section(d: dict[str, Any]) -> list[str]:
    spec = yaml.safe_load(d["spec_text"])
    budget = next(s["finetune"] for s in spec["recipe"]["stages"] if "finetune" in s)
    s, o = d["search"], d["original"]
    options = ", ".join(f"{k} {v}" for k, v in d["strategy_options"].items())
    lines = [
        "## Search: per-layer pruning policy vs uniform on ResNet-20"
        " (`bench/search_policy_resnet.py`)",
        "",
        f"`{d['spec']}` as shipped: one structured-pruning ratio (L1) per channel group of the"
        f" trained zoo resnet ({len(s['best_policy'])} groups), MACs <= {d['macs_limit']:,.0f}"
        f" ({100 * d['macs_limit_ratio']:.0f}% of {o['macs']:,}), each policy fine-tuned"
        f" {budget['epochs']:g} epochs (SGD lr {budget['lr']:g}) and scored by val"
        f" {spec['objectives'][0]}; strategy"
        f" {d['strategy']} ({options}), {s['counts']['counted']} trials"
        f" ({s['counts']['feasible']} feasible). The best policy (trial {s['best_trial']}) and"
        " uniform pruning (one ratio for every group, `target_macs_ratio`: under the limit, and"
        " under the policy's own MACs; uniform MACs move in steps) get the same fine-tune with"
        f" {len(d['seeds'])} seeds (seed 0 is the search's run; arms paired by seed). Original:"
        f" {o['val_accuracy']:.2f}% val, {o['test_accuracy']:.2f}% test. Search"
        f" {d['search_seconds'] / 60:.1f} min, whole benchmark {d['wall_seconds'] / 60:.1f} min.",
        "",
        "| arm | MACs | params | mean val loss | mean val % | median val | mean test % |"
        " median test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in d["arms"].items():
        lines.append(
            f"| {name} | {a['macs']:,} | {a['params']:,} | {a['val_loss_mean']:.4f} |"
            f" {a['val_mean']:.2f} |"
            f" {a['val_median']:.2f} | {a['test_mean']:.2f} | {a['test_median']:.2f} |"
        )
    policy = ", ".join(f"{k.replace(chr(92), '')} {v:g}" for k, v in s["best_policy"].items())
    lines += ["", f"Best policy (fraction of channels removed per group): {policy}.", ""]
    lines += [
        "Gains are policy minus uniform, per seed, mean ± one standard error.",
        "",
    ]
    fair = [
        name
        for name, v in d["verdict"].items()
        if v["beats"] and d["arms"]["searched"]["macs"] <= d["arms"][name]["macs"]
    ]
    for name, v in d["verdict"].items():
        val, test, loss = v["val"], v["test"], v["val_loss"]
        lines.append(
            f"- policy vs {name}, paired by seed: val loss {loss['mean_difference']:+.4f}"
            f" ± {loss['standard_error']:.4f}, val {val['mean_gain_points']:+.2f}"
            f" ± {val['standard_error']:.2f} points (wins/ties/losses {val['wins_ties_losses']}),"
            f" test {test['mean_gain_points']:+.2f} ± {test['standard_error']:.2f}"
            f" ({test['wins_ties_losses']}): "
            + ("higher on both." if v["beats"] else "**not higher on both**.")
        )
    lines += [
        "",
        "Target (per-layer beats uniform at equal MACs): "
        + (f"met against {', '.join(fair)}." if fair else "**not met**.")
        + " An arm counts only if the policy has no more MACs than it.",
        "",
    ]
    return lines


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/summary.py` from `bench/results/*.json`; each section names the",
        "script that produced its numbers. Machine: see each JSON's `machine`.",
        "",
    ]
    for name, section in (
        ("flops", flops_section),
        ("zoo_reference", zoo_section),
        ("latency", latency_section),
        ("prune_structured", prune_structured_section),
        ("prune_unstructured", prune_unstructured_section),
        ("prune_lottery", lottery_section),
        ("prune_sparse_training", sparse_training_section),
        ("prune_llm", prune_llm_section),
        ("prune_minilm", prune_minilm_section),
        ("prune_global_local", prune_global_local_section),
        ("quant_kernels", quant_kernels_section),
        ("quant_minilm", quant_minilm_section),
        ("quant_dynamic_layers", quant_dynamic_layers_section),
        ("quant_deep_compression", quant_deep_compression_section),
        ("quant_static_cnn", quant_static_cnn_section),
        ("quant_qat", quant_qat_section),
        ("quant_llm", quant_llm_section),
        ("factorize_gpt", factorize_gpt_section),
        ("factorize_resnet", factorize_resnet_section),
        ("distill_digits", distill_digits_section),
        ("distill_gpt", distill_gpt_section),
        ("prune_distill_quantize_cnn", prune_distill_quantize_section),
        ("prune_distill_quantize_resnet", prune_distill_quantize_section),
        ("search_tabular", search_tabular_section),
        ("search_nas_digits32", search_nas_digits32_section),
        ("search_policy_resnet", search_policy_resnet_section),
    ):
        data = load(name)
        if data is not None:
            lines += section(data)
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
