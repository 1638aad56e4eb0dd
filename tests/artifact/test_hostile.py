"""Hostile and corrupt artifacts: each is one ArtifactError line and no side effect.

Every case starts from a real saved artifact and edits it the way an attacker (or a bad disk)
would, fixing the checksums where the attack needs them to pass. After `load` refuses it, the
canary file an attack would create does not exist, `os.environ` is unchanged and the process is
alive (the cases that would kill it also run in a child process, below).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netchisel.artifact.store import _file_info, load, save
from netchisel.core.errors import ArtifactError, ConfigError
from netchisel.zoo import models

Manifest = dict[str, Any]
Weights = dict[str, torch.Tensor]


def _described(tmp: Path) -> Path:
    """A model saved by description (no builder): every module named in the manifest."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.LSTM(8, 4, batch_first=True))
    return save(net, tmp / "described")


def _built(tmp: Path) -> Path:
    """A zoo model saved by builder + edits (a pruned-to-zero bitmask tensor among them)."""
    torch.manual_seed(0)
    net = models.build("mlp", in_features=16, hidden=(8,))
    return save(net, tmp / "built")


def _buffered(tmp: Path) -> Path:
    """A described model with a non-persistent buffer, whose value the weights file holds."""
    torch.manual_seed(0)
    holder = nn.Identity()
    holder.register_buffer("freq", torch.arange(4.0), persistent=False)
    return save(nn.Sequential(nn.Linear(4, 4), holder), tmp / "buffered")


def _partial(func: Any, args: Any = (), **keywords: Any) -> dict[str, Any]:
    return {"__partial__": {"func": func, "args": list(args), "keywords": keywords}}


def _config(cls: str, data: str = "{}") -> dict[str, Any]:
    return {"__config__": {"class": cls, "json": data}}


def _edit_manifest(directory: Path, change: Callable[[Manifest], None]) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _edit_weights(directory: Path, change: Callable[[Weights], None]) -> None:
    """Rewrite model.safetensors and fix the manifest's checksum, as an attacker can."""
    weights = load_file(str(directory / "model.safetensors"))
    change(weights)
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "x"})
    _fix_checksum(directory)


def _fix_checksum(directory: Path) -> None:
    info = _file_info(directory / "model.safetensors")
    _edit_manifest(directory, lambda m: m["files"].__setitem__("model.safetensors", info))


def _module(m: Manifest, index: int = 0) -> Manifest:
    """The described module `index` of the root Sequential."""
    return m["edits"][0]["module"]["children"][str(index)]  # type: ignore[no-any-return]


def _set_attr(key: str, value: Any, index: int = 1) -> Callable[[Manifest], None]:
    return lambda m: _module(m, index).setdefault("attrs", {}).__setitem__(key, value)


def _callable(ref: str) -> Callable[[Manifest], None]:
    return _set_attr("_flat_weights_names", {"__callable__": ref})


def _set_class(ref: str) -> Callable[[Manifest], None]:
    return lambda m: _module(m).__setitem__("class", ref)


def _set_builder(ref: str, **kwargs: Any) -> Callable[[Manifest], None]:
    return lambda m: m.__setitem__("builder", {"ref": ref, "kwargs": kwargs})


def _pop(*keys: str) -> Callable[[Manifest], None]:
    def change(m: Manifest) -> None:
        target = m
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def _swap(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Weights], None]:
    return lambda w: w.__setitem__(name, make(w[name]).contiguous())


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def _symlink(name: str, target: str) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        (d / name).unlink()
        (d / name).symlink_to(target)

    return change


def _fifo(d: Path) -> None:
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")


def _huge_header(d: Path) -> None:
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    _fix_checksum(d)


def _sparse_manifest(d: Path) -> None:
    with open(d / "manifest.json", "r+b") as f:
        f.truncate(65 << 20)  # a hole: large on paper, nothing on disk


def _codec(name: str, codec: str, meta: dict[str, Any], parts: list[str]) -> Callable[[Path], None]:
    """Declare `name` stored with `codec`: the parts replace the raw tensor."""

    def change(d: Path) -> None:
        weights = load_file(str(d / "model.safetensors"))
        del weights[name]
        for part in parts:
            weights[f"{name}::{part}" if part else name] = torch.zeros(1, dtype=torch.uint8)
        save_file(weights, str(d / "model.safetensors"))
        _fix_checksum(d)
        entry = {"codec": codec, "meta": meta, "parts": parts}
        _edit_manifest(d, lambda m: m.setdefault("tensors", {}).__setitem__(name, entry))

    return change


def _m(change: Callable[[Manifest], None]) -> Callable[[Path], None]:
    return lambda d: _edit_manifest(d, change)


def _w(change: Callable[[Weights], None]) -> Callable[[Path], None]:
    return lambda d: _edit_weights(d, change)


CANARY = "/tmp/netchisel-hostile-canary"
# (id, which artifact, how it is edited, a fragment of the one-line error)
CASES: list[tuple[str, Callable[[Path], Path], Callable[[Path], None], str]] = [
    # -- names that would reach foreign code --------------------------------------------------
    ("torch-os-environ-clear", _described, _m(_callable("torch:os.environ.clear")), "not trusted"),
    ("torch-os-abort", _described, _m(_callable("torch:os.abort")), "not trusted"),
    ("torch-os-exit", _described, _m(_callable("torch:os._exit")), "not trusted"),
    ("os-system", _described, _m(_callable("os:system")), "function 'os:system'"),
    ("builtins-eval", _described, _m(_callable("builtins:eval")), "not trusted"),
    ("functional-walk", _described, _m(_callable("torch.nn.functional:torch.os.system")), "not"),
    (
        "netchisel-walk",
        _described,
        _m(_callable("netchisel.core.modules:importlib.import_module")),
        "not trusted",
    ),
    ("netchisel-module", _described, _m(_callable("netchisel.core.modules:importlib")), "not"),
    ("bad-ref", _described, _m(_callable("os;rm -rf /")), "not a 'module:name'"),
    ("this-side-effect", _described, _m(_set_class("this:s")), "class 'this:s'"),
    ("popen-class", _described, _m(_set_class("subprocess:Popen")), "not trusted"),
    (
        "netchisel-non-module",
        _described,
        _m(_set_class("netchisel.core.errors:ArtifactError")),
        "not trusted",
    ),
    (
        "foreign-module-class",
        _described,
        _m(_set_class("transformers.models.bert.modeling_bert:BertModel")),
        "trust=[BertModel]",
    ),
    (
        "builder-os-system",
        _described,
        _m(_set_builder("os:system", command=f"touch {CANARY}")),
        "builder 'os:system'",
    ),
    (
        "builder-unmarked-netchisel",
        _built,
        _m(_set_builder("netchisel.artifact.store:save")),
        "not trusted",
    ),
    (
        "builder-terabyte",
        _built,
        _m(
            _set_builder(
                "torch.nn.modules.linear:Linear", in_features=1 << 20, out_features=1 << 20
            )
        ),
        "refused",
    ),
    (
        "builder-zoo-huge",
        _built,
        _m(lambda m: m["builder"]["kwargs"].__setitem__("hidden", [1 << 16, 1 << 16])),
        "refused",
    ),
    (
        "builder-bad-kwargs",
        _built,
        _m(lambda m: m["builder"]["kwargs"].__setitem__("bogus", 1)),
        "bogus",
    ),
    (
        "attr-shadows-train",
        _described,
        _m(_set_attr("train", {"__callable__": "torch.nn.functional:relu"})),
        "'train'",
    ),
    (
        "attr-flat-weights-init",
        _described,
        _m(_set_attr("_init_flat_weights", {"__callable__": "torch:relu"})),
        "own code",
    ),
    ("attr-dunder", _described, _m(_set_attr("__class__", 1)), "own code"),
    ("dtype-os", _described, _m(_set_attr("x", {"__dtype__": "os"})), "dtype 'os'"),
    ("unknown-tag", _described, _m(_set_attr("x", {"__import__": "os"})), "value tag"),
    (
        "call-netchisel-cli",
        _described,
        _m(_set_attr("_init_flat_weights", {"__callable__": "netchisel.cli:demo"}, 0)),
        "not trusted",
    ),
    (
        "call-netchisel-function",
        _described,
        _m(_callable("netchisel.zoo.models:mlp")),
        "not trusted",
    ),
    (
        "marker-builder",
        _described,
        _m(_set_attr("_netchisel_builder", {"__tuple__": ["this:s", {"__dict__": {}}]}, 0)),
        "own code",
    ),
    (
        "marker-codecs",
        _described,
        _m(_set_attr("_netchisel_codecs", {"__dict__": {}}, 0)),
        "own code",
    ),
    ("unhashable-set", _described, _m(_set_attr("x", {"__set__": [[1]]})), "unhashable"),
    (
        "builder-unmeasurable",
        _described,
        _m(
            _set_builder(
                "torch.ao.nn.quantized.modules.embedding_ops:Embedding",
                num_embeddings=3_000_000,
                embedding_dim=1024,
            )
        ),
        "cannot be measured",
    ),
    # -- tensors that do not match what the model declares --------------------------------------
    ("float16-swap", _built, _w(_swap("fc1.weight", lambda t: t.half())), "float16"),
    ("int64-swap", _described, _w(_swap("0.weight", lambda t: t.long())), "int64"),
    ("shape-swap", _built, _w(_swap("fc1.bias", lambda t: torch.cat([t, t]))), "[16]"),
    ("nan-tensor", _built, _w(_swap("fc1.weight", lambda t: t.fill_(float("nan")))), "NaN"),
    ("extra-tensor", _built, _w(lambda w: w.__setitem__("evil", torch.zeros(1))), "'evil'"),
    ("missing-tensor", _built, _w(lambda w: w.pop("fc1.bias")), "lacks 'fc1.bias'"),
    (
        "huge-declared-buffer",
        _described,
        _m(
            lambda m: (
                _module(m, 0)
                .setdefault("tensors", {})
                .__setitem__("buf", {"kind": "buffer", "shape": [1 << 40], "persistent": False})
            )
        ),
        "refused",
    ),
    (
        "bitmask-mask-size",
        _built,
        _codec("fc1.weight", "bitmask", {"shape": [8, 16]}, ["mask", "values"]),
        "mask has 1 bytes",
    ),
    (
        "codec-huge-shape",
        _built,
        _codec("fc1.weight", "huffman", {"shape": [1 << 40]}, [""]),
        "refused",
    ),
    ("codec-corrupt-meta", _built, _codec("fc1.weight", "packed", {"shape": [4]}, [""]), "corrupt"),
    (
        "codec-unknown",
        _built,
        _codec("fc1.weight", "pickle", {}, [""]),
        "unknown tensor codec 'pickle'",
    ),
    (
        "bias-shape-described",
        _described,
        _w(_swap("0.bias", lambda t: t[:1].clone())),
        "Linear with its attributes has [8]",
    ),
    (
        "many-declared-buffers",
        _described,
        _m(
            lambda m: (
                _module(m, 0)
                .setdefault("tensors", {})
                .update(
                    {
                        f"b{i}": {
                            "kind": "buffer",
                            "shape": [1 << 26],
                            "dtype": "complex128",
                            "persistent": False,
                        }
                        for i in range(16)
                    }
                )
            )
        ),
        "does not hold",
    ),
    (
        "packed-zero-width",
        _built,
        _codec(
            "fc1.weight",
            "packed",
            {
                "shape": [8, 16],
                "layout": "sparse",
                "width": 0,
                "index_bits": 0,
                "entries": 10**12,
                "dtype": "int8",
                "offset": 0,
                "alphabet": 1,
            },
            [""],
        ),
        "impossible index_bits",
    ),
    (
        "huffman-index-bits",
        _built,
        _codec(
            "fc1.weight",
            "huffman",
            {
                "shape": [8, 16],
                "layout": "sparse",
                "index_bits": 10**12,
                "entries": 1,
                "nbits": 1,
                "gap_nbits": 1,
                "dtype": "int8",
                "offset": 0,
                "alphabet": 1,
            },
            [""],
        ),
        "impossible index_bits",
    ),
    (
        "codec-dtype-getattr",
        _built,
        _codec(
            "fc1.weight",
            "packed",
            {
                "shape": [1],
                "layout": "dense",
                "width": 1,
                "dtype": "_inductor",
                "offset": 0,
                "alphabet": 1,
            },
            [""],
        ),
        "dtype '_inductor'",
    ),
    # -- a manifest that is not one ---------------------------------------------------------------
    ("missing-files", _built, _m(_pop("files")), "lacks 'files'"),
    ("missing-kwargs", _built, _m(_pop("builder", "kwargs")), "builder"),
    (
        "missing-alias-target",
        _built,
        _m(lambda m: m.__setitem__("aliases", {"fc1.bias": "nope"})),
        "'nope'",
    ),
    ("not-json", _built, _write("manifest.json", b"\x80\x81garbage"), "corrupt"),
    ("deep-json", _built, _write("manifest.json", b"[" * 200_000), "corrupt"),
    ("huge-manifest", _built, _sparse_manifest, "over 64 MiB"),
    (
        "huge-integer",
        _built,
        _write("manifest.json", b'{"format": ' + b"9" * 5000 + b"}"),
        "corrupt",
    ),
    ("future-version", _built, _m(lambda m: m.__setitem__("format_version", 99)), "upgrade"),
    (
        "string-version",
        _built,
        _m(lambda m: m.__setitem__("format_version", "2")),
        "format_version",
    ),
    ("unknown-op", _built, _m(lambda m: m["edits"].append({"op": "exec", "path": ""})), "edits"),
    (
        "path-traversal-file",
        _built,
        _m(lambda m: m["files"].__setitem__("../../etc/passwd", m["files"]["model.safetensors"])),
        "files",
    ),
    (
        "edit-path-dunder",
        _built,
        _m(lambda m: m["edits"].append({"op": "patch", "path": "fc1.__class__"})),
        "lacks",
    ),
    (
        "order-unknown-child",
        _built,
        _m(lambda m: m["edits"].append({"op": "order", "path": "", "order": ["evil"]})),
        "order",
    ),
    ("unknown-top-key", _built, _m(lambda m: m.__setitem__("exec", "import os")), "exec"),
    # -- partials, configs and non-persistent buffers (issue 20) -------------------------------
    (
        "partial-os-system",
        _described,
        _m(_set_attr("norm", _partial({"__callable__": "os:system"}, [f"touch {CANARY}"]))),
        "function 'os:system'",
    ),
    (
        "partial-eval",
        _described,
        _m(_set_attr("norm", _partial({"__callable__": "builtins:eval"}, ["1"]))),
        "not trusted",
    ),
    (
        "partial-func-a-string",
        _described,
        _m(_set_attr("norm", _partial("os:system", [f"touch {CANARY}"]))),
        "not a named callable",
    ),
    (
        "partial-callable-argument",
        _described,
        _m(
            _set_attr(
                "norm",
                _partial(
                    {"__callable__": "torch.nn.modules.normalization:LayerNorm"},
                    [{"__callable__": "torch.nn.functional:relu"}],
                ),
            )
        ),
        "callable argument",
    ),
    (
        "partial-nested-partial",
        _described,
        _m(
            _set_attr(
                "norm",
                _partial(
                    {"__callable__": "torch.nn.modules.normalization:LayerNorm"},
                    eps={"__tuple__": [_partial({"__callable__": "torch:tanh"})]},
                ),
            )
        ),
        "callable argument",
    ),
    (
        "partial-missing-keys",
        _described,
        _m(_set_attr("norm", {"__partial__": {"func": {"__callable__": "torch:tanh"}}})),
        "func, args and keywords",
    ),
    (
        "partial-bad-keyword",
        _described,
        _m(_set_attr("norm", _partial({"__callable__": "torch:tanh"}, **{"a b": 1}))),
        "an argument name",
    ),
    (
        "config-popen",
        _described,
        _m(_set_attr("config", _config("subprocess:Popen", '{"args": "touch x"}'))),
        "configuration class 'subprocess:Popen'",
    ),
    (
        "config-a-layer-class",
        _described,
        _m(_set_attr("config", _config("torch.nn.modules.linear:Linear"))),
        "not trusted",
    ),
    (
        "config-untrusted-hf",
        _described,
        _m(_set_attr("config", _config("transformers.models.bert.configuration_bert:BertConfig"))),
        "trust=[BertConfig]",
    ),
    (
        "config-no-json",
        _described,
        _m(_set_attr("config", {"__config__": {"class": "x:Y"}})),
        "a class and a json string",
    ),
    (
        "library-layer-untrusted",
        _described,
        _m(_set_class("torchvision.ops.misc:Conv2dNormActivation")),
        "not trusted",
    ),
    ("buffer-dtype-swap", _buffered, _w(_swap("1.freq", lambda t: t.double())), "float64"),
    ("buffer-shape-swap", _buffered, _w(_swap("1.freq", lambda t: t[:2].clone())), "[2]"),
    ("buffer-nan", _buffered, _w(_swap("1.freq", lambda t: t.fill_(float("nan")))), "NaN"),
    # -- files that are not what they claim -----------------------------------------------------
    ("weights-symlink", _built, _symlink("model.safetensors", "/etc/passwd"), "symbolic link"),
    ("manifest-symlink", _built, _symlink("manifest.json", "/etc/passwd"), "symbolic link"),
    ("weights-fifo", _built, _fifo, "not a regular file"),
    (
        "weights-flipped-byte",
        _built,
        lambda d: _write(
            "model.safetensors", (d / "model.safetensors").read_bytes()[:-1] + b"\x00"
        )(d),
        "checksum",
    ),
    ("weights-huge-header", _built, _huge_header, "cannot be read"),
    ("weights-missing", _built, lambda d: (d / "model.safetensors").unlink(), "missing"),
]


@pytest.fixture()
def untouched() -> Any:
    """Assert after the test that the attack had no effect on this process or the disk."""
    Path(CANARY).unlink(missing_ok=True)
    before = _environment()
    yield
    assert not Path(CANARY).exists()
    assert _environment() == before


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@pytest.mark.parametrize(
    ("make", "attack", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_artifact_is_one_line_and_harmless(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    untouched: None,
    make: Callable[[Path], Path],
    attack: Callable[[Path], None],
    fragment: str,
) -> None:
    directory = make(tmp_path)
    attack(directory)
    with pytest.raises(ArtifactError) as raised:
        load(directory)
    message = str(raised.value)
    assert fragment in message
    assert "\n" not in message
    assert capsys.readouterr().out == ""  # "this:s" would have printed the Zen of Python


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


_CHILD = """
import json, sys
from pathlib import Path
from netchisel.core.errors import ArtifactError
from netchisel.artifact.store import load
for d in sys.argv[1:]:
    try:
        load(d)
        print("LOADED", d)
    except ArtifactError as e:
        print("REFUSED", d)
print("ALIVE")
"""


def test_the_process_killers_leave_the_process_alive(tmp_path: Path) -> None:
    """os.abort and os._exit through an RNN's cache refresh, in a child so a failure shows."""
    directories = []
    for i, ref in enumerate(("torch:os.abort", "torch:os._exit", "torch:os.environ.clear")):
        directory = _described(tmp_path / str(i))
        _edit_manifest(directory, _set_attr("_init_flat_weights", {"__callable__": ref}))
        directories.append(str(directory))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *directories], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [w for d in directories for w in ("REFUSED", d)] + ["ALIVE"]


def test_trusting_a_class_lets_its_artifact_load(tmp_path: Path) -> None:
    from tests.artifact._user_models import Scaled

    directory = save(nn.Sequential(Scaled(3)), tmp_path / "user")
    with pytest.raises(ArtifactError, match=r"trust=\[Scaled\]"):
        load(directory)
    assert load(directory, trust=[Scaled])[0].factor == 3
    assert load(directory, trust=["tests.artifact._user_models:Scaled"])[0].factor == 3


def test_format_2_artifacts_still_load() -> None:
    """Two artifacts written by the format-2 release (pruned bitmask; int4 packed)."""
    fixtures = Path(__file__).parent.parent / "fixtures"
    expected = load_file(str(fixtures / "format2_outputs.safetensors"))
    with torch.no_grad():
        for name in ("pruned", "int4"):
            model = load(fixtures / f"format2_{name}_mlp")
            # The reference outputs were computed with autograd on: addmm may round the last bit.
            assert torch.allclose(model(expected["x"]), expected[name], rtol=0, atol=1e-6)


def test_the_cli_loads_a_users_class_only_with_trust(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from netchisel.cli import app
    from tests.artifact._user_models import Scaled

    directory = str(save(nn.Sequential(nn.Linear(3, 3), Scaled(2)), tmp_path / "user"))
    args = ["profile", directory, "--no-latency", "--input-shape", "1,3", "--json"]
    refused = CliRunner().invoke(app, args)
    assert isinstance(refused.exception, ArtifactError)
    assert "--trust tests.artifact._user_models:Scaled" in str(refused.exception)
    trusted = CliRunner().invoke(app, [*args, "--trust", "tests.artifact._user_models:Scaled"])
    assert trusted.exit_code == 0, trusted.output
    assert json.loads(trusted.output)["macs"] == 9


def test_a_recipe_vouches_for_its_artifacts_classes(tmp_path: Path) -> None:
    from netchisel.pipeline.recipe import parse_recipe
    from netchisel.pipeline.sources import load_model
    from tests.artifact._user_models import Scaled

    directory = str(save(nn.Sequential(nn.Linear(3, 3), Scaled(2)), tmp_path / "user"))
    plain = parse_recipe({"model": {"artifact": directory}}, "r").model
    with pytest.raises(ArtifactError, match="not trusted"):
        load_model(plain)
    trusting = {"artifact": directory, "trust": ["tests.artifact._user_models:Scaled"]}
    assert load_model(parse_recipe({"model": trusting}, "r").model)[1].factor == 2


def test_a_module_beside_the_artifact_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's layer list is walked with full names: a quantized.py in the current directory
    (on sys.path in a notebook or `python -m`) is not what `load` imports."""
    from netchisel.artifact import trust

    canary = tmp_path / "ran"
    for name in ("quantized", "intrinsic", "qat", "quantizable", "sparse", "dynamic"):
        (tmp_path / f"{name}.py").write_text(f"open({str(canary)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    trust.torch_classes.cache_clear()
    try:
        classes = trust.torch_classes()
    finally:
        trust.torch_classes.cache_clear()
    assert not canary.exists()
    assert "torch.ao.nn.quantized.dynamic.modules.linear:Linear" in classes


def test_a_torch_dynamic_quantized_model_is_one_clear_error(tmp_path: Path) -> None:
    from netchisel.core.errors import ModelError

    net = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(nn.Linear(4, 8)), {nn.Linear}, dtype=torch.qint8
    )
    with pytest.raises(ModelError, match=r"use quantize\.dynamic_int8"):
        save(net, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_trusting_a_transformers_model_class_trusts_its_library_layers(tmp_path: Path) -> None:
    """A Hugging Face layer is reached only through a transformers model class the caller
    trusts (its modelling file, activations and pytorch_utils); remote code never."""
    transformers = pytest.importorskip("transformers")
    from transformers.activations import GELUActivation

    directory = save(nn.Sequential(nn.Linear(4, 4), GELUActivation()), tmp_path / "hf")
    with pytest.raises(ArtifactError, match="GELUActivation', which is not trusted"):
        load(directory)
    loaded = load(directory, trust=[transformers.BertModel])
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(x), loaded[1](loaded[0](x)))
    assert type(loaded[1]) is GELUActivation
    with pytest.raises(ConfigError, match="remote code"):
        load(directory, trust=["transformers_modules.evil:Model"])


@pytest.fixture()
def transformers() -> Any:
    """transformers, imported before `untouched` records the environment (its import sets
    TORCHINDUCTOR_CACHE_DIR) and its lazy BERT modules loaded."""
    module = pytest.importorskip("transformers")
    assert module.BertModel.config_class is module.BertConfig
    return module


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ('{"attn_implementation": "kernels-community/flash-attn"}', "fetch code from the Hub"),
        ('{"_attn_implementation_internal": "kernels-community/x"}', "fetch code from the Hub"),
        ('{"experts_implementation": "sonicmoe"}', "fetch code from the Hub"),
        ('{"auto_map": {"AutoModel": "evil.Model"}}', "remote code"),
        ("[1, 2]", "not a JSON object"),
        ("{not json", "not JSON"),
        ('{"hidden_size": "wide"}', "BertConfig"),
    ],
)
def test_a_trusted_config_class_still_loads_only_plain_settings(
    tmp_path: Path, transformers: Any, untouched: None, data: str, fragment: str
) -> None:
    """Trusting BertModel lets its BertConfig be rebuilt from JSON, never with an attention
    implementation that would fetch a kernel from the Hub, nor remote code."""
    directory = _described(tmp_path)
    config = _config("transformers.models.bert.configuration_bert:BertConfig", data)
    _edit_manifest(directory, _set_attr("config", config))
    with pytest.raises(ArtifactError, match=fragment) as raised:
        load(directory, trust=[transformers.BertModel])
    assert "\n" not in str(raised.value)


def test_trusting_a_library_model_trusts_its_layers_not_its_functions(
    transformers: Any, untouched: None
) -> None:
    """Trusting torchvision's ResNet trusts torchvision.ops' layers; a timm model, timm.layers
    and timm.models' helpers. Functions of those modules (downloaders) stay refused as
    attribute values, and no other torchvision/timm package is reached."""
    from tests.models._torchvision import timm, torchvision

    tv, tm = torchvision(), timm()
    from netchisel.artifact.trust import Allowed

    allowed = Allowed.with_trust([tv.models.ResNet, tm.models.VisionTransformer])
    layer = allowed.resolve("torchvision.ops.misc:Conv2dNormActivation", "class")
    assert layer is tv.ops.misc.Conv2dNormActivation
    assert allowed.resolve("timm.layers.mlp:Mlp", "class") is tm.layers.mlp.Mlp
    assert allowed.resolve("timm.layers.mlp:Mlp", "function") is tm.layers.mlp.Mlp  # a layer value
    refused = [
        ("torchvision.models.resnet:load_state_dict_from_url", "function"),
        ("torchvision.models._api:get_weight", "function"),
        ("torchvision.datasets.mnist:MNIST", "class"),
        ("timm.models._hub:download_cached_file", "function"),
        ("timm.models._hub:load_model_config_from_hf", "function"),
        ("timm.models._builder:build_model_with_cfg", "builder"),
        ("timm.models.resnet:ResNet", "class"),  # another model file: trust it by name
    ]
    for ref, kind in refused:
        with pytest.raises(ArtifactError, match="not trusted"):
            allowed.resolve(ref, kind)
    assert not Allowed.with_trust([nn.Linear]).library_modules
