"""ConditionClassifier: routing by sequence and condition, freezing, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lumbarssl.layout import CONDITION_SEQUENCE, CONDITIONS, SERIES_DESCRIPTIONS
from lumbarssl.models import (
    FINETUNE_FROZEN_MODULES,
    ConditionClassifier,
    DiscClassifier,
    load_checkpoint,
    resnet18_encoder,
    save_checkpoint,
)

FEATURES = 6


class RecordingEncoder(nn.Module):
    """A linear encoder on the mean of the image that records the rows it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, FEATURES)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        out: Tensor = self.linear(x.mean(dim=(1, 2, 3)).unsqueeze(1))
        return out


class RecordingHead(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.seen: list[Tensor] = []

    def forward(self, features: Tensor) -> Tensor:
        self.seen.append(features.detach().clone())
        out: Tensor = self.head(features)
        return out


def _batch(n: int = 23, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=generator)
    condition = torch.randint(0, len(CONDITIONS), (n,), generator=generator)
    condition[: len(CONDITIONS)] = torch.arange(len(CONDITIONS))  # every condition present
    return x, condition


def _stub_model(shared: bool, head_kind: str = "softmax") -> ConditionClassifier:
    encoders: nn.Module | dict[str, nn.Module] = (
        RecordingEncoder() if shared else {s: RecordingEncoder() for s in SERIES_DESCRIPTIONS}
    )
    model = ConditionClassifier(
        encoders,
        mode="scratch",
        feature_dim=FEATURES,
        head_kind=head_kind,  # type: ignore[arg-type]
    )
    model.heads = nn.ModuleList(RecordingHead(h) for h in model.heads)
    return model.eval()


def _resnet_encoders(shared: bool) -> nn.Module | dict[str, nn.Module]:
    """One 1-channel ResNet-18, or one per sequence."""
    if shared:
        return resnet18_encoder(in_chans=1)
    return {s: resnet18_encoder(in_chans=1) for s in SERIES_DESCRIPTIONS}


def _seen(module: nn.Module) -> Tensor:
    seen: list[Tensor] = getattr(module, "seen")  # noqa: B009
    return torch.cat(seen) if seen else torch.empty(0, 1, 8, 8)


def _as_set(rows: Tensor) -> set[tuple[float, ...]]:
    return {tuple(r.flatten().tolist()) for r in rows}


@pytest.mark.parametrize("shared", [True, False])
def test_each_encoder_and_head_sees_exactly_its_rows(shared: bool) -> None:
    model = _stub_model(shared)
    x, condition = _batch()
    model(x, condition)
    for e, encoder in enumerate(model.encoders):
        sequence = None if shared else SERIES_DESCRIPTIONS[e]
        wanted = [
            i
            for i, k in enumerate(condition.tolist())
            if sequence is None or CONDITION_SEQUENCE[CONDITIONS[k]] == sequence
        ]
        assert len(encoder.seen) == 1  # type: ignore[arg-type]  # one call per batch
        assert _as_set(_seen(encoder)) == _as_set(x[wanted])
        assert len(_seen(encoder)) == len(wanted)
    for k, head in enumerate(model.heads):
        assert len(_seen(head)) == int((condition == k).sum())


@pytest.mark.parametrize("head_kind", ["softmax", "corn", "cumulative"])
@pytest.mark.parametrize("shared", [True, False])
def test_outputs_equal_a_per_sample_loop(shared: bool, head_kind: str) -> None:
    model = _stub_model(shared, head_kind)
    x, condition = _batch()
    out = model(x, condition)
    width = 3 if head_kind == "softmax" else 2
    assert out.shape == (len(x), width)
    for i, k in enumerate(condition.tolist()):
        index = 0 if shared else SERIES_DESCRIPTIONS.index(CONDITION_SEQUENCE[CONDITIONS[k]])
        expected = model.heads[k](model.encoders[index](x[i : i + 1]))
        torch.testing.assert_close(out[i : i + 1], expected)


def test_gradients_reach_only_the_used_encoders_and_heads() -> None:
    model = _stub_model(shared=False)
    x, condition = _batch()
    keep = condition == 0  # spinal canal only: the Sagittal T2/STIR encoder and head 0
    model(x[keep], condition[keep]).sum().backward()
    for e, encoder in enumerate(model.encoders):
        used = SERIES_DESCRIPTIONS[e] == CONDITION_SEQUENCE[CONDITIONS[0]]
        assert (encoder.linear.weight.grad is not None) == used  # type: ignore[union-attr]
    for k, head in enumerate(model.heads):
        assert (next(head.parameters()).grad is not None) == (k == 0)


def test_empty_batch_and_bad_conditions() -> None:
    model = _stub_model(shared=True)
    assert model(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.int64)).shape == (0, 3)
    x, condition = _batch(6)
    with pytest.raises(ValueError, match="condition must index CONDITIONS"):
        model(x, torch.full((6,), 5))
    with pytest.raises(ValueError, match="expected condition int64"):
        model(x, condition.int())
    with pytest.raises(ValueError, match="exactly the keys"):
        ConditionClassifier({"Sagittal T1": RecordingEncoder()}, feature_dim=FEATURES)


@pytest.mark.parametrize("mode", ["scratch", "linear_probe", "finetune"])
@pytest.mark.parametrize("shared", [True, False])
def test_freezing_matches_disc_classifier(mode: str, shared: bool) -> None:
    torch.manual_seed(0)
    encoders = _resnet_encoders(shared)
    model = ConditionClassifier(encoders, mode=mode).train()  # type: ignore[arg-type]
    reference = DiscClassifier(resnet18_encoder(in_chans=1), mode=mode).train()  # type: ignore[arg-type]
    want = {n: p.requires_grad for n, p in reference.encoder.named_parameters()}
    want_training = {n: m.training for n, m in reference.encoder.named_modules()}
    for encoder in model.encoders:
        assert {n: p.requires_grad for n, p in encoder.named_parameters()} == want
        assert {n: m.training for n, m in encoder.named_modules()} == want_training
    assert all(p.requires_grad for p in model.heads.parameters())
    if mode == "finetune":
        frozen = [n for n, p in model.encoders[0].named_parameters() if not p.requires_grad]
        assert {n.split(".")[0] for n in frozen} == set(FINETUNE_FROZEN_MODULES)
    groups = {g["name"]: g for g in model.param_groups(backbone_lr=1e-5, head_lr=1e-3)}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g["params"]]  # type: ignore[attr-defined]
    assert sorted(grouped) == sorted(trainable)
    assert ("backbone" in groups) == (mode != "linear_probe")


@pytest.mark.parametrize("shared", [True, False])
def test_checkpoint_round_trip_gives_identical_outputs(shared: bool, tmp_path: Path) -> None:
    torch.manual_seed(1)
    encoders = _resnet_encoders(shared)
    model = ConditionClassifier(encoders, mode="linear_probe", head_kind="cumulative").eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, metadata={"note": "test"})
    loaded, metadata = load_checkpoint(path)
    assert isinstance(loaded, ConditionClassifier)
    assert metadata["note"] == "test"
    assert loaded.sequences == model.sequences
    assert loaded.mode == "linear_probe"
    assert loaded.head_kind == "cumulative"
    x = torch.randn(7, 1, 32, 32)
    condition = torch.tensor([0, 1, 2, 3, 4, 2, 0])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x, condition), model(x, condition))
