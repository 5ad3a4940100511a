"""The LEAF network: a compact ResNet for 48x48 grayscale faces with gated-expert decoupling heads.

Self-contained (torch only) so that engines/ can rebuild the network from a config dict.

Semantic level: the pooled backbone feature goes through a :class:`GatedExperts` block.
Instance level: the L2-normalised embedding goes through another :class:`GatedExperts` block before the classifier.
Either level can be switched off (the block becomes the identity), which is how ablations are run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model_spec import BACKBONES, ModelConfig


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual shortcut (projection when shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CompactResNet(nn.Module):
    """ResNet for 48x48 inputs: a full-resolution stem, then one residual block per (width, stride) stage."""

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for width, stride in zip(widths, strides):
            layers.append(BasicBlock(in_ch, width, stride))
            in_ch = width
        self.stages = nn.Sequential(*layers)
        self.out_dim = in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class ResidualExpert(nn.Module):
    """``x + fc2(relu(fc1(x)))``: one view of the feature (expression-relevant or -agnostic)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class GatedExperts(nn.Module):
    """Decouple a feature into several experts and fuse them with a learnable dense softmax gate."""

    def __init__(self, dim: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(ResidualExpert(dim, hidden) for _ in range(num_experts))
        self.gate = nn.Linear(dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.gate(x), dim=-1)
        expert_outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        return (weights.unsqueeze(-1) * expert_outputs).sum(dim=1)


@dataclass
class LeafOutput:
    """Logits for classification and the normalised instance embedding for contrastive learning."""

    logits: torch.Tensor
    embedding: torch.Tensor


class LeafNet(nn.Module):
    """Backbone → semantic gated experts → embedding → L2-norm → instance gated experts → classifier."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        spec = BACKBONES[config.backbone]
        self.backbone = CompactResNet(tuple(spec["widths"]), tuple(spec["strides"]))
        dim = self.backbone.out_dim
        self.dropout = nn.Dropout(config.dropout)
        self.semantic = GatedExperts(dim, config.expert_hidden, config.num_experts) if config.semantic_level else nn.Identity()
        self.project = nn.Linear(dim, config.embed_dim)
        self.instance = (
            GatedExperts(config.embed_dim, config.expert_hidden, config.num_experts) if config.instance_level else nn.Identity()
        )
        self.classifier = nn.Linear(config.embed_dim, config.num_classes)

    def forward_all(self, x: torch.Tensor) -> LeafOutput:
        feature = self.semantic(self.dropout(self.backbone(x)))
        embedding = F.normalize(self.project(feature), dim=-1)
        logits = self.classifier(self.instance(embedding * self.config.embedding_scale))
        return LeafOutput(logits=logits, embedding=embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits


class InferenceModel(nn.Module):
    """Raw pixels in [0, 255], shape [N, 1, H, W] float → class probabilities [N, C]; what engines export."""

    def __init__(self, net: LeafNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(net.config.pixel_mean * 255.0))
        self.register_buffer("inv_std", torch.tensor(1.0 / (net.config.pixel_std * 255.0)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((pixels - self.mean) * self.inv_std), dim=-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
