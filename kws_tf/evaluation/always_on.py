"""The always-on metric: missed keywords against false alarms per hour of continuous audio.

A set (``kws-make-always-on-set``) is a folder of long recordings and
``manifest.jsonl`` rows (``id``, ``path``, ``seconds``, ``condition`` and
``keywords``: ``[{"keyword", "start", "end"}]``, seconds). A streaming kws
file runs over each recording hop by hop (``inference.hop_posteriors``) and
a ``detection.Detector`` holding every threshold of the sweep turns the
posteriors into detections, per threshold.

Scoring one recording at one threshold (``match``): a detection matches an
occurrence of the same keyword when its time falls within ``[start, end +
tolerance]``; detections are taken in time order, each matching the earliest
occurrence it can that no detection matched yet. An occurrence no detection
matches is missed; a detection that matches none is a false alarm (also a
second detection of one spoken keyword). Over a group of recordings:

  frr                    missed occurrences / occurrences
  false_alarms_per_hour  false alarms / hours of audio
  delay                  of a matched detection: its time - the occurrence's end

Only keywords of the model's classes count as occurrences. ``operating_point``
picks, among the thresholds whose false-alarm rate is at most a target, the
one with the lowest FRR (on ties the fewer false alarms, then the lower
threshold). Groups: ``all`` and ``condition=<c>``.
"""
import os
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from kws_tf import audio, detection, inference, records, text

MANIFEST = records.SET_MANIFEST
_ROW_KEYS = ("path", "seconds", "condition", "keywords")
# False alarms per hour at which the FRR is reported.
RATES = (0.5, 1.0, 5.0)
TARGET_RATE = 1.0
TOLERANCE_SECONDS = 1.0
# The sweep: 0.01 .. 0.99, then 0.99 .. 0.9999 on a log scale of 1 - threshold
# (int8 posteriors of a confident model crowd below 1).
THRESHOLDS = tuple(np.unique(np.round(np.concatenate(
    [np.linspace(0.01, 0.99, 99), 1 - np.logspace(-2, -4, 9)]), 6)).tolist())


class Occurrence(NamedTuple):
  """A spoken keyword: seconds from the start of its recording."""
  keyword: str
  start: float
  end: float


def read_manifest(set_dir: str) -> List[dict]:
  """The rows of ``<set_dir>/manifest.jsonl``, each with ``path`` made absolute and
  ``keywords`` as ``Occurrence`` s; a one-line error naming the file and line
  (``records.read_set_manifest``)."""

  def occurrences(row):
    row["keywords"] = [Occurrence(k["keyword"], float(k["start"]), float(k["end"]))
                       for k in row["keywords"]]

  rows = records.read_set_manifest(set_dir, _ROW_KEYS, "recording", "kws-make-always-on-set",
                                   occurrences)
  if not rows:
    raise ValueError(f"{os.path.join(set_dir, MANIFEST)}: no recording")
  return rows


def match(detections: Sequence[detection.Detection], occurrences: Sequence[Occurrence],
          tolerance: float) -> List[Optional[int]]:
  """Per detection (in time order), the index of the occurrence it matches, or None
  for a false alarm (module docstring)."""
  taken = [False] * len(occurrences)
  out: List[Optional[int]] = []
  for found in detections:
    index = next((i for i, o in enumerate(occurrences)
                  if not taken[i] and o.keyword == found.keyword
                  and o.start <= found.time <= o.end + tolerance), None)
    if index is not None:
      taken[index] = True
    out.append(index)
  return out


def count(detections: Sequence[detection.Detection], occurrences: Sequence[Occurrence],
          tolerance: float) -> dict:
  """``occurrences``, ``missed``, ``false_alarms`` and ``delays`` (seconds after the
  matched occurrence's end, one per matched detection) of one recording."""
  matched = match(detections, occurrences, tolerance)
  hits = [(d, occurrences[i]) for d, i in zip(detections, matched) if i is not None]
  return {"occurrences": len(occurrences), "missed": len(occurrences) - len(hits),
          "false_alarms": sum(i is None for i in matched),
          "delays": [d.time - o.end for d, o in hits]}


def curve(counts: Sequence[Sequence[dict]], seconds: float,
          thresholds: Sequence[float]) -> List[dict]:
  """Per threshold: ``threshold``, ``frr``, ``false_alarms_per_hour``, ``false_alarms``,
  ``missed``, ``occurrences`` and ``median_delay_ms`` (None without a match), summed
  over recordings; ``counts[r][t]`` is ``count`` of recording ``r`` at threshold
  ``t``; ``seconds`` of audio in all."""
  rows = []
  for t, threshold in enumerate(thresholds):
    per = [c[t] for c in counts]
    occurrences = sum(c["occurrences"] for c in per)
    missed = sum(c["missed"] for c in per)
    false_alarms = sum(c["false_alarms"] for c in per)
    delays = [d for c in per for d in c["delays"]]
    rows.append({"threshold": float(threshold),
                 "frr": missed / occurrences if occurrences else float("nan"),
                 "false_alarms_per_hour": false_alarms / (seconds / 3600),
                 "false_alarms": false_alarms, "missed": missed, "occurrences": occurrences,
                 "median_delay_ms": 1000 * float(np.median(delays)) if delays else None})
  return rows


def operating_point(rows: Sequence[dict], rate: float) -> Optional[dict]:
  """The row of ``curve`` with the lowest FRR among those with at most ``rate`` false
  alarms per hour (ties: fewer false alarms, then the lower threshold); None when
  no threshold of the sweep is that low."""
  allowed = [r for r in rows if r["false_alarms_per_hour"] <= rate + 1e-9]
  if not allowed:
    return None
  return min(allowed, key=lambda r: (r["frr"], r["false_alarms_per_hour"], r["threshold"]))


def groups(rows: Sequence[dict]) -> Dict[str, List[int]]:
  """Group name -> recording indices: ``all``, then ``condition=<c>`` for each condition."""
  out = {"all": list(range(len(rows)))}
  for condition in sorted({r["condition"] for r in rows}):
    out[f"condition={condition}"] = [i for i, r in enumerate(rows) if r["condition"] == condition]
  return out


def summarize(rows: Sequence[dict], counts: Sequence[Sequence[dict]],
              thresholds: Sequence[float], target_rate: float) -> Dict[str, dict]:
  """Group name -> ``recordings``, ``hours``, ``occurrences``, ``curve`` (``curve``),
  ``frr_at`` (rate of ``RATES`` as text -> its ``operating_point`` or None) and
  ``target`` (the operating point at ``target_rate``)."""
  out = {}
  for name, indices in groups(rows).items():
    seconds = sum(rows[i]["seconds"] for i in indices)
    points = curve([counts[i] for i in indices], seconds, thresholds)
    out[name] = {"recordings": len(indices), "hours": seconds / 3600,
                 "occurrences": points[0]["occurrences"], "curve": points,
                 "frr_at": {f"{rate:g}": operating_point(points, rate) for rate in RATES},
                 "target": operating_point(points, target_rate)}
  return out


def check_streaming(card: dict, path: str) -> None:
  """ValueError naming ``path`` unless its card is that of a streaming kws file."""
  if card.get("task") != "kws" or "streaming" not in card:
    raise ValueError(f"{path} is not a streaming kws file (its card has no streaming "
                     "section): export one with kws-export-tflite --formats=stream_int8")


def evaluate(model: inference.StreamingTFLiteModel, card: dict, set_dir: str,
             smooth_seconds: float = detection.SMOOTH_SECONDS,
             refractory_seconds: float = detection.REFRACTORY_SECONDS,
             tolerance: float = TOLERANCE_SECONDS, target_rate: float = TARGET_RATE,
             thresholds: Sequence[float] = THRESHOLDS) -> dict:
  """The always-on metric of a streaming kws file on the set in ``set_dir``.

  Returns ``settings`` (hop, smoothing, refractory time, tolerance, target
  rate, thresholds) and ``groups`` (``summarize``).
  """
  check_streaming(card, model.path)
  if tolerance < 0 or target_rate <= 0:
    raise ValueError(f"the tolerance must be >= 0 and the target rate > 0, got {tolerance} "
                     f"and {target_rate}")
  classes = card["labels"]["classes"]
  recordings = read_manifest(set_dir)
  counts = []
  for row in recordings:
    detector = detection.Detector(classes, card["streaming"]["hop_seconds"], thresholds,
                                  smooth_seconds, refractory_seconds)
    found: List[List[detection.Detection]] = [[] for _ in thresholds]
    blocks = audio.stream_audio(row["path"], card["sample_rate"], inference.BLOCK_SAMPLES)
    for probabilities in inference.hop_posteriors(model, blocks):
      for t, hit in detector.push(probabilities):
        found[t].append(hit)
    occurrences = [o for o in row["keywords"] if o.keyword in classes
                   and o.keyword != text.NEGATIVE_LABEL]
    counts.append([count(f, occurrences, tolerance) for f in found])
  return {"settings": {"hop_seconds": card["streaming"]["hop_seconds"],
                       "smooth_seconds": smooth_seconds,
                       "refractory_seconds": refractory_seconds,
                       "tolerance_seconds": tolerance, "target_false_alarms_per_hour": target_rate,
                       "thresholds": list(thresholds)},
          "groups": summarize(recordings, counts, thresholds, target_rate)}


def card_section(results: dict, set_dir: str) -> dict:
  """The ``always_on`` section of the model card: the threshold that reaches the
  target false-alarm rate on the whole set (group ``all``; None when none does)
  and what it was measured with and gives."""
  settings, group = results["settings"], results["groups"]["all"]
  point = group["target"]
  return {"threshold": None if point is None else point["threshold"],
          "target_false_alarms_per_hour": settings["target_false_alarms_per_hour"],
          "false_alarms_per_hour": None if point is None else point["false_alarms_per_hour"],
          "frr": None if point is None else point["frr"],
          "median_delay_ms": None if point is None else point["median_delay_ms"],
          "frr_at_false_alarms_per_hour": {k: None if v is None else v["frr"]
                                           for k, v in group["frr_at"].items()},
          "smooth_seconds": settings["smooth_seconds"],
          "refractory_seconds": settings["refractory_seconds"],
          "tolerance_seconds": settings["tolerance_seconds"],
          "set": os.path.abspath(set_dir), "hours": group["hours"],
          "occurrences": group["occurrences"]}


def report(results: dict) -> str:
  """A text table: per group its hours, keywords, FRR at ``RATES`` and the target's
  threshold, FRR, false alarms per hour and median delay."""
  settings = results["settings"]
  target = settings["target_false_alarms_per_hour"]
  lines = [f"always-on: hop {settings['hop_seconds'] * 1000:g} ms, smoothing "
           f"{settings['smooth_seconds']:g} s, refractory {settings['refractory_seconds']:g} s, "
           f"tolerance {settings['tolerance_seconds']:g} s after a keyword's end",
           f"{'group':<22}{'hours':>7}{'keywords':>9}"
           + "".join(f"{'FRR@' + format(r, 'g') + '/h':>11}" for r in RATES)
           + f"  {'threshold@' + format(target, 'g') + '/h':>16}{'FRR':>8}{'FA/h':>7}"
           f"{'delay ms':>10}"]

  def percent(point):
    return f"{'-':>11}" if point is None else f"{100 * point['frr']:>10.1f}%"

  for name, group in results["groups"].items():
    point = group["target"]
    tail = (f"  {'none reaches it':>16}" if point is None else
            f"  {point['threshold']:>16.4g}{100 * point['frr']:>7.1f}%"
            f"{point['false_alarms_per_hour']:>7.2f}"
            + (f"{point['median_delay_ms']:>10.0f}" if point["median_delay_ms"] is not None
               else f"{'-':>10}"))
    lines.append(f"{name:<22}{group['hours']:>7.3f}{group['occurrences']:>9}"
                 + "".join(percent(group["frr_at"][f"{r:g}"]) for r in RATES) + tail)
  return "\n".join(lines)
