r"""Benchmark of the TFRecord converter and the tf.data reader; prints a markdown table.

  .venv/bin/python benchmarks/converter.py [--work_dir=/tmp/kws_tf_bench16k]

Not a test. On a synthetic corpus (made once in ``<work_dir>/corpus`` with
data_prep.synthesize_corpus and reused) it measures, in this order:

1. the baseline of deep-speech-compression (the 2018 project this toolkit
   succeeds): one process, one file at a time, ``librosa.load`` then MFCC,
   delta and delta-delta (39 channels), features only (nothing written);
2. ``python -m data_prep.create_tfrecords --task=ctc --formats=mfcc`` with
   ``--cores=1`` restricted to one CPU and ``--cores=2`` to two (as ``taskset``
   would), each into a fresh folder, timed as a whole command and as a
   steady-state rate (see the footnotes); ``--repeats`` rounds of the four
   commands, so that 1 and 2 cores see the same spells of a shared machine;
3. ``kws_tf.data.make_dataset`` reading MFCC records on one core: one-second
   KWS clips (records made from the same corpus with ``--task=kws``) and
   whole CTC utterances;
4. for each of ``--beam_workers`` N: the converter with ``--runner=beam`` on
   Beam's DirectRunner (``--direct_num_workers=N
   --direct_running_mode=multi_processing``) against the process pool with
   ``--cores=N``, both restricted to N CPUs (at most the machine's), timed as
   in 2, in rounds; its own table (``--beam_only``: this table alone);
5. with section 4: the CPU cost of one converter worker
   (``shard_worker.convert_shard``, MFCC, in this process) on LibriSpeech-like
   utterances: ``--flac_utterances`` of the corpus's train utterances, each
   repeated to 12.3 s (LibriSpeech 960 h's mean) and stored as 16-bit FLAC,
   the basis of the paper estimate for LibriSpeech in benchmarks/README.md.

Every process runs with OMP/MKL/OPENBLAS_NUM_THREADS=1, so rates are per
process (the converter's workers also limit TensorFlow to one thread each).
"""
import os
import sys

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
  os.environ[_name] = "1"  # before numpy is imported, so the baseline runs on one core

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import dataclasses
import resource
import shutil
import subprocess
import time
from typing import List, Optional, Set

import librosa
import numpy as np
import tensorflow as tf
from absl import app, flags

from data_prep import affinity, corpora
from kws_tf import data, records

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/kws_tf_bench", "Corpus (kept and reused) and records.")
flags.DEFINE_integer("speakers", 80, "Synthetic corpus speakers, train and test.")
flags.DEFINE_integer("test_speakers", 16, "Of which test speakers.")
flags.DEFINE_integer("utterances_per_speaker", 200, "Utterances per speaker.")
flags.DEFINE_integer("examples_per_shard", 200, "Converter --examples_per_shard "
                     "(200 is the converter's default).")
flags.DEFINE_integer("startup_limit", 20, "Converter --limit (utterances per split) of "
                     "the small run whose time is subtracted for the steady-state rate.")
flags.DEFINE_integer("repeats", 5, "Runs of the baseline and of each converter command; "
                     "the fastest counts (other processes on the machine only slow a run down).")
flags.DEFINE_integer("reader_examples", 20000, "Examples each reader benchmark reads.")
flags.DEFINE_integer("batch_size", 64, "Reader batch size.")
flags.DEFINE_list("beam_workers", ["1", "2", "4"], "Worker counts of the Beam DirectRunner "
                  "rows, each against the process pool with as many --cores; empty: none.")
flags.DEFINE_bool("beam_only", False, "Only the Beam comparison and the FLAC cost "
                  "(sections 4 and 5).")
flags.DEFINE_integer("flac_utterances", 300, "Section 5: 12.3 s FLAC utterances.")

SAMPLE_RATE = 16000
CONVERTER_TARGET = 3.0      # converter on one core / baseline
SCALING_TARGET = 1.7        # converter on two cores / on one core
READER_TARGET = 5000.0      # one-second MFCC examples per second on one core


@dataclasses.dataclass(frozen=True)
class Measure:
  """``items`` (utterances or examples) holding ``audio`` seconds, done in ``wall`` seconds
  of elapsed time and ``cpu`` seconds of CPU time."""
  items: float
  audio: float
  wall: float
  cpu: float

  def minus(self, other: "Measure") -> "Measure":
    return Measure(self.items - other.items, self.audio - other.audio,
                   self.wall - other.wall, self.cpu - other.cpu)

  @property
  def rate(self) -> float:
    return self.items / self.wall


def run_module(*args: str, cpus: Optional[Set[int]] = None) -> Measure:
  """Runs ``python -m <args>`` (kws_tf installed), on ``cpus`` only if given; wall and
  CPU time of its process tree (items and audio are 0)."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  inherited = os.sched_getaffinity(0)
  os.sched_setaffinity(0, cpus or inherited)  # this thread's, which the child inherits
  start = time.perf_counter()
  try:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True,
                            text=True)
  finally:
    os.sched_setaffinity(0, inherited)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n"
                       f"{result.stdout}\n{result.stderr}")
  cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  return Measure(0, 0.0, wall, cpu)


def make_corpus(corpus_dir: str) -> None:
  """The synthetic corpus; the synthesizer skips the speakers already in ``corpus_dir``."""
  print(f"corpus: {corpus_dir}", file=sys.stderr)
  run_module("data_prep.synthesize_corpus", f"--out_dir={corpus_dir}",
             f"--speakers={FLAGS.speakers}", f"--test_speakers={FLAGS.test_speakers}",
             f"--utterances_per_speaker={FLAGS.utterances_per_speaker}")


def convert(corpus_dir: str, out_dir: str, cores: int, task: str = "ctc",
            limit: Optional[int] = None, beam: bool = False) -> Measure:
  """One converter command into a fresh ``out_dir``, on ``cores`` CPUs (at most the
  machine's): a pool of ``cores`` processes, or with ``beam`` the DirectRunner with
  ``cores`` worker processes. Utterances and audio seconds from its metadata.json."""
  shutil.rmtree(out_dir, ignore_errors=True)
  args = [f"--data_dir={corpus_dir}", "--corpus=vivos", f"--out_dir={out_dir}",
          "--splits=train,test", "--formats=mfcc", f"--task={task}", f"--cores={cores}",
          f"--examples_per_shard={FLAGS.examples_per_shard}"]
  if beam:
    args += ["--runner=beam", f"--beam_pipeline_options=--direct_num_workers={cores} "
             "--direct_running_mode=multi_processing"]
  if task == "kws":
    args.append(f"--alignments={corpus_dir}/*/alignments.ctm")
  if limit:
    args.append(f"--limit={limit}")
  print(f"converter: {out_dir}", file=sys.stderr)
  cpus = affinity.usable_cpus()[:cores]
  timing = run_module("data_prep.create_tfrecords", *args, cpus=set(cpus))
  splits = records.load_metadata(out_dir).splits.values()
  return Measure(sum(s.utterances for s in splits), sum(s.seconds for s in splits),
                 timing.wall, timing.cpu)


def librosa_baseline(paths: List[str]) -> List[Measure]:
  """deep-speech-compression's features, file by file: (all files, all but the first)."""
  print(f"baseline: librosa on {len(paths)} files", file=sys.stderr)
  audio, first = 0.0, None
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  for path in paths:
    y, _ = librosa.load(path, sr=SAMPLE_RATE)
    mfcc = librosa.feature.mfcc(y=y, sr=SAMPLE_RATE, n_mfcc=13, n_fft=512, hop_length=160,
                                n_mels=40, fmin=20, fmax=8000)
    np.concatenate([mfcc, librosa.feature.delta(mfcc, width=9, order=1),
                    librosa.feature.delta(mfcc, width=9, order=2)])  # [39, frames]
    audio += len(y) / SAMPLE_RATE
    if first is None:
      first = Measure(1, audio, time.perf_counter() - start_wall,
                      time.process_time() - start_cpu)
  whole = Measure(len(paths), audio, time.perf_counter() - start_wall,
                  time.process_time() - start_cpu)
  return [whole, whole.minus(first)]


def read(records_dir: str, split: str) -> List[Measure]:
  """Iterates make_dataset (repeated) until ``--reader_examples``: (whole, after the first
  batch). Audio seconds: examples times the split's mean seconds per example."""
  print(f"reader: {records_dir} {split}", file=sys.stderr)
  metadata = records.load_metadata(records_dir)
  info = metadata.splits[split]
  seconds_per_example = (metadata.clip_seconds if metadata.task == "kws"
                         else info.seconds / info.examples)
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  batches = iter(data.make_dataset(records_dir, "mfcc", split, FLAGS.batch_size,
                                   repeat=True))
  count = int(tf.shape(next(batches)["id"])[0])
  first = Measure(count, count * seconds_per_example, time.perf_counter() - start_wall,
                  time.process_time() - start_cpu)
  while count < FLAGS.reader_examples:
    count += int(tf.shape(next(batches)["id"])[0])
  whole = Measure(count, count * seconds_per_example, time.perf_counter() - start_wall,
                  time.process_time() - start_cpu)
  return [whole, whole.minus(first)]


def cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def cells(whole: Measure, steady: Measure) -> List[str]:
  """Rates of the whole run and of the steady state, CPU per item and CPU/wall."""
  return [f"{whole.rate:,.0f}", f"{whole.audio / whole.wall:,.0f}", f"{steady.rate:,.0f}",
          f"{steady.audio / steady.wall:,.0f}", f"{1000 * steady.cpu / steady.items:.2f}",
          f"{steady.cpu / steady.wall:.2f}"]


def beam_comparison(corpus_dir: str) -> None:
  """Section 4: the Beam DirectRunner against the process pool; prints its table."""
  workers = sorted({int(n) for n in FLAGS.beam_workers})
  kinds = [(n, runner, part) for n in workers for runner in ("pool", "beam")
           for part in ("startup", "whole")]
  runs = {kind: [] for kind in kinds}
  for _ in range(FLAGS.repeats):  # rounds, so that every command sees the same spells
    for n, runner, part in kinds:
      runs[n, runner, part].append(convert(
          corpus_dir, os.path.join(FLAGS.work_dir, f"ctc_{runner}_{n}_{part}"), n,
          limit=FLAGS.startup_limit if part == "startup" else None, beam=runner == "beam"))
  measured = {}
  for n in workers:
    for runner in ("pool", "beam"):
      startup = min(runs[n, runner, "startup"], key=lambda m: m.wall)
      whole = min(runs[n, runner, "whole"], key=lambda m: m.wall)
      measured[n, runner] = (whole, whole.minus(startup))
  header = ["", "utt/s", "audio s/s", "steady utt/s", "steady audio s/s",
            "steady CPU ms per utt", "CPU/wall", "steady CPU s per audio hour",
            "steady Beam / pool"]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for n in workers:
    for runner, name in (("pool", f"process pool, --cores={n}"),
                         ("beam", f"Beam DirectRunner, {n} worker{'s' * (n > 1)}")):
      whole, steady = measured[n, runner]
      ratio = steady.rate / measured[n, "pool"][1].rate
      print("| " + " | ".join([name, *cells(whole, steady),
                               f"{3600 * steady.cpu / steady.audio:.2f}",
                               f"{ratio:.2f}x" if runner == "beam" else ""]) + " |")
  cpus = len(affinity.usable_cpus())
  print()
  print(f"- `python -m data_prep.create_tfrecords --corpus=vivos --splits=train,test "
        f"--task=ctc --formats=mfcc --examples_per_shard={FLAGS.examples_per_shard}` "
        "with `--cores=N` (process pool) or `--runner=beam --beam_pipeline_options="
        "'--direct_num_workers=N --direct_running_mode=multi_processing'`, into a fresh "
        f"folder, the process tree restricted to min(N, {cpus}) CPUs. Steady as for the "
        f"converter rows (minus a --limit={FLAGS.startup_limit} run); fastest of "
        f"{FLAGS.repeats} rounds. CPU: user + system of the process tree.")


def flac_cost(utts: List[corpora.Utterance]) -> None:
  """Section 5: one worker's CPU time per 12.3 s FLAC utterance; prints one line."""
  import soundfile
  from data_prep import shard_plan, shard_worker
  from kws_tf import audio, features
  seconds = 12.3
  flac_dir = os.path.join(FLAGS.work_dir, "flac")
  os.makedirs(flac_dir, exist_ok=True)
  items = []
  for utt in [u for u in utts if u.split == "train"][:FLAGS.flac_utterances]:
    path = os.path.join(flac_dir, utt.id + ".flac")
    if not os.path.exists(path):
      waveform = audio.read_audio(utt.audio_path, SAMPLE_RATE, keep_int16=True)
      samples = int(seconds * SAMPLE_RATE)
      soundfile.write(path, np.resize(waveform, samples), SAMPLE_RATE, subtype="PCM_16")
    items.append(shard_plan.Item(utt.id, utt.id, path, "a", labels=(1, 2)))
  out_dir = os.path.join(FLAGS.work_dir, "flac_records")
  config = {"out_dir": out_dir, "compression": "none",
            "feature_params": {"mfcc": features.default_config("mfcc").to_dict()},
            "sample_rate": SAMPLE_RATE, "min_seconds": 0.1, "max_seconds": 30.0,
            "clip_seconds": 1.0, "context_seconds": 0.0}
  shard_worker.init_worker(config, None, None)
  shards = [items[k:k + FLAGS.examples_per_shard]
            for k in range(0, len(items), FLAGS.examples_per_shard)]
  best = None
  for _ in range(FLAGS.repeats):
    shutil.rmtree(out_dir, ignore_errors=True)
    for sub in ("mfcc", shard_worker.PROGRESS_DIR):
      os.makedirs(os.path.join(out_dir, sub))
    start = time.process_time()
    for index, shard in enumerate(shards):
      shard_worker.convert_shard({"split": "train", "index": index, "count": len(shards),
                                  "stats": True, "items": shard})
    cpu = time.process_time() - start
    best = cpu if best is None else min(best, cpu)
  print(f"- One converter worker (`shard_worker.convert_shard`, MFCC with statistics, in "
        f"process) on {len(items)} utterances repeated to {seconds} s and stored as 16-bit "
        f"FLAC: {1000 * best / len(items):.2f} ms CPU per utterance, "
        f"{3600 * best / (len(items) * seconds):.2f} CPU s per audio hour (fastest of "
        f"{FLAGS.repeats}).")


def status(value: float, target: float) -> str:
  return "met" if value >= target else "**missed**"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  load = os.getloadavg()[0]
  corpus_dir = os.path.join(FLAGS.work_dir, "corpus")
  make_corpus(corpus_dir)
  utts = corpora.read_corpus("vivos", corpus_dir, ["train", "test"])
  if FLAGS.beam_only:
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; 1-minute load average "
          f"{load:.2f} at start")
    print(f"corpus: synthetic (espeak-ng), {len(utts)} utterances, {corpus_dir}")
    print()
    if FLAGS.beam_workers:
      beam_comparison(corpus_dir)
    flac_cost(utts)
    print(f"- 1-minute load average at end: {os.getloadavg()[0]:.2f}")
    return

  baseline = min((librosa_baseline([u.audio_path for u in utts])
                  for _ in range(FLAGS.repeats)), key=lambda m: m[0].wall)
  # Rounds of the four converter commands, so that a slow spell of the machine
  # (other tenants) falls on 1 and 2 cores alike.
  runs = {(cores, kind): [] for cores in (1, 2) for kind in ("startup", "whole")}
  for _ in range(FLAGS.repeats):
    for cores in (1, 2):
      runs[cores, "startup"].append(convert(
          corpus_dir, os.path.join(FLAGS.work_dir, f"ctc_{cores}_startup"), cores,
          limit=FLAGS.startup_limit))
      runs[cores, "whole"].append(convert(
          corpus_dir, os.path.join(FLAGS.work_dir, f"ctc_{cores}"), cores))
  converter = {}
  for cores in (1, 2):
    startup = min(runs[cores, "startup"], key=lambda m: m.wall)
    whole = min(runs[cores, "whole"], key=lambda m: m.wall)
    converter[cores] = [whole, whole.minus(startup)]
  round_scaling = [
      (w2.minus(s2)).rate / (w1.minus(s1)).rate
      for s1, w1, s2, w2 in zip(runs[1, "startup"], runs[1, "whole"], runs[2, "startup"],
                                runs[2, "whole"])]
  kws_dir = os.path.join(FLAGS.work_dir, "kws")
  convert(corpus_dir, kws_dir, os.cpu_count(), task="kws")
  cpu = affinity.usable_cpus()[0]
  affinity.pin_threads({cpu})
  reader_kws = read(kws_dir, "train")
  reader_ctc = read(os.path.join(FLAGS.work_dir, "ctc_2"), "train")

  per_core = [c.rate / b.rate for c, b in zip(converter[1], baseline)]
  scaling = [c2.rate / c1.rate for c2, c1 in zip(converter[2], converter[1])]
  rows = [
      ["baseline librosa (1 process)", *cells(*baseline), "", ""],
      ["converter 1 core", *cells(*converter[1]), "", ""],
      ["converter 2 cores", *cells(*converter[2]), "", ""],
      ["speedup: converter 1 core / baseline", f"{per_core[0]:.2f}x", "",
       f"{per_core[1]:.2f}x", "", "", "", f">= {CONVERTER_TARGET}x",
       status(per_core[1], CONVERTER_TARGET)],
      ["speedup: converter 2 cores / 1 core", f"{scaling[0]:.2f}x", "", f"{scaling[1]:.2f}x",
       "", "", "", f">= {SCALING_TARGET}x", status(scaling[1], SCALING_TARGET)],
      ["reader kws 1 core (1 s MFCC clips)", *cells(*reader_kws),
       f">= {READER_TARGET:,.0f} ex/s", status(reader_kws[1].rate, READER_TARGET)],
      ["reader ctc 1 core (utterances)", *cells(*reader_ctc), "", ""],
  ]
  header = ["", "utt or ex/s", "audio s/s", "steady utt or ex/s", "steady audio s/s",
            "steady CPU ms per utt or ex", "CPU/wall", "target", "(on steady)"]
  print(f"machine: {os.cpu_count()} cores, {cpu_model()}; 1-minute load average "
        f"{load:.2f} at start, {os.getloadavg()[0]:.2f} at end (other processes on the "
        "machine lower the wall-time rates and CPU/wall)")
  print(f"corpus: synthetic (espeak-ng), {len(utts)} utterances, "
        f"{baseline[0].audio / 3600:.2f} h ({baseline[0].audio / len(utts):.2f} s mean), "
        f"{corpus_dir}")
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")
  print()
  print(f"- Baseline: librosa {librosa.__version__}, one process, file by file: "
        "librosa.load(sr=16000), feature.mfcc(n_mfcc=13, n_fft=512, hop_length=160, "
        "n_mels=40, fmin=20, fmax=8000), feature.delta(width=9) orders 1 and 2, stacked to "
        "39 channels; features only, no TFRecord writing (favours the baseline). Steady "
        f"excludes the first file. Fastest of {FLAGS.repeats} runs, as for each converter "
        "command (their runs in rounds: 1 core limited, 1 core, 2 cores limited, 2 cores).")
  print(f"- Converter: `python -m data_prep.create_tfrecords --corpus=vivos "
        f"--splits=train,test --task=ctc --formats=mfcc --cores=N "
        f"--examples_per_shard={FLAGS.examples_per_shard}` into a fresh folder, the whole "
        "process tree restricted to N CPUs (so each worker is pinned to its own). The first "
        "columns time the whole command (interpreter, TensorFlow import, planning, worker "
        "start-up, conversion, metadata). Steady = (utterances of the full run - those of a "
        f"run with --limit={FLAGS.startup_limit} per split) / (difference of their wall "
        "times): the fixed start-up and finishing costs cancel, what remains is the "
        "conversion rate at scale (including any idle worker at the end). CPU ms and CPU/wall: "
        "CPU time of the process tree (user + system) over the same differences.")
  print("- 2 cores / 1 core, steady, within each round: "
        + ", ".join(f"{r:.2f}x" for r in round_scaling)
        + f" (median {np.median(round_scaling):.2f}x).")
  print(f"- Readers: kws_tf.data.make_dataset(records, 'mfcc', 'train', "
        f"batch_size={FLAGS.batch_size}, repeat=True), no shuffling, normalised, "
        f"{FLAGS.reader_examples:,}+ examples, TensorFlow intra/inter-op threads 1 and "
        f"every thread pinned to CPU {cpu}. KWS records: `--task=kws "
        f"--alignments='<corpus>/*/alignments.ctm' --formats=mfcc` from the same corpus; "
        "ctc records: the converter's 2-core output. Steady excludes the first batch "
        "(pipeline start-up).")
  if FLAGS.beam_workers:
    print()
    beam_comparison(corpus_dir)
    flac_cost(utts)


if __name__ == "__main__":
  app.run(main)
