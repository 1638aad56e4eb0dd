"""`prune.sparsegpt`: one-shot second-order pruning from calibration data (SparseGPT).

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). For one Linear layer with weight W (rows = outputs, columns = inputs) and its
calibration inputs X (one row per token), SparseGPT looks for a sparse W' that keeps the
layer's output, minimising ||(W - W') X^T||^2. Each output row is an independent least-squares
problem with the same Hessian H = 2 X^T X / n (n tokens), so one inverse serves every row.

The solver walks the columns left to right. When column j is pruned, the error it leaves,
err = (w_j - q_j) / [U]_jj, is spread over the not-yet-visited columns through row j of U, the
upper Cholesky factor of H^-1 (H^-1 = U^T U). That is the Optimal Brain Surgeon update
restricted to the columns on the right, which is what makes one shared inverse enough. Columns
go in blocks of `blocksize`: inside a block the update is applied column by column, and the
block's accumulated errors reach the columns on its right in one matrix product. Which weights
a block prunes is chosen when the solver reaches it (adaptive mask selection), from the
OBS saliency w^2 / [U]_jj^2 of the already-updated weights; with an N:M pattern the choice is
made for every M consecutive columns.

H is dampened by `damping` times its mean diagonal, which keeps it invertible when the
calibration set has fewer tokens than inputs or features that move together. If a Cholesky
factorisation still fails, or the result is not finite, the damping is raised tenfold and the
layer solved again (a larger damping moves the solver toward magnitude pruning); the damping
used is recorded per layer. A layer whose calibration inputs are not finite is an error.

Layers are solved in the order the model calls them, so each layer's Hessian comes from the
outputs of the already-pruned layers before it. For a transformer the model's blocks (the
`nn.ModuleList` that holds the chosen layers) run one at a time over cached block inputs, as in
the paper: a layer costs one pass through its own block, not through the whole model. Layers
that read the same input tensor (q, k and v projections) share one pass. Layers outside the
blocks (a classifier, an LM head) are solved last from passes through the whole model.

Written here because no well-kept library offers it for any `nn.Module`: the authors' code and
llm-compressor's port are tied to Hugging Face model classes and their own sessions.

Masks go through `netchisel.core.masks.set_mask`, so pruned weights stay zero in later
fine-tuning and the artifact stores them sparsely. Latency does not improve on dense kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from netchisel.core.config import StageConfig
from netchisel.core.context import Context
from netchisel.core.errors import ConfigError, ModelError
from netchisel.core.masks import masks_of, set_mask
from netchisel.core.modules import select_modules
from netchisel.core.registry import register
from netchisel.prune.select import keep_lowest_pruned, keep_n_of_m, parse_pattern

DAMPING_RETRIES = 6
"""How many times the damping is raised tenfold before a layer is given up (0.01 -> 1e4)."""


@dataclass(frozen=True)
class SparseGPTConfig(StageConfig):
    """How SparseGPT prunes: how much, in what pattern, from how much calibration data.

    - `sparsity`: fraction of each chosen layer's weights set to zero (ignored for N:M).
    - `pattern`: "unstructured" or "N:M" (keep N of every M consecutive inputs, e.g. "2:4").
    - `blocksize`: columns solved together (a multiple of M for N:M). The unstructured mask is
      chosen afresh at every block, so a block should be a small part of a layer's width: the
      paper's 128 suits layers thousands wide; on 128-wide layers 16-32 prunes better
      (docs/pruning.md). It does not change N:M results, only their speed.
    - `damping`: added to H's diagonal as a fraction of its mean diagonal (paper: 0.01).
    - `calibration_samples`: samples of the task's train split (for text: windows).
    - `layers` / `exclude`: regexes over module names (default: every Linear).
    - `blocks`: name of the `nn.ModuleList` of transformer blocks; None finds the ModuleList
      holding the most chosen layers; "" runs every layer's pass through the whole model.

    Example:
        >>> SparseGPTConfig(pattern="2:4", layers=("blocks\\\\..*",)).blocksize
        128
    """

    sparsity: float = 0.5
    pattern: str = "unstructured"
    blocksize: int = 128
    damping: float = 0.01
    calibration_samples: int = 128
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    blocks: str | None = None

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"prune.sparsegpt.sparsity: {self.sparsity} is not in [0, 1)")
        try:
            nm = parse_pattern(self.pattern)
        except ConfigError as e:
            raise ConfigError(f"prune.sparsegpt.pattern: {e}") from None
        if self.blocksize < 1:
            raise ConfigError(f"prune.sparsegpt.blocksize: must be >= 1, got {self.blocksize}")
        if nm is not None and self.blocksize % nm[1]:
            raise ConfigError(
                f"prune.sparsegpt.blocksize: {self.blocksize} is not a multiple of M={nm[1]} "
                f"of pattern {self.pattern!r}: use e.g. {nm[1] * max(1, 128 // nm[1])}"
            )
        if not self.damping > 0.0:
            raise ConfigError(f"prune.sparsegpt.damping: must be > 0, got {self.damping}")
        if self.calibration_samples < 1:
            raise ConfigError(
                "prune.sparsegpt.calibration_samples: the calibration set is empty "
                f"({self.calibration_samples}); use at least 1 (the paper uses 128)"
            )


# -- the solver: pure functions on tensors ------------------------------------------------


@dataclass(frozen=True)
class SparseResult:
    """A solved layer: the new weight, its keep-mask and the damping that made H invertible."""

    weight: Tensor
    keep: Tensor
    damping: float


def sparsegpt_solve(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float = 0.5,
    pattern: tuple[int, int] | None = None,
    blocksize: int = 128,
    damping: float = 0.01,
    pruned: Tensor | None = None,
) -> SparseResult:
    """Prune `weight` (out, in) to `sparsity` (or N:M) keeping `weight @ x` for H's inputs.

    `hessian` is X^T X (any positive scale) of the layer's inputs, (in, in). Exactly
    `round(sparsity * weight.numel())` weights are zero in the result for unstructured
    sparsity; N:M keeps exactly N of every M consecutive inputs of each row. Entries where
    `pruned` is True are pruned whatever their saliency (an earlier mask). If the damped H is
    not positive definite in float32, or the result is not finite, the damping is raised
    tenfold, up to `DAMPING_RETRIES` times. Inputs are not modified.

    Example:
        >>> x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
        >>> w = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        >>> result = sparsegpt_solve(w, x.T @ x, sparsity=0.5)
        >>> int((result.weight == 0).sum()), result.damping
        (16, 0.01)
    """
    if not bool(torch.isfinite(hessian).all()):
        raise ModelError("the layer's calibration inputs are not finite (inf or NaN)")
    h = hessian.detach().float().clone()
    # An input that is always zero carries no information; a unit diagonal keeps H invertible
    # without coupling that column to the others, so pruning it moves nothing else.
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    mean_diag = float(h.diagonal().mean())
    for attempt in range(DAMPING_RETRIES + 1):
        used = damping * 10.0**attempt
        factor = _inverse_cholesky(h, used * mean_diag)
        if factor is None:
            continue
        new, keep = _obs_prune(
            weight.detach().float(), factor, sparsity, pattern, blocksize, pruned
        )
        if bool(torch.isfinite(new).all()):
            return SparseResult(new.to(weight.dtype), keep, used)
    raise ModelError(
        f"the Hessian is not positive definite even with damping {used:g} x its mean diagonal"
    )


def _inverse_cholesky(h: Tensor, damp: float) -> Tensor | None:
    """Upper U with (H + damp I)^-1 = U^T U, or None when float32 cannot factor it."""
    damped = h + damp * torch.eye(len(h), dtype=h.dtype, device=h.device)
    lower, info = torch.linalg.cholesky_ex(damped)
    if int(info) != 0:
        return None
    inverse = torch.cholesky_inverse(lower)
    upper: Tensor
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        return None
    return upper


def _obs_prune(
    weight: Tensor,
    u: Tensor,
    sparsity: float,
    pattern: tuple[int, int] | None,
    blocksize: int,
    pruned: Tensor | None,
) -> tuple[Tensor, Tensor]:
    w = weight.clone()
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    forced = pruned if pruned is not None else torch.zeros_like(keep)

    def dropped_before(col: int) -> int:
        # Allocating the count per column keeps the layer's total exactly round(s * numel).
        return round(sparsity * rows * col)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        d = u_block.diagonal()
        errors = torch.zeros_like(block)
        prune = forced[:, start:end].clone()
        if pattern is None:
            # OBS saliency: zeroing w_ij alone costs w_ij^2 / (2 [H_F^-1]_jj), F the columns
            # not yet visited; d_j^2 is that diagonal once the sweep reaches column j.
            saliency = block.pow(2) / d.pow(2)
            saliency[prune] = -torch.inf
            drop = dropped_before(end) - dropped_before(start)
            prune |= ~keep_lowest_pruned(saliency, drop / saliency.numel())
        for j in range(end - start):
            if pattern is not None and j % pattern[1] == 0:
                n, m = pattern
                group = block[:, j : j + m].pow(2) / d[j : j + m].pow(2)
                group[prune[:, j : j + m]] = -torch.inf
                prune[:, j : j + m] |= ~keep_n_of_m(group, n, m)
            column = block[:, j]
            kept = torch.where(prune[:, j], 0.0, column)
            err = (column - kept) / d[j]
            # Spread the error over the columns to the right (row j of U); column j itself
            # becomes `kept` exactly, which the assignment makes bit-exact.
            block[:, j:] -= err[:, None] * u_block[j, j:][None, :]
            block[:, j] = kept
            errors[:, j] = err
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
        keep[:, start:end] = ~prune
    return w, keep


def output_error(before: Tensor, after: Tensor, gram: Tensor) -> float:
    """||(W - W') X^T||^2 / ||W X^T||^2 from the Gram matrix X^T X: the relative output error.

    Example:
        >>> x = torch.eye(3)
        >>> round(output_error(torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]), x.T @ x), 4)
        0.3333
    """
    delta = (before - after).float()
    ref = before.float()
    total = float(((ref @ gram) * ref).sum())
    return float(((delta @ gram) * delta).sum()) / total if total > 0 else 0.0


# -- the stage: layer by layer through the model ------------------------------------------


@register("prune.sparsegpt", SparseGPTConfig)
def prune_sparsegpt(model: nn.Module, config: SparseGPTConfig, ctx: Context) -> nn.Module:
    """Prune the chosen Linear layers with SparseGPT, in call order, from the task's data.

    Calibration samples come from the task's train split. On any error every weight is put
    back and no mask is set, so the model is as it was.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from netchisel.core.task import classification_task
        >>> data = TensorDataset(torch.randn(64, 8), torch.zeros(64, dtype=torch.long))
        >>> task = classification_task({"train": data, "val": data})
        >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = prune_sparsegpt(net, SparseGPTConfig(sparsity=0.5), Context(task, quiet=True))
        >>> int((net[0].weight == 0).sum()), int((net[2].weight == 0).sum())
        (32, 8)
    """
    task = ctx.require_task("prune.sparsegpt")
    layers: dict[str, nn.Linear] = {
        n: m
        for n, m in select_modules(model, (nn.Linear,), config.layers, config.exclude).items()
        if isinstance(m, nn.Linear)
    }
    if not layers:
        raise ConfigError("prune.sparsegpt: the model has no Linear layer to prune")
    pattern = parse_pattern(config.pattern)
    if pattern is not None:
        for name, layer in layers.items():
            if layer.in_features % pattern[1]:
                raise ConfigError(
                    f"prune.sparsegpt: layer {name} has {layer.in_features} inputs, not a "
                    f"multiple of {pattern[1]}: exclude it or choose another N:M"
                )
    earlier = _earlier_pruned(model, layers)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    empty = ConfigError(
        f"prune.sparsegpt: task {task.name!r} gave no calibration samples (its train split is "
        "empty): give the task training data"
    )
    train = task.splits.get("train")
    if train is not None and hasattr(train, "__len__") and len(train) == 0:
        raise empty  # checked first: a shuffled loader over nothing is torch's ValueError
    batches = task.calibration_batches(config.calibration_samples)
    inputs = [task.inputs_of(tuple(t.to(device) for t in batch)) for batch in batches]
    if not inputs or sum(len(x[0]) for x in inputs) == 0:
        raise empty
    original = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    was_training = model.training
    model.eval()
    solved: dict[str, tuple[SparseResult, float]] = {}
    try:
        with torch.no_grad(), ctx.progress("sparsegpt", len(layers)) as advance:

            def solve(name: str, gram: Tensor, tokens: int) -> None:
                weight = layers[name].weight
                try:
                    result = sparsegpt_solve(
                        weight,
                        2.0 * gram / tokens,  # H = 2 X^T X / n: the paper's scale
                        config.sparsity,
                        pattern,
                        config.blocksize,
                        config.damping,
                        earlier.get(name),
                    )
                except ModelError as e:
                    raise ModelError(
                        f"prune.sparsegpt: layer {name}: {e}; exclude it or raise damping"
                    ) from None
                error = output_error(weight, result.weight, gram)
                weight.copy_(result.weight)
                solved[name] = (result, error)
                advance(1)

            _run_sequentially(model, layers, inputs, config.blocks, solve)
    except BaseException:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(original[name])
        raise
    finally:
        model.train(was_training)
    for name, (result, _) in solved.items():
        set_mask(model, f"{name}.weight", result.keep)
    total = sum(r.keep.numel() for r, _ in solved.values())
    ctx.record(
        sparsity=sum(int((~r.keep).sum()) for r, _ in solved.values()) / total,
        layer_output_error={n: e for n, (_, e) in solved.items()},
        damping={n: r.damping for n, (r, _) in solved.items()},
        calibration_samples=sum(len(x[0]) for x in inputs),
        note="unstructured and N:M zeros run on dense kernels: latency does not improve",
    )
    return model


def _earlier_pruned(model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, Tensor]:
    """Entries an earlier stage pruned to zero: they stay pruned (and count toward sparsity)."""
    out: dict[str, Tensor] = {}
    for name, mask in masks_of(model).items():
        layer = name.removesuffix(".weight")
        if layer in layers and name.endswith(".weight"):
            if mask.fill is not None:
                raise ConfigError(
                    f"prune.sparsegpt: {name} has frozen entries (mode freeze) that SparseGPT "
                    "would change: exclude the layer"
                )
            out[layer] = ~mask.keep
    return out


class _Stop(Exception):
    """Raised from a hook to end a forward pass early (its input is all we need)."""


SolveFn = Callable[[str, Tensor, int], None]
Inputs = Sequence[tuple[Tensor, ...]]
Cached = list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of a block's calls


def _run_sequentially(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    inputs: Inputs,
    blocks: str | None,
    solve: SolveFn,
) -> None:
    """Call `solve(name, X^T X, tokens)` for every layer in call order, earlier ones pruned."""
    order = _call_groups(model, layers, inputs[0])
    found = _find_blocks(model, layers, blocks, inputs[0])
    in_block: dict[str, int] = {}
    if found is not None:
        index_of = {id(sub): i for i, block in enumerate(found) for sub in block.modules()}
        in_block = {n: index_of[id(m)] for n, m in layers.items() if id(m) in index_of}
        cached = _block_inputs(model, found[0], inputs)
        for index, block in enumerate(found):
            for group in ([n for n in g if in_block.get(n) == index] for g in order):
                if not group:
                    continue

                def run_block(block: nn.Module = block, cached: Cached = cached) -> None:
                    for args, kwargs in cached:
                        block(*args, **kwargs)

                _solve_group(layers, group, run_block, solve)
            # The next block reads this block's output with its already-pruned layers.
            cached = [_with_hidden(args, kwargs, block(*args, **kwargs)) for args, kwargs in cached]
    for group in ([n for n in g if n not in in_block] for g in order):
        if group:

            def run_model() -> None:
                for x in inputs:
                    model(*x)

            _solve_group(layers, group, run_model, solve)


def _solve_group(
    layers: dict[str, nn.Linear], group: list[str], run: Callable[[], None], solve: SolveFn
) -> None:
    grams: dict[str, Tensor] = {}
    tokens: dict[str, int] = {}

    def accumulate(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # one row per token
            grams[name] = grams[name] + x.T @ x if name in grams else x.T @ x
            tokens[name] = tokens.get(name, 0) + len(x)

        return hook

    with _hooks([layers[n].register_forward_pre_hook(accumulate(n)) for n in group]):
        run()
    for name in group:
        if name not in grams:
            raise ModelError(f"prune.sparsegpt: layer {name} was not called on calibration data")
        solve(name, grams[name], tokens[name])


def _call_groups(
    model: nn.Module, layers: dict[str, nn.Linear], example: tuple[Tensor, ...]
) -> list[list[str]]:
    """Layers in the order of their first call; consecutive layers reading one tensor group."""
    seen: list[tuple[str, Tensor]] = []

    def record(name: str) -> Callable[[nn.Module, tuple[Tensor, ...]], None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            if all(n != name for n, _ in seen):
                seen.append((name, args[0]))

        return hook

    with _hooks([m.register_forward_pre_hook(record(n)) for n, m in layers.items()]):
        model(*example)
    missing = [n for n in layers if all(n != s for s, _ in seen)]
    if missing:
        raise ConfigError(
            f"prune.sparsegpt: layer {missing[0]} is never called by the model: exclude it"
        )
    groups: list[list[str]] = []
    for i, (name, x) in enumerate(seen):
        if i and x is seen[i - 1][1]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def _find_blocks(
    model: nn.Module, layers: dict[str, nn.Linear], blocks: str | None, example: tuple[Tensor, ...]
) -> list[nn.Module] | None:
    """The blocks to run one at a time, or None to run whole-model passes."""
    if blocks == "":
        return None
    if blocks is not None:
        try:
            found = model.get_submodule(blocks)
        except AttributeError:
            raise ConfigError(
                f"prune.sparsegpt.blocks: the model has no module {blocks!r}"
            ) from None
        if not isinstance(found, (nn.ModuleList, nn.Sequential)):
            raise ConfigError(
                f"prune.sparsegpt.blocks: {blocks!r} is a {type(found).__name__}, not a "
                "ModuleList or Sequential of blocks"
            )
        chain = list(found)
        if not _is_chain(model, chain, example):
            raise ConfigError(
                f"prune.sparsegpt.blocks: the blocks of {blocks!r} are not called one after "
                "the other, each on the previous one's output: use blocks: '' (whole model)"
            )
        return chain
    owned = {id(m) for m in layers.values()}
    best: list[nn.Module] = []
    best_count = 0
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            count = sum(1 for child in module for sub in child.modules() if id(sub) in owned)
            if count > best_count:
                best, best_count = list(module), count
    if best_count == 0 or not _is_chain(model, best, example):
        return None
    return best


def _is_chain(model: nn.Module, blocks: list[nn.Module], example: tuple[Tensor, ...]) -> bool:
    """Whether the blocks run once each, in order, each on the previous block's output."""
    calls: list[tuple[int, Any, Any]] = []

    def record(index: int) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            calls.append((index, _hidden_of(args, kwargs), _first(out)))

        return hook

    handles = [b.register_forward_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with _hooks(handles):
        model(*example)
    if [i for i, _, _ in calls] != list(range(len(blocks))):
        return False
    return all(calls[i][1] is calls[i - 1][2] for i in range(1, len(calls)))


def _block_inputs(model: nn.Module, first: nn.Module, inputs: Inputs) -> Cached:
    """What the first block is called with, per calibration batch (the model stops there)."""
    cached: Cached = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cached.append((args, kwargs))
        raise _Stop

    with _hooks([first.register_forward_pre_hook(hook, with_kwargs=True)]):
        for x in inputs:
            with suppress(_Stop):
                model(*x)
    return cached


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("hidden_states")


def _first(out: Any) -> Any:
    # Hugging Face blocks return a tuple whose first element is the hidden state.
    return out[0] if isinstance(out, (tuple, list)) else out


def _with_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call of the next block: this block's output in place of its hidden state."""
    if args:
        return (_first(out), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": _first(out)}


@contextmanager
def _hooks(handles: list[torch.utils.hooks.RemovableHandle]) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
