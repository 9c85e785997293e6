"""Nested checkpoints: the state dict is found (or chosen with --key) inside Lightning-style dicts and whole modules."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import SEED
from helpers import check_converted, convert, torch_load, torch_save
from torch import nn

import torch2mlx
import torch2mlx.stream

FORMATS = ("zip", "legacy")


@dataclass
class HParams:
    """A class of the training code: torch2mlx must keep it inert and never import this module."""

    lr: float = 0.1
    name: str = "run"


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.block = nn.Sequential(nn.Conv1d(6, 6, 3, padding=1), nn.BatchNorm1d(6), nn.GELU())
        self.norm = nn.LayerNorm(6, bias=False)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("positions", torch.arange(6.0))  # persistent buffer
        self.register_buffer("cache", torch.zeros(4), persistent=False)  # not in the state dict


def _model() -> nn.Module:
    torch.manual_seed(SEED)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    m(torch.randn(2, 3, 3, 3))  # BatchNorm running stats become non-trivial
    return m.eval()


def _optimizer_state(model: nn.Module) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 3, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def _notes(src, **kw) -> str:
    return "\n".join(torch2mlx.stream.open(src, **kw).notes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_checkpoint_with_strip_prefix(tmp_path, out, fmt):
    model = _model()
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "optimizer_states": [_optimizer_state(model)],
        "lr_schedulers": [{"last_epoch": 3}],
        "callbacks": {"ModelCheckpoint{'monitor': 'val'}": {"best_model_score": torch.tensor(0.5)}},
        "hyper_parameters": {"hparams": HParams()},
    }
    src = torch_save(ckpt, tmp_path / f"run_{fmt}.ckpt", fmt)
    assert "'state_dict'" in _notes(src)
    convert(src, out, strip_prefix=["model."])
    sd = torch_load(src)["state_dict"]
    check_converted(out, sd, names={k[len("model.") :]: k for k in sd})


@pytest.mark.parametrize(
    "layout,key",
    [
        ("model", "model"),
        ("model_state", "model_state"),
        ("most_tensors", "net_g"),
        ("imagenet_example", "state_dict"),
        ("stray_top_level_tensor", "net_g"),
    ],
)
def test_state_dict_found_automatically(tmp_path, out, layout, key):
    model = _model()
    sd = model.state_dict()
    small = {"bias": torch.zeros(3)}
    ckpt = {
        "model": {"model": sd, "optimizer": _optimizer_state(model), "epoch": 2},
        "model_state": {"model_state": sd, "optimizer_state": _optimizer_state(model), "scheduler_state": {"step": 4}},
        "most_tensors": {"iters": 100, "disc": small, "net_g": sd, "cfg": HParams()},
        # what pytorch/examples' ImageNet script saves: best_acc1 is a tensor next to the state dict
        "imagenet_example": {
            "epoch": 90,
            "arch": "resnet18",
            "state_dict": sd,
            "best_acc1": torch.tensor(71.5),
            "optimizer": _optimizer_state(model),
            "scheduler": {"last_epoch": 89},
        },
        "stray_top_level_tensor": {"iters": torch.tensor(100), "disc": small, "net_g": sd},
    }[layout]
    src = torch_save(ckpt, tmp_path / f"{layout}.pt")
    assert repr(key) in _notes(src)
    convert(src, out)
    check_converted(out, torch_load(src)[key])


def test_flat_state_dict_with_a_nested_group_stays_whole(tmp_path, out):
    g = torch.Generator().manual_seed(SEED)
    sd = {"w": torch.randn(2, generator=g), "b": torch.randn(2, generator=g), "extra": {"scale": torch.ones(1)}}
    src = torch_save(sd, tmp_path / "flat.pt")
    convert(src, out)
    loaded = torch_load(src)
    check_converted(out, {"w": loaded["w"], "b": loaded["b"], "extra.scale": loaded["extra"]["scale"]})


@pytest.mark.parametrize("key", ["discriminator", "nets.generator"])
def test_key_chooses_the_weights(tmp_path, out, key):
    torch.manual_seed(SEED)
    gen, disc = nn.Linear(3, 5).state_dict(), nn.Conv2d(2, 3, 3).state_dict()
    ckpt = {"generator": gen, "discriminator": disc, "nets": {"generator": gen}}
    src = torch_save(ckpt, tmp_path / "gan.pt")
    convert(src, out, key=key)
    node = torch_load(src)
    for part in key.split("."):
        node = node[part]
    check_converted(out, node)


def test_key_that_names_nothing_is_an_error(tmp_path, out):
    src = torch_save({"state_dict": nn.Linear(2, 2).state_dict(), "epoch": 1}, tmp_path / "a.ckpt")
    with pytest.raises(torch2mlx.Torch2MLXError, match=r"a\.ckpt.*'ema'.*state_dict"):
        convert(src, out, key="ema")
    assert not out.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_pickled_module(tmp_path, out, fmt):
    src = torch_save(_model(), tmp_path / f"model_{fmt}.pt", fmt)
    assert "nn.Module" in _notes(src)
    convert(src, out)
    check_converted(out, torch_load(src).state_dict())


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_module_with_tied_weights_and_non_persistent_buffer(tmp_path, out, fmt):
    torch.manual_seed(SEED)
    src = torch_save(TiedLM(), tmp_path / f"lm_{fmt}.pt", fmt)
    loaded = torch_load(src)
    assert loaded.head.weight is loaded.embed.weight
    convert(src, out)
    check_converted(out, loaded.state_dict())


def test_module_under_a_known_key(tmp_path, out):
    src = torch_save({"model": _model(), "epoch": 7, "hparams": HParams()}, tmp_path / "wrapped.pt")
    convert(src, out)
    check_converted(out, torch_load(src)["model"].state_dict())


def _layers(n: int = 5) -> list[dict]:
    torch.manual_seed(SEED)
    return [nn.Linear(3 + i, 2 + i).state_dict() for i in range(n)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_list_of_layer_state_dicts_converts_every_tensor(tmp_path, out, fmt):
    layers = _layers()
    src = torch_save(layers, tmp_path / "layers.pt", fmt)
    flat = {f"{i}.{k}": v for i, sd in enumerate(torch_load(src)) for k, v in sd.items()}
    assert len(flat) == 10
    convert(src, out, model=False)
    check_converted(out, flat)
    assert "a list of 5 state dicts" in _notes(src)


@pytest.mark.parametrize("fmt", FORMATS)
def test_key_empty_means_the_whole_object(tmp_path, out, fmt):
    obj = {"enc": _layers(2), "head": {"w": torch.randn(3, 2)}, "step": 4}
    src = torch_save(obj, tmp_path / "m.pt", fmt)
    loaded = torch_load(src)
    flat = {f"enc.{i}.{k}": v for i, sd in enumerate(loaded["enc"]) for k, v in sd.items()} | {
        "head.w": loaded["head"]["w"]
    }
    convert(src, out, model=False, key="")
    check_converted(out, flat)
    assert "the whole object" in _notes(src, key="")
    # the CLI takes --key '' as well
    from helpers import run_main

    proc = run_main("stream", src, tmp_path / "cli", "--key", "", "--no-model")
    assert proc.returncode == 0, proc.stderr
    check_converted(tmp_path / "cli", flat)


def _nested_ckpt(model: nn.Module) -> dict:
    return {
        "model": {"model_args": {"dim": 4, "n_layers": 2}, "state_dict": model.state_dict()},
        "optimizer": _optimizer_state(model),
        "epoch": 7,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_nested_state_dict_is_descended_to_and_recorded(tmp_path, out, fmt):
    import json

    from helpers import MANIFEST, run_cli

    src = torch_save(_nested_ckpt(_model()), tmp_path / "nested.pt", fmt)
    want = torch_load(src)["model"]["state_dict"]
    res = convert(src, out, model=False)
    check_converted(out, want)  # names as the model's: no "state_dict." in front
    assert "key 'model.state_dict'" in res.report()
    man = json.loads((out / MANIFEST).read_text())
    assert man["source_key"] == "model.state_dict" and man["options"]["key"] is None
    assert run_cli("verify", src, out).returncode == 0


def test_verify_and_resume_read_the_recorded_key_path(tmp_path, out):
    """The recorded path wins over a fresh choice: verify and --resume read what the conversion read."""
    import json

    from helpers import MANIFEST, run_cli

    model = _model()
    torch.manual_seed(1)
    ema = nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3))  # other shapes: a fresh choice is another plan
    ckpt = {"model": {"model_args": {}, "state_dict": model.state_dict()}, "ema": {"state_dict": ema.state_dict()}}
    src = torch_save(ckpt, tmp_path / "two.pt")
    convert(src, out, model=False, key="ema.state_dict")
    man = json.loads((out / MANIFEST).read_text())
    assert man["source_key"] == "ema.state_dict"
    man["options"]["key"] = None  # as if the run had chosen ema.state_dict by itself
    (out / MANIFEST).write_text(json.dumps(man))
    assert run_cli("verify", src, out).returncode == 0  # would fail against model.state_dict
    # --resume without --key reads the recorded path too (a fresh choice would say "different plan")
    res = convert(src, out, model=False, resume=True)
    check_converted(out, torch_load(src)["ema"]["state_dict"])
    assert "reusing 1 of 1" in "\n".join(res.plan.notes)
