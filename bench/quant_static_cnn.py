"""Benchmark: static int8 (`quantize.static_int8`) and ONNX Runtime int8 on the zoo ResNet-20,
CNN and MLP, side by side with NNCF on the same models and calibration data.

Run: .venv/bin/python bench/quant_static_cnn.py [resnet cnn mlp]
     -> bench/results/quant_static_cnn.json (the models named, default all three)

Per model (the zoo's trained reference, its task's test split, 512 calibration images from the
train split for every method):

- fp32 eager; ours: `quantize.static_int8` saved and loaded back (the shipped artifact), run in
  eager (oneDNN int8 kernels, unfused) and compiled (torch.compile with inductor freezing, the
  `compile` latency backend); fp32 compiled the same way, which separates the compile gain from
  the int8 gain;
- ONNX Runtime: the fp32 export, ONNX Runtime's own `quantize_static` (QDQ, per channel) of it,
  and our static int8 model as `onnx_int8` both ways: with its own scales (no calibration) and
  through its float twin and `quantize_static` (with calibration: what a recipe writes);
- NNCF 3.x: `nncf.quantize` on the fp32 ONNX model (run by ONNX Runtime) and on the
  torch.export graph (its Torch FX backend; compiled with freezing it runs in float here: its
  weights are dequantized with mul/sub, which inductor does not lower to int8 kernels).

Accuracy of fixed-batch runtimes (ONNX, exported graphs) pads the last test batch. Latency:
A/B alternating pairs (`compare_latency`), 1 thread, batch 64 and 1; speed-up = A / B median.
Targets (issue 4): test accuracy drop <= 0.5 points and >= 2x vs fp32 eager at batch 64.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import saturated_note, write_result  # bench/ is on sys.path when a script in it runs
from torch import Tensor, nn

import netchisel as nc
from netchisel.artifact.exports import export_onnx
from netchisel.artifact.store import artifact_bytes
from netchisel.core.task import Task
from netchisel.measure.latency import compare_latency, make_runner, onnx_file_runner
from netchisel.quantize import StaticInt8Config, quantize_
from netchisel.quantize.onnx_int8 import export_onnx_int8, rebatch
from netchisel.zoo import data, train

MODELS = {"resnet": "digits32", "cnn": "digits32", "mlp": "digits"}
CALIBRATION = 512
MAX_DROP, MIN_SPEEDUP = 0.5, 2.0


def versions() -> dict[str, str]:
    names = ("torch", "torchao", "onnxruntime", "onnx", "nncf")
    return {n: importlib.metadata.version(n) for n in names}


def fixed_batch_accuracy(run: Callable[[Tensor], Tensor], task: Task, batch: int) -> float:
    """Test accuracy of a runtime that only takes batches of exactly `batch` samples."""
    correct = total = 0
    for x, y in task.loader("test", batch_size=batch):
        x = x.detach()
        n = len(x)
        if n < batch:  # pad with zeros; the padded rows are not scored
            x = torch.cat([x, x.new_zeros(batch - n, *x.shape[1:])])
        with torch.no_grad():
            correct += int((run(x)[:n].argmax(-1) == y).sum())
        total += n
    return 100.0 * correct / total


def ort_session(path: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def nncf_onnx(fp32_onnx: Path, out: Path, calibration: list[tuple[Tensor, ...]]) -> None:
    import nncf
    import onnx

    model = onnx.load(str(fp32_onnx))
    name = model.graph.input[0].name
    items = [{name: b[0].numpy()} for b in calibration]
    onnx.save(nncf.quantize(model, nncf.Dataset(items), subset_size=len(items)), str(out))


def nncf_fx(model: nn.Module, calibration: list[tuple[Tensor, ...]]) -> nn.Module:
    import nncf

    graph = torch.export.export(copy.deepcopy(model).eval(), calibration[0]).module()
    return nncf.quantize(graph, nncf.Dataset(calibration), subset_size=len(calibration))  # type: ignore[no-any-return]


def bench_model(name: str, work: Path) -> dict[str, Any]:
    task = data.task(MODELS[name])
    fp32 = train.pretrained(name).eval()
    calibration = [task.inputs_of(b) for b in task.calibration_batches(CALIBRATION)]
    rows: list[dict[str, Any]] = []

    def row(method: str, runtime: str, accuracy: float, nbytes: int, **extra: Any) -> None:
        rows.append(
            {
                "method": method,
                "runtime": runtime,
                "test_accuracy": accuracy,
                "drop_points": rows[0]["test_accuracy"] - accuracy if rows else 0.0,
                "bytes": nbytes,
                **extra,
            }
        )
        print(f"  {method:34s} {runtime:22s} test {accuracy:6.2f}%  {nbytes:9,d} B")

    fp32_dir = nc.save(fp32, work / f"{name}-fp32")
    row("fp32", "pytorch", task.evaluate(fp32, "test")["accuracy"], artifact_bytes(fp32_dir))

    started = time.perf_counter()
    ours = quantize_(copy.deepcopy(fp32), StaticInt8Config(calibration_samples=CALIBRATION), task)
    seconds = time.perf_counter() - started
    ours_dir = nc.save(ours, work / f"{name}-int8")
    ours = nc.load(ours_dir)  # what ships
    row(
        "netchisel static_int8",
        "pytorch (eager or compiled)",
        task.evaluate(ours, "test")["accuracy"],
        artifact_bytes(ours_dir),
        quantize_seconds=round(seconds, 2),
        weights_file_bytes=(ours_dir / "model.safetensors").stat().st_size,
    )
    fx = nncf_fx(fp32, rebatch(calibration, 64))
    row(
        "nncf.quantize (torch.fx graph)",
        "pytorch (float kernels)",
        fixed_batch_accuracy(lambda x: fx(x), task, 64),
        0,
    )

    onnx_files: dict[int, dict[str, Path]] = {}
    for batch in (64, 1):
        x = task.example_inputs(batch)
        files = {
            "fp32": work / f"{name}-b{batch}.onnx",
            "ort": work / f"{name}-b{batch}-ort-int8.onnx",
            "ours": work / f"{name}-b{batch}-ours-int8.onnx",
            "ours-ort": work / f"{name}-b{batch}-ours-ort-int8.onnx",
            "nncf": work / f"{name}-b{batch}-nncf-int8.onnx",
        }
        export_onnx(fp32, x, files["fp32"])
        export_onnx_int8(fp32, x, files["ort"], calibration)
        export_onnx_int8(ours, x, files["ours"])  # its own scales
        export_onnx_int8(ours, x, files["ours-ort"], calibration)  # what a recipe writes
        nncf_onnx(files["fp32"], files["nncf"], rebatch(calibration, batch))
        onnx_files[batch] = files
    for key, method in (
        ("fp32", "fp32"),
        ("ort", "onnxruntime quantize_static (QDQ)"),
        ("ours", "netchisel static_int8 -> QDQ, own scales"),
        ("ours-ort", "netchisel static_int8 -> quantize_static"),
        ("nncf", "nncf.quantize (onnx)"),
    ):
        path = onnx_files[64][key]
        accuracy = fixed_batch_accuracy(ort_session(path), task, 64)
        row(method, "onnxruntime", accuracy, path.stat().st_size)

    latency = []
    for batch in (64, 1):
        x = task.example_inputs(batch)
        files = onnx_files[batch]
        fx_compiled = make_runner(fx, x, "compile") if batch == 64 else None
        runners = {
            "fp32 eager": make_runner(fp32, x, "eager"),
            "int8 eager": make_runner(ours, x, "eager"),
            "fp32 compiled": make_runner(fp32, x, "compile"),
            "int8 compiled": make_runner(ours, x, "compile"),
            "ort fp32": onnx_file_runner(files["fp32"], x),
            "ort int8 (onnxruntime quantize_static)": onnx_file_runner(files["ort"], x),
            "ort int8 (netchisel, own scales)": onnx_file_runner(files["ours"], x),
            "ort int8 (netchisel, quantize_static)": onnx_file_runner(files["ours-ort"], x),
            "ort int8 (nncf)": onnx_file_runner(files["nncf"], x),
        }
        pairs = [
            ("fp32 eager", "int8 eager"),
            ("fp32 eager", "int8 compiled"),
            ("fp32 eager", "fp32 compiled"),
            ("fp32 compiled", "int8 compiled"),
            ("fp32 eager", "ort fp32"),
            ("ort fp32", "ort int8 (onnxruntime quantize_static)"),
            ("ort fp32", "ort int8 (netchisel, own scales)"),
            ("ort fp32", "ort int8 (netchisel, quantize_static)"),
            ("ort fp32", "ort int8 (nncf)"),
        ]
        if fx_compiled is not None:
            runners["nncf fx compiled"] = fx_compiled
            pairs.append(("fp32 compiled", "nncf fx compiled"))
        for a, b in pairs:
            cmp = compare_latency(
                runners[a],
                runners[b],
                batch_size=batch,
                threads=1,
                rounds=12 if batch == 64 else 20,
                calls_per_round=8 if batch == 64 else 20,
                labels=(a, b),
            )
            latency.append({"batch": batch, **cmp.to_dict()})
            print(
                f"  b{batch:<2d} {a:14s} {cmp.a.median_ms:8.3f} ms | {b:40s}"
                f" {cmp.b.median_ms:8.3f} ms | {cmp.speedup:5.2f}x"
            )
    speedups = {(r["a"]["backend"], r["b"]["backend"], r["batch"]): r["speedup"] for r in latency}
    drop = rows[1]["drop_points"]
    compiled = speedups[("fp32 eager", "int8 compiled", 64)]
    return {
        "task": MODELS[name],
        "params": sum(p.numel() for p in fp32.parameters()),
        "rows": rows,
        "latency": latency,
        "meets_accuracy": drop <= MAX_DROP,
        "meets_speed_compiled": compiled >= MIN_SPEEDUP,
        "meets_speed_eager": speedups[("fp32 eager", "int8 eager", 64)] >= MIN_SPEEDUP,
    }


def main() -> None:
    warnings.simplefilter("ignore")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    names = sys.argv[1:] or list(MODELS)
    torch.set_num_threads(1)  # latency is timed on 1 thread; compiled code is guarded on it
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="quant_static_"))
    results = {}
    for name in names:
        print(f"{name}:")
        results[name] = bench_model(name, work)
    path = write_result(
        "quant_static_cnn",
        {
            "versions": versions(),
            "calibration_samples": CALIBRATION,
            "threads": 1,
            "targets": {"max_drop_points": MAX_DROP, "min_speedup_b64": MIN_SPEEDUP},
            "models": results,
            "notes": [
                "int8 eager: each layer quantizes its input and calls oneDNN's int8 kernel "
                "(unfused); int8 compiled: torch.compile with inductor freezing fuses the int8 "
                "kernels with ReLU and the next quantization. Without freezing there is no gain.",
                "nncf fx: NNCF's Torch FX backend output dequantizes weights with mul/sub, so "
                "inductor runs it in float (it targets OpenVINO, not installed here).",
                "Sizes: netchisel rows are artifact bytes (weights file + manifest); ONNX rows "
                "are file bytes; the nncf fx graph is not saved (0).",
            ],
        },
    )
    print(f"wrote {path}")


def render(d: dict[str, Any]) -> str:
    """The BENCHMARKS.md section of this benchmark's result `d`
    (bench/results/quant_static_cnn.json)."""
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
        fp32 = [r["test_accuracy"] for r in m["rows"] if r["method"] == "fp32"]
        if fp32 and m["task"].startswith("digits"):
            lines += saturated_note(fp32[0])
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
