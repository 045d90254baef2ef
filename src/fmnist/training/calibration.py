"""How far a model's probabilities can be trusted, and the one-number repair: temperature scaling.

A model is calibrated when, of the images it labels with probability 0.9, nine in ten are right.
Three measures of that, all on the probabilities (N, 10) and the true labels (N,):

- expected calibration error (ECE): the images are put in 15 equal-width bins (lower, upper] by their
  top probability (the "confidence"); ECE is the mean over bins of |accuracy - confidence|, weighted
  by the share of images in the bin (Guo et al., ICML 2017). 0 is perfect. torchmetrics' ECE agrees
  except on a confidence of exactly 1.0, which it counts in a 16th bin of its own; float32 softmax
  gives exactly 1.0 to many of a confident model's images, so fmnist bins as the definition does.
- Brier score: the mean over images of the squared distance between the probability vector and the
  one-hot true label (0 perfect, 2 worst); torch's mean squared error times the classes. (torchmetrics
  would do too, but importing it costs every fmnist command about two seconds on these CPUs.)
- negative log-likelihood (NLL): the mean of -log(probability of the true class), which is the
  cross-entropy test loss computed from the probabilities.

Temperature scaling divides the logits by one number T before the softmax, T fitted to minimize
the NLL on held-out data (the validation split; never the test split, which must stay unseen). T > 1
softens overconfident probabilities; the predicted class never changes, so neither does accuracy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fmnist.errors import FmnistError
from fmnist.training.loop import Batches, predict_logits

ECE_BINS = 15  # Guo et al.'s choice; the figures of fmnist's reports and BENCHMARKS.md use it
# fit_temperature's ECE step: candidates from T / 1.25 to T * 1.25 around the NLL's T, 0.5% apart.
ECE_SEARCH = 1.25
ECE_CANDIDATES = 91
# The smallest positive float32: a probability that rounded to 0 costs -log of it, not infinity.
SMALLEST_PROBABILITY = torch.finfo(torch.float32).tiny


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Top-label ECE with `bins` equal-width confidence bins."""
    rows = reliability_bins(probabilities, labels, bins)
    return sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / len(labels)


def brier_score(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of the sum over classes of (probability - one-hot label)^2."""
    one_hot = nn.functional.one_hot(labels.long(), probabilities.shape[1]).to(probabilities.dtype)
    return nn.functional.mse_loss(probabilities, one_hot).item() * probabilities.shape[1]


def negative_log_likelihood(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of -log(probability of the true class)."""
    true_class = probabilities.double().gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return -true_class.clamp(min=SMALLEST_PROBABILITY).log().mean().item()


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """What a reliability diagram draws: per confidence bin, its images, mean confidence and accuracy.

    A bin is (lower, upper] (the first also takes 0); an empty bin has count 0 and no figures.
    """
    confidences, predicted = probabilities.double().max(dim=1)
    correct = (predicted == labels.long()).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidences, edges, right=False) - 1).clamp(0, bins - 1)
    rows = []
    for bin_index in range(bins):
        inside = index == bin_index
        count = int(inside.sum())
        rows.append({"lower": edges[bin_index].item(), "upper": edges[bin_index + 1].item(), "count": count,
                     "confidence": confidences[inside].mean().item() if count else None,
                     "accuracy": correct[inside].mean().item() if count else None})
    return rows


def calibration_metrics(probabilities: torch.Tensor, labels: torch.Tensor) -> dict:
    """ECE, Brier score and NLL of the probabilities, with the reliability diagram's bins."""
    if len(labels) == 0:
        raise FmnistError("calibration: no images to measure")
    return {"ece": expected_calibration_error(probabilities, labels),
            "brier": brier_score(probabilities, labels),
            "nll": negative_log_likelihood(probabilities, labels),
            "bins": reliability_bins(probabilities, labels)}


def scaled_probabilities(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) from softmax(logits): log-probabilities differ from the logits by a constant
    per image, which the softmax ignores. A probability that rounded to 0 stays 0 (log 0 = -inf)."""
    if temperature == 1.0:
        return probabilities
    return torch.softmax(probabilities.double().log() / temperature, dim=1).to(probabilities.dtype)


def logits_of(model: nn.Module, batches: Batches, flip_tta: bool = False,
              shift_tta: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, 10) float64, labels (N,)) of the model over (images, labels) batches, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    all_logits, all_labels = [], []
    with torch.inference_mode():
        for images, labels in batches:
            all_logits.append(predict_logits(model, images.to(device), flip_tta, shift_tta).double().cpu())
            all_labels.append(labels.cpu())
    if not all_labels:
        raise FmnistError("calibration: no batches to fit the temperature on")
    return torch.cat(all_logits), torch.cat(all_labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature for these held-out logits: the NLL's minimum, then the lowest ECE near it.

    The NLL fit is Guo et al.'s. Alone it leaves the ECE of a model trained with label smoothing (the
    fast recipes) near 0.010: there the NLL's best T is not quite the ECE's. So the fit then looks,
    within a factor ECE_SEARCH of the NLL's T, for the T with the lowest ECE on the same images, and
    keeps it if the NLL stays below the raw probabilities' (measured on `fast`, seeds 42-43: test ECE
    0.0115 and 0.0087 became 0.0090 and 0.0056, for at most 0.0007 more test NLL; BENCHMARKS.md).
    """
    logits, labels = logits.detach().double(), labels.long()
    by_nll = nll_temperature(logits, labels)
    raw_nll = nn.functional.cross_entropy(logits, labels).item()
    candidates = by_nll * torch.logspace(-math.log10(ECE_SEARCH), math.log10(ECE_SEARCH), ECE_CANDIDATES,
                                         dtype=torch.float64)
    # Lowest ECE first; among equals, the one nearest the NLL's T.
    by_ece = min(candidates.tolist(), key=lambda temperature: (
        expected_calibration_error(torch.softmax(logits / temperature, dim=1), labels),
        abs(math.log(temperature / by_nll))))
    if nn.functional.cross_entropy(logits / by_ece, labels).item() < raw_nll:
        return by_ece
    return by_nll


def nll_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimizes the NLL of softmax(logits / T): L-BFGS on log T, so that T stays positive.

    One parameter and a smooth, convex-in-practice loss: L-BFGS with a line search converges in a few
    iterations (Guo et al. fit it the same way). Where the fit would not lower the NLL (it starts at
    T = 1), T = 1 is kept.
    """
    logits, labels = logits.detach().double(), labels.long()
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_temperature.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be under inference_mode
        before = nn.functional.cross_entropy(logits, labels).item()
        optimizer.step(nll)
        temperature = log_temperature.exp().item()
        after = nn.functional.cross_entropy(logits / temperature, labels).item()
    if not math.isfinite(temperature) or not after <= before:
        return 1.0
    return temperature


def calibration_record(probabilities: torch.Tensor, labels: torch.Tensor, temperature: float | None) -> dict:
    """What summary.json, `fmnist evaluate` and the API report: the measures of the raw probabilities
    ("before") and, with a temperature, of the scaled ones ("after"; None without one)."""
    return {"temperature": temperature,
            "before": calibration_metrics(probabilities, labels),
            "after": None if temperature is None else
            calibration_metrics(scaled_probabilities(probabilities, temperature), labels)}
