"""The converter's plan: which examples exist and which shard of which split holds each.

``build_plan(args)`` reads the corpus (``data_prep.corpora``) and decides
every example, deterministically from the flags and the corpus:

  ctc  one ``Item`` per utterance, its transcript's character ids as labels
       over the vocabulary of ``--vocab``, never one built from the corpus
       (``plan_ctc``; characters outside it are handled by ``--oov`` and
       listed per utterance in ``oov.jsonl``, ``write_oov_report``)
  kws  keyword clips centred on the aligned keyword words and negative clips
       drawn from the speech that overlaps no keyword (``plan_kws``)

Each split's items, sorted by id, are cut into shards of
``examples_per_shard`` (``shard_items``). The plan's fingerprint (sha256 of the
parameters, the vocabulary and every item) names the records; ``plan.json``
(``write_plan``) keeps it in the output folder so that a resumed run refuses
a folder made from other parameters or another corpus (``check_plan``).
"""
import collections
import dataclasses
import json
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from data_prep import corpora
from kws_tf import features, records, text

PLAN_FILE = "plan.json"
OOV_FILE = "oov.jsonl"


@dataclasses.dataclass(frozen=True)
class Item:
  """One planned example. ``start``/``label``/``shift_range`` for kws, ``labels`` for ctc.

  ``shift_range`` (seconds) is the lowest and highest offset of the clip's
  start from ``start`` that keep its label true: a keyword stays whole inside
  the clip, a negative overlaps no keyword. ``offset`` and ``duration``
  (seconds) are the utterance's segment of the file (a manifest entry's; None:
  from the start, to the end); ``start`` counts from the segment's start.
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


def plan_kws(utts: Sequence[corpora.Utterance], alignments, keywords: Sequence[str],
             clip_seconds: float, negatives_per_positive: float, rng):
  """Keyword clips centred on aligned keyword words, negatives drawn from gaps.

  A negative is a clip on a grid of ``clip_seconds / 4`` inside the aligned
  speech that overlaps no keyword word. ``round(negatives_per_positive *
  positives)`` of them are drawn from the whole split. Every item carries its
  ``shift_range`` (see ``Item``).
  """
  classes = {k: i for i, k in enumerate(keywords)}
  negative = len(keywords)
  positives, candidates, skipped = [], [], []
  for utt in utts:
    words = alignments.get(utt.id)
    if not words:
      skipped.append({"id": utt.id, "path": utt.audio_path, "reason": "no alignment"})
      continue
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
                              offset=utt.offset, duration=utt.duration))
    end = max(w.end for w in words)
    hop = clip_seconds / 4
    for step in range(int(np.floor((end - clip_seconds) / hop + 1e-9)) + 1):
      start = round(step * hop, 3)
      if all(start + clip_seconds <= s or start >= e for s, e in spans):
        before = max([e - start for s, e in spans if e <= start], default=-np.inf)
        after = min([s - start - clip_seconds for s, e in spans if s >= start + clip_seconds],
                    default=np.inf)
        candidates.append(Item(f"{utt.id}-n{int(round(start * 1000)):06d}", utt.id,
                               utt.audio_path, text.NEGATIVE_LABEL, label=negative,
                               start=start, shift_range=(round(max(before, -clip_seconds), 3),
                                                         round(min(after, clip_seconds), 3)),
                               offset=utt.offset, duration=utt.duration))
  count = min(len(candidates), int(round(negatives_per_positive * len(positives))))
  chosen = rng.choice(len(candidates), size=count, replace=False) if count else []
  items = positives + [candidates[i] for i in sorted(chosen)]
  return sorted(items, key=lambda item: item.id), skipped


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
      ``max_seconds``; ctc ``vocab``, ``oov``; kws ``alignments``, ``keywords``,
      ``clip_seconds``, ``context_seconds``, ``negatives_per_positive``, ``seed``).

  Returns:
    ``(plan, shards)``. ``plan``: ``params`` (the parameters, with
    ``feature_params`` per format), ``skipped`` (utterances left out, with
    their reason), ``utterances``, ``stats_splits`` (the splits of the
    normalisation statistics: the train splits, or every split when none is),
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
  }
  plan = {"params": params, "skipped": []}
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
    alignments = corpora.read_ctm(args.alignments)
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
  train_like = [s for s in by_split if s.startswith("train")]
  plan["stats_splits"] = train_like or list(by_split)
  root = os.path.abspath(args.data_dir)

  def identity(i: Item) -> list:
    """What makes an item's record; the segment only when there is one (so
    that the fingerprints of records of whole files stay as they were)."""
    segment = [] if i.offset is None and i.duration is None else [i.offset, i.duration]
    return [i.id, os.path.relpath(i.path, root), i.text, i.labels, i.label, i.start,
            i.shift_range] + segment

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
