"""The converter's plan: which examples exist and which shard of which split holds each.

``build_plan(args)`` reads the corpus (``data_prep.corpora``) and decides
every example, deterministically from the flags and the corpus:

  ctc  one ``Item`` per utterance, its transcript's character ids as labels
       over the vocabulary of ``--vocab``, never one built from the corpus
       (``plan_ctc``; characters outside it are handled by ``--oov`` and
       listed per utterance in ``oov.jsonl``, ``write_oov_report``)
  kws  keyword clips centred on the aligned keyword words and negative clips
       drawn from the speech that overlaps no keyword (``plan_kws``), from
       the CTM files of ``--alignments`` (``read_alignments``)

Each split's items, sorted by id, are cut into shards of
``examples_per_shard`` (``shard_items``); the normalisation statistics come
from the training splits (``stats_splits``). The plan's fingerprint (sha256 of
the parameters, the vocabulary and every item) names the records; ``plan.json``
(``write_plan``) keeps it in the output folder so that a resumed run refuses
a folder made from other parameters or another corpus (``check_plan``).
"""
import collections
import dataclasses
import glob
import json
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep import corpora
from kws_tf import features, records, text

PLAN_FILE = "plan.json"
OOV_FILE = "oov.jsonl"
# The skip reason of an utterance aligned in a CTM file but not in the converted splits.
NOT_IN_SPLITS = "aligned utterance not in --splits"
# A negative clip contains speech: aligned words cover at least this fraction of it.
NEGATIVE_MIN_SPEECH = 0.25


@dataclasses.dataclass(frozen=True)
class Item:
  """One planned example. ``start``/``label``/``shift_range`` for kws, ``labels`` for ctc.

  ``shift_range`` (seconds) is the lowest and highest offset of the clip's
  start from ``start`` that keep its label true: a keyword stays whole inside
  the clip, a negative overlaps no keyword. ``offset`` and ``duration``
  (seconds) are the utterance's segment of the file (a manifest entry's; None:
  from the start, to the end); ``start`` counts from the segment's start.
  ``alignment_end`` (kws, seconds) is the end of the utterance's last aligned
  word: the worker skips the utterance when its audio ends before it.
  """
  id: str
  utt: str
  path: str
  text: str
  labels: Optional[Tuple[int, ...]] = None
  label: Optional[int] = None
  start: Optional[float] = None
  shift_range: Optional[Tuple[float, float]] = None
  offset: Optional[float] = None
  duration: Optional[float] = None
  alignment_end: Optional[float] = None


def _parse_value(value: str):
  """``30`` -> 30, ``1e-6`` -> 1e-6, ``true`` -> True, ``none`` -> None, ``matmul`` -> "matmul"."""
  if value.lower() in ("none", "null"):
    return None
  if value.lower() in ("true", "false"):
    return value.lower() == "true"
  try:
    return json.loads(value)
  except json.JSONDecodeError:
    return value


def parse_feature_params(formats: Sequence[str], overrides: Sequence[str],
                         sample_rate: int) -> Dict[str, dict]:
  """Feature configs as dicts, defaults plus ``<format>.<name>=<value>`` overrides."""
  per_format = {f: {} for f in formats}
  for item in overrides:
    key, sep, value = item.partition("=")
    fmt, dot, name = key.partition(".")
    if not sep or not dot:
      raise ValueError(f"--feature_params: {item!r} is not <format>.<name>=<value>")
    if fmt not in per_format:
      raise ValueError(f"--feature_params: {item!r} names format {fmt!r}, "
                       f"which is not in --formats={','.join(formats)}")
    per_format[fmt][name] = _parse_value(value)
  return {f: features.default_config(f, sample_rate=sample_rate, **per_format[f]).to_dict()
          for f in formats}


def plan_ctc(utts: Sequence[corpora.Utterance], vocab: text.Vocabulary, oov: str):
  """One item per utterance, ids sorted; the readers' problems become skips.

  Characters outside ``vocab`` are mapped, dropped or skip the utterance by
  ``oov`` (``text.Vocabulary.fit``). Returns (items, skipped, out-of-vocabulary
  report: per utterance with such characters its ``id``, ``split``,
  ``characters``, ``transcript`` (normalised), ``action`` (mapped, dropped or
  skipped) and, unless skipped, the ``text`` its labels hold).
  """
  items, skipped, report = [], [], []
  actions = {"map": "mapped", "drop": "dropped", "skip": "skipped"}
  for utt in utts:
    problem = utt.problem
    if problem is None:
      normalized = text.normalize(utt.text)
      fitted, unknown = vocab.fit(normalized, oov)
      if unknown:
        entry = {"id": utt.id, "split": utt.split, "characters": unknown,
                 "transcript": normalized,
                 "action": actions[oov] if fitted else "skipped"}
        report.append(entry if not fitted else dict(entry, text=fitted))
      if not fitted:
        problem = f"characters not in the vocabulary: {unknown}"
    if problem:
      skipped.append({"id": utt.id, "path": utt.audio_path, "reason": problem})
      continue
    items.append(Item(utt.id, utt.id, utt.audio_path, fitted,
                      labels=tuple(vocab.encode(fitted, normalized=True)),
                      offset=utt.offset, duration=utt.duration))
  return items, skipped, report


def _union(spans: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
  """The sorted, non-overlapping union of ``(start, end)`` spans."""
  union = []
  for start, end in sorted(spans):
    if union and start <= union[-1][1]:
      union[-1] = (union[-1][0], max(union[-1][1], end))
    else:
      union.append((start, end))
  return union


def plan_kws(utts: Sequence[corpora.Utterance], alignments, keywords: Sequence[str],
             clip_seconds: float, negatives_per_positive: float, rng):
  """Keyword clips centred on aligned keyword words, negatives drawn from gaps.

  A negative is a clip on a grid of ``clip_seconds / 4`` inside the aligned
  speech that overlaps no keyword word and contains speech: aligned words
  cover at least ``NEGATIVE_MIN_SPEECH`` of it (a clip inside a long pause
  is not a negative). ``round(negatives_per_positive * positives)`` of them
  are drawn from the whole split. Every item carries its ``shift_range`` and
  ``alignment_end`` (see ``Item``).
  """
  classes = {k: i for i, k in enumerate(keywords)}
  negative = len(keywords)
  positives, candidates, skipped = [], [], []
  for utt in utts:
    words = alignments.get(utt.id)
    if not words:
      skipped.append({"id": utt.id, "path": utt.audio_path, "reason": "no alignment"})
      continue
    end = max(w.end for w in words)
    spans = []
    for index, word in enumerate(words):
      key = text.normalize(word.word)
      if key in classes:
        spans.append((word.start, word.end))
        start = round((word.start + word.end) / 2 - clip_seconds / 2, 3)
        slack = max(clip_seconds - (word.end - word.start), 0.0) / 2
        positives.append(Item(f"{utt.id}-p{index:03d}", utt.id, utt.audio_path, key,
                              label=classes[key], start=start,
                              shift_range=(round(-slack, 3), round(slack, 3)),
                              offset=utt.offset, duration=utt.duration,
                              alignment_end=round(end, 3)))
    speech = _union([(w.start, w.end) for w in words])
    hop = clip_seconds / 4
    for step in range(int(np.floor((end - clip_seconds) / hop + 1e-9)) + 1):
      start = round(step * hop, 3)
      covered = sum(max(min(e, start + clip_seconds) - max(s, start), 0.0) for s, e in speech)
      if covered < NEGATIVE_MIN_SPEECH * clip_seconds:
        continue
      if all(start + clip_seconds <= s or start >= e for s, e in spans):
        before = max([e - start for s, e in spans if e <= start], default=-np.inf)
        after = min([s - start - clip_seconds for s, e in spans if s >= start + clip_seconds],
                    default=np.inf)
        candidates.append(Item(f"{utt.id}-n{int(round(start * 1000)):06d}", utt.id,
                               utt.audio_path, text.NEGATIVE_LABEL, label=negative,
                               start=start, shift_range=(round(max(before, -clip_seconds), 3),
                                                         round(min(after, clip_seconds), 3)),
                               offset=utt.offset, duration=utt.duration,
                               alignment_end=round(end, 3)))
  count = min(len(candidates), int(round(negatives_per_positive * len(positives))))
  chosen = rng.choice(len(candidates), size=count, replace=False) if count else []
  items = positives + [candidates[i] for i in sorted(chosen)]
  return sorted(items, key=lambda item: item.id), skipped


def read_alignments(patterns: Sequence[str], utterance_ids) -> Tuple[dict, list]:
  """Word alignments of the CTM files ``patterns`` (files or globs) match, and their strays.

  Returns ``(alignments, skipped)``: utterance id -> words sorted by start, as
  ``corpora.read_ctm`` reads them, and one skip entry (``id``, ``path``: the
  CTM file, ``reason``: ``NOT_IN_SPLITS``) per utterance that a file aligns
  but ``utterance_ids`` (those of the converted splits) lacks, for each file
  that aligns at least one of ``utterance_ids``; a file that aligns none
  holds another split's utterances and is not reported. Raises
  FileNotFoundError for a pattern that matches nothing.
  """
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"no CTM file matches {pattern!r}")
    files.extend(m for m in matches if m not in files)
  alignments, skipped = {}, []
  for path in files:
    words = corpora.read_ctm([glob.escape(path)])
    if any(utt in utterance_ids for utt in words):
      skipped.extend({"id": utt, "path": path, "reason": NOT_IN_SPLITS}
                     for utt in words if utt not in utterance_ids)
    for utt, utt_words in words.items():
      alignments[utt] = sorted(alignments.get(utt, []) + utt_words, key=lambda w: w.start)
  return alignments, skipped


def stats_splits(splits: Sequence[str], names: Sequence[str]) -> List[str]:
  """The splits whose frames give the normalisation statistics (``--stats_splits``).

  A name selects the split of exactly that name among ``splits`` (those
  converted), otherwise every split named ``<name>-*`` or ``<name>_*`` (as
  ``--splits`` does); ``["none"]`` selects none (records without statistics).
  Raises ValueError listing ``splits`` when a name selects nothing.
  """
  if list(names) == ["none"]:
    return []
  chosen = []
  for name in names:
    selected = [name] if name in splits else [
        s for s in splits if s.startswith((name + "-", name + "_"))]
    if not selected:
      raise ValueError(
          f"--stats_splits: no converted split is {name!r} or {name}-* (the splits are "
          f"{', '.join(splits)}); the normalisation statistics come from the training "
          "split only: name it, or pass --stats_splits=none for records without statistics")
    chosen.extend(s for s in selected if s not in chosen)
  if not chosen:
    raise ValueError("--stats_splits is empty: name the training split, or none")
  return chosen


def shard_items(items: Sequence[Item], examples_per_shard: int) -> List[List[Item]]:
  """Consecutive chunks of the id-sorted items; at least one (maybe empty) shard."""
  chunks = [list(items[i:i + examples_per_shard])
            for i in range(0, len(items), examples_per_shard)]
  return chunks or [[]]


def build_plan(args) -> Tuple[dict, Dict[str, List[List[Item]]]]:
  """Reads the corpus and decides every example and shard. Deterministic.

  Args:
    args: the converter's flags (``corpus``, ``data_dir``, ``splits``,
      ``formats``, ``feature_params``, ``task``, ``examples_per_shard``,
      ``limit``, ``compression``, ``sample_rate``, ``min_seconds``,
      ``max_seconds``, ``stats_splits``; ctc ``vocab``, ``oov``; kws ``alignments``,
      ``keywords``, ``clip_seconds``, ``context_seconds``, ``negatives_per_positive``, ``seed``).

  Returns:
    ``(plan, shards)``. ``plan``: ``params`` (the parameters, with
    ``feature_params`` per format), ``skipped`` (utterances left out, with
    their reason; kws also the strays of ``read_alignments``), ``utterances``,
    ``stats_splits`` (the splits of the normalisation statistics, ``stats_splits``),
    ``fingerprint``, and ``vocabulary`` and ``oov`` (ctc: the report of
    ``plan_ctc``) or ``classes`` (kws).
    ``shards``: split -> its shards, each a list of ``Item``.
  """
  utts = corpora.read_corpus(args.corpus, args.data_dir, args.splits)
  by_split = collections.OrderedDict((s, []) for s in sorted({u.split for u in utts}))
  for utt in utts:
    by_split[utt.split].append(utt)
  if args.limit:
    by_split = collections.OrderedDict((s, u[:args.limit]) for s, u in by_split.items())
  feature_params = parse_feature_params(args.formats, args.feature_params, args.sample_rate)
  params = {
      "corpus": args.corpus, "splits": list(args.splits), "formats": list(args.formats),
      "feature_params": feature_params, "task": args.task,
      "examples_per_shard": args.examples_per_shard, "limit": args.limit,
      "compression": args.compression, "sample_rate": args.sample_rate,
      "min_seconds": args.min_seconds, "max_seconds": args.max_seconds,
      "stats_splits": list(args.stats_splits),
  }
  plan = {"params": params, "skipped": [],
          "stats_splits": stats_splits(list(by_split), args.stats_splits)}
  items_by_split = {}
  if args.task == "ctc":
    vocab = text.Vocabulary.read(args.vocab)
    params["vocab_source"] = os.path.basename(text.find_vocabulary(args.vocab))
    params["oov"] = args.oov
    plan["vocabulary"] = vocab.to_json()
    plan["oov"] = []
    for split, split_utts in by_split.items():
      items_by_split[split], skipped, report = plan_ctc(split_utts, vocab, args.oov)
      plan["skipped"].extend(skipped)
      plan["oov"].extend(report)
  else:
    if not args.alignments:
      raise SystemExit(
          "error: --task=kws needs word alignments: pass --alignments=<ctm files or globs> "
          "(the synthetic corpus writes <corpus>/<split>/alignments.ctm; for a real "
          "corpus, align it first, e.g. with a CTC forced aligner or the Montreal "
          "Forced Aligner, and export CTM).")
    alignments, strays = read_alignments(args.alignments, {u.id for u in utts})
    plan["skipped"].extend(strays)
    keywords = text.keyword_classes(args.keywords)[:-1]
    if args.context_seconds < 0:
      raise SystemExit(f"error: --context_seconds must be >= 0, got {args.context_seconds}")
    params.update(keywords=keywords, clip_seconds=args.clip_seconds,
                  context_seconds=args.context_seconds,
                  negatives_per_positive=args.negatives_per_positive, seed=args.seed)
    plan["classes"] = text.keyword_classes(keywords)
    for split, split_utts in by_split.items():
      rng = np.random.default_rng([args.seed, zlib.crc32(split.encode())])
      items_by_split[split], skipped = plan_kws(
          split_utts, alignments, keywords, args.clip_seconds,
          args.negatives_per_positive, rng)
      plan["skipped"].extend(skipped)
  plan["utterances"] = sum(len(u) for u in by_split.values())
  root = os.path.abspath(args.data_dir)

  def identity(i: Item) -> list:
    """What makes an item's record; the segment only when there is one."""
    segment = [] if i.offset is None and i.duration is None else [i.offset, i.duration]
    return [i.id, os.path.relpath(i.path, root), i.text, i.labels, i.label, i.start,
            i.shift_range, i.alignment_end] + segment

  plan["fingerprint"] = records.fingerprint({
      "params": params,
      "vocabulary": plan.get("vocabulary"),
      "items": {s: [identity(i) for i in items] for s, items in items_by_split.items()},
  })
  shards = {s: shard_items(items, args.examples_per_shard)
            for s, items in items_by_split.items()}
  return plan, shards


def check_plan(out_dir: str, plan: dict) -> None:
  """SystemExit naming what differs when ``out_dir`` holds a ``plan.json`` of another
  plan (other parameters or other examples); nothing when it holds none or the same."""
  path = os.path.join(out_dir, PLAN_FILE)
  if not os.path.exists(path):
    return
  old = records.read_json(path)
  if old["fingerprint"] == plan["fingerprint"]:
    return
  changed = sorted(k for k in set(old["params"]) | set(plan["params"])
                   if old["params"].get(k) != plan["params"].get(k))
  detail = (f"parameters differ: {', '.join(changed)}" if changed else
            "the corpus (example ids, paths or labels) differs")
  raise SystemExit(
      f"error: {out_dir} holds records made differently ({detail}). Use another --out_dir, "
      f"or delete {out_dir} to start again.")


def write_oov_report(out_dir: str, plan: dict) -> str:
  """Writes ``<out_dir>/oov.jsonl`` (ctc): one line per utterance with characters
  outside the vocabulary (``plan_ctc``), sorted by split and id. Returns a
  one-line summary, "" when there are none."""
  report = sorted(plan["oov"], key=lambda e: (e["split"], e["id"]))
  path = os.path.join(out_dir, OOV_FILE)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for entry in report:
      f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)
  if not report:
    return ""
  actions = collections.Counter(e["action"] for e in report)
  characters = "".join(sorted({c for e in report for c in e["characters"]}))
  return (f"{len(report)} utterances hold characters outside the vocabulary ({characters!r}; "
          f"--oov={plan['params']['oov']}): "
          + ", ".join(f"{a} {n}" for a, n in sorted(actions.items())) + f"; see {path}")


def write_plan(out_dir: str, plan: dict) -> None:
  """``<out_dir>/plan.json``: the plan's fingerprint and parameters (what ``check_plan`` reads)."""
  records.write_json(os.path.join(out_dir, PLAN_FILE), {
      "fingerprint": plan["fingerprint"], "params": plan["params"]})
