from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from netchisel.artifact.store import _file_info, artifact_bytes, load, read_manifest, save
from netchisel.core.errors import ArtifactError, ModelError
from netchisel.core.modules import builder, mark_builder


class Block(nn.Module):
    """A custom module with a plain attribute its forward depends on."""

    def __init__(self, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x).reshape(*x.shape[:-1], self.heads, -1).relu().flatten(-2)
        return self.norm(y * self.scale + x)


@builder
def net(width: int = 8) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, width), Block(width), nn.Linear(width, 3))
    return mark_builder(model, "tests.artifact.test_store:net", {"width": width})


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    a.eval()
    b.eval()
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    model = net()
    loaded = load(save(model, tmp_path / "a"))
    for (k, v), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2) and v.dtype == v2.dtype
    assert _same_outputs(model, loaded, torch.randn(5, 4))


def test_narrowed_widths_are_rebuilt(tmp_path: Path) -> None:
    model = net(8)
    # Prune by hand: keep 5 of 8 hidden units everywhere the width appears.
    keep = torch.tensor([0, 2, 3, 5, 7])
    first, block, last = model[0], model[1], model[2]
    first.weight = nn.Parameter(first.weight[keep])
    first.bias = nn.Parameter(first.bias[keep])
    first.out_features = 5
    block.proj = nn.Linear(5, 5)
    block.heads = 1
    block.norm = nn.LayerNorm(5)
    block.scale = nn.Parameter(torch.rand(5))
    last.weight = nn.Parameter(last.weight[:, keep])
    last.in_features = 5
    directory = save(model, tmp_path / "p")
    manifest = read_manifest(directory)
    assert manifest["builder"] == {
        "ref": "tests.artifact.test_store:net",
        "kwargs": {"width": 8},
    }
    ops = {(e["op"], e["path"]) for e in manifest["edits"]}
    assert ("patch", "0") in ops and ("patch", "1") in ops and ("patch", "1.proj") in ops
    loaded = load(directory)
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert loaded[1].heads == 1 and loaded[0].out_features == 5
    assert _same_outputs(model, loaded, torch.randn(3, 4))


def test_replaced_and_removed_modules(tmp_path: Path) -> None:
    model = net()
    model[1] = nn.Sequential(nn.Linear(8, 2), nn.Linear(2, 8))  # factorized
    del model[2]
    model.append(nn.Linear(8, 2))
    loaded = load(save(model, tmp_path / "r"))
    assert [type(m).__name__ for m in loaded] == ["Linear", "Sequential", "Linear"]
    assert _same_outputs(model, loaded, torch.randn(2, 4))


def test_model_without_builder_is_described(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, groups=1, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    model(torch.randn(4, 1, 5, 5))  # move BN running stats away from their init
    loaded = load(save(model, tmp_path / "d"))
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert torch.equal(loaded[1].running_mean, model[1].running_mean)
    assert _same_outputs(model, loaded, torch.randn(2, 1, 5, 5))


def test_tied_weights_are_stored_once(tmp_path: Path) -> None:
    emb = nn.Embedding(100, 64)
    head = nn.Linear(64, 100, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)
    directory = save(model, tmp_path / "t")
    assert read_manifest(directory)["aliases"] == {"1.weight": "0.weight"}
    assert artifact_bytes(directory) < 100 * 64 * 4 * 1.5
    loaded = load(directory)
    assert torch.equal(loaded[1].weight, model[1].weight)


def test_artifact_bytes_are_the_files(tmp_path: Path) -> None:
    directory = save(nn.Linear(256, 256), tmp_path / "s")
    files = sum(p.stat().st_size for p in directory.iterdir())
    assert artifact_bytes(directory) == files
    assert 256 * 257 * 4 <= files < 256 * 257 * 4 + 4096


def test_manifest_leaves_defaults_out(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2, bias=False))
    model[0].bias.requires_grad_(False)
    text = (save(model, tmp_path / "m", metadata={"task": "x"}) / "manifest.json").read_text()
    manifest = json.loads(text)
    # No indentation, no raw codec entries, no empty tables; the builder-less root is described
    # with only what differs from the defaults (requires_grad, no attributes) and without the
    # shapes and dtypes model.safetensors records.
    assert "\n" not in text and ": " not in text
    assert set(manifest) == {
        "format",
        "format_version",
        "torch_version",
        "builder",
        "edits",
        "metadata",
        "files",
    }
    bias = manifest["edits"][0]["module"]["children"]["0"]["tensors"]["bias"]
    assert bias == {"kind": "param", "requires_grad": False}
    assert len(text) < 700  # version 1 wrote 1,685 bytes for this model
    loaded = load(tmp_path / "m")
    assert not loaded[0].bias.requires_grad and loaded[0].weight.requires_grad
    assert _same_outputs(model, loaded, torch.randn(3, 4))


def test_shapes_come_from_the_weights_file(tmp_path: Path) -> None:
    """Narrowed and replaced modules load with the shapes and dtypes the weights file holds."""
    model = net()
    model[0] = nn.Linear(4, 6)  # narrower than the builder's
    model[1] = Block(6)
    model[2] = nn.Linear(6, 3).to(torch.float64)
    directory = save(model, tmp_path / "s")
    assert '"shape"' not in (directory / "manifest.json").read_text()
    loaded = load(directory)
    assert loaded[2].weight.dtype == torch.float64 and loaded[0].weight.shape == (6, 4)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(
            loaded[2](loaded[1](loaded[0](x)).double()), model[2](model[1](model[0](x)).double())
        )


def test_version_1_manifests_still_load(tmp_path: Path) -> None:
    """Version 1 wrote every default and an entry per raw tensor; version 2 reads both."""
    model = net()
    directory = save(model, tmp_path / "v1")
    manifest = read_manifest(directory)
    manifest["format_version"] = 1
    manifest["tensors"] = {
        name: {"codec": "raw", "meta": {}, "parts": [""]} for name in model.state_dict()
    }
    manifest["aliases"], manifest["metadata"] = {}, {}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    assert _same_outputs(model, load(directory), torch.randn(2, 4))


def test_a_part_no_codec_claims_is_an_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    directory = save(nn.Linear(2, 2), tmp_path / "p")
    manifest = read_manifest(directory)
    save_file({"weight::mask": torch.zeros(1)}, str(directory / "model.safetensors"))
    manifest["files"] = {"model.safetensors": _file_info(directory / "model.safetensors")}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"part 'weight::mask' that no codec"):
        load(directory)


def test_missing_corrupt_and_foreign(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="not a netchisel artifact"):
        load(tmp_path / "foreign")
    directory = save(nn.Linear(4, 4), tmp_path / "c")
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="is corrupt"):
        load(directory)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json is corrupt"):
        load(directory)
    (directory / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match="is not a netchisel manifest"):
        load(directory)


def test_save_refuses_a_foreign_directory_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="is not an artifact"):
        save(nn.Linear(2, 2), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

    class Local(nn.Module):  # defined in a function body: cannot be imported by name
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    first = save(nn.Linear(2, 2), tmp_path / "m")
    before = (first / "model.safetensors").read_bytes()
    with pytest.raises(ModelError, match="cannot be imported by name"):
        save(nn.Sequential(Local()), tmp_path / "m")
    assert (first / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "mine"]


def test_overwrite_replaces_the_artifact(tmp_path: Path) -> None:
    save(nn.Linear(2, 2), tmp_path / "o")
    save(nn.Linear(3, 3), tmp_path / "o")
    assert load(tmp_path / "o").weight.shape == (3, 3)


def test_exports_beside_the_artifact(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    directory = save(model, tmp_path / "e", export=["pt2", "onnx"], example_inputs=(x,))
    files = read_manifest(directory)["files"]
    assert set(files) == {"model.safetensors", "model.pt2", "model.onnx"}
    assert files["model.onnx"]["bytes"] == (directory / "model.onnx").stat().st_size
    program = torch.export.load(str(directory / "model.pt2"))
    assert torch.allclose(program.module()(x), model(x), atol=1e-6)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(
        str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-5)


def test_export_needs_inputs_and_a_known_kind(tmp_path: Path) -> None:
    from netchisel.core.errors import ConfigError

    with pytest.raises(ConfigError, match="needs example inputs"):
        save(nn.Linear(2, 2), tmp_path / "x", export=["onnx"])
    with pytest.raises(
        ConfigError,
        match=r"unknown export 'tflite' \(known: pt2, onnx, compressed_tensors, onnx_int8\)",
    ):
        save(
            nn.Linear(2, 2), tmp_path / "x", export=["tflite"], example_inputs=(torch.zeros(1, 2),)
        )
    assert not (tmp_path / "x").exists()


def untrusted(width: int = 8) -> nn.Module:
    return mark_builder(
        nn.Sequential(nn.Linear(4, width)),
        "tests.artifact.test_store:untrusted",
        {"width": width},
    )


def test_load_never_calls_an_unmarked_function(tmp_path: Path) -> None:
    # A model from an unmarked builder is saved by description, not by builder.
    directory = save(untrusted(), tmp_path / "u")
    assert read_manifest(directory)["builder"] is None
    assert load(directory)[0].out_features == 8
    # A tampered manifest naming a dangerous function is refused before anything is called.
    manifest = read_manifest(directory)
    manifest["builder"] = {
        "ref": "os:system",
        "kwargs": {"command": "touch " + str(tmp_path / "pwned")},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"builder 'os:system', which is not trusted"):
        load(directory)
    assert not (tmp_path / "pwned").exists()
    manifest["builder"] = None
    manifest["edits"][0]["module"].setdefault("attrs", {})["hook"] = {"__callable__": "os:system"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="function 'os:system', which is not trusted"):
        load(directory)


def test_a_loaded_model_saves_with_the_same_codecs(tmp_path):
    from netchisel.artifact.store import set_codec

    net = nn.Sequential(nn.Linear(4, 4))
    net[0].register_buffer("codes", torch.randint(0, 3, (64,), dtype=torch.uint8))
    set_codec(net, "0.codes", "huffman")
    first = save(net, tmp_path / "a")
    again = save(load(first), tmp_path / "b")
    codecs = [
        json.loads((d / "manifest.json").read_text())["tensors"]["0.codes"]["codec"]
        for d in (first, again)
    ]
    assert codecs == ["huffman", "huffman"]


def test_saved_files_follow_the_umask_not_the_temp_dir(tmp_path: Path) -> None:
    """mkdtemp makes 0700 and safetensors writes 0600; a served artifact must be readable."""
    import os

    before = os.umask(0o022)
    try:
        directory = save(nn.Linear(2, 2), tmp_path / "shared")
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [directory, *directory.iterdir()]}
    assert modes == {"shared": 0o755, "manifest.json": 0o644, "model.safetensors": 0o644}


def test_save_onto_a_file_is_one_clear_error(tmp_path: Path) -> None:
    existing = tmp_path / "notes.md"
    existing.write_text("keep me")
    with pytest.raises(ArtifactError, match=r"notes\.md is a file: an artifact is a directory"):
        save(nn.Linear(2, 2), existing)
    assert existing.read_text() == "keep me"


def test_a_class_from_main_is_refused_with_the_way_out(tmp_path: Path) -> None:
    class Notebook(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    Notebook.__module__ = "__main__"  # as if defined in a notebook or a script
    with pytest.raises(ModelError, match=r"defined in __main__, .* move it to a module"):
        save(nn.Sequential(Notebook()), tmp_path / "nb")
    assert not (tmp_path / "nb").exists()


def test_a_builder_from_main_is_saved_by_description(tmp_path: Path) -> None:
    net = mark_builder(nn.Sequential(nn.Linear(3, 2)), "__main__:make", {})
    directory = save(net, tmp_path / "m")
    assert read_manifest(directory)["builder"] is None
    assert load(directory)[0].out_features == 2


def test_a_model_holding_nan_is_not_saved(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"'0.weight' holds NaN values"):
        save(net, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()


def test_a_non_persistent_buffer_is_stored_and_restored(tmp_path: Path) -> None:
    """A rotary embedding's inv_freq is in no state dict; a described model keeps its value."""
    from safetensors.torch import load_file

    from tests.artifact._user_models import Rotary

    net = nn.Sequential(nn.Linear(4, 4), Rotary(4))
    x = torch.randn(2, 4)
    expected = net(x)
    assert net[1].scale_cache  # filled by the forward; stored empty
    directory = save(net, tmp_path / "rotary")
    assert "1.inv_freq" in load_file(str(directory / "model.safetensors"))
    loaded = load(directory, trust=[Rotary])
    assert "inv_freq" in loaded[1]._non_persistent_buffers_set
    assert torch.equal(loaded[1].inv_freq, net[1].inv_freq)
    assert loaded[1].scale_cache == {}
    assert torch.equal(loaded(x), expected)


def test_load_gives_modules_the_version_their_state_dict_would_carry(tmp_path: Path) -> None:
    """torchvision's MNASNet rebuilds its stem when `version` is missing (an old checkpoint)."""
    from tests.artifact._user_models import Versioned

    directory = save(nn.Sequential(Versioned()), tmp_path / "versioned")
    assert load(directory, trust=[Versioned])[0].seen_version == 2
    # A manifest cannot choose the version: it comes from the class, not an attribute.
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["edits"][0]["module"]["children"]["0"]["attrs"]["_version"] = 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert load(directory, trust=[Versioned])[0].seen_version == 2


def test_a_partial_norm_layer_round_trips(tmp_path: Path) -> None:
    import functools

    from tests.artifact._user_models import Scaled

    net = nn.Sequential(Scaled(2))
    net[0].norm_layer = functools.partial(nn.LayerNorm, eps=1e-6)
    loaded = load(save(net, tmp_path / "partial"), trust=[Scaled])
    made = loaded[0].norm_layer(8)
    assert type(made) is nn.LayerNorm and made.eps == 1e-6


def test_a_hugging_face_model_round_trips_sharing_one_config(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    net = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 6))
    directory = save(net, tmp_path / "llama")
    with pytest.raises(ArtifactError, match=r"trust=\[LlamaForCausalLM\]"):
        load(directory)
    loaded = load(directory, trust=[transformers.LlamaForCausalLM])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, net(ids).logits)
    assert loaded.model.layers[0].self_attn.config is loaded.config
    assert loaded.config._attn_implementation == net.config._attn_implementation
    assert loaded.generation_config == net.generation_config
