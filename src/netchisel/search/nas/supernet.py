"""A weight-sharing super-net over a macro space: one set of weights, every candidate a slice.

One-shot NAS (SPOS, Guo et al. 2020; OFA / BigNAS, Cai et al. 2020, Yu et al. 2020) trains one
network whose weights every candidate inherits, then ranks candidates by their accuracy with
those inherited weights instead of training each one. Here the architecture itself is never
re-implemented: a candidate's forward runs the very module `macro_net(**fixed, **candidate)`
builds, through `torch.func.functional_call`, with each of its tensors a view of a shared one.

Shared tensors are sized for the largest choice: at each block position and for each op (and
all its expansions or groups), the element-wise largest shape over every width multiplier and
kernel. A candidate takes channel prefixes (the first `c` output and input channels) and the
centre `k x k` of the kernel (OFA's kernel sharing without its transform matrices). The
separable op without expansion (MobileNetV1's depthwise-separable conv) shares its depthwise
and projection convs with the expanded ones. Every op of a position has its own weights and
BatchNorms; the stem, head and classifier are shared by all.

`subnet(candidate)` copies those slices into a fresh `macro_net` module: the same class, layers,
parameter count and builder mark as the multi-trial search builds, so it profiles, compresses,
saves and loads like any candidate. Training and scoring: `supernet_train.py`.
"""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from netchisel.core.errors import ConfigError
from netchisel.search.nas.macro import macro_net
from netchisel.search.space import Candidate, Space
from netchisel.search.tabular import candidate_key

_DIM = re.compile(r"s(\d+)_(blocks|kernel|op|expand|groups)(\d*)")
_BLOCK = re.compile(r"stage(\d+)\.b(\d+)\.(.+)")
# macro_net's own kwargs: the fixed part of a super-net (width_mult only when not searched).
FIXED_KWARGS = tuple(p for p in inspect.signature(macro_net).parameters if p != "choices")
# The separable block's Sequential without expansion lacks the 1x1 expand conv, bn and act
# (3 modules), so its depthwise conv is conv.0 where the expanded block's is conv.3.
_EXPAND_LAYERS = 3
_CACHE = 256  # candidates whose module skeletons are kept (the tabular space has 288)
_CHANNELS = inspect.signature(macro_net).parameters["channels"].default

Setting = tuple[str, int, int]  # (op, expand, groups) of one block
_Slot = tuple[str, str, tuple[int, ...]]  # sub-network tensor, shared tensor, shape


class SuperNet(nn.Module):
    """Shared weights for every candidate of a macro space (`macro_space`, `tabular_space`).

    `fixed` are `macro_net`'s non-searched kwargs (channels, strides, stem, ...). Call it on a
    batch with a candidate (`net(x, candidate)`, or `activate` one first, as training does).

    Example:
        >>> from netchisel.search.nas import macro_space
        >>> space = macro_space(2, blocks=(1, 2), ops=("conv", "separable"), expansions=(1, 2),
        ...                     width_mults=(0.5, 1.0))
        >>> net = SuperNet(space, channels=[4, 8], strides=[1, 2], stem=4, image_size=8)
        >>> cand = net.largest()
        >>> sub = net.eval().subnet(cand).eval()
        >>> x = torch.randn(2, 1, 8, 8)
        >>> bool(torch.allclose(sub(x), net(x, cand), atol=1e-5))
        True
    """

    def __init__(self, space: Space, **fixed: Any) -> None:
        super().__init__()
        unknown = [k for k in fixed if k not in FIXED_KWARGS]
        if unknown:
            raise ConfigError(
                f"SuperNet: {unknown[0]!r} is not a fixed macro_net kwarg (fixed: "
                f"{', '.join(FIXED_KWARGS)}); searched choices belong in the space"
            )
        for name, dim in space.dimensions.items():
            if name != "width_mult" and _DIM.fullmatch(name) is None:
                raise ConfigError(
                    f"SuperNet: space dimension {name!r} is not a macro_net choice "
                    "(width_mult, s{i}_blocks, s{i}_kernel, s{i}_op{j}, s{i}_expand{j}, ...)"
                )
            if name in fixed:
                raise ConfigError(f"SuperNet: {name!r} is both fixed and searched; drop one")
            if dim.kind == "float" and dim.step is None:
                raise ConfigError(f"SuperNet: dimension {name!r} needs finite choices")
        self.space = space
        self.fixed = dict(fixed)
        self._settings = _position_settings(space, len(fixed.get("channels", _CHANNELS)))
        self.block_params: dict[tuple[int, int, Setting], int] = {}
        self.shared = nn.Module()
        self._skeletons: OrderedDict[str, tuple[nn.Module, list[_Slot]]] = OrderedDict()
        self._active: Candidate | None = None
        with torch.random.fork_rng():  # probes draw init weights; callers' streams stay put
            self._allocate()

    # -- construction ------------------------------------------------------------------

    def _allocate(self) -> None:
        """Build probe candidates that together hold every block setting at every width and
        kernel; each shared tensor is the element-wise largest shape seen, initialised from a
        probe of exactly that shape (macro_net's own init) where one exists."""
        largest: dict[str, tuple[Tensor, bool]] = {}
        for probe in self._probes():
            model = macro_net(**self.fixed, **probe)
            params = {n for n, _ in model.named_parameters()}
            for name, tensor in model.state_dict().items():
                key = self._shared_name(name, probe)
                seen = largest.get(key)
                if seen is None:
                    largest[key] = (tensor.clone(), name in params)
                    continue
                shape = [max(a, b) for a, b in zip(seen[0].shape, tensor.shape, strict=True)]
                if list(seen[0].shape) == shape:
                    continue
                grown = tensor if list(tensor.shape) == shape else _embed(seen[0], shape)
                largest[key] = (grown.clone(), seen[1])
            self._count_block_params(model, probe)
        for key, (tensor, is_param) in largest.items():
            attr = key.replace(".", "/")  # a module attribute name cannot hold dots
            if is_param:
                self.shared.register_parameter(attr, nn.Parameter(tensor))
            else:
                self.shared.register_buffer(attr, tensor)

    def _count_block_params(self, model: nn.Module, probe: Candidate) -> None:
        """Parameters of each block setting (the largest seen): `largest`/`smallest` rank ops."""
        for i, j in self._settings:
            try:
                block = model.get_submodule(f"stage{i}.b{j}")
            except AttributeError:  # a skip: no module, no weights
                continue
            count = sum(p.numel() for p in block.parameters())
            slot = (i, j, _setting_of(probe, i, j))
            self.block_params[slot] = max(self.block_params.get(slot, 0), count)

    def _probes(self) -> Iterator[Candidate]:
        dims = self.space.dimensions
        widths = dims["width_mult"].values() if "width_mult" in dims else [None]
        kernels = {
            i: dims[f"s{i}_kernel"].values() if f"s{i}_kernel" in dims else [3]
            for i in self._stages()
        }
        for width in widths:
            for k in range(max(len(v) for v in kernels.values())):
                for t in range(max(len(v) for v in self._settings.values())):
                    probe: Candidate = {} if width is None else {"width_mult": width}
                    for i, values in kernels.items():
                        blocks = self._depth(i)
                        probe[f"s{i}_blocks"] = blocks
                        probe[f"s{i}_kernel"] = values[k % len(values)]
                        for j in range(1, blocks + 1):
                            settings = self._settings[(i, j)]
                            probe.update(_setting_keys(i, j, settings[t % len(settings)]))
                    yield probe

    def _stages(self) -> range:
        return range(1, len(self.fixed.get("channels", _CHANNELS)) + 1)

    def _depth(self, i: int) -> int:
        dim = self.space.dimensions.get(f"s{i}_blocks")
        return max(dim.values()) if dim is not None else 1

    # -- candidates --------------------------------------------------------------------

    def check(self, candidate: Mapping[str, Any]) -> Candidate:
        """The candidate as a dict, or a one-line ConfigError when the space lacks it."""
        if not isinstance(candidate, Mapping):
            raise ConfigError(
                f"super-net candidate: expected a mapping of the space's dimensions, got "
                f"{type(candidate).__name__}"
            )
        out: Candidate = {}
        for name, dim in self.space.dimensions.items():
            if not dim.active(out):
                if name in candidate:
                    raise ConfigError(
                        f"super-net candidate: {name!r} does not exist for this candidate "
                        f"(it needs {dict(dim.when)}); drop it"
                    )
                continue
            if name not in candidate:
                raise ConfigError(
                    f"super-net candidate: {name!r} is missing; add one of the space's"
                )
            value = candidate[name]
            choices = dim.values()
            if value not in choices or isinstance(value, bool):
                raise ConfigError(
                    f"super-net candidate: {name}={value!r} is outside the space "
                    f"(choices: {', '.join(map(str, choices))})"
                )
            out[name] = value
        extra = [k for k in candidate if k not in self.space.dimensions]
        if extra:
            raise ConfigError(
                f"super-net candidate: {extra[0]!r} is not a dimension of the space "
                f"(dimensions: {', '.join(self.space.dimensions)})"
            )
        return out

    def largest(self) -> Candidate:
        """The candidate of most parameters per choice: widest, deepest, largest kernel, and
        at each block the op setting of most parameters (the sandwich rule's top path)."""
        return self._extreme(max)

    def smallest(self) -> Candidate:
        """The candidate of fewest parameters per choice (the sandwich rule's bottom path)."""
        return self._extreme(min)

    def _extreme(self, pick: Any) -> Candidate:
        out: Candidate = {}
        for name, dim in self.space.dimensions.items():
            if not dim.active(out):
                continue
            match = _DIM.fullmatch(name)
            if match is None or match[2] in ("blocks", "kernel"):  # width_mult, depth, kernel
                out[name] = pick(dim.values())
                continue
            i, j = int(match[1]), int(match[3])
            if match[2] == "op":
                cost = {s: self.block_params.get((i, j, s), 0) for s in self._settings[(i, j)]}
                allowed = [s for s in cost if s[0] in dim.values()]
                best = pick(allowed, key=lambda s: cost[s])
                out[name] = best[0]
                out.update({k: v for k, v in _setting_keys(i, j, best).items() if k != name})
        return self.check({k: v for k, v in out.items() if k in self.space.dimensions})

    # -- forward and sub-networks -------------------------------------------------------

    def activate(self, candidate: Mapping[str, Any]) -> None:
        """Make `candidate` the path `forward` runs when called without one (training)."""
        self._active = self.check(candidate)

    def forward(self, x: Tensor, candidate: Mapping[str, Any] | None = None) -> Tensor:
        """Run one candidate (`candidate`, else the activated one) on the shared weights."""
        if candidate is None:
            if self._active is None:
                raise ConfigError("SuperNet: pass a candidate or call activate(candidate) first")
            candidate = self._active
        skeleton, names = self._skeleton(candidate)
        skeleton.train(self.training)
        tensors = {name: self._slice(shared, shape) for name, shared, shape in names}
        return functional_call(skeleton, tensors, (x,))  # type: ignore[no-any-return]

    def subnet(self, candidate: Mapping[str, Any]) -> nn.Module:
        """The candidate as `macro_net` builds it, with the shared weights (and BatchNorm
        statistics) copied in: an ordinary module, independent of the super-net."""
        candidate = self.check(candidate)
        with torch.random.fork_rng():
            model = macro_net(**self.fixed, **candidate)
        state = {
            name: self._slice(self._shared_name(name, candidate), tuple(t.shape)).detach().clone()
            for name, t in model.state_dict().items()
        }
        model.load_state_dict(state)
        return model

    def _skeleton(self, candidate: Mapping[str, Any]) -> tuple[nn.Module, list[_Slot]]:
        """The candidate's module (built once, cached; its own tensors are never used) and,
        per state tensor, the shared tensor and the shape to slice it to."""
        key = candidate_key(candidate)
        found = self._skeletons.get(key)
        if found is not None:
            self._skeletons.move_to_end(key)
            return found
        checked = self.check(candidate)
        with torch.random.fork_rng():
            skeleton = macro_net(**self.fixed, **checked)
        names = [
            (n, self._shared_name(n, checked), tuple(t.shape))
            for n, t in skeleton.state_dict().items()
        ]
        self._skeletons[key] = (skeleton, names)
        if len(self._skeletons) > _CACHE:
            self._skeletons.popitem(last=False)
        return skeleton, names

    def _slice(self, shared: str, shape: tuple[int, ...]) -> Tensor:
        tensor: Tensor = getattr(self.shared, shared.replace(".", "/"))
        if tensor.dim() != len(shape):
            raise ConfigError(f"SuperNet: {shared} has {tensor.dim()} dims, asked {len(shape)}")
        index: list[slice] = []
        for d, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)):
            start = (have - want) // 2 if tensor.dim() == 4 and d >= 2 else 0  # kernel centre
            index.append(slice(start, start + want))
        return tensor[tuple(index)]

    def _shared_name(self, name: str, candidate: Mapping[str, Any]) -> str:
        """The shared tensor a sub-network tensor is a slice of (per block position and op)."""
        block = _BLOCK.fullmatch(name)
        if block is None:
            return name  # stem, head, classifier: shared by every candidate
        i, j, rest = int(block[1]), int(block[2]), block[3]
        op, expand, _ = _setting_of(candidate, i, j)
        layer = re.fullmatch(r"conv\.(\d+)\.(.+)", rest)
        if op == "separable" and expand == 1 and layer is not None:
            rest = f"conv.{int(layer[1]) + _EXPAND_LAYERS}.{layer[2]}"
        return f"stage{i}.b{j}.{op}.{rest}"


def _setting_of(candidate: Mapping[str, Any], i: int, j: int) -> Setting:
    """The (op, expand, groups) of block j of stage i, with macro_net's defaults."""
    return (
        str(candidate.get(f"s{i}_op{j}", "conv")),
        int(candidate.get(f"s{i}_expand{j}", 1)),
        int(candidate.get(f"s{i}_groups{j}", 2)),
    )


def _setting_keys(i: int, j: int, setting: Setting) -> Candidate:
    op, expand, groups = setting
    keys: Candidate = {f"s{i}_op{j}": op}
    if op == "separable":
        keys[f"s{i}_expand{j}"] = expand
    if op == "grouped":
        keys[f"s{i}_groups{j}"] = groups
    return keys


def _position_settings(space: Space, stages: int) -> dict[tuple[int, int], list[Setting]]:
    """Every (op, expand, groups) each block position can take (skip has no weights, so a
    position that can only skip probes as skip)."""
    dims = space.dimensions
    out: dict[tuple[int, int], list[Setting]] = {}
    for i in range(1, stages + 1):
        blocks = dims[f"s{i}_blocks"].values() if f"s{i}_blocks" in dims else [1]
        for j in range(1, max(blocks) + 1):
            ops = dims[f"s{i}_op{j}"].values() if f"s{i}_op{j}" in dims else ["conv"]
            expands = dims[f"s{i}_expand{j}"].values() if f"s{i}_expand{j}" in dims else [1]
            groups = dims[f"s{i}_groups{j}"].values() if f"s{i}_groups{j}" in dims else [2]
            settings: list[Setting] = []
            for op in ops:
                if op == "separable":
                    settings += [(op, e, 2) for e in expands]
                elif op == "grouped":
                    settings += [(op, 1, g) for g in groups]
                elif op != "skip":
                    settings.append((op, 1, 2))
            out[(i, j)] = settings or [("skip", 1, 2)]
    return out


def _embed(tensor: Tensor, shape: list[int]) -> Tensor:
    """`tensor` in the prefix (centre, for conv kernels) of a zero tensor of `shape`."""
    out = torch.zeros(shape, dtype=tensor.dtype)
    index = []
    for d, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)):
        start = (want - have) // 2 if tensor.dim() == 4 and d >= 2 else 0
        index.append(slice(start, start + have))
    out[tuple(index)] = tensor
    return out
