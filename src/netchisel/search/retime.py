"""Re-time the exported candidates side by side, so the report's latencies compare fairly.

A trial's latency is measured once, when the trial runs. On a shared machine such
measurements spread widely and drift between moments, so a front chosen on them can hold a
candidate only because it was timed in a quiet moment. The report therefore times the
exported candidates again, in turns within one session (`round_robin`), and gives both.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from netchisel.artifact.store import load, read_manifest
from netchisel.core.errors import ArtifactError
from netchisel.measure.latency import make_runner, round_robin
from netchisel.pipeline.recipe import ProfileSettings
from netchisel.pipeline.runner import inputs_from_specs

ROUNDS = 10


def retime(artifacts: dict[int, Path], settings: ProfileSettings) -> dict[int, float]:
    """Median milliseconds per call of each artifact, all timed in turns in one session.

    `artifacts` maps a trial number to its saved model; the batch size, backend, threads and
    the number of calls (`repeats`, spread over 10 rounds) come from the recipe's `profile:`.

    Example:
        >>> import tempfile, torch
        >>> from netchisel.artifact.store import save
        >>> meta = {"inputs": [{"shape": [1, 8], "dtype": "float32"}]}
        >>> paths = {n: save(torch.nn.Linear(8, 8), tempfile.mkdtemp() + "/m", metadata=meta)
        ...          for n in (3, 7)}
        >>> sorted(retime(paths, ProfileSettings(batch_size=2, repeats=10, warmup=1)))
        [3, 7]
    """
    runs = []
    for number, path in artifacts.items():
        specs = read_manifest(path).get("metadata", {}).get("inputs")
        if not specs:
            raise ArtifactError(f"trial {number}: {path} records no input shapes to time it with")
        inputs = inputs_from_specs(specs, settings.batch_size)
        runs.append(make_runner(load(path), inputs, settings.backend, settings.threads))
    samples, _ = round_robin(
        runs,
        threads=settings.threads,
        rounds=ROUNDS,
        calls=max(1, settings.repeats // ROUNDS),
        warmup=settings.warmup,
    )
    return {number: statistics.median(s) for number, s in zip(artifacts, samples, strict=True)}
