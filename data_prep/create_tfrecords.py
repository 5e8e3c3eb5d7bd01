r"""Converts a speech corpus into sharded TFRecords of features and labels.

  kws-create-tfrecords --data_dir=demo/corpus --corpus=vivos --out_dir=demo/records \
      --splits=train,test --formats=mfcc,logmel --task=kws \
      --alignments='demo/corpus/*/alignments.ctm'

Writes ``<out_dir>/<format>/<split>-<k:05d>-of-<n:05d>.tfrecord[.gz]`` (record i
of shard k is the same example in every format), ``metadata.json`` (parameters,
counts, vocabulary, normalisation statistics, fingerprint), ``vocab.json``
(ctc) and ``skipped.jsonl``. Each shard is written under a temporary name and
renamed when complete; a killed run is finished by the same command, and the
result is byte-identical to an uninterrupted run.
"""
import collections
import ctypes
import dataclasses
import gc
import glob
import json
import multiprocessing
import os
import sys
import time
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
from absl import app, flags

from kws_tf import cli

from data_prep import affinity, corpora
from kws_tf import audio, features, records, text

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Corpus root (VIVOS or LibriSpeech layout) or "
                    "a manifest file / folder of <split>.jsonl manifests.")
flags.DEFINE_enum("corpus", "vivos", ["vivos", "librispeech", "manifest"], "Corpus layout.")
flags.DEFINE_string("out_dir", None, "Output folder.")
flags.DEFINE_list("splits", ["train", "test"], "Splits to convert; a prefix merges "
                  "(train = every train-* folder, dev = dev-clean + dev-other).")
flags.DEFINE_list("formats", ["mfcc"], f"Feature formats, any of {features.FORMATS}.")
flags.DEFINE_list("feature_params", [], "Feature parameter overrides as "
                  "<format>.<name>=<value>, e.g. mfcc.num_mel_bins=64,logmel.pad_to_seconds=30.")
flags.DEFINE_enum("task", "ctc", ["ctc", "kws"], "ctc: utterances with character "
                  "labels; kws: keyword clips centred on aligned keywords plus negatives.")
flags.DEFINE_list("keywords", list(text.KEYWORDS), "KWS keywords; class i is keyword i, "
                  "the last class is 'negative'.")
flags.DEFINE_float("clip_seconds", 1.0, "KWS clip length, seconds.")
flags.DEFINE_float("context_seconds", 0.5, "KWS: the raw format keeps this much audio "
                   "before and after each clip, for training-time shifts and augmentation "
                   "(the feature formats hold the clip itself).")
flags.DEFINE_float("negatives_per_positive", 1.0, "KWS negative clips (overlapping no "
                   "keyword) per keyword clip, drawn per split.")
flags.DEFINE_list("alignments", [], "CTM files or globs (<utt> <ch> <start> <dur> <word>); "
                  "required for --task=kws.")
flags.DEFINE_integer("cores", len(affinity.usable_cpus()), "Worker processes; "
                     "default: the CPUs this process may run on.")
flags.DEFINE_bool("pin_workers", True, "When the workers are as many as the CPUs this "
                  "process may run on, bind each worker to its own CPU (the scheduler "
                  "otherwise moves them between CPUs and their caches go cold).")
flags.DEFINE_integer("examples_per_shard", 200, "Examples per shard (the unit of "
                     "work of a worker and of resuming).")
flags.DEFINE_string("vocab", None, "Reuse this vocab.json (ctc) instead of building "
                    "one from the transcripts of --splits.")
flags.DEFINE_integer("limit", None, "Convert at most this many utterances per split.")
flags.DEFINE_enum("compression", "none", ["none", "gzip"], "TFRecord compression.")
flags.DEFINE_float("max_skip_fraction", 0.1, "Exit non-zero when more than this "
                   "fraction of the utterances was skipped.")
flags.DEFINE_integer("sample_rate", 16000, "Audio is resampled to this rate, Hz.")
flags.DEFINE_float("min_seconds", 0.1, "Shorter utterances are skipped.")
flags.DEFINE_float("max_seconds", 30.0, "Longer utterances are skipped.")
flags.DEFINE_integer("seed", 0, "Seed of the negative-clip draw.")

TOOL = "kws_tf.data_prep.create_tfrecords"
PLAN_FILE = "plan.json"
PROGRESS_DIR = "progress"


@dataclasses.dataclass(frozen=True)
class Item:
  """One planned example. ``start``/``label``/``shift_range`` for kws, ``labels`` for ctc.

  ``shift_range`` (seconds) is the lowest and highest offset of the clip's
  start from ``start`` that keep its label true: a keyword stays whole inside
  the clip, a negative overlaps no keyword.
  """
  id: str
  utt: str
  path: str
  text: str
  labels: Optional[Tuple[int, ...]] = None
  label: Optional[int] = None
  start: Optional[float] = None
  shift_range: Optional[Tuple[float, float]] = None


# ---------------------------------------------------------------------------
# Planning (main process): which examples exist, in which shard.

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


def plan_ctc(utts: Sequence[corpora.Utterance], vocab: text.Vocabulary):
  """One item per utterance, ids sorted; the readers' problems become skips."""
  items, skipped = [], []
  for utt in utts:
    problem = utt.problem
    if problem is None:
      normalized = text.normalize(utt.text)
      missing = vocab.unknown(normalized, normalized=True)
      if missing:
        problem = f"characters not in the vocabulary: {''.join(missing)}"
    if problem:
      skipped.append({"id": utt.id, "path": utt.audio_path, "reason": problem})
      continue
    items.append(Item(utt.id, utt.id, utt.audio_path, normalized,
                      labels=tuple(vocab.encode(normalized, normalized=True))))
  return items, skipped


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
                              shift_range=(round(-slack, 3), round(slack, 3))))
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
                                                         round(min(after, clip_seconds), 3))))
  count = min(len(candidates), int(round(negatives_per_positive * len(positives))))
  chosen = rng.choice(len(candidates), size=count, replace=False) if count else []
  items = positives + [candidates[i] for i in sorted(chosen)]
  return sorted(items, key=lambda item: item.id), skipped


def shard_items(items: Sequence[Item], examples_per_shard: int) -> List[List[Item]]:
  """Consecutive chunks of the id-sorted items; at least one (maybe empty) shard."""
  chunks = [list(items[i:i + examples_per_shard])
            for i in range(0, len(items), examples_per_shard)]
  return chunks or [[]]


# ---------------------------------------------------------------------------
# Workers: one whole shard per task, every format.

_WORKER = {}


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _keep_freed_memory() -> None:
  """Keeps a worker's freed memory for reuse instead of returning it to the kernel.

  glibc's defaults map blocks above a threshold (128 KiB, raised as they are
  freed) straight from the kernel, unmap them on free, and give the top of the
  heap back once its free part exceeds 128 KiB, so every chunk of waveforms and
  many front-end tensors would page-fault fresh memory in. Here blocks up to
  32 MiB come from the heap (mmap threshold), the heap keeps up to 256 MiB free
  (trim threshold) and asks the kernel for 64 MiB more than it needs when it
  grows (top pad). A no-op where the C library is not glibc.
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return
  mallopt(_M_MMAP_THRESHOLD, 32 << 20)
  mallopt(_M_TRIM_THRESHOLD, 256 << 20)
  mallopt(_M_TOP_PAD, 64 << 20)


def worker_cpus(workers: int, pin: bool) -> Optional[List[int]]:
  """The CPU of each of ``workers`` workers, or None to leave them to the scheduler.

  With ``pin``, each worker runs on its own CPU of those this process may use,
  so the scheduler does not move workers between CPUs. Only workers that fill every
  such CPU are pinned: two jobs with fewer workers each would otherwise pin
  theirs to the same first CPUs.
  """
  usable = affinity.usable_cpus()
  return usable if pin and workers == len(usable) else None


def _init_worker(config: dict, cpus: Optional[List[int]], started) -> None:
  """Worker set-up. ``cpus``: one per worker, or None (not pinned); ``started``: a
  shared counter of the workers started, the index of this one's CPU."""
  _keep_freed_memory()
  if cpus:
    with started.get_lock():
      index = started.value
      started.value += 1
    affinity.pin_threads({cpus[index % len(cpus)]})  # before TensorFlow starts its threads
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  _WORKER["config"] = config
  _WORKER["front_ends"] = {name: features.from_dict(params)
                           for name, params in config["feature_params"].items()}


# Examples are computed in chunks (in id order) of CHUNK_EXAMPLES, or fewer when
# their waveforms reach CHUNK_SAMPLES (64 MB as float32), each chunk in
# front-end batches of BATCH_EXAMPLES of similar length, zero-padded to a
# multiple of PAD_SAMPLES so that batch shapes repeat. A chunk holds a whole
# shard of the default size: sorting more utterances by length leaves less
# padding in each batch. The batching depends only on the shard, so the bytes
# written do not depend on --cores.
CHUNK_EXAMPLES = 256
CHUNK_SAMPLES = 1 << 24
BATCH_EXAMPLES = 16
PAD_SAMPLES = 320


def batched_features(front_end, signals: Sequence[np.ndarray]) -> List[np.ndarray]:
  """Front end over many waveforms, a few batched calls instead of one per waveform.

  Args:
    front_end: a ``kws_tf.features`` config (not raw).
    signals: ``[samples]`` waveforms of any lengths, float32 or int16 (PCM,
      ``x / 32768``). A batch of int16 signals only goes to the front end as
      int16 (half the bytes to copy; it scales them in its graph).
  Returns:
    float32 ``[frames, channels]`` per signal, the valid frames of each.
  """
  order = sorted(range(len(signals)), key=lambda i: len(signals[i]))
  out = [None] * len(signals)
  for begin in range(0, len(order), BATCH_EXAMPLES):
    rows = order[begin:begin + BATCH_EXAMPLES]
    lengths = np.array([len(signals[i]) for i in rows], np.int32)
    width = -(-int(lengths.max()) // PAD_SAMPLES) * PAD_SAMPLES
    pcm16 = all(signals[i].dtype == np.int16 for i in rows)
    batch = np.zeros((len(rows), width), np.int16 if pcm16 else np.float32)
    for row, i in enumerate(rows):
      batch[row, :lengths[row]] = signals[i] if pcm16 else _as_float(signals[i])
    values = front_end.compute(batch, lengths).numpy()
    for row, i in enumerate(rows):
      out[i] = values[row, :front_end.num_frames(int(lengths[row]))]
  return out


def _as_float(signal: np.ndarray) -> np.ndarray:
  """float32 ``[samples]`` in [-1, 1] of a float32 or int16 (``x / 32768``) waveform."""
  return audio.pcm16_to_float(signal) if signal.dtype == np.int16 else signal


def _read_chunk(items: Sequence[Item], begin: int, config: dict, cache: dict,
                skipped: list):
  """The next chunk of ``items`` from index ``begin``: (list of (item, waveform
  or clip) for every item whose audio reads, index after the chunk); failures go
  to ``skipped``. A chunk ends after CHUNK_EXAMPLES items or once its signals
  hold CHUNK_SAMPLES samples.

  ``cache`` holds the last utterance read (``utt``, ``waveform``, ``error``), since
  the examples of one utterance are consecutive, and ``seconds``: the duration of
  every utterance read, by id.
  """
  signals, samples = [], 0
  end = min(begin + CHUNK_EXAMPLES, len(items))
  while begin < end and samples < CHUNK_SAMPLES:
    item = items[begin]
    begin += 1
    if item.utt != cache.get("utt"):
      cache.update(utt=item.utt, waveform=None, error=None)
      try:
        cache["waveform"] = audio.read_audio(item.path, config["sample_rate"],
                                             config["min_seconds"], config["max_seconds"],
                                             keep_int16=True)
        cache["seconds"][item.utt] = round(len(cache["waveform"]) / config["sample_rate"], 4)
      except audio.AudioError as e:
        cache["error"] = e
        skipped.append({"id": item.utt, "path": item.path, "reason": e.reason,
                        "message": str(e)})
    if cache["error"] is not None:
      continue
    waveform = cache["waveform"]
    if item.start is not None:
      context = config["context_seconds"]
      waveform = audio.cut_clip(
          waveform, item.start - context,
          int(round((config["clip_seconds"] + 2 * context) * config["sample_rate"])),
          config["sample_rate"])
    signals.append((item, waveform))
    samples += len(signals[-1][1])
  return signals, begin


def convert_shard(task: dict) -> dict:
  """Writes one shard in every format and its progress file; returns its summary."""
  config = _WORKER["config"]
  front_ends = _WORKER["front_ends"]
  out_dir, split = config["out_dir"], task["split"]
  name = records.shard_name(split, task["index"], task["count"], config["compression"])
  writers = {f: records.ShardWriter(os.path.join(out_dir, f, name), config["compression"])
             for f in front_ends}
  with_stats = task["stats"]
  stats = {f: None for f in front_ends}
  frame_count = {f: 0 for f in front_ends}
  max_frames = {f: 0 for f in front_ends}
  classes = collections.Counter()
  skipped, max_label_length = [], 0
  cache = {"seconds": {}}
  items = task["items"]
  try:
    begin = 0
    while begin < len(items):
      signals, begin = _read_chunk(items, begin, config, cache, skipped)
      context = int(round(config["context_seconds"] * config["sample_rate"]))
      clips = [s if item.start is None or not context else s[context:len(s) - context]
               for item, s in signals]
      computed = {f: batched_features(front_end, clips)
                  for f, front_end in front_ends.items() if f != "raw"}
      for index, (item, signal) in enumerate(signals):
        for fmt in front_ends:
          if fmt == "raw":
            waveform = _as_float(signal)
            values = signal if signal.dtype == np.int16 else np.round(
                np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16)
            frames = waveform[:, None].astype(np.float64)
          else:
            values = computed[fmt][index]
            frames = values.astype(np.float64)
          if with_stats:
            moments = np.stack([frames.sum(0), np.square(frames).sum(0)])
            stats[fmt] = moments if stats[fmt] is None else stats[fmt] + moments
            frame_count[fmt] += len(frames)
          max_frames[fmt] = max(max_frames[fmt], len(values))
          writers[fmt].write(records.serialize_example(
              item.id, values, item.text, labels=item.labels, label=item.label,
              utterance=None if item.start is None else item.utt, start=item.start,
              shift_range=item.shift_range))
        classes[item.text if item.label is not None else "utterances"] += 1
        max_label_length = max(max_label_length, len(item.labels or ()))
    examples = next(iter(writers.values())).count
    for writer in writers.values():
      writer.commit()
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise
  summary = {
      "split": split, "index": task["index"], "name": name,
      "examples": examples,
      "utterances": len({item.utt for item in items}),
      "seconds": cache["seconds"],
      "classes": dict(sorted(classes.items())),
      "max_frames": max_frames, "max_label_length": max_label_length,
      "skipped": skipped,
      "moments": {f: None if m is None else m.tolist() for f, m in stats.items()},
      "frame_count": frame_count,
  }
  records.write_json(os.path.join(out_dir, PROGRESS_DIR, name + ".json"), summary)
  return summary


# ---------------------------------------------------------------------------
# The job.

def _progress_ok(out_dir: str, name: str, formats: Sequence[str]) -> bool:
  return (os.path.exists(os.path.join(out_dir, PROGRESS_DIR, name + ".json")) and
          all(os.path.exists(os.path.join(out_dir, f, name)) for f in formats))


def _remove_stale_temporaries(out_dir: str) -> None:
  for path in glob.glob(os.path.join(out_dir, "**", "*.tmp-*"), recursive=True):
    os.remove(path)


def _check_plan(out_dir: str, plan: dict) -> None:
  """Refuses an out_dir made with other parameters or other examples."""
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


def _aggregate(out_dir: str, plan: dict, shards: Dict[str, int],
               formats: Sequence[str],
               feature_params: dict) -> Tuple[records.RecordsMetadata, list]:
  """metadata.json content and the skipped list from every shard's progress file.

  The plan's ``sample_rate`` and ``feature_params`` are not repeated in the
  metadata's ``params``: each format's front-end config (``formats.<name>.params``)
  holds them.
  """
  splits, skipped, moments, frames = {}, list(plan["skipped"]), {}, collections.Counter()
  stats_splits = plan["stats_splits"]
  for split, count in shards.items():
    totals = {"examples": 0, "classes": collections.Counter(), "shards": [],
              "max_frames": {f: 0 for f in formats}, "max_label_length": 0}
    durations = {}
    for index in range(count):
      name = records.shard_name(split, index, count, plan["params"]["compression"])
      summary = records.read_json(os.path.join(out_dir, PROGRESS_DIR, name + ".json"))
      totals["examples"] += summary["examples"]
      durations.update(summary["seconds"])
      totals["classes"].update(summary["classes"])
      totals["shards"].append(records.Shard(name, summary["examples"]))
      totals["max_label_length"] = max(totals["max_label_length"], summary["max_label_length"])
      for f in formats:
        totals["max_frames"][f] = max(totals["max_frames"][f], summary["max_frames"][f])
        if split in stats_splits and summary["moments"][f] is not None:
          m = np.asarray(summary["moments"][f])
          moments[f] = m if f not in moments else moments[f] + m
      if split in stats_splits:
        frames.update(summary["frame_count"])
      skipped.extend(summary["skipped"])
    seconds = round(sum(durations.values()), 3)
    splits[split] = records.SplitInfo(
        examples=totals["examples"], shards=totals["shards"], max_frames=totals["max_frames"],
        max_label_length=totals["max_label_length"], utterances=len(durations),
        seconds=seconds, hours=round(seconds / 3600, 4),
        classes=dict(sorted(totals["classes"].items())))
  normalization = {}
  for f in formats:
    if f in moments and frames[f]:
      mean = moments[f][0] / frames[f]
      std = np.sqrt(np.maximum(moments[f][1] / frames[f] - mean ** 2, 0.0))
      normalization[f] = {"mean": [round(float(v), 6) for v in mean],
                          "std": [round(float(max(v, 1e-8)), 6) for v in std],
                          "frames": int(frames[f])}
  format_info = {}
  for f in formats:
    config = features.from_dict(feature_params[f])
    format_info[f] = records.FormatInfo(dir=f, dtype="int16" if f == "raw" else "float32",
                                        num_channels=config.num_channels,
                                        params=feature_params[f])
  # An utterance whose clips span two shards is reported by both.
  skipped = sorted({s["id"]: s for s in skipped}.values(), key=lambda s: s["id"])
  params = {k: v for k, v in plan["params"].items() if k not in ("sample_rate", "feature_params")}
  ctc = plan["params"]["task"] == "ctc"
  metadata = records.RecordsMetadata(
      schema_version=records.SCHEMA_VERSION, tool=TOOL, tool_version=kws_tf.__version__,
      fingerprint=plan["fingerprint"], task=plan["params"]["task"],
      params=records.ConversionParams.from_json(params), formats=format_info, splits=splits,
      normalization=normalization, normalization_splits=list(stats_splits),
      skipped=len(skipped), classes=None if ctc else plan["classes"],
      vocabulary=plan["vocabulary"] if ctc else None)
  return metadata, skipped


def build_plan(args) -> Tuple[dict, Dict[str, List[List[Item]]]]:
  """Reads the corpus and decides every example and shard. Deterministic."""
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
    if args.vocab:
      vocab = text.Vocabulary.load(args.vocab)
    else:
      vocab = text.Vocabulary.from_texts(
          u.text for split in by_split.values() for u in split
          if u.problem is None)
    params["vocab_source"] = "file" if args.vocab else "splits"
    plan["vocabulary"] = vocab.to_json()
    for split, split_utts in by_split.items():
      items_by_split[split], skipped = plan_ctc(split_utts, vocab)
      plan["skipped"].extend(skipped)
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
  plan["fingerprint"] = records.fingerprint({
      "params": params,
      "vocabulary": plan.get("vocabulary"),
      "items": {s: [[i.id, os.path.relpath(i.path, root), i.text, i.labels, i.label, i.start,
                   i.shift_range]
                    for i in items] for s, items in items_by_split.items()},
  })
  shards = {s: shard_items(items, args.examples_per_shard)
            for s, items in items_by_split.items()}
  return plan, shards


def convert(args) -> int:
  """Runs the whole conversion; returns the process exit code."""
  try:
    plan, shards = build_plan(args)
  except (FileNotFoundError, ValueError, KeyError) as error:  # corpus, CTM, vocab, flags
    raise SystemExit(f"error: {error}") from error
  # The plan's objects (one per utterance) live until the end. Frozen, the
  # garbage collector does not rescan them whenever the pool's threads allocate.
  gc.freeze()
  os.makedirs(args.out_dir, exist_ok=True)
  _check_plan(args.out_dir, plan)
  records.write_json(os.path.join(args.out_dir, PLAN_FILE), {
      "fingerprint": plan["fingerprint"], "params": plan["params"]})
  if args.task == "ctc":
    text.Vocabulary(plan["vocabulary"]["symbols"]).save(
        os.path.join(args.out_dir, "vocab.json"))
  for sub in list(args.formats) + [PROGRESS_DIR]:
    os.makedirs(os.path.join(args.out_dir, sub), exist_ok=True)
  _remove_stale_temporaries(args.out_dir)

  compression = args.compression
  tasks = []
  for split, chunks in shards.items():
    for index, chunk in enumerate(chunks):
      name = records.shard_name(split, index, len(chunks), compression)
      if not _progress_ok(args.out_dir, name, args.formats):
        tasks.append({"split": split, "index": index, "count": len(chunks),
                      "stats": split in plan["stats_splits"],
                      "items": chunk})
  done = sum(len(c) for c in shards.values()) - len(tasks)
  worker_config = {
      "out_dir": args.out_dir, "compression": compression,
      "feature_params": plan["params"]["feature_params"],
      "sample_rate": args.sample_rate, "min_seconds": args.min_seconds,
      "max_seconds": args.max_seconds, "clip_seconds": args.clip_seconds,
      "context_seconds": args.context_seconds if args.task == "kws" else 0.0,
  }
  total_utts = sum(len({i.utt for i in t["items"]}) for t in tasks)
  workers = max(1, min(args.cores, len(tasks)))
  cpus = worker_cpus(workers, args.pin_workers)
  print(f"{len(tasks)} shards to write ({done} already complete), {total_utts} "
        f"utterances, {workers} workers{', each on its own CPU' if cpus else ''}",
        flush=True)
  if tasks:
    from tqdm import tqdm
    started = time.time()
    seconds = 0.0
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _init_worker,
                      (worker_config, cpus, context.Value("i", 0))) as pool, \
        tqdm(total=total_utts, unit="utt", desc="converting", file=sys.stderr,
             dynamic_ncols=True) as bar:
      for summary in pool.imap_unordered(convert_shard, tasks):
        seconds += sum(summary["seconds"].values())
        bar.update(summary["utterances"])
        bar.set_postfix(audio_s_per_s=f"{seconds / max(time.time() - started, 1e-9):.0f}")

  metadata, skipped = _aggregate(args.out_dir, plan, {s: len(c) for s, c in shards.items()},
                                 args.formats, plan["params"]["feature_params"])
  tmp = os.path.join(args.out_dir, f"skipped.jsonl.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for entry in skipped:
      f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(tmp, os.path.join(args.out_dir, "skipped.jsonl"))
  records.write_json(os.path.join(args.out_dir, records.METADATA_FILE), metadata.to_json())
  return _report(metadata, skipped, plan["utterances"], args)


def _report(metadata: records.RecordsMetadata, skipped: list, utterances: int, args) -> int:
  examples = sum(s.examples for s in metadata.splits.values())
  reasons = collections.Counter(s["reason"] for s in skipped)
  print(f"{args.out_dir}: {examples} examples from {utterances} utterances")
  for split, s in metadata.splits.items():
    print(f"  {split:>12}: {s.examples} examples, {len(s.shards)} shards, "
          f"{s.hours:.3f} h, classes {s.classes}")
  skipped_utts = len({s["id"] for s in skipped})
  if skipped:
    print(f"  skipped {skipped_utts} utterances (see skipped.jsonl): " +
          ", ".join(f"{r} x{n}" for r, n in reasons.most_common()))
  if examples == 0:
    print("error: nothing was converted", file=sys.stderr)
    return 1
  fraction = skipped_utts / max(utterances, 1)
  if fraction > args.max_skip_fraction:
    print(f"error: {fraction:.1%} of the utterances were skipped "
          f"(more than --max_skip_fraction={args.max_skip_fraction})", file=sys.stderr)
    return 1
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for name in ("data_dir", "out_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  unknown = sorted(set(FLAGS.formats) - set(features.FORMATS))
  if unknown or not FLAGS.formats:
    raise app.UsageError(f"--formats: unknown {unknown}; choose from {features.FORMATS}")
  if FLAGS.examples_per_shard < 1 or FLAGS.cores < 1:
    raise app.UsageError("--examples_per_shard and --cores must be at least 1")
  sys.exit(convert(FLAGS))


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
