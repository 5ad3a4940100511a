import json

import numpy as np
import pytest
import torch

from leaf_fer.train.losses import ambiguous_positive_mask, category_level_loss, contrastive_loss, ranking_loss
from leaf_fer.train.model import GatedExperts, InferenceModel, LeafNet, ModelConfig
from leaf_fer.train.weights import WeightsError, WeightsMetadata, load_weights, metadata_path, save_weights


def test_levels_switch_off_to_identity():
    full = LeafNet(ModelConfig())
    assert isinstance(full.semantic, GatedExperts) and isinstance(full.instance, GatedExperts)
    plain = LeafNet(ModelConfig(semantic_level=False, instance_level=False))
    assert isinstance(plain.semantic, torch.nn.Identity) and isinstance(plain.instance, torch.nn.Identity)
    out = full.eval().forward_all(torch.randn(3, 1, 48, 48))
    assert out.logits.shape == (3, 8)
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(3))


def test_gated_experts_mix_every_expert():
    torch.manual_seed(0)
    block = GatedExperts(dim=16, hidden=8, num_experts=3)
    x = torch.randn(5, 16)
    weights = torch.softmax(block.gate(x), dim=-1)
    expected = sum(weights[:, i:i + 1] * block.experts[i](x) for i in range(3))
    torch.testing.assert_close(block(x), expected)
    assert (weights > 0).all()


def test_inference_model_outputs_probabilities():
    net = LeafNet(ModelConfig()).eval()
    probs = InferenceModel(net)(torch.rand(4, 1, 48, 48) * 255)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(4))


def test_positive_set_is_smallest_topk_reaching_090():
    probs = torch.tensor([
        [0.95, 0.03, 0.02, 0.0],   # top-1 reaches 0.9
        [0.50, 0.45, 0.03, 0.02],  # top-2 reaches 0.95
        [0.40, 0.30, 0.15, 0.15],  # top-3 only 0.85: capped at 3
    ])
    mask = ambiguous_positive_mask(probs)
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False], [True, True, True, False]]
    agreement_scaled = ambiguous_positive_mask(probs, cumulative=0.9 * 0.77)
    assert agreement_scaled.tolist() == [[True, False, False, False], [True, True, False, False], [True, True, False, False]]


def test_ranking_loss_prefers_positives_above_negatives():
    positive = torch.tensor([[True, True, False, False]])
    good = ranking_loss(torch.tensor([[3.0, 2.5, -2.0, -1.0]]), positive)
    bad = ranking_loss(torch.tensor([[-2.0, 2.5, 3.0, -1.0]]), positive)
    assert good.item() < 0.1 < 2.0 < bad.item()
    expected = torch.log1p((torch.exp(torch.tensor(-3.0)) + torch.exp(torch.tensor(-2.5))) *
                           (torch.exp(torch.tensor(-2.0)) + torch.exp(torch.tensor(-1.0))))
    torch.testing.assert_close(good[0], expected)


def test_category_level_loss_only_on_confident_rows():
    logits = torch.randn(4, 8, requires_grad=True)
    probs = torch.softmax(torch.randn(4, 8) * 3, -1)
    none = category_level_loss(logits, probs, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0
    some = category_level_loss(logits, probs, torch.tensor([True, False, True, False]))
    some.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[0].abs().sum() > 0
    rows = torch.tensor([True, False, True, False])
    plain = category_level_loss(logits, probs, rows, rescale=False)
    positive = ambiguous_positive_mask(probs[rows])
    margin = (torch.where(positive, probs[rows], 1.0).amin(-1) - torch.where(positive, 0.0, probs[rows]).amax(-1)).clamp(0, 1)
    torch.testing.assert_close(plain, (ranking_loss(logits[rows], positive) * margin).mean())
    undecided = category_level_loss(logits, torch.full((4, 8), 1 / 8), torch.ones(4, dtype=torch.bool), rescale=False)
    assert undecided.item() == 0.0


def test_strong_views_leave_batchnorm_running_statistics_alone():
    from leaf_fer.train.algorithms import Leaf

    torch.manual_seed(0)
    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    leaf = Leaf(net, 8, autocast=False)
    norm = net.backbone.stem[1]
    before = norm.running_mean.clone()
    leaf.forward_strong(torch.rand(4, 1, 48, 48))
    assert torch.equal(norm.running_mean, before) and norm.momentum == 0.1
    leaf.forward(torch.rand(4, 1, 48, 48))
    assert not torch.equal(norm.running_mean, before)


def test_bf16_autocast_only_when_asked_for():
    from leaf_fer.train.algorithms import Leaf

    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    faces = torch.rand(2, 1, 48, 48)
    assert Leaf(net, 8, autocast=False).forward(faces).logits.dtype == torch.float32
    assert Leaf(net, 8, autocast=True).forward(faces).logits.dtype == torch.bfloat16


def test_precision_auto_takes_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    from leaf_fer.train.config import TrainConfig
    from leaf_fer.train.trainer import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not native_bf16() and resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        TrainConfig(data="faces.npz", precision="fp16").validate()


def test_contrastive_loss_lower_for_matching_views():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert contrastive_loss(a, a).item() < contrastive_loss(a, noise).item()


def test_weights_roundtrip_and_refusals(tmp_path):
    net = LeafNet(ModelConfig(backbone="resnet-xs")).eval()
    path = save_weights(net, tmp_path / "m.safetensors", WeightsMetadata(model=net.config, metrics={"a": 1}))
    loaded, metadata = load_weights(path)
    x = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(loaded(x), net(x))
    assert metadata.metrics == {"a": 1} and metadata.model.backbone == "resnet-xs"

    meta = json.loads(metadata_path(path).read_text())
    meta["model"]["backbone"] = "resnet-m"
    meta["sha256"] = ""
    metadata_path(path).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="do not match the model|has shape"):
        load_weights(path)

    path2 = save_weights(net, tmp_path / "n.safetensors", WeightsMetadata(model=net.config))
    raw = bytearray(path2.read_bytes())
    raw[-10] ^= 0xFF
    path2.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum"):
        load_weights(path2)

    metadata_path(path2).unlink()
    with pytest.raises(WeightsError, match="metadata file missing"):
        load_weights(path2)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "absent.safetensors")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    metadata_path(junk).write_text(json.dumps(dict(json.loads(metadata_path(path).read_text()), sha256="")))
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_weights(junk)


def test_average_weights_weights_float_tensors_and_keeps_the_first_counters():
    from leaf_fer.train.weights import average_weights

    torch.manual_seed(0)
    nets = [LeafNet(ModelConfig(backbone="resnet-xs")) for _ in range(3)]
    for number, net in enumerate(nets):
        net.state_dict()["classifier.weight"].fill_(float(number))
        for buffer in net.buffers():
            if not buffer.is_floating_point():
                buffer.fill_(number + 10)
    uniform = average_weights(nets).state_dict()
    assert torch.allclose(uniform["classifier.weight"], torch.full_like(uniform["classifier.weight"], 1.0))
    weighted = average_weights(nets[:2], [0.25, 0.75]).state_dict()
    assert torch.allclose(weighted["classifier.weight"], torch.full_like(weighted["classifier.weight"], 0.75))
    counters = [name for name, tensor in uniform.items() if not tensor.is_floating_point()]
    assert counters and all(int(uniform[name].flatten()[0]) == 10 for name in counters)
    assert nets[1].state_dict()["classifier.weight"].eq(1.0).all(), "the inputs are left as they were"
    with pytest.raises(ValueError, match="2 networks and 1 shares"):
        average_weights(nets[:2], [1.0])
    with pytest.raises(ValueError, match="no networks"):
        average_weights([])


def test_shipped_default_weights_load():
    net, metadata = load_weights(None)
    assert metadata.model.classes[1] == "happiness"
    assert np.isfinite(net(torch.zeros(1, 1, 48, 48)).detach().numpy()).all()


def test_thresholds_follow_annotator_agreement():
    from leaf_fer.train.algorithms import FixMatch, Leaf
    from leaf_fer.train.config import TrainConfig
    from leaf_fer.train.trainer import confidence_ceiling

    soft = torch.tensor([[0.7, 0.3, 0.0], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]])
    assert confidence_ceiling(TrainConfig(data="x"), soft) == pytest.approx(0.7333, abs=1e-4)
    assert confidence_ceiling(TrainConfig(data="x", agreement_thresholds=False), soft) == 1.0
    assert confidence_ceiling(TrainConfig(data="x"), torch.eye(3)) == 1.0

    net = LeafNet(ModelConfig(backbone="resnet-xs", num_classes=3, classes=("a", "b", "c")))
    leaf = Leaf(net, 3, confidence_ceiling=0.75)
    assert torch.allclose(leaf.thresholds, torch.full((3,), 0.6))
    leaf.update_thresholds(torch.tensor([0.9, 0.7, 0.5, 0.95]), torch.tensor([True, True, True, False]),
                           torch.tensor([0, 0, 1, 2]))
    assert leaf.thresholds.tolist() == pytest.approx([0.8, 0.6, 0.6])

    fixmatch = FixMatch(net, 3, autocast=False, confidence_ceiling=0.75)
    confident_logits = torch.tensor([[2.0, 0.0, 0.0]])
    assert 0.75 * 0.95 < torch.softmax(confident_logits, -1).max() < 0.95
    net.eval()
    from leaf_fer.train.algorithms import Batch
    with torch.no_grad():
        original = net.classifier.weight.clone(), net.classifier.bias.clone()
        net.classifier.weight.zero_()
        net.classifier.bias.copy_(confident_logits[0])
        labeled = Batch(torch.rand(2, 1, 48, 48), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        scaled = fixmatch.train_step(labeled, Batch(torch.rand(4, 1, 48, 48)))
        published = FixMatch(net, 3, autocast=False).train_step(labeled, Batch(torch.rand(4, 1, 48, 48)))
        net.classifier.weight.copy_(original[0])
        net.classifier.bias.copy_(original[1])
    assert scaled.logs["mask"] == 1.0 and published.logs["mask"] == 0.0
    with pytest.raises(ValueError, match="confidence ceiling"):
        Leaf(net, 3, confidence_ceiling=0.0)


def test_distribution_alignment_pulls_pseudo_labels_toward_the_labeled_prior():
    from leaf_fer.train.algorithms import Leaf

    net = LeafNet(ModelConfig(backbone="resnet-xs", num_classes=3, classes=("a", "b", "c")))
    assert Leaf(net, 3).labeled_prior is None and "unlabeled_mean" not in Leaf(net, 3).running_state()
    leaf = Leaf(net, 3, labeled_prior=torch.tensor([2.0, 1.0, 1.0]))
    assert leaf.labeled_prior.tolist() == pytest.approx([0.5, 0.25, 0.25])
    skewed = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1]])
    for _ in range(5000):
        aligned = leaf.align(skewed)
    assert aligned.sum(dim=-1).tolist() == pytest.approx([1.0, 1.0])
    assert leaf.unlabeled_mean.tolist() == pytest.approx(skewed.mean(0).tolist(), abs=0.01)
    assert (aligned[:, 0] < skewed[:, 0]).all() and (aligned[:, 1] > skewed[:, 1]).all()
    resumed = Leaf(net, 3, labeled_prior=torch.tensor([2.0, 1.0, 1.0]))
    resumed.load_running_state(leaf.running_state())
    assert torch.allclose(resumed.unlabeled_mean, leaf.unlabeled_mean)


def test_ranking_below_threshold_trains_on_the_faces_the_thresholds_reject():
    from leaf_fer.train.algorithms import Batch, Leaf

    torch.manual_seed(0)
    net = LeafNet(ModelConfig(backbone="resnet-xs"))
    labeled = Batch(torch.rand(4, 1, 48, 48), torch.eye(8)[[0, 1, 2, 3]])
    unlabeled = Batch(torch.rand(6, 1, 48, 48))
    losses = {}
    for below in (False, True):
        torch.manual_seed(1)
        leaf = Leaf(net, 8, autocast=False, rank_below_threshold=below)
        leaf.thresholds.fill_(1.0)
        result = leaf.train_step(labeled, unlabeled)
        assert result.logs["mask"] == 0.0
        losses[below] = result.logs["loss_u"]
    assert losses[False] == 0.0 and losses[True] > 0.0
