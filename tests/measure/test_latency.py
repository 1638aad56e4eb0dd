from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from netchisel.core.errors import ConfigError
from netchisel.measure.latency import compare_latency, measure_latency, round_robin, summarise


def test_summary_percentiles() -> None:
    s = summarise([float(i) for i in range(1, 12)], warmup=0, batch_size=1, threads=1, backend="x")
    assert (s.median_ms, s.p10_ms, s.p90_ms, s.mean_ms) == (6.0, 2.0, 10.0, 6.0)


def test_measure_reports_batch_threads_backend() -> None:
    lat = measure_latency(nn.Linear(16, 16), torch.zeros(8, 16), threads=1, repeats=7, warmup=2)
    assert (lat.batch_size, lat.threads, lat.backend, lat.repeats, lat.warmup) == (
        8,
        1,
        "eager",
        7,
        2,
    )
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    measure_latency(nn.Linear(4, 4), torch.zeros(1, 4), threads=1, repeats=2)
    assert torch.get_num_threads() == before


def test_compare_sees_a_known_ratio() -> None:
    cmp = compare_latency(
        lambda: time.sleep(0.004),
        lambda: time.sleep(0.001),
        batch_size=1,
        rounds=4,
        calls_per_round=3,
        warmup=1,
    )
    assert cmp.a.repeats == cmp.b.repeats == 12
    assert 2.0 < cmp.speedup < 5.0


def test_bad_backend_and_repeats() -> None:
    with pytest.raises(ConfigError, match="unknown latency backend 'tensorrt'"):
        measure_latency(nn.Linear(4, 4), torch.zeros(1, 4), backend="tensorrt")
    with pytest.raises(ConfigError, match="repeats >= 1"):
        measure_latency(nn.Linear(4, 4), torch.zeros(1, 4), repeats=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "compile"])
def test_other_backends_run_the_same_model(backend: str) -> None:
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    lat = measure_latency(
        nn.Linear(16, 4), torch.zeros(2, 16), backend=backend, repeats=3, warmup=1
    )
    assert lat.backend == backend and lat.repeats == 3 and lat.median_ms > 0


def test_training_flag_is_restored() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    measure_latency(net, torch.zeros(2, 4), repeats=2)
    assert net.training and net[1].training


def test_round_robin_moves_the_first_runner_along_every_round() -> None:
    order: list[int] = []
    runs = [lambda i=i: order.append(i) for i in range(3)]
    samples, threads = round_robin(runs, threads=1, rounds=3, calls=2, warmup=1)
    assert order[:3] == [0, 1, 2]  # warm-up, in order
    timed = order[3:]
    assert timed == [0, 0, 1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0, 1, 1]
    assert [len(s) for s in samples] == [6, 6, 6] and threads == 1
