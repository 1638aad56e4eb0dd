"""Peak host memory of layer-by-layer calibration on a Hugging Face decoder (issue 21).

Run: .venv/bin/python bench/llm_layerwise_memory.py  ->  bench/results/llm_layerwise_memory.json

A randomly initialised `transformers` `LlamaForCausalLM` (grouped-query attention; the size is
in the JSON, about 200 M parameters, 0.8 GB in float32) is calibrated by netchisel's layer-wise
engine (`calib.run_layerwise`: the first decoder layer's inputs are captured, then one decoder
layer at a time is solved and its outputs feed the next) with 4-bit GPTQ (group 128) and 50 %
SparseGPT, on 8 random token windows of 256 tokens. Each arm runs in a fresh process, whose
peak resident set (`ru_maxrss`) is read when it ends:

- `model_only`: build the model and run one forward on one window (the floor: the model, the
  interpreter, torch and transformers);
- `gptq`, `sparsegpt`: build the model and calibrate its decoder layers (`lm_head` excluded,
  as llm-compressor's GPTQ recipes and the compressed-tensors checkpoints vLLM serves do);
- `gptq_lm_head`: GPTQ's default, every Linear layer, the 32000 x 768 `lm_head` included (one
  layer four times the size of a decoder layer's weights; the solver takes its rows in
  chunks of 8 MiB of float32, `calib.hessian.row_chunks`, and writes each chunk back
  before the next);
- `gptq_heap_default`: `gptq` with glibc's malloc left as it is (`core.heap` not applied), to
  show what heap fragmentation adds;
- `gptq_from_disk`: `gptq` on the same model loaded from a `save_pretrained` safetensors
  checkpoint (written by another process first) with `from_pretrained`, which reads the
  memory-mapped file into the model's tensors: loading and calibrating end to end, to show
  the model never has to fit twice.

`over_model` = peak - model_only's peak: what calibration adds. The target the issue sets is
model bytes + 2 layers' working set; a layer's working set here is its float32 weights, its
Hessians (in^2 per input, float32) and the block inputs and outputs held for the calibration
windows (2 x samples x tokens x hidden, float32), all counted in `layer_working_set_bytes`;
`met` = over_model <= 2 x that. `output_extra_bytes` is what the result itself holds beyond
the float model (SparseGPT's keep masks, packed one bit per weight by `core.masks`), part
of any peak after the stage. The rollback copy of the model that `restored_on_error` keeps
waits in a temporary file (`core.spill`), not in memory. Weights are random, so the numbers
measure memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from common import load_result, write_result

CONFIG = {
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 24,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
}
SAMPLES, TOKENS = 8, 256
_MEASURED = ("peak_bytes", "seconds", "params", "output_extra_bytes")
ARMS = ("model_only", "gptq", "sparsegpt", "gptq_lm_head", "gptq_heap_default", "gptq_from_disk")
CHECKPOINT = "/tmp/netchisel_llm_layerwise_memory"  # written by `--write` for gptq_from_disk


def _arm(name: str) -> dict[str, Any]:
    """Runs in a child process: build, calibrate, report peak RSS and timings."""
    import torch
    from torch.utils.data import TensorDataset

    import netchisel as nc
    import netchisel.calib.layerwise as layerwise
    from netchisel.core.masks import masks_of
    from netchisel.core.task import language_model_task
    from netchisel.prune import SparseGPTConfig
    from netchisel.quantize import GPTQConfig
    from netchisel.zoo.models.llama import _transformers

    torch.manual_seed(0)
    tf = _transformers()
    config = tf.LlamaConfig(**CONFIG, use_cache=False, tie_word_embeddings=False)
    if name == "write":
        tf.LlamaForCausalLM(config).save_pretrained(CHECKPOINT)
        return {}
    if name == "gptq_from_disk":
        model = tf.LlamaForCausalLM.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    else:
        model = tf.LlamaForCausalLM(config).eval()
    tokens = torch.randint(0, CONFIG["vocab_size"], (SAMPLES, TOKENS + 1))
    data = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    task = language_model_task({"train": data, "val": data}, batch_size=4)
    if name == "gptq_heap_default":
        layerwise.unmap_large_allocations = lambda: False  # type: ignore[attr-defined]
    exclude = () if name == "gptq_lm_head" else ("lm_head",)
    start = time.perf_counter()
    if name == "model_only":
        with torch.no_grad():
            model(tokens[:1, :-1])
    elif name.startswith("gptq"):
        config = GPTQConfig(bits=4, group_size=128, calibration_samples=SAMPLES, exclude=exclude)
        nc.quantize_(model, config, task=task)
    else:
        config = SparseGPTConfig(sparsity=0.5, calibration_samples=SAMPLES, exclude=exclude)
        nc.prune_(model, config, task=task)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters()) if name == "model_only" else None
    masks = sum(m.packed.numel() * m.packed.element_size() for m in masks_of(model).values())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_bytes": peak_kib * 1024,
        "seconds": seconds,
        "params": params,
        "output_extra_bytes": masks,
    }


def layer_working_set() -> int:
    """float32 bytes of one decoder layer's weights + its Hessians + the held block I/O."""
    h, i = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    kv = h * CONFIG["num_key_value_heads"] // CONFIG["num_attention_heads"]
    weights = 2 * h * h + 2 * h * kv + 3 * h * i
    hessians = 3 * h * h + i * i  # q/k/v share one input; o, gate/up share one; down reads i
    block_io = 2 * SAMPLES * TOKENS * h
    return 4 * (weights + hessians + block_io)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=(*ARMS, "write"))
    parser.add_argument("--rerun", choices=ARMS, nargs="+", help="re-measure only these arms")
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(_arm(args.arm)))
        return
    arms: dict[str, Any] = {}
    if args.rerun:  # the other arms as the last run measured them
        previous = load_result("llm_layerwise_memory") or {"arms": {}}
        arms = {n: {k: a[k] for k in _MEASURED if k in a} for n, a in previous["arms"].items()}
    for name in args.rerun or ARMS:
        if name == "gptq_from_disk":
            subprocess.run([sys.executable, __file__, "--arm", "write"], check=True)
        out = subprocess.run(
            [sys.executable, __file__, "--arm", name], capture_output=True, text=True, check=True
        )
        arms[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, arms[name], flush=True)
        write_result("llm_layerwise_memory", _result(arms))  # each arm kept as it ends


def _result(arms: dict[str, Any]) -> dict[str, Any]:
    params = arms["model_only"]["params"]
    floor = arms["model_only"]["peak_bytes"]
    working = layer_working_set()
    return {
        "config": CONFIG,
        "samples": SAMPLES,
        "tokens": TOKENS,
        "params": params,
        "model_bytes": 4 * params,
        "layer_working_set_bytes": working,
        "bound_over_model_bytes": 2 * working,
        "arms": {
            name: {
                **a,
                "over_model": a["peak_bytes"] - floor,
                "over_in_layers": (a["peak_bytes"] - floor) / working,
                "met": a["peak_bytes"] - floor <= 2 * working,
            }
            for name, a in arms.items()
        },
    }


def render(r: dict[str, Any]) -> str:
    """BENCHMARKS.md section."""
    gib = 2**30
    lines = [
        "## Layer-wise calibration memory, Hugging Face decoder (`bench/llm_layerwise_memory.py`)",
        "",
        f"Random `LlamaForCausalLM`, {r['params'] / 1e6:.0f} M parameters "
        f"({r['model_bytes'] / gib:.2f} GiB float32), {r['samples']} windows of {r['tokens']} "
        "tokens; peak RSS of a fresh process per arm. One layer's working set (weights, "
        f"Hessians, block inputs and outputs): {r['layer_working_set_bytes'] / gib:.3f} GiB.",
        "",
        f"Target: at most 2 working sets ({r['bound_over_model_bytes'] / gib:.3f} GiB) over "
        "model-only. The rollback copy waits on disk (`core.spill`); `lm_head` is excluded "
        "except in `gptq_lm_head`; `gptq_heap_default` leaves glibc's malloc as it is.",
        "",
        "| arm | peak RSS (GiB) | over model-only (GiB) | in layers' working sets | target met "
        "| result's masks (GiB) | seconds |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, a in r["arms"].items():
        extra = a.get("output_extra_bytes", 0)
        lines.append(
            f"| {name} | {a['peak_bytes'] / gib:.3f} | {a['over_model'] / gib:.3f} | "
            f"{a['over_in_layers']:.2f} | {'yes' if a.get('met') else 'no'} | "
            f"{extra / gib:.3f} | {a['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
