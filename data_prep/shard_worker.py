"""The converter's worker process: one whole shard per task, in every format.

A pool of workers (``init_worker`` sets each up) runs ``convert_shard`` on
the shards of ``data_prep.shard_plan``. For one shard a worker reads the
audio of its items (an utterance's segment of its file when it has one) in
chunks (``kws_tf.audio`` at the target rate: int16
samples of 16-bit PCM files, float32 of others; a kws item is its clip, with
the raw format's context on both sides),
computes every feature format in batches (``batched_features``), writes one
TFRecord file per format under a temporary name and renames it into place
when complete (``kws_tf.records.ShardWriter``), then writes its summary to
``<out_dir>/progress/<shard name>.json``: a shard is finished
(``shard_done``) when that file and every format's shard exist.

A kws utterance whose aligned words end after its audio (past
``ALIGNMENT_TOLERANCE_SECONDS``) is skipped whole, like one whose audio does
not read: its alignment does not belong to that audio. A shard that cannot
be written (a full disk) raises OSError naming the file; an error that could
not cross back to the converter's process (an exception the pool cannot
pickle or unpickle, which would otherwise stop the pool) becomes a
``ShardError`` with its message.
"""
import collections
import ctypes
import os
import pickle
from typing import Iterable, List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from data_prep import affinity
from data_prep.shard_plan import Item
from kws_tf import audio, features, records

PROGRESS_DIR = "progress"
# The skip reason of a kws utterance whose aligned words end after its audio.
PAST_AUDIO_END = "alignment past the end of the audio"
# How far (seconds) the aligned words may end after the audio: CTM times are
# rounded, to 10 ms frames by many aligners.
ALIGNMENT_TOLERANCE_SECONDS = 0.02


class ShardError(Exception):
  """A shard that was not written: the message names the shard and the reason.

  Its one string argument pickles, so it always reaches the converter's process.
  """


def progress_path(out_dir: str, name: str) -> str:
  """``<out_dir>/progress/<name>.json``: the summary of shard ``name``."""
  return os.path.join(out_dir, PROGRESS_DIR, name + ".json")


def shard_done(out_dir: str, name: str, formats: Sequence[str]) -> bool:
  """True when shard ``name`` and its summary were written in every format."""
  return (os.path.exists(progress_path(out_dir, name)) and
          all(os.path.exists(os.path.join(out_dir, f, name)) for f in formats))


# This worker process's ``config`` and ``front_ends`` (format -> features config), set by
# ``init_worker``.
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


def init_worker(config: dict, cpus: Optional[List[int]], started) -> None:
  """Worker set-up: memory reuse, CPU pinning, one TensorFlow thread, the front ends.

  Args:
    config: ``out_dir``, ``compression``, ``feature_params`` (format -> its
      ``kws_tf.features`` config dict), ``sample_rate`` (Hz), ``min_seconds``,
      ``max_seconds``, ``clip_seconds``, ``context_seconds`` (kws; ctc 0).
    cpus: one per worker, or None (not pinned).
    started: a shared counter of the workers started, the index of this one's CPU.
  """
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

  ``cache`` holds the last utterance read (``utt``, ``waveform``, ``error``: its
  skip reason or None), since
  the examples of one utterance are consecutive, and ``seconds``: the duration of
  every utterance read, by id. A kws utterance whose aligned words end after its
  audio (``Item.alignment_end``) goes to ``skipped`` like one that does not read.
  """
  signals, samples = [], 0
  end = min(begin + CHUNK_EXAMPLES, len(items))
  while begin < end and samples < CHUNK_SAMPLES:
    item = items[begin]
    begin += 1
    if item.utt != cache.get("utt"):
      cache.update(utt=item.utt, waveform=None, error=None)
      try:
        waveform = audio.read_audio(item.path, config["sample_rate"], config["min_seconds"],
                                    config["max_seconds"], keep_int16=True,
                                    offset=item.offset or 0.0, duration=item.duration)
      except audio.AudioError as e:
        cache["error"] = e.reason
        skipped.append({"id": item.utt, "path": item.path, "reason": e.reason,
                        "message": str(e)})
      else:
        seconds = len(waveform) / config["sample_rate"]
        if (item.alignment_end is not None and
            item.alignment_end > seconds + ALIGNMENT_TOLERANCE_SECONDS):
          cache["error"] = PAST_AUDIO_END
          skipped.append({"id": item.utt, "path": item.path, "reason": PAST_AUDIO_END,
                          "message": f"{item.path}: the aligned words end at "
                                     f"{item.alignment_end:.3f} s, the audio at {seconds:.3f} s"})
        else:
          cache["waveform"] = waveform
          cache["seconds"][item.utt] = round(seconds, 4)
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
  """Writes one shard in every format and its progress file; returns its summary.

  Args:
    task: ``split``, ``index`` and ``count`` (the shard's place in its
      split), ``stats`` (True to accumulate normalisation moments), ``items``
      (its ``Item`` list, id-sorted).

  Returns:
    the summary written to ``progress_path``: ``split``, ``index``, ``name``,
    ``examples``, ``utterances``, ``seconds`` (utterance id -> duration read),
    ``classes`` (text -> examples; ctc ``{"utterances": n}``), ``max_frames``
    per format, ``max_label_length``, ``skipped`` (utterances whose audio
    did not read or ended before their alignment), ``moments`` per format
    (``[2, channels]``: sum and sum of squares over frames, float64; None
    without ``stats``) and ``frame_count`` per format.

  Raises:
    OSError naming the file that could not be written (a full disk), with the
    shard's temporary files removed; ShardError with the message of an error
    that would not survive the pool's pickling.
  """
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
  except BaseException as error:
    for writer in writers.values():
      writer.abort()
    if isinstance(error, Exception) and not _crosses_processes(error):
      raise ShardError(f"shard {name}: {type(error).__name__}: {error}") from error
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
  records.write_json(progress_path(out_dir, name), summary)
  return summary


def normalization(summaries: Iterable[dict], formats: Sequence[str]) -> dict:
  """Per-channel normalisation statistics of the frames of shards ``summaries``.

  Args:
    summaries: the summaries (``convert_shard``) of the shards whose frames
      count, in the order their moments are summed (the plan's: split, then
      shard index; float64 sums depend on the order, the statistics written
      must not). A shard without moments (not a statistics shard, or no
      example) adds nothing.
    formats: the feature formats.

  Returns:
    format -> ``mean`` and ``std`` (lists of ``channels`` floats, rounded to 6
    decimals; std at least 1e-8) and ``frames``, for each format with frames.
  """
  moments, frames = {}, collections.Counter()
  for summary in summaries:
    for f in formats:
      if summary["moments"][f] is not None:
        m = np.asarray(summary["moments"][f])
        moments[f] = m if f not in moments else moments[f] + m
    frames.update(summary["frame_count"])
  statistics = {}
  for f in formats:
    if f in moments and frames[f]:
      mean = moments[f][0] / frames[f]
      std = np.sqrt(np.maximum(moments[f][1] / frames[f] - mean ** 2, 0.0))
      statistics[f] = {"mean": [round(float(v), 6) for v in mean],
                       "std": [round(float(max(v, 1e-8)), 6) for v in std],
                       "frames": int(frames[f])}
  return statistics


def failure_message(error: Exception) -> str:
  """The one-line reason of a shard's ``OSError`` (``<file>: <reason>``) or ``ShardError``."""
  if isinstance(error, OSError) and error.filename:
    return f"{error.filename}: {error.strerror or error}"
  return str(error)


def _crosses_processes(error: Exception) -> bool:
  """Whether ``error`` survives the pool's trip back to the converter (pickle and unpickle)."""
  try:
    pickle.loads(pickle.dumps(error))
  except Exception:  # any failure of a foreign class's reduce or constructor
    return False
  return True
