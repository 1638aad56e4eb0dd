"""Recipes: a YAML file naming a model, a task, ordered stages, and where to write results.

```yaml
model: cnn                  # a zoo name (its trained reference), or one of:
                            #   {zoo: cnn, pretrained: false, kwargs: {width: 16}}
                            #   {builder: "package.module:function", kwargs: {...}}
                            #   {artifact: runs/previous/model}
task: digits32              # a zoo task, {zoo: digits32, batch_size: 64}, or {builder: ..., kwargs}
stages:
  - finetune: {epochs: 1, lr: 0.001}
  - evaluate: {split: test}
output: runs/demo
export: [onnx]              # optional: also write model.pt2 / model.onnx beside the artifact
profile: {batch_size: 64, latency: true, backend: eager, threads: 1, repeats: 30}
seed: 0
```
Every unknown key is an error that names it and lists the known ones; so are a key written
twice in one mapping (YAML would keep the last silently), a `.nan`, and a `device:` this machine
does not have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from netchisel.artifact.exports import export_names
from netchisel.core.config import StageConfig
from netchisel.core.errors import ConfigError
from netchisel.pipeline.sources import (
    MODEL_KINDS,
    TASK_KINDS,
    SourceSpec,
    parse_source,
    reject_unknown,
    teacher_source,
)
from netchisel.stages import get_stage


@dataclass(frozen=True)
class ProfileSettings(StageConfig):
    """How the runner profiles the model before and after each stage."""

    batch_size: int = 64
    latency: bool = True
    backend: Literal["eager", "compile", "onnxruntime"] = "eager"
    threads: int = 1
    repeats: int = 30
    warmup: int = 5

    def validate(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ConfigError(
                "profile: batch_size, threads and repeats must be >= 1 and warmup >= 0"
            )


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe."""

    model: SourceSpec
    task: SourceSpec | None
    stages: tuple[tuple[str, StageConfig], ...]
    output: Path
    profile: ProfileSettings
    seed: int = 0
    device: str = "cpu"
    name: str = "recipe"
    export: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)


RECIPE_KEYS = ("name", "model", "task", "stages", "output", "profile", "export", "seed", "device")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.yaml"
        >>> _ = f.write_text("model: mlp\\nstages: [evaluate]\\n")
        >>> load_recipe(f).stages[0][0]
        'evaluate'
    """
    path = Path(path)
    return parse_recipe(read_yaml(path, "recipe"), default_name=path.stem)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's data (safe_load); a missing, binary or bad YAML file, a key written twice
    in one mapping and a `.nan` value are each one error naming `what` and the line.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "r.yaml"
        >>> _ = f.write_text("seed: 1\\nseed: 2\\n")
        >>> try:
        ...     read_yaml(f, "recipe")
        ... except ConfigError as e:
        ...     print(str(e).split(": ", 1)[1])
        key 'seed' is written twice (line 1 and line 2): keep one
    """
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory: give one YAML file in it")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if b"\0" in data:
        raise ConfigError(f"{what} {path} is a binary file, not YAML: give a YAML text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {e.start}): save it as UTF-8 YAML"
        ) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no object tags
    except _BadValue as e:
        raise ConfigError(f"{what} {path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}") from None


class _BadValue(yaml.YAMLError):
    """A duplicated key or a NaN, found while building a mapping."""


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping and a `.nan` value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, str] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            where = f"line {line} column {key_node.start_mark.column + 1}"
            if key in seen:
                first, second = seen[key], where
                if first.split()[1] != second.split()[1]:  # different lines: lines say enough
                    first, second = first.split(" column")[0], second.split(" column")[0]
                raise _BadValue(f"key {key!r} is written twice ({first} and {second}): keep one")
            seen[key] = where
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":float"):
                value = self.construct_object(value_node)
                if isinstance(value, float) and math.isnan(value):
                    raise _BadValue(f"{key}: .nan at line {line} is not a number: give a value")
        return super().construct_mapping(node, deep=deep)


def check_device(device: str, where: str = "recipe.device") -> None:
    """Refuse, before any work, a device this machine does not have.

    Example:
        >>> check_device("cpu")
        >>> try:
        ...     check_device("gpu")
        ... except ConfigError as e:
        ...     print(e)
        recipe.device: 'gpu' is not a device (cpu, cuda, cuda:1, mps)
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{where}: {device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"{where}: {device!r}, but this machine has no CUDA device: use device: cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"{where}: {device!r}, but this machine has {count} CUDA device(s) "
                f"(cuda:0..cuda:{count - 1})"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{where}: 'mps', but this machine has no Apple GPU: use device: cpu")


def parse_recipe(data: Any, default_name: str = "recipe") -> Recipe:
    """Validate recipe data (already parsed from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError("recipe: expected a mapping with 'model' and 'stages'")
    reject_unknown("recipe", data, RECIPE_KEYS)
    if "model" not in data:
        raise ConfigError(
            "recipe: 'model' is required (a zoo name, {builder: ...} or {artifact: ...})"
        )
    model = parse_source("recipe.model", data["model"], MODEL_KINDS)
    task = parse_source("recipe.task", data["task"], TASK_KINDS) if data.get("task") else None
    stages = tuple(
        _stage(i, s) for i, s in enumerate(_list("recipe.stages", data.get("stages", [])))
    )
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"recipe.seed: expected an integer, got {seed!r}")
    name = str(data.get("name", default_name))
    export = tuple(str(e) for e in _list("recipe.export", data.get("export", [])))
    for kind in export:
        if kind not in export_names():
            raise ConfigError(
                f"recipe.export: unknown export {kind!r} (known: {', '.join(export_names())})"
            )
    device = str(data.get("device", "cpu"))
    check_device(device)
    return Recipe(
        model=model,
        task=task,
        stages=stages,
        output=Path(str(data.get("output", f"runs/{name}"))),
        profile=ProfileSettings.from_dict(data.get("profile"), "recipe.profile"),
        seed=seed,
        device=device,
        name=name,
        export=export,
        raw=data,
    )


def _stage(index: int, entry: Any) -> tuple[str, StageConfig]:
    where = f"recipe.stages[{index}]"
    options: Any
    if isinstance(entry, str):
        name, options = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        ((name, options),) = entry.items()
        options = options or {}
    else:
        raise ConfigError(f"{where}: expected a stage name or {{name: {{options}}}}, got {entry!r}")
    stage = get_stage(str(name))
    if not isinstance(options, dict):
        raise ConfigError(f"{where}.{name}: options must be a mapping, got {options!r}")
    config = stage.config_class.from_dict(options, f"{where}.{name}")
    teacher_source(config, f"{where}.{name}")  # a malformed teacher: fails as the recipe loads
    return stage.name, config


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value
