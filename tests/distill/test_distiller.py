from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netchisel.core.context import Context
from netchisel.core.errors import ConfigError
from netchisel.core.masks import set_mask
from netchisel.core.task import Batch, Task, classification_task, language_model_task
from netchisel.core.train import TrainSettings, fit
from netchisel.distill import DistillConfig, distill_, soft_target_loss
from netchisel.pipeline.recipe import parse_recipe
from netchisel.zoo import data, models


@functools.cache
def _digits() -> dict[str, TensorDataset]:
    return data.digits(8)


def digits_task(n_train: int | None = None, batch_size: int = 64) -> Task:
    d = _digits()
    train = (
        d["train"] if n_train is None else TensorDataset(*(t[:n_train] for t in d["train"].tensors))
    )
    return classification_task({"train": train, "val": d["val"], "test": d["test"]}, batch_size)


def mlp(hidden: int, seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@functools.cache
def _teacher() -> nn.Module:
    # Trained once per session on the full 1257-image train split (2 s on one thread).
    task = digits_task()
    teacher = mlp(128, seed=0)
    fit(teacher, task, TrainSettings(steps=250, lr=3e-3), Context(task, quiet=True))
    return teacher.eval()


def teacher() -> nn.Module:
    return copy.deepcopy(_teacher())


def test_distillation_beats_training_alone_on_a_small_label_budget() -> None:
    # 50 labelled images, a 16-unit student, 150 steps each: measured 85.9 % alone vs 94.1 %
    # distilled (teacher 96.7 %).
    task = digits_task(n_train=50, batch_size=25)
    alone = mlp(16)
    fit(alone, task, TrainSettings(steps=150, lr=1e-2), Context(task, quiet=True))
    student = mlp(16)
    config = DistillConfig(steps=150, lr=1e-2, temperature=4.0, alpha=0.5)
    distill_(student, config, task, teacher())
    acc_teacher = task.evaluate(teacher(), "test")["accuracy"]
    acc_alone = task.evaluate(alone, "test")["accuracy"]
    acc_distilled = task.evaluate(student, "test")["accuracy"]
    assert acc_teacher >= 95.0
    assert acc_alone <= 89.0
    assert acc_distilled >= 92.5
    # it closes more than half of the gap to the teacher
    assert acc_distilled - acc_alone >= 0.5 * (acc_teacher - acc_alone)


def test_alpha_one_is_the_hard_loss_only() -> None:
    task = digits_task(n_train=64, batch_size=16)
    plain, student = mlp(16), mlp(16)
    fit(plain, task, TrainSettings(steps=8, lr=1e-2), Context(task, quiet=True))
    distill_(student, DistillConfig(steps=8, lr=1e-2, alpha=1.0), task, teacher())
    for a, b in zip(plain.parameters(), student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_alpha_zero_is_the_distillation_loss_only() -> None:
    task = digits_task(n_train=64, batch_size=16)
    t = teacher()
    plain, student = mlp(16), mlp(16)

    def soft_only(model: nn.Module, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            target = t(batch[0])
        return soft_target_loss(model(batch[0]), target, 3.0)

    fit(plain, task, TrainSettings(steps=8, lr=1e-2), Context(task, quiet=True), loss_fn=soft_only)
    distill_(student, DistillConfig(steps=8, lr=1e-2, alpha=0.0, temperature=3.0), task, t)
    for a, b in zip(plain.parameters(), student.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hint_adapters_train_and_are_not_kept() -> None:
    task = digits_task(n_train=64, batch_size=16)
    student = mlp(16)
    keys = list(student.state_dict())
    modules = [n for n, _ in student.named_modules()]
    ctx = Context(task, teacher(), quiet=True)
    config = DistillConfig(steps=5, hints=(("2", "2"),), attention=())
    from netchisel.stages import get_stage

    get_stage("distill")(student, config, ctx)
    assert list(student.state_dict()) == keys
    assert [n for n, _ in student.named_modules()] == modules
    # Linear(16 -> 128): 16 * 128 + 128
    assert ctx.records["adapter_params_not_kept"] == 2176
    assert ctx.records["steps"] == 5 and ctx.records["kind"] == "logits"


def test_pruned_weights_stay_pruned_through_distillation() -> None:
    task = digits_task(n_train=64, batch_size=16)
    student = mlp(16)
    keep = torch.rand(16, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    set_mask(student, "1.weight", keep)
    with torch.no_grad():
        student[1].weight.mul_(keep)
    distill_(student, DistillConfig(steps=10, lr=1e-2), task, teacher())
    assert int((student[1].weight[~keep] != 0).sum()) == 0
    assert int((student[1].weight[keep] == 0).sum()) == 0


def lm_task(vocab: int = 256, block: int = 8) -> Task:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (16, block + 1), generator=g)
    ds = TensorDataset(tokens[:, :-1], tokens[:, 1:])
    return language_model_task({"train": ds, "val": ds}, batch_size=4)


def tiny_gpt(vocab: int = 256, n_embd: int = 16, n_head: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return models.gpt(vocab_size=vocab, block_size=8, n_layer=1, n_head=n_head, n_embd=n_embd)


def test_mismatched_vocabulary_names_both_sizes_and_changes_nothing() -> None:
    student = tiny_gpt(vocab=128)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ConfigError, match=r"vocabulary \(256\) differs from the student's \(128\)"):
        distill_(student, DistillConfig(steps=2), lm_task(vocab=128), tiny_gpt(vocab=256))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_mismatched_output_shape_is_named() -> None:
    task = digits_task(n_train=64)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ConfigError, match=r"number of classes \(5\) differs .* \(10\)"):
        distill_(mlp(16), DistillConfig(steps=2), task, other)


def test_a_teacher_output_of_another_shape_is_one_line_naming_both() -> None:
    task = digits_task(n_train=64)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Unflatten(1, (2, 5)))
    with pytest.raises(ConfigError) as error:
        distill_(mlp(16), DistillConfig(steps=2), task, other)
    assert str(error.value) == (
        "distill: teacher output (2, 2, 5) does not match student output (2, 10): choose a "
        "teacher of the same task and output"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"temperature": 0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -2}, "temperature must be > 0, got -2.0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\], got -0.1"),
        ({"hints": [["a"]]}, r"expected \[student_layer, teacher_layer\]"),
    ],
)
def test_bad_config_names_the_value(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DistillConfig.from_dict(values)


def test_unknown_layer_and_missing_teacher_are_clear() -> None:
    task = digits_task(n_train=64)
    with pytest.raises(ConfigError, match=r"distill\.student: the model has no module 'fc9'"):
        distill_(mlp(16), DistillConfig(steps=2, hints=(("fc9", "1"),)), task, teacher())
    with pytest.raises(ConfigError, match="distill: no teacher"):
        distill_(mlp(16), DistillConfig(steps=2), task)
    with pytest.raises(ConfigError, match="distill: teacher 'mlp' is a recipe source"):
        distill_(mlp(16), DistillConfig(steps=2, teacher="mlp"), task)


def test_language_model_distillation_with_attention_transfer() -> None:
    task = lm_task()
    t = tiny_gpt(n_embd=32, n_head=4)
    student = tiny_gpt(n_embd=16, n_head=2)
    ctx = Context(task, t, quiet=True)
    config = DistillConfig(
        steps=30,
        lr=1e-2,
        alpha=0.0,
        temperature=1.0,
        attention=(("blocks.0.attn", "blocks.0.attn"),),
        hints=(("blocks.0", "blocks.0"),),
    )
    with torch.no_grad():
        x = task.example_inputs(4, split="train")[0]
        before = float(soft_target_loss(student(x), t(x), 1.0))
    from netchisel.stages import get_stage

    get_stage("distill")(student, config, ctx)
    with torch.no_grad():
        after = float(soft_target_loss(student(x), t(x), 1.0))
    assert ctx.records["kind"] == "lm"
    assert ctx.records["adapter_params_not_kept"] == 16 * 32 + 32
    assert after < 0.5 * before


def test_conv_attention_transfer_and_recipe_teacher_source() -> None:
    recipe = parse_recipe(
        {
            "model": {"zoo": "cnn", "pretrained": False, "kwargs": {"width": 4, "image_size": 8}},
            "task": {"zoo": "digits", "batch_size": 32},
            "stages": [
                {
                    "distill": {
                        "teacher": {
                            "zoo": "cnn",
                            "pretrained": False,
                            "kwargs": {"width": 8, "image_size": 8},
                        },
                        "steps": 3,
                        "attention": [["features.relu2", "features.relu2"]],
                        "hints": [["features.relu1", "features.relu1"]],
                    }
                }
            ],
        }
    )
    name, config = recipe.stages[0]
    assert name == "distill" and isinstance(config, DistillConfig)
    assert config.attention == (("features.relu2", "features.relu2"),)
    student = models.cnn(width=4, image_size=8)
    keys = list(student.state_dict())
    ctx = Context(data.task("digits", batch_size=32), quiet=True)
    from netchisel.pipeline.sources import stage_context
    from netchisel.stages import get_stage

    get_stage("distill")(student, config, stage_context(config, ctx))
    assert list(student.state_dict()) == keys
    assert ctx.records["adapter_params_not_kept"] == 4 * 8 + 8  # a 1x1 conv, 4 -> 8 channels
    assert ctx.records["teacher_params"] > ctx.records["student_params"]


def test_the_example_recipe_parses_as_it_is() -> None:
    from netchisel.pipeline.recipe import load_recipe

    recipe = load_recipe("examples/recipes/distill_digits_mlp.yaml")
    name, config = recipe.stages[0]
    assert name == "distill" and isinstance(config, DistillConfig)
    assert (config.teacher, config.temperature, config.alpha) == ("mlp", 8.0, 0.5)
    assert config.hints == (("fc1", "fc2"),)
    assert recipe.model.kwargs == {"hidden": [16]} and not recipe.model.pretrained


def test_a_hugging_face_causal_lm_distills_through_its_logits() -> None:
    from netchisel.distill import distill_
    from netchisel.zoo import data, llama

    teacher = llama(block_size=16, n_layer=1, n_embd=32, n_head=4, n_kv_head=2, intermediate=64)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.2 * torch.randn_like(p))
    task = data.task("text", block_size=16, batch_size=8)
    x = next(iter(task.loader("val")))[0]

    def kl() -> float:
        with torch.no_grad():
            t = teacher(x).logits.log_softmax(-1)
            s = student(x).logits.log_softmax(-1)
        return float((t.exp() * (t - s)).sum(-1).mean())

    before = kl()
    distill_(student, DistillConfig(steps=30, lr=3e-3, alpha=0.0), task, teacher=teacher)
    assert kl() < 0.5 * before  # the outputs (with .logits) were read as logits and matched
