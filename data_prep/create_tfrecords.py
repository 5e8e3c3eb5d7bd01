r"""Converts a speech corpus into sharded TFRecords of features and labels.

  kws-create-tfrecords --data_dir=demo/corpus --corpus=vivos --out_dir=demo/records \
      --splits=train,test --formats=mfcc,logmel --task=kws \
      --alignments='demo/corpus/*/alignments.ctm'

Writes ``<out_dir>/<format>/<split>-<k:05d>-of-<n:05d>.tfrecord[.gz]`` (record i
of shard k is the same example in every format), ``metadata.json`` (parameters,
counts, vocabulary, normalisation statistics, fingerprint), ``vocab.json``
(ctc: the vocabulary of ``--vocab``), ``oov.jsonl`` (ctc: the utterances whose
transcripts hold other characters, and what ``--oov`` did with them) and
``skipped.jsonl``. Each shard is written under a temporary name and
renamed when complete; a killed run, or one stopped by an error such as a
full disk (``error: <file>: <reason>``), is finished by the same command, and
the result is byte-identical to an uninterrupted run. A run holds
``<out_dir>/convert.lock`` (``data_prep.out_dir_lock``): a second converter
on the same folder is refused while the first runs.

``data_prep.shard_plan`` decides the examples and their shards, a pool of
``data_prep.shard_worker`` processes (``--runner=multiprocess``) or an Apache
Beam pipeline of the same per-shard work (``--runner=beam``,
``data_prep.beam_shards``) writes the shards not yet finished, and ``convert``
then gathers the shards' summaries into metadata.json
(``kws_tf.records.write_metadata``) and skipped.jsonl. Both runners write the
same bytes.
"""
import collections
import gc
import glob
import json
import multiprocessing
import os
import sys
import time
from typing import Dict, Optional, Sequence, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli

from data_prep import affinity, beam_options, out_dir_lock, shard_plan, shard_worker
from kws_tf import features, records, text

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
flags.DEFINE_enum("runner", "multiprocess", ["multiprocess", "beam"], "multiprocess: a "
                  "pool of --cores worker processes on this machine; beam: an Apache Beam "
                  "pipeline of the same shards (apache-beam, the beam extra), run by the "
                  "runner of --beam_pipeline_options. Same plan, same bytes.")
flags.adopt_module_key_flags(beam_options)  # --beam_pipeline_options
flags.DEFINE_integer("examples_per_shard", 200, "Examples per shard (the unit of "
                     "work of a worker and of resuming).")
flags.DEFINE_string("vocab", text.DEFAULT_VOCABULARY, "ctc: the character vocabulary, "
                    "never built from the transcripts: a shipped one by name (vietnamese, "
                    "english: kws_tf/vocabularies/<name>.txt), a vocabulary file (UTF-8, one "
                    "symbol per line in id order from id 1, the blank id 0 not listed, the "
                    "space written <space>), or the vocab.json of an earlier conversion.")
flags.DEFINE_enum("oov", "map", list(text.OOV_POLICIES), "ctc: what a transcript's "
                  "characters outside --vocab do. map: each becomes the vocabulary letter "
                  "of its Unicode compatibility decomposition without accents (ç -> c, "
                  "full-width letters), and the utterance is skipped when one has none "
                  "(digits, f in Vietnamese); drop: they are removed; skip: the utterance "
                  "is skipped. Each such utterance is listed in oov.jsonl.")
flags.DEFINE_integer("limit", None, "Convert at most this many utterances per split.")
flags.DEFINE_enum("compression", "none", ["none", "gzip"], "TFRecord compression.")
flags.DEFINE_float("max_skip_fraction", 0.1, "Exit non-zero when more than this "
                   "fraction of the utterances was skipped.")
flags.DEFINE_integer("sample_rate", 16000, "Audio is resampled to this rate, Hz.")
flags.DEFINE_float("min_seconds", 0.1, "Shorter utterances are skipped.")
flags.DEFINE_float("max_seconds", 30.0, "Longer utterances are skipped.")
flags.DEFINE_integer("seed", 0, "Seed of the negative-clip draw.")
flags.DEFINE_list("stats_splits", ["train"], "The training splits, whose frames give the "
                  "normalisation statistics; a prefix merges as in --splits (train = every "
                  "train-* split). Refused when none of them is converted; none: no statistics "
                  "(records only evaluated, with a model's own statistics).")

TOOL = "kws_tf.data_prep.create_tfrecords"


def _remove_stale_temporaries(out_dir: str) -> None:
  """Removes every ``*.tmp-*`` in ``out_dir``; only under its lock, which says no
  other converter is writing them."""
  for path in glob.glob(os.path.join(out_dir, "**", "*.tmp-*"), recursive=True):
    os.remove(path)


def _aggregate(out_dir: str, plan: dict, shards: Dict[str, int],
               formats: Sequence[str], feature_params: dict,
               normalization: Optional[dict] = None) -> Tuple[records.RecordsMetadata, list]:
  """metadata.json content and the skipped list from every shard's progress file.

  ``normalization``: the statistics as ``shard_worker.normalization`` gives them
  (the Beam pipeline combines them across its workers); None: from the progress
  files of the ``stats_splits`` shards, in plan order.
  The plan's ``sample_rate`` and ``feature_params`` are not repeated in the
  metadata's ``params``: each format's front-end config (``formats.<name>.params``)
  holds them; nor is ``stats_splits``: ``normalization.splits`` holds the splits.
  """
  splits, skipped, stats_summaries = {}, list(plan["skipped"]), []
  stats_splits = plan["stats_splits"]
  for split, count in shards.items():
    totals = {"examples": 0, "classes": collections.Counter(), "shards": [],
              "max_frames": {f: 0 for f in formats}, "max_label_length": 0}
    durations = {}
    for index in range(count):
      name = records.shard_name(split, index, count, plan["params"]["compression"])
      summary = records.read_json(shard_worker.progress_path(out_dir, name))
      totals["examples"] += summary["examples"]
      durations.update(summary["seconds"])
      totals["classes"].update(summary["classes"])
      totals["shards"].append(records.Shard(name, summary["examples"]))
      totals["max_label_length"] = max(totals["max_label_length"], summary["max_label_length"])
      for f in formats:
        totals["max_frames"][f] = max(totals["max_frames"][f], summary["max_frames"][f])
      if split in stats_splits:
        stats_summaries.append(summary)
      skipped.extend(summary["skipped"])
    seconds = round(sum(durations.values()), 3)
    splits[split] = records.SplitInfo(
        examples=totals["examples"], shards=totals["shards"], max_frames=totals["max_frames"],
        max_label_length=totals["max_label_length"], utterances=len(durations),
        seconds=seconds, hours=round(seconds / 3600, 4),
        classes=dict(sorted(totals["classes"].items())))
  if normalization is None:
    normalization = shard_worker.normalization(stats_summaries, formats)
  format_info = {}
  for f in formats:
    config = features.from_dict(feature_params[f])
    format_info[f] = records.FormatInfo(dir=f, dtype="int16" if f == "raw" else "float32",
                                        num_channels=config.num_channels,
                                        params=feature_params[f])
  # An utterance whose clips span two shards is reported by both.
  skipped = sorted({s["id"]: s for s in skipped}.values(), key=lambda s: s["id"])
  params = {k: v for k, v in plan["params"].items()
            if k not in ("sample_rate", "feature_params", "stats_splits")}
  ctc = plan["params"]["task"] == "ctc"
  metadata = records.RecordsMetadata(
      schema_version=records.SCHEMA_VERSION, tool=TOOL, tool_version=kws_tf.__version__,
      fingerprint=plan["fingerprint"], task=plan["params"]["task"],
      params=records.ConversionParams.from_json(params), formats=format_info, splits=splits,
      normalization=normalization, normalization_splits=list(stats_splits),
      skipped=len(skipped), classes=None if ctc else plan["classes"],
      vocabulary=plan["vocabulary"] if ctc else None)
  return metadata, skipped


def convert(args) -> int:
  """Runs the whole conversion; returns the process exit code.

  Holds ``out_dir``'s lock throughout. A file that cannot be read or written
  (a full disk) ends the run with a one-line error; the finished shards stay,
  the temporary files go, and the same command resumes.
  """
  try:
    plan, shards = shard_plan.build_plan(args)
  except (FileNotFoundError, ValueError, KeyError) as error:  # corpus, CTM, vocab, flags
    raise SystemExit(f"error: {error}") from error
  # The plan's objects (one per utterance) live until the end. Frozen, the
  # garbage collector does not rescan them whenever the pool's threads allocate.
  gc.freeze()
  os.makedirs(args.out_dir, exist_ok=True)
  with out_dir_lock.hold(args.out_dir):
    try:
      return _convert(args, plan, shards)
    except (OSError, shard_worker.ShardError) as error:  # a full disk, a worker's error
      raise SystemExit(f"error: {shard_worker.failure_message(error)} (the finished shards "
                       "are kept: the same command resumes)") from error
    finally:
      _remove_stale_temporaries(args.out_dir)


def _convert(args, plan: dict, shards: dict) -> int:
  """``convert`` under the lock: the plan's shards not yet finished, then the metadata."""
  shard_plan.check_plan(args.out_dir, plan)
  shard_plan.write_plan(args.out_dir, plan)
  if args.task == "ctc":
    text.Vocabulary(plan["vocabulary"]["symbols"]).save(
        os.path.join(args.out_dir, "vocab.json"))
    oov_summary = shard_plan.write_oov_report(args.out_dir, plan)
    if oov_summary:
      print(oov_summary, flush=True)
  for sub in list(args.formats) + [shard_worker.PROGRESS_DIR]:
    os.makedirs(os.path.join(args.out_dir, sub), exist_ok=True)
  _remove_stale_temporaries(args.out_dir)

  compression = args.compression
  shard_keys, tasks = [], []
  for split, chunks in shards.items():
    for index, chunk in enumerate(chunks):
      key = {"split": split, "index": index, "count": len(chunks),
             "stats": split in plan["stats_splits"]}
      shard_keys.append(key)
      name = records.shard_name(split, index, len(chunks), compression)
      if not shard_worker.shard_done(args.out_dir, name, args.formats):
        tasks.append(dict(key, items=chunk))
  done = len(shard_keys) - len(tasks)
  worker_config = {
      "out_dir": args.out_dir, "compression": compression,
      "feature_params": plan["params"]["feature_params"],
      "sample_rate": args.sample_rate, "min_seconds": args.min_seconds,
      "max_seconds": args.max_seconds, "clip_seconds": args.clip_seconds,
      "context_seconds": args.context_seconds if args.task == "kws" else 0.0,
  }
  total_utts = sum(len({i.utt for i in t["items"]}) for t in tasks)
  normalization = None
  if args.runner == "beam":
    from data_prep import beam_shards
    print(f"{len(tasks)} shards to write ({done} already complete), {total_utts} "
          f"utterances, Apache Beam ({args.beam_pipeline_options or 'DirectRunner'})",
          flush=True)
    normalization = beam_shards.convert(shard_keys, tasks, worker_config,
                                        args.beam_pipeline_options)
  else:
    _convert_in_pool(tasks, worker_config, done, total_utts, args)

  metadata, skipped = _aggregate(args.out_dir, plan, {s: len(c) for s, c in shards.items()},
                                 args.formats, plan["params"]["feature_params"],
                                 normalization)
  tmp = os.path.join(args.out_dir, f"skipped.jsonl.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for entry in skipped:
      f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(tmp, os.path.join(args.out_dir, "skipped.jsonl"))
  records.write_metadata(args.out_dir, metadata)
  return _report(metadata, skipped, plan["utterances"], args)


def _convert_in_pool(tasks: list, worker_config: dict, done: int, total_utts: int,
                     args) -> None:
  """Writes the shards of ``tasks`` with a pool of ``--cores`` worker processes."""
  workers = max(1, min(args.cores, len(tasks)))
  cpus = shard_worker.worker_cpus(workers, args.pin_workers)
  print(f"{len(tasks)} shards to write ({done} already complete), {total_utts} "
        f"utterances, {workers} workers{', each on its own CPU' if cpus else ''}",
        flush=True)
  if not tasks:
    return
  from tqdm import tqdm
  started = time.time()
  seconds = 0.0
  context = multiprocessing.get_context("spawn")
  with context.Pool(workers, shard_worker.init_worker,
                    (worker_config, cpus, context.Value("i", 0))) as pool, \
      tqdm(total=total_utts, unit="utt", desc="converting", file=sys.stderr,
           dynamic_ncols=True) as bar:
    for summary in pool.imap_unordered(shard_worker.convert_shard, tasks):
      seconds += sum(summary["seconds"].values())
      bar.update(summary["utterances"])
      bar.set_postfix(audio_s_per_s=f"{seconds / max(time.time() - started, 1e-9):.0f}")


def _report(metadata: records.RecordsMetadata, skipped: list, utterances: int, args) -> int:
  examples = sum(s.examples for s in metadata.splits.values())
  reasons = collections.Counter(s["reason"] for s in skipped)
  print(f"{args.out_dir}: {examples} examples from {utterances} utterances")
  for split, s in metadata.splits.items():
    print(f"  {split:>12}: {s.examples} examples, {len(s.shards)} shards, "
          f"{s.hours:.3f} h, classes {s.classes}")
  strays = reasons.pop(shard_plan.NOT_IN_SPLITS, 0)
  skipped_utts = len({s["id"] for s in skipped if s["reason"] != shard_plan.NOT_IN_SPLITS})
  if skipped_utts:
    print(f"  skipped {skipped_utts} utterances (see skipped.jsonl): " +
          ", ".join(f"{r} x{n}" for r, n in reasons.most_common()))
  if strays:
    print(f"  {strays} utterances of the CTM files are not in --splits (see skipped.jsonl)")
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
  if FLAGS.runner == "beam":
    beam_options.check_installed()
  sys.exit(convert(FLAGS))


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
