"""Training methods, one ``train_step`` each over a shared loop (USB style): supervised, FixMatch, LEAF."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from leaf_fer.common import ConfigError

from .augment import strong_augment, weak_augment
from .config import LEAF_CONTRASTIVE_TEMPERATURE, LEAF_CONTRASTIVE_WEIGHT, LEAF_LABELED_WEIGHT, METHODS
from .losses import category_level_loss, contrastive_loss, soft_cross_entropy
from .model import LeafNet


@dataclass
class Batch:
    """Raw [0,1] images [B,1,H,W]; ``targets`` are soft distributions (labeled batches only); ``main`` [B] marks the
    labeled faces of the run's main data (``--data``; None: every face is), ``anchored`` [B] the anchor faces, whose
    targets are the initial network's predictions (None: none is)."""

    images: torch.Tensor
    targets: torch.Tensor | None = None
    main: torch.Tensor | None = None
    anchored: torch.Tensor | None = None


def scalars(**values: torch.Tensor) -> dict[str, float]:
    """Detached Python floats for the step log."""
    return {name: float(value.detach()) for name, value in values.items()}


@dataclass
class StepResult:
    loss: torch.Tensor
    logs: dict[str, float]


class Algorithm:
    """Base: normalisation, augmentation and the labeled loss shared by every method.

    ``confidence_ceiling`` scales the confidence thresholds, which the methods define for one-hot training targets.
    A model trained on FER+ vote distributions is calibrated to the annotators' agreement, so its confidence tops
    out near the mean largest vote share (about 0.77 on FER+), not 1: thresholds of 0.8 or 0.95 would then reject
    almost every unlabeled face. With one-hot targets the ceiling is 1 and the thresholds are the published ones.
    """

    name = "base"
    uses_unlabeled = False
    threshold_floor = 0.8

    def __init__(self, net: LeafNet, num_classes: int, autocast: bool = True, confidence_ceiling: float = 1.0,
                 logit_adjustment: torch.Tensor | None = None, labeled_view=weak_augment, mixup: float = 0.0,
                 main_view=None, distill_from: LeafNet | None = None, distill_weight: float = 0.0) -> None:
        if not 0.0 < confidence_ceiling <= 1.0:
            raise ConfigError(f"confidence ceiling must be in (0, 1], got {confidence_ceiling}")
        self.net = net
        self.logit_adjustment = logit_adjustment
        self.labeled_view = labeled_view
        self.main_view = main_view
        self.distill_from = None if distill_from is None else distill_from.eval().requires_grad_(False)
        self.distill_weight = distill_weight
        self.mixup = mixup
        self.num_classes = num_classes
        self.autocast = autocast
        self.confidence_ceiling = confidence_ceiling
        self.thresholds = torch.full((num_classes,), self.threshold_floor * confidence_ceiling)
        self.batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.net.config.pixel_mean) / self.net.config.pixel_std

    def forward(self, x: torch.Tensor):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.net.forward_all(self.normalise(x))

    def forward_strong(self, x: torch.Tensor):
        """Forward strongly augmented views in their own batch, leaving BatchNorm's running statistics (what
        inference uses) to the weak views: Cutout squares and solarised faces are not what the deployed model sees."""
        momenta = [m.momentum for m in self.batch_norms]
        for m in self.batch_norms:
            m.momentum = 0.0
        try:
            return self.forward(x)
        finally:
            for m, momentum in zip(self.batch_norms, momenta):
                m.momentum = momentum

    def labeled_inputs(self, labeled: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The labeled view and its targets. The main data's faces take ``main_view`` where one is set, and with
        ``distill_from`` their targets move ``distill_weight`` of the way to that network's predictions on the same
        view (learning without forgetting, Li & Hoiem 2016); anchor faces' targets are those predictions. With
        ``mixup`` α > 0 each face is then blended with another face of the batch and its target alike (Zhang et al.
        2018), λ ~ Beta(α, α) per face with the larger share kept on the face."""
        images, targets = self.labeled_view(labeled.images), labeled.targets
        main = torch.ones(len(images), dtype=torch.bool, device=images.device) if labeled.main is None else labeled.main
        if self.main_view is not None:
            images = torch.where(main.view(-1, 1, 1, 1), self.main_view(labeled.images), images)
        if self.distill_from is not None:
            with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                remembered = torch.softmax(self.distill_from(self.normalise(images)).float(), dim=-1)
            pull = self.distill_weight * main.float()
            if labeled.anchored is not None:
                pull = torch.where(labeled.anchored, 1.0, pull)
            targets = (1 - pull[:, None]) * targets + pull[:, None] * remembered
        if self.mixup > 0:
            share = torch.distributions.Beta(self.mixup, self.mixup).sample((len(images),)).to(images.device)
            share = torch.maximum(share, 1 - share)
            other = torch.randperm(len(images), device=images.device)
            pixel_share = share.view(-1, 1, 1, 1)
            images = pixel_share * images + (1 - pixel_share) * images[other]
            targets = share[:, None] * targets + (1 - share[:, None]) * targets[other]
        return images, targets

    def labeled_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Soft-target cross-entropy; with ``logit_adjustment`` (τ·log prior, Menon et al. 2021) added to the logits
        in training only, so that the deployed logits are not biased toward the frequent classes (neutral)."""
        if self.logit_adjustment is not None:
            logits = logits.float() + self.logit_adjustment.to(logits.device)
        return soft_cross_entropy(logits, targets)

    def train_step(self, labeled: Batch, unlabeled: Batch | None) -> StepResult:
        raise NotImplementedError

    def running_state(self) -> dict[str, list[float]]:
        """What the method estimates while it trains (not weights), saved in checkpoints so that a resumed run
        continues with it."""
        return {"thresholds": self.thresholds.tolist()}

    def load_running_state(self, state: dict[str, list[float]]) -> None:
        self.thresholds = torch.tensor(state["thresholds"])

    def update_thresholds(self, confidences: torch.Tensor, correct: torch.Tensor, labels: torch.Tensor) -> None:
        """Class-adaptive thresholds: mean confidence of correctly classified labeled samples, never below the floor
        (0.8, times the confidence ceiling)."""
        floor = self.threshold_floor * self.confidence_ceiling
        for cls in range(self.num_classes):
            chosen = correct & (labels == cls)
            if chosen.any():
                self.thresholds[cls] = max(floor, float(confidences[chosen].mean()))


class Supervised(Algorithm):
    """Labeled data only: soft-target cross-entropy on a weak view."""

    name = "supervised"

    def train_step(self, labeled: Batch, unlabeled: Batch | None) -> StepResult:
        images, targets = self.labeled_inputs(labeled)
        out = self.forward(images)
        loss = self.labeled_loss(out.logits, targets)
        return StepResult(loss, scalars(loss_x=loss))


class FixMatch(Algorithm):
    """FixMatch: hard pseudo-labels from a weak view where confidence ≥ 0.95 (times the confidence ceiling),
    cross-entropy on a strong view."""

    name = "fixmatch"
    uses_unlabeled = True
    fixed_threshold = 0.95

    def train_step(self, labeled: Batch, unlabeled: Batch | None) -> StepResult:
        assert unlabeled is not None
        n_l = len(labeled.images)
        images, targets = self.labeled_inputs(labeled)
        out = self.forward(torch.cat([images, weak_augment(unlabeled.images)]))
        logits_l, logits_w = out.logits[:n_l], out.logits[n_l:]
        logits_s = self.forward_strong(strong_augment(unlabeled.images)).logits
        loss_x = self.labeled_loss(logits_l, targets)
        probs = torch.softmax(logits_w.detach().float(), dim=-1)
        confidence, pseudo = probs.max(dim=-1)
        mask = (confidence >= self.fixed_threshold * self.confidence_ceiling).float()
        loss_u = (F.cross_entropy(logits_s.float(), pseudo, reduction="none") * mask).mean()
        loss = loss_x + loss_u
        return StepResult(loss, scalars(loss_x=loss_x, loss_u=loss_u, mask=mask.mean()))


ALIGNMENT_MOMENTUM = 0.999


class Leaf(Algorithm):
    """LEAF: ambiguous pseudo-labels ranked on the strong view (category level), adaptive thresholds, optional SimCLR
    on the two weak views of low-confidence samples. The semantic and instance levels live in the network (LeafNet).

    The positive set's cumulative mass (0.9) is scaled by the confidence ceiling like the thresholds. Defaults differ
    from the published recipe where from-scratch training measured worse (README): ``LEAF_LABELED_WEIGHT`` (published
    0.5) and ``LEAF_CONTRASTIVE_WEIGHT`` (published 0.1).

    ``labeled_prior`` (the labeled targets' class distribution) turns on distribution alignment (ReMixMatch, not part
    of the published LEAF): pseudo-label distributions are multiplied by the prior over the running mean of the
    unlabeled predictions and renormalised, so that the frequent classes do not take over the pseudo-labels.

    ``rank_below_threshold`` (not part of the published recipe) also gives the unlabeled faces below the thresholds
    their ambiguous pseudo-label and ranking loss, added to ``loss_u`` and scaled by their share of the batch, without
    the rescale to cross-entropy magnitude: the margin weight alone keeps faces the network cannot yet tell apart (all
    of them early on) from pulling it toward its own guesses. The confident faces are mostly ones the network already
    gets right, while the classes left out of a low-confidence face's positive set are still rarely its true class
    (research/pseudo_labels.py)."""

    name = "leaf"
    uses_unlabeled = True
    positive_mass = 0.9

    def __init__(self, net: LeafNet, num_classes: int, autocast: bool = True, confidence_ceiling: float = 1.0,
                 category_level: bool = True, weight_x: float = LEAF_LABELED_WEIGHT, weight_u: float = 1.0,
                 weight_s: float = LEAF_CONTRASTIVE_WEIGHT, temperature: float = LEAF_CONTRASTIVE_TEMPERATURE,
                 labeled_prior: torch.Tensor | None = None, rank_below_threshold: bool = False, **shared) -> None:
        super().__init__(net, num_classes, autocast, confidence_ceiling, **shared)
        self.category_level = category_level
        self.rank_below_threshold = rank_below_threshold
        self.labeled_prior = None if labeled_prior is None else labeled_prior.float() / labeled_prior.sum()
        self.unlabeled_mean = None if labeled_prior is None else self.labeled_prior.clone()
        self.temperature = temperature
        self.weight_x, self.weight_u, self.weight_s = weight_x, weight_u, weight_s

    def train_step(self, labeled: Batch, unlabeled: Batch | None) -> StepResult:
        assert unlabeled is not None
        n_l, n_u = len(labeled.images), len(unlabeled.images)
        images, targets = self.labeled_inputs(labeled)
        weak = [images, weak_augment(unlabeled.images), weak_augment(unlabeled.images)]
        out = self.forward(torch.cat(weak))
        logits_l = out.logits[:n_l]
        logits_w1, logits_w2 = out.logits[n_l:].split(n_u)
        emb_w1, emb_w2 = out.embedding[n_l:].split(n_u)
        logits_s = self.forward_strong(strong_augment(unlabeled.images)).logits
        loss_x = self.labeled_loss(logits_l, targets)
        probs = (torch.softmax(logits_w1.detach().float(), -1) + torch.softmax(logits_w2.detach().float(), -1)) / 2
        if self.labeled_prior is not None:
            probs = self.align(probs)
        confidence, pseudo = probs.max(dim=-1)
        confident = confidence >= self.thresholds.to(probs.device)[pseudo]
        cumulative = self.positive_mass * self.confidence_ceiling
        if self.category_level:
            loss_u = category_level_loss(logits_s, probs, confident, cumulative=cumulative)
        else:
            loss_u = F.cross_entropy(logits_s[confident].float(), pseudo[confident]) if confident.any() else logits_s.sum() * 0
        loss_u = loss_u * confident.float().mean()
        uncertain = ~confident
        if self.rank_below_threshold:
            loss_a = category_level_loss(logits_s, probs, uncertain, cumulative=cumulative, rescale=False)
            loss_u = loss_u + loss_a * uncertain.float().mean()
        loss_s = (contrastive_loss(emb_w1[uncertain].float(), emb_w2[uncertain].float(), self.temperature)
                  if self.weight_s else emb_w1.sum() * 0.0)
        loss = self.weight_x * loss_x + self.weight_u * loss_u + self.weight_s * loss_s
        return StepResult(loss, scalars(loss_x=loss_x, loss_u=loss_u, loss_s=loss_s, mask=confident.float().mean()))

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Distribution alignment of a batch of pseudo-label distributions; updates the running unlabeled mean."""
        assert self.labeled_prior is not None and self.unlabeled_mean is not None
        prior, mean = self.labeled_prior.to(probs.device), self.unlabeled_mean.to(probs.device)
        mean = ALIGNMENT_MOMENTUM * mean + (1 - ALIGNMENT_MOMENTUM) * probs.mean(dim=0)
        self.unlabeled_mean = mean
        aligned = probs * (prior / mean.clamp_min(1e-6))
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def running_state(self) -> dict[str, list[float]]:
        state = super().running_state()
        if self.unlabeled_mean is not None:
            state["unlabeled_mean"] = self.unlabeled_mean.tolist()
        return state

    def load_running_state(self, state: dict[str, list[float]]) -> None:
        super().load_running_state(state)
        if self.labeled_prior is not None and "unlabeled_mean" in state:
            self.unlabeled_mean = torch.tensor(state["unlabeled_mean"])


ALGORITHMS: dict[str, type[Algorithm]] = dict(zip(METHODS, (Supervised, FixMatch, Leaf)))
