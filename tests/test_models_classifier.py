from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lumbarssl.models import DeepSetsDiscPool, DiscClassifier, TrainingMode, resnet18_encoder

_FROZEN_IN_FINETUNE = tuple(
    f"encoder.{name}." for name in ("conv1", "bn1", "layer1", "layer2", "layer3")
)


def _classifier(mode: TrainingMode = "finetune", *, deep_sets: bool = False) -> DiscClassifier:
    torch.manual_seed(0)
    pool = DeepSetsDiscPool(512, hidden_dim=8) if deep_sets else None
    return DiscClassifier(resnet18_encoder(1), pool=pool, mode=mode)


def _expected_trainable(name: str, mode: TrainingMode) -> bool:
    if mode == "scratch":
        return True
    if mode == "linear_probe":
        return not name.startswith("encoder.")
    return not name.startswith(_FROZEN_IN_FINETUNE)


def _bn_stats(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: buf.clone()
        for name, buf in model.named_buffers()
        if name.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@pytest.mark.parametrize("mode", ["scratch", "linear_probe", "finetune"])
def test_requires_grad_and_groups_follow_the_mode(mode: TrainingMode) -> None:
    model = _classifier(mode, deep_sets=True)
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if _expected_trainable(n, mode)}

    groups = model.param_groups(backbone_lr=1e-5, head_lr=1e-3)
    by_id = {id(p): n for n, p in named.items()}
    placed = {str(g["name"]): {by_id[id(p)] for p in g["params"]} for g in groups}  # type: ignore[attr-defined]
    lrs = {str(g["name"]): g["lr"] for g in groups}
    head_names = {n for n in named if n.startswith(("head.", "pool."))}
    assert placed["head"] == head_names
    assert lrs["head"] == 1e-3
    if mode == "linear_probe":
        assert set(placed) == {"head"}
    else:
        expected_backbone = {n for n in trainable if n.startswith("encoder.")}
        assert placed["backbone"] == expected_backbone
        assert lrs["backbone"] == 1e-5
    if mode == "finetune":
        assert all(n.startswith("encoder.layer4.") for n in placed["backbone"])
    # Every trainable parameter lands in exactly one group.
    assert sorted(n for names in placed.values() for n in names) == sorted(trainable)


def test_param_groups_default_to_the_paper_rates() -> None:
    groups = _classifier("finetune").param_groups()
    assert {g["name"]: g["lr"] for g in groups} == {"backbone": 5e-5, "head": 5e-4}


def test_param_groups_reject_negative_rates() -> None:
    with pytest.raises(ValueError, match="head_lr must be >= 0, got -1"):
        _classifier().param_groups(head_lr=-1)


@pytest.mark.parametrize("mode", ["linear_probe", "finetune"])
def test_frozen_batchnorm_statistics_do_not_move_in_train_mode(mode: TrainingMode) -> None:
    model = _classifier(mode)
    model.train()
    before = _bn_stats(model)
    model(torch.randn(4, 1, 32, 32) * 3 + 1)
    after = _bn_stats(model)
    for name, value in before.items():
        frozen = not _expected_trainable(name, mode)
        if frozen:
            assert torch.equal(after[name], value), name
        elif name.endswith("num_batches_tracked"):
            assert int(after[name]) == int(value) + 1, name
    if mode == "finetune":
        assert not torch.equal(
            after["encoder.layer4.0.bn1.running_mean"], before["encoder.layer4.0.bn1.running_mean"]
        )


def test_train_keeps_frozen_parts_in_eval_mode() -> None:
    model = _classifier("finetune")
    model.train()
    assert model.training
    assert not model.encoder.get_submodule("layer3").training
    assert not model.encoder.get_submodule("bn1").training
    assert model.encoder.get_submodule("layer4").training
    model.eval()
    assert not model.encoder.get_submodule("layer4").training
    model.set_mode("scratch")
    model.train()
    assert all(m.training for m in model.modules())


def test_set_mode_resets_flags() -> None:
    model = _classifier("linear_probe")
    model.set_mode("finetune")
    assert model.mode == "finetune"
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == {
        n for n in named if _expected_trainable(n, "finetune")
    }


def test_optimizer_step_moves_only_trainable_parameters() -> None:
    model = _classifier("finetune")
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.param_groups(backbone_lr=0.1, head_lr=0.1))
    loss = nn.functional.cross_entropy(model(torch.randn(3, 1, 32, 32)), torch.tensor([0, 1, 2]))
    torch.autograd.backward(loss)
    optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(param, before[name])
        if not _expected_trainable(name, "finetune"):
            assert not changed, name
    head = model.head
    assert isinstance(head, nn.Linear)
    assert not torch.equal(head.weight, before["head.weight"])


def test_forward_shapes_for_single_and_multi_slice_input() -> None:
    model = _classifier("scratch").eval()
    x = torch.randn(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(model(x.unsqueeze(1)), logits)
    assert model.forward_features(x).shape == (2, 512)
    x5 = torch.randn(2, 3, 1, 32, 32)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert model(x5, mask).shape == (2, 3)


def test_masked_slices_are_ignored_and_not_encoded() -> None:
    model = _classifier("scratch").eval()
    x5 = torch.randn(2, 3, 1, 32, 32)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        got = model(x5, mask)
        for b in range(2):
            features = model.encoder(x5[b, mask[b]]).mean(dim=0, keepdim=True)
            torch.testing.assert_close(got[b : b + 1], model.head(features))

    # In train mode padded slices must not reach the (trainable) BatchNorm statistics.
    model.train()
    garbage = torch.where(mask[:, :, None, None, None], x5, torch.full_like(x5, 1e4))
    model(x5, mask)
    reference = _bn_stats(model)
    model.load_state_dict(_classifier("scratch").state_dict())
    model(garbage, mask)
    after = _bn_stats(model)
    assert all(torch.equal(after[k], reference[k]) for k in reference)


def test_forward_validates_shapes() -> None:
    model = _classifier("scratch")
    with pytest.raises(ValueError, match=r"got \(1, 32, 32\)"):
        model(torch.randn(1, 32, 32))
    with pytest.raises(ValueError, match="mask is only used with x of shape"):
        model(torch.randn(2, 1, 32, 32), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask of shape \(B, S\) = \(2, 3\)"):
        model(torch.randn(2, 3, 1, 32, 32), torch.ones(2, 2, dtype=torch.bool))


def test_constructor_validates() -> None:
    encoder = resnet18_encoder(1)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        DiscClassifier(encoder, 1)
    with pytest.raises(ValueError, match="mode must be one of"):
        DiscClassifier(encoder, mode="frozen")  # type: ignore[arg-type]


def test_finetune_needs_resnet_children_but_other_modes_accept_any_encoder() -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    with pytest.raises(ValueError, match=r"has no \['conv1', 'bn1', 'layer1'"):
        DiscClassifier(encoder, feature_dim=8, mode="finetune")
    probe = DiscClassifier(encoder, feature_dim=8, mode="linear_probe")
    assert probe(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    wrong = DiscClassifier(encoder, feature_dim=5, mode="scratch")
    with pytest.raises(ValueError, match=r"encoder returned shape \(2, 8\)"):
        wrong(torch.randn(2, 1, 4, 4))
