"""Metric definitions (see README "Metrics"): one implementation, used everywhere."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[true, predicted] counts, computed on the device with one bincount."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall and F1 per class; 0 where undefined (no predictions/support)."""
    cm = confusion.double().cpu()
    tp = cm.diag()
    predicted = cm.sum(0)
    support = cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp)
    )
    return {
        "precision": [round(v, 6) for v in precision.tolist()],
        "recall": [round(v, 6) for v in recall.tolist()],
        "f1": [round(v, 6) for v in f1.tolist()],
        "support": [int(v) for v in support.tolist()],
    }


def epochs_to_threshold(curve: Sequence[tuple[float, float]], threshold: float) -> Optional[float]:
    """First evaluation point (fractional epochs) whose validation accuracy >= threshold.

    ``curve`` holds (epoch, accuracy in percent) pairs in training order; ``None`` means
    censored: not reached within the budget.
    """
    for epoch, accuracy in curve:
        if accuracy >= threshold:
            return epoch
    return None


ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


def confidence_stats(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> dict[str, Optional[float]]:
    """Mean max-softmax on correct and on wrong predictions, and the calibration error.

    ECE = sum over equal-width confidence bins of (bin share) x |accuracy - mean confidence|;
    a prediction with confidence c falls in bin ceil(c * bins) (c = 1 in the last).  All
    three are probabilities in [0, 1]; a mean over no predictions is ``None``.
    """
    conf = confidence.double().cpu()
    hit = correct.bool().cpu()
    index = (conf * bins).ceil().long().clamp(1, bins) - 1
    ece = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            gap = hit[members].double().mean() - conf[members].mean()
            ece += float(members.double().mean() * gap.abs())
    return {
        "confidence_correct": _mean_or_none(conf[hit]),
        "confidence_wrong": _mean_or_none(conf[~hit]),
        "ece": round(ece, 6),
    }


def _mean_or_none(values: torch.Tensor) -> Optional[float]:
    return round(float(values.mean()), 6) if len(values) else None


def encode_correct(correct: torch.Tensor) -> str:
    """Per-image correctness on test (in test-split order) as base64 of packed bits.

    Kept in the record (``test_correct``) so statistics can resample test images
    (paired bootstrap, McNemar): 1,000 images cost 168 characters.
    """
    import base64

    import numpy as np

    bits = np.packbits(correct.detach().to("cpu", torch.bool).numpy())
    return base64.b64encode(bits.tobytes()).decode("ascii")


def decode_correct(text: str, count: int) -> np.ndarray:  # noqa: F821
    """Inverse of :func:`encode_correct`: a bool array of ``count`` images."""
    import base64

    import numpy as np

    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(bits)[:count].astype(bool)
