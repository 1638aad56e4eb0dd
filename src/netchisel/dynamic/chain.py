"""Split a backbone into a chain of steps so that it can stop after a named module.

Early exit needs to run the backbone up to an exit, look at the exit's confidence, and run the
rest only for the samples that stay. That is possible where the forward is a chain: an
`nn.Sequential` (its forward is its children in order, by definition), or any module whose
forward is its children run in order one after the other (a CIFAR ResNet: stem, stages, pool,
flatten, fc). A module is opened into its children only where an exit lies inside it, and a
module that is not an `nn.Sequential` is opened only after one forward on real inputs shows
that running its children in order gives exactly its own output. Anything else (a residual
block, a forward that reshapes between children) cannot be split there, and the error says
where the nearest split point is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.errors import ConfigError
from netchisel.core.modules import sample_of

STAGE = "dynamic.early_exit"
FLATTEN = "@flatten"
"""A step that is not a module: `torch.flatten(x, 1)`, which torchvision's classifiers
(ResNet, VGG, MobileNetV3, EfficientNet, RegNet) call in `forward` between their pooling and
their classifier."""


def _spatial_mean(x: Tensor) -> Tensor:
    return x.mean(list(range(2, x.dim())))


GLUE: dict[str, Callable[[Tensor], Tensor]] = {
    FLATTEN: lambda x: torch.flatten(x, 1),
    # x.mean([2, 3]) (torchvision's ShuffleNetV2, MNASNet), and F.adaptive_avg_pool2d(x, 1)
    # then a flatten (MobileNetV2), which gives bit for bit the same on CPU; where a kernel
    # rounds the two differently the chain check refuses the model in one line.
    "@mean": _spatial_mean,
}
"""The steps that are not modules: parameter-free reshapes and poolings a forward does between
two children (or after the last). One is put into a chain only where one forward shows that
it gives exactly what the next child received; `@` cannot start a module path that
`plan_chain` would choose, so they never clash with a module's name."""


class NotAChain(ConfigError):
    """The forward cannot be split where an exit is asked for (it is not its children run in
    order): `layer_exits` reads such a model through hooks instead."""


@dataclass(frozen=True)
class Chain:
    """The backbone as steps (dotted module paths run in order) and where the exits sit.

    `exit_after[k]` is the index of the step after which exit k looks at the features;
    `features[k]` is that step's output on the example inputs, `output` the model's.
    """

    steps: list[str]
    exit_after: list[int]
    features: list[Tensor]
    output: Tensor


def run_steps(backbone: nn.Module, steps: list[str], x: Tensor) -> Tensor:
    """Run the named submodules of `backbone` one after the other on `x`.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> run_steps(net, ["0", "1"], torch.ones(1, 2)).shape
        torch.Size([1, 3])
    """
    for step in steps:
        glue = GLUE.get(step)
        if glue is not None:
            x = glue(x)
            continue
        module = backbone
        # The children tables directly: get_submodule's checks cost ~15 us a step at batch 1,
        # as much as a small layer. Looked up on every call, so a module swapped in later
        # (a quantized layer) is the one that runs.
        for part in step.split("."):
            module = module._modules[part]  # type: ignore[assignment]
        x = module(x)
    return x


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_exit_names(model: nn.Module, exits: list[str]) -> dict[str, nn.Module]:
    """`model`'s modules by name, after checking that `exits` name distinct ones of them
    (one line listing some that exist otherwise).

    Example:
        >>> check_exit_names(nn.Sequential(nn.ReLU()), ["1"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        netchisel.core.errors.ConfigError: ...: exit after '1': the model has no such module ...
    """
    names = dict(model.named_modules())
    for name in exits:
        if name not in names or not name:
            raise ConfigError(
                f"{STAGE}: exit after {name!r}: the model has no such module "
                f"(modules: {sample_of([n for n in names if n], 12)})"
            )
    if len(set(exits)) != len(exits):
        raise ConfigError(f"{STAGE}: exits {list(exits)} name a module twice")
    return names


def plan_chain(model: nn.Module, exits: list[str], example: tuple[Tensor, ...]) -> Chain:
    """Open `model` into a chain of steps with a split after every module in `exits`.

    Raises a one-line ConfigError for a name that is not a module, a module inside a forward
    that is not a chain of its children, or an exit after the model's last step.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 3)))
        >>> chain = plan_chain(net, ["1.0"], (torch.zeros(2, 4),))
        >>> chain.steps, chain.exit_after
        (['0', '1.0', '1.1'], [1])
    """
    if len(example) != 1:
        raise ConfigError(
            f"{STAGE}: the model takes {len(example)} inputs; early exit runs models called "
            "with one tensor"
        )
    check_exit_names(model, exits)
    inputs, outputs = _record(model, example[0])
    steps: list[str] = []
    _open(model, "", exits, inputs, outputs, steps)
    for name in exits:
        if name not in steps:
            raise ConfigError(  # an exit named inside a module that is itself an exit
                f"{STAGE}: exit after {name!r} lies inside exit {_outer(name, exits)!r}; "
                "keep one of the two"
            )
    position = {step: i for i, step in enumerate(steps)}
    order = sorted(exits, key=position.__getitem__)
    last = steps[-1]
    if last in exits:
        raise ConfigError(
            f"{STAGE}: exit after {last!r}: it is the model's last module, whose output is the "
            "model's output; choose an earlier module"
        )
    if order != list(exits):
        raise ConfigError(
            f"{STAGE}: list the exits in the order the model runs them: {order} (got {list(exits)})"
        )
    return Chain(
        steps=steps,
        exit_after=[position[n] for n in exits],
        features=[outputs[n] for n in exits],
        output=outputs[""],
    )


def _outer(name: str, exits: list[str]) -> str:
    return next(e for e in exits if name.startswith(e + "."))


def _record(model: nn.Module, x: Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every module's input and output in one eval forward on `x` (last call wins)."""
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    handles = []
    for name, module in model.named_modules():

        def keep(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            inputs[name] = args[0] if len(args) == 1 else args
            outputs[name] = out

        handles.append(module.register_forward_hook(keep))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return inputs, outputs


def _open(
    module: nn.Module,
    path: str,
    exits: list[str],
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    steps: list[str],
) -> None:
    """Append `module`'s steps: itself, or its children's when an exit lies inside it."""
    inside = [e for e in exits if e.startswith(path + ".") or (not path and e)]
    if not inside or path in exits:
        if path not in inputs:
            raise ConfigError(
                f"{STAGE}: module {path!r} does not run in the model's forward; exit after a "
                "module that runs"
            )
        steps.append(path)
        return
    children = [(_join(path, n), c) for n, c in module.named_children()]
    order = _chain_of(module, path, children, inputs, outputs) if children else "it has no children"
    if isinstance(order, str):
        if not path:
            raise NotAChain(
                f"{STAGE}: cannot exit after {inside[0]!r}: the model's forward "
                f"({type(module).__name__}) is not its top-level modules run in order "
                f"({order}), so it cannot be split anywhere"
            )
        raise NotAChain(
            f"{STAGE}: cannot exit after {inside[0]!r}: the forward of {path!r} "
            f"({type(module).__name__}) is not its children run in order ({order}); exit "
            f"after {path!r} or another module that runs on the model's main path"
        )
    by_path = dict(children)
    for step in order:
        if step in GLUE:
            steps.append(step)
        else:
            _open(by_path[step], step, exits, inputs, outputs, steps)


def _chain_of(
    module: nn.Module,
    path: str,
    children: list[tuple[str, nn.Module]],
    inputs: dict[str, Any],
    outputs: dict[str, Any],
) -> list[str] | str:
    """`module`'s children that its forward calls, as steps (with a `GLUE` step where it
    flattens or pools between them), if running them in order gives exactly its recorded
    output on the example; else why not."""
    if _is_plain_sequential(module):
        return [p for p, _ in children]
    x, want = inputs.get(path), outputs.get(path)
    if not isinstance(x, Tensor) or not isinstance(want, Tensor):
        return "its input or output is not one tensor"
    order: list[str] = []
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            for child_path, child in children:
                if child_path not in inputs:
                    continue  # not called by the forward (an auxiliary head): not a step
                glue = _glue_to(x, inputs.get(child_path)) if order else None
                if glue is not None:
                    order.append(glue)
                    x = GLUE[glue](x)
                try:
                    x = child(x)
                except Exception as e:  # any failure (an assert in its forward too): no chain
                    prev = f"{order[-1]!r}'s output" if order else "the module's input"
                    return f"{child_path!r} fails on {prev} ({type(e).__name__})"
                if not isinstance(x, Tensor):
                    return f"{child_path!r} does not return one tensor"
                order.append(child_path)
    finally:
        module.train(was_training)
    glue = _glue_to(x, want)
    if glue is not None:
        order.append(glue)
        x = GLUE[glue](x)
    if x.shape != want.shape or not torch.equal(x, want):
        return "running them one after the other does not give its output"
    return order


def _glue_to(x: Tensor, seen: Any) -> str | None:
    """The `GLUE` step that turns `x` exactly into `seen` (of another shape), if one does."""
    if not isinstance(seen, Tensor) or x.dim() <= 2 or seen.dim() != 2 or seen.shape == x.shape:
        return None
    for name, glue in GLUE.items():
        got = glue(x)
        if got.shape == seen.shape and torch.equal(got, seen):
            return name
    return None
