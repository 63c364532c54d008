from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import lumbarssl
from lumbarssl.models import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    ContrastiveModel,
    DeepSetsDiscPool,
    DiscClassifier,
    Localizer2p5D,
    ProjectionHead,
    available_models,
    build_model,
    load_checkpoint,
    model_config,
    read_checkpoint,
    register_model,
    resnet18_encoder,
    save_checkpoint,
)


class _Payload:
    """Pickles into a call that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


_CASES: dict[str, Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]] = {
    "encoder": lambda: (resnet18_encoder(2), (torch.randn(2, 2, 32, 32),)),
    "contrastive": lambda: (ContrastiveModel(), (torch.randn(2, 1, 32, 32),)),
    "classifier": lambda: (
        DiscClassifier(
            resnet18_encoder(1), 4, DeepSetsDiscPool(512, hidden_dim=16), mode="linear_probe"
        ),
        (torch.randn(2, 2, 1, 32, 32), torch.tensor([[True, False], [True, True]])),
    ),
    "localizer": lambda: (
        Localizer2p5D(in_chans=3, level_dim=8, hidden=16),
        (torch.randn(2, 3, 32, 32), torch.tensor([0, 3])),
    ),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_round_trip_rebuilds_the_same_model(case: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, inputs = _CASES[case]()
    model.train()
    model(*inputs)  # move BatchNorm statistics away from their initial values
    model.eval()
    path = save_checkpoint(
        tmp_path / "sub" / "model.pt",
        model,
        metadata={"data_source": "synthetic", "seed": 7, "profile": "smoke"},
    )
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temporary file left
    loaded, metadata = load_checkpoint(path)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert model_config(loaded) == model_config(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)
    assert metadata == {
        "data_source": "synthetic",
        "seed": 7,
        "profile": "smoke",
        "lumbarssl_version": lumbarssl.__version__,
        "torch_version": torch.__version__,
    }


def test_classifier_mode_survives_the_round_trip(tmp_path: Path) -> None:
    model = DiscClassifier(resnet18_encoder(1), mode="finetune")
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "c.pt", model))
    assert isinstance(loaded, DiscClassifier)
    assert loaded.mode == "finetune"
    assert not any(p.requires_grad for p in loaded.encoder.get_submodule("layer3").parameters())
    assert all(p.requires_grad for p in loaded.encoder.get_submodule("layer4").parameters())


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    good = ProjectionHead(8, 8, 4)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "config": json.dumps(model_config(good)),
            "metadata": "{}",
            "state_dict": {**good.state_dict(), "net.0.weight": _Payload(marker)},
        },
        path,
    )
    # The payload is real: an unrestricted unpickler runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match=r"refused to load.*io\.open"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(path)
    assert not marker.exists()


def test_wrong_architecture_names_the_mismatched_keys(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "head.pt", ProjectionHead(8, 8, 4))
    contents = read_checkpoint(path)
    # Tamper: the config now asks for a narrower hidden layer, one key is gone, one is foreign.
    contents.config["hidden_dim"] = 6
    contents.state_dict["extra.weight"] = torch.zeros(1)
    del contents.state_dict["net.3.bias"]
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "config": json.dumps(contents.config),
            "metadata": json.dumps(contents.metadata),
            "state_dict": contents.state_dict,
        },
        path,
    )
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "architecture 'projection_head'" in message
    assert "missing keys: net.3.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "net.0.weight (checkpoint (8, 8), model (6, 8))" in message


def test_save_refuses_a_config_that_does_not_describe_the_model(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    with pytest.raises(CheckpointError, match=r"conv1.weight \(checkpoint \(64, 1, 7, 7\)"):
        save_checkpoint(path, resnet18_encoder(1), config=model_config(resnet18_encoder(3)))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_save_validates_metadata(tmp_path: Path) -> None:
    model = ProjectionHead(4, 4, 2)
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_checkpoint(tmp_path / "a.pt", model, metadata={"when": object()})
    with pytest.raises(ValueError, match=r"data_source'\] must be one of \('real', 'synthetic'\)"):
        save_checkpoint(tmp_path / "a.pt", model, metadata={"data_source": "imaginary"})
    with pytest.raises(ValueError, match="cannot describe a Linear"):
        save_checkpoint(tmp_path / "a.pt", nn.Linear(2, 2))


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    save_checkpoint(path, ProjectionHead(4, 4, 2), metadata={"seed": 1})
    save_checkpoint(path, ProjectionHead(4, 4, 2), metadata={"seed": 2})
    assert read_checkpoint(path).metadata["seed"] == 2


def test_foreign_files_are_rejected(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(ProjectionHead(4, 4, 2).state_dict(), plain)
    with pytest.raises(CheckpointError, match="not a lumbarssl model checkpoint"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        load_checkpoint(garbage)
    future = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 99}, future)
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_checkpoint(future)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_registry_builds_and_reports_errors() -> None:
    assert {"resnet18_encoder", "disc_classifier", "localizer_2p5d"} <= set(available_models())
    head = build_model({"architecture": "projection_head", "in_dim": 4, "out_dim": 2})
    assert isinstance(head, ProjectionHead)
    assert head.out_dim == 2
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        build_model({"architecture": "nope"})
    with pytest.raises(ValueError, match="needs a string 'architecture' key"):
        build_model({"in_dim": 4})
    with pytest.raises(ValueError, match="does not fit architecture 'projection_head'"):
        build_model({"architecture": "projection_head", "width": 4})
    with pytest.raises(ValueError, match="already registered"):
        register_model("projection_head")(ProjectionHead)
