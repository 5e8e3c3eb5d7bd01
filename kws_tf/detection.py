"""Keyword detection on continuous audio: per-hop posteriors in, one detection per spoken keyword out.

A streaming kws model (``kws_tf.export.streaming``) gives the posteriors of
the last clip every hop. ``Detector`` turns that sequence into detections:

1. smoothing: each keyword's posterior is averaged over the last
   ``smooth_hops`` hops (``smooth_seconds / hop_seconds``, rounded, at least
   1; hops before the stream's start count as 0);
2. the hop's best keyword (the class with the highest smoothed posterior,
   "negative" left out) and its smoothed posterior, the score;
3. a detection of that keyword fires at a hop where the score exceeds the
   threshold, once per stretch of that keyword above the threshold (a keyword
   is armed again only when its smoothed posterior falls to the threshold or
   below), unless the same keyword fired less than ``refractory_hops`` hops
   before (``refractory_seconds / hop_seconds``, rounded): a posterior that
   dips below the threshold and rises again within the refractory time is the
   same spoken keyword. Keywords keep their own state, so two different
   keywords spoken back to back are two detections even when the best score
   never drops in between.

The detection's time is the end of the hop that fired it, in seconds from
the start of the stream: when an app running the model would know. Its score
is the smoothed posterior then.

One ``Detector`` can hold several thresholds at once: each is an independent
detector over the same smoothed posteriors (a threshold sweep in one pass
over the audio, ``kws_tf.evaluation.always_on``).
"""
from typing import List, NamedTuple, Sequence, Tuple, Union

import numpy as np

from kws_tf import text

# Defaults of kws-infer and kws-evaluate's always-on metric.
SMOOTH_SECONDS = 0.3
REFRACTORY_SECONDS = 0.5


class Detection(NamedTuple):
  """A spoken keyword found in a stream: ``time`` seconds from the stream's start."""
  keyword: str
  time: float
  score: float


def hops(seconds: float, hop_seconds: float, minimum: int = 0) -> int:
  """``seconds`` in whole hops (rounded), at least ``minimum``."""
  return max(minimum, int(round(seconds / hop_seconds)))


class Detector:
  """Detections from per-hop posteriors (module docstring).

  Args:
    classes: the model's classes, in the order of its posteriors (the card's
      ``labels.classes``); ``text.NEGATIVE_LABEL`` is never detected.
    hop_seconds: seconds of audio per posterior vector.
    thresholds: one threshold on the smoothed posterior, or several (float ``[T]``).
    smooth_seconds: length of the moving average.
    refractory_seconds: time after a detection in which no other fires.
  """

  def __init__(self, classes: Sequence[str], hop_seconds: float,
               thresholds: Union[float, Sequence[float]],
               smooth_seconds: float = SMOOTH_SECONDS,
               refractory_seconds: float = REFRACTORY_SECONDS):
    if hop_seconds <= 0:
      raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}")
    if smooth_seconds < 0 or refractory_seconds < 0:
      raise ValueError(f"smooth_seconds and refractory_seconds must be >= 0, got "
                       f"{smooth_seconds} and {refractory_seconds}")
    self.keywords = [c for c in classes if c != text.NEGATIVE_LABEL]
    if not self.keywords:
      raise ValueError(f"no keyword among the classes {list(classes)}")
    self.columns = np.array([i for i, c in enumerate(classes) if c != text.NEGATIVE_LABEL])
    self.num_classes = len(classes)
    self.hop_seconds = hop_seconds
    self.thresholds = np.atleast_1d(np.asarray(thresholds, np.float64))
    self.smooth_hops = hops(smooth_seconds, hop_seconds, minimum=1)
    self.refractory_hops = hops(refractory_seconds, hop_seconds)
    self.reset()

  def reset(self) -> None:
    """The state of a stream not yet started."""
    keywords, thresholds = len(self.keywords), len(self.thresholds)
    self._history = np.zeros((self.smooth_hops, keywords))
    self._sum = np.zeros(keywords)
    self._hop = 0  # hops pushed so far
    self._armed = np.ones((thresholds, keywords), bool)
    self._last = np.full((thresholds, keywords), -(1 << 62))  # hop of each keyword's last detection

  def push(self, probabilities: np.ndarray) -> List[Tuple[int, Detection]]:
    """Feeds the next hop's posteriors (float ``[classes]`` or ``[1, classes]``);
    returns ``(threshold index, detection)`` for every threshold whose detector
    fires at this hop (for one threshold: ``[]`` or ``[(0, detection)]``)."""
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    if len(probabilities) != self.num_classes:
      raise ValueError(f"{len(probabilities)} posteriors, expected one per class "
                       f"({self.num_classes})")
    row = self._hop % self.smooth_hops
    values = probabilities[self.columns]
    self._sum += values - self._history[row]
    self._history[row] = values
    self._hop += 1
    smoothed = self._sum / self.smooth_hops
    best = int(np.argmax(smoothed))
    score = float(smoothed[best])
    above = smoothed[np.newaxis, :] > self.thresholds[:, np.newaxis]  # [thresholds, keywords]
    fire = (above[:, best] & self._armed[:, best]
            & (self._hop - self._last[:, best] >= self.refractory_hops))
    self._armed[:, best] &= ~fire
    self._last[fire, best] = self._hop
    self._armed |= ~above
    if not fire.any():
      return []
    found = Detection(self.keywords[best], self._hop * self.hop_seconds, score)
    return [(int(i), found) for i in np.flatnonzero(fire)]


def detect(posteriors: np.ndarray, classes: Sequence[str], hop_seconds: float,
           threshold: float, smooth_seconds: float = SMOOTH_SECONDS,
           refractory_seconds: float = REFRACTORY_SECONDS) -> List[Detection]:
  """The detections of one threshold in float ``[hops, classes]`` posteriors, in time order."""
  detector = Detector(classes, hop_seconds, threshold, smooth_seconds, refractory_seconds)
  return [found for row in posteriors for _, found in detector.push(row)]
