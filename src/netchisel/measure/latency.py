"""Latency: warm-up, many timed repeats, median and p10/p90, at a fixed thread count.

Backends: `eager` (the module as it is), `compile` (torch.compile, inductor, with freezing: the
weights are constants, as in deployment, which is what lets inductor pack them for oneDNN and
lower int8 patterns to int8 kernels) and `onnxruntime` (exported to ONNX and run by ONNX Runtime;
needs the onnx extra; `onnx_file_runner` runs a given .onnx file). `compare_latency` is the A/B
harness: it alternates A and B so drift on a noisy machine hits both, and reports the ratio of
medians.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from netchisel.core.errors import ConfigError
from netchisel.measure.memory import run_model

BACKENDS: tuple[str, ...] = ("eager", "compile", "onnxruntime")


@dataclass(frozen=True)
class Latency:
    """Milliseconds per call of one batch; `repeats` timed calls after `warmup` untimed ones."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    warmup: int
    batch_size: int
    threads: int
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Result of `compare_latency`: both timings and `speedup` = median A / median B."""

    a: Latency
    b: Latency
    speedup: float

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(), "speedup": self.speedup}


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op threads (default: what torch uses now), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def make_runner(
    model: nn.Module, example_inputs: Any, backend: str = "eager", threads: int = 1
) -> Callable[[], Any]:
    """A no-argument function that runs one forward on `backend` (built once, reused)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown latency backend {backend!r} (known: {', '.join(BACKENDS)})")
    model.eval()
    if backend == "onnxruntime":
        return _onnxruntime_runner(model, example_inputs, threads)
    fn: Any = model
    if backend == "compile":
        fn = torch.compile(model, dynamic=False)
        # Compiled here, on the first call: freezing is read when inductor compiles. The
        # compiled code is guarded on the thread count, so it is compiled at the one it runs at.
        import torch._inductor.config as inductor_config  # 2 s to import: only when compiling

        with fixed_threads(threads), torch.inference_mode(), inductor_config.patch(freezing=True):
            run_model(fn, example_inputs)

    def run() -> Any:
        with torch.inference_mode():
            return run_model(fn, example_inputs)

    return run


def time_calls(run: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock milliseconds of `repeats` calls (CUDA is synchronised around each)."""
    cuda = torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        run()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summarise(
    samples: list[float], warmup: int, batch_size: int, threads: int, backend: str
) -> Latency:
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]

    return Latency(
        median_ms=statistics.median(ordered),
        p10_ms=pct(0.1),
        p90_ms=pct(0.9),
        mean_ms=statistics.fmean(ordered),
        repeats=len(ordered),
        warmup=warmup,
        batch_size=batch_size,
        threads=threads,
        backend=backend,
    )


def measure_latency(
    model: nn.Module,
    example_inputs: Any,
    *,
    backend: str = "eager",
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
) -> Latency:
    """Latency of one forward of `example_inputs` on `backend`.

    Example:
        >>> lat = measure_latency(nn.Linear(8, 8), torch.zeros(4, 8), repeats=5)
        >>> lat.batch_size, lat.repeats
        (4, 5)
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs repeats >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    was_training = model.training
    try:
        with fixed_threads(threads) as n:
            run = make_runner(model, example_inputs, backend, n)
            time_calls(run, warmup)
            samples = time_calls(run, repeats)
    finally:
        model.train(was_training)
    return summarise(samples, warmup, batch_size_of(example_inputs), n, backend)


def compare_latency(
    a: Callable[[], Any],
    b: Callable[[], Any],
    *,
    batch_size: int,
    threads: int | None = 1,
    rounds: int = 20,
    calls_per_round: int = 5,
    warmup: int = 5,
    labels: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Time A and B alternately (A's block, then B's, `rounds` times); ratio of medians.

    Example:
        >>> net = nn.Linear(64, 64)
        >>> x = torch.zeros(8, 64)
        >>> cmp = compare_latency(lambda: net(x), lambda: net(x), batch_size=8, rounds=3)
        >>> cmp.a.repeats
        15
    """
    samples, n = round_robin(
        [a, b], threads=threads, rounds=rounds, calls=calls_per_round, warmup=warmup
    )
    la = summarise(samples[0], warmup, batch_size, n, labels[0])
    lb = summarise(samples[1], warmup, batch_size, n, labels[1])
    return Comparison(la, lb, la.median_ms / lb.median_ms)


def round_robin(
    runs: Sequence[Callable[[], Any]],
    *,
    threads: int | None = 1,
    rounds: int = 20,
    calls: int = 5,
    warmup: int = 5,
) -> tuple[list[list[float]], int]:
    """Time several functions in turns: each round runs `calls` of each, and the one that
    goes first moves along every round, so slow spells of a shared machine and warm caches
    fall on all of them alike. Returns the milliseconds of each function and the threads used.

    Example:
        >>> net = nn.Linear(8, 8)
        >>> x = torch.zeros(2, 8)
        >>> samples, _ = round_robin([lambda: net(x)] * 3, rounds=4, calls=2, warmup=1)
        >>> [len(s) for s in samples]
        [8, 8, 8]
    """
    samples: list[list[float]] = [[] for _ in runs]
    with fixed_threads(threads) as n:
        for run in runs:
            time_calls(run, warmup)
        for r in range(rounds):
            for k in range(len(runs)):
                i = (r + k) % len(runs)
                samples[i] += time_calls(runs[i], calls)
    return samples, n


def batch_size_of(example_inputs: Any) -> int:
    tensors = [t for t in tree_flatten(example_inputs)[0] if isinstance(t, torch.Tensor)]
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1


def _onnxruntime_runner(model: nn.Module, example_inputs: Any, threads: int) -> Callable[[], Any]:
    try:
        import onnxruntime  # noqa: F401  (fail before exporting)
    except ImportError:
        raise ConfigError(
            "the onnxruntime backend needs the onnx extra: pip install 'netchisel[onnx]'"
        ) from None
    from netchisel.artifact.exports import export_onnx

    if isinstance(example_inputs, dict):
        raise ConfigError("the onnxruntime backend takes positional inputs, not a dict of kwargs")
    inputs = (
        tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, inputs, path)
        return onnx_file_runner(path, inputs, threads)


def onnx_file_runner(path: str | Path, example_inputs: Any, threads: int = 1) -> Callable[[], Any]:
    """A no-argument function that runs the ONNX file `path` on `example_inputs` in ONNX Runtime.

    Example:
        >>> run = onnx_file_runner("model.onnx", torch.zeros(1, 4))  # doctest: +SKIP
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "the onnxruntime backend needs the onnx extra: pip install 'netchisel[onnx]'"
        ) from None
    inputs = (
        tuple(example_inputs) if isinstance(example_inputs, list | tuple) else (example_inputs,)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs, strict=False)}
    return lambda: session.run(None, feed)
