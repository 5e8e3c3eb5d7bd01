"""CTC forced alignment of records through a trained model, CTM output, boundary errors.

The work behind ``data_prep/align.py`` (see its docstring for the outputs and
the time conventions), importable without the binary's flags.
"""
import collections
import dataclasses
import json
import os
from typing import Dict, List, Mapping, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from data_prep import corpora
from kws_tf import text as text_lib
from kws_tf.evaluation import decoding

@dataclasses.dataclass
class SplitResult:
  """Alignment of one split: utterance id -> words, and the skipped utterances."""
  words: Dict[str, List[decoding.WordTime]]
  skipped: List[dict]


@dataclasses.dataclass
class BoundaryErrors:
  """Word-boundary errors of a hypothesis against a reference alignment.

  ``start`` and ``end`` are signed errors (hypothesis - reference) in seconds,
  float64 ``[words]``, one per word of the compared utterances (those in both
  alignments whose normalised words are the same sequence). ``mismatched``:
  ids in both whose words differ; ``unreferenced``: hypothesis ids that the
  reference does not have.
  """
  start: np.ndarray
  end: np.ndarray
  utterances: int
  mismatched: List[str]
  unreferenced: List[str]


def align_utterance(log_probs: np.ndarray, transcript: str, vocabulary: text_lib.Vocabulary,
                    frame_seconds: float, max_seconds: float) -> List[decoding.WordTime]:
  """The words of one utterance with their times.

  Args:
    log_probs: float ``[logit_frames, vocabulary]`` log-probabilities of the
      utterance's valid frames.
    transcript: the normalised transcript; every character in ``vocabulary``.
    vocabulary: the model's vocabulary (blank at 0, space included).
    frame_seconds: seconds per logit frame.
    max_seconds: word times are clipped to this time (seconds): the
      utterance's last input frame.

  Returns:
    One WordTime per word of the transcript, in order, times in seconds.
    Raises ValueError when the transcript cannot fit in the frames.
  """
  alignment = decoding.forced_align(log_probs, vocabulary.encode(transcript))
  words = decoding.word_times(alignment, vocabulary, frame_seconds,
                              space_index=vocabulary.symbols.index(" "))
  return [decoding.WordTime(w.word, min(w.start, max_seconds), min(w.end, max_seconds))
          for w in words]


def _align_shard(forward, parse, path: str, compression: str, data_symbols: Sequence[str],
                 vocabulary: text_lib.Vocabulary, frame_seconds: float, hop: float,
                 batch_size: int, split: str, result: SplitResult, bar) -> None:
  """Aligns the utterances of one shard into ``result``, in record order.

  The shard's examples run through ``forward`` in batches of similar length.
  """
  from kws_tf import data
  examples = [parse(s) for s in data.records_dataset([path], compression)]
  order = np.argsort([int(e["num_frames"]) for e in examples], kind="stable")
  aligned: Dict[int, List[decoding.WordTime]] = {}
  reasons: Dict[int, str] = {}
  for begin in range(0, len(order), batch_size):
    chunk = order[begin:begin + batch_size]
    num_frames = np.array([int(examples[i]["num_frames"]) for i in chunk], np.int32)
    features = np.zeros([len(chunk), num_frames.max(), examples[chunk[0]]["features"].shape[-1]],
                        np.float32)
    for row, i in enumerate(chunk):
      features[row, :num_frames[row]] = examples[i]["features"].numpy()
    log_probs, logit_frames = forward(features, num_frames)
    log_probs, logit_frames = log_probs.numpy(), logit_frames.numpy()
    for row, i in enumerate(chunk):
      labels = examples[i]["labels"].numpy()
      transcript = "".join(data_symbols[j] for j in labels)
      unknown = vocabulary.unknown(transcript)
      if unknown:
        reasons[i] = f"characters not in the model's vocabulary: {''.join(unknown)}"
      elif not transcript.strip():
        reasons[i] = "empty transcript"
      else:
        try:
          aligned[i] = align_utterance(log_probs[row, :logit_frames[row]], transcript,
                                       vocabulary, frame_seconds, (num_frames[row] - 1) * hop)
        except ValueError as e:
          reasons[i] = f"transcript does not fit: {e}"
    bar.update(len(chunk))
  for i, example in enumerate(examples):
    utterance_id = example["id"].numpy().decode("utf-8")
    if i in aligned:
      result.words[utterance_id] = aligned[i]
    else:
      result.skipped.append({"id": utterance_id, "split": split, "reason": reasons[i]})


def align_records(model_dir: str, data_dir: str, splits: Sequence[str] = (),
                  batch_size: int = 16, checkpoint: str = "best") -> Dict[str, SplitResult]:
  """Aligns every utterance of ``splits`` (default: all) of ctc records; split -> result."""
  import tensorflow as tf
  from tqdm import tqdm
  from kws_tf import data
  from kws_tf import model_dir as model_dir_lib

  spec, data_meta, parse = model_dir_lib.model_records(model_dir, data_dir)
  if spec.task != "ctc":
    raise ValueError(f"{model_dir} holds a {spec.task} model; alignment needs a ctc model")
  splits = list(splits) or list(data_meta.splits)
  unknown = [s for s in splits if s not in data_meta.splits]
  if unknown:
    raise ValueError(f"{data_dir} has no split {unknown[0]!r} (it has "
                     f"{', '.join(data_meta.splits)})")
  fmt = spec.format
  vocabulary = text_lib.Vocabulary(spec.vocabulary["symbols"])
  model = model_dir_lib.load_trained_model(model_dir, checkpoint)
  hop = spec.frame_seconds
  channels = spec.num_channels
  frame_seconds = spec.output_frame_seconds

  @tf.function(input_signature=[tf.TensorSpec([None, None, channels], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def forward(features, num_frames):
    outputs = model({"features": features, "num_frames": num_frames}, training=False)
    return tf.nn.log_softmax(outputs["logits"]), outputs["logit_frames"]

  results = {}
  total = sum(data_meta.splits[s].examples for s in splits)
  with tqdm(total=total, unit="utt", desc="aligning", dynamic_ncols=True) as bar:
    for split in splits:
      result = results[split] = SplitResult({}, [])
      for path in data.shard_paths(data_dir, fmt, split, data_meta):
        _align_shard(forward, parse, path, data_meta.compression,
                     data_meta.vocabulary["symbols"], vocabulary, frame_seconds, hop,
                     batch_size, split, result, bar)
  return results


def write_outputs(results: Mapping[str, SplitResult], out: str) -> Dict[str, List[str]]:
  """Writes each CTM and its skipped list (module docstring); CTM path -> its splits."""
  by_path = collections.defaultdict(list)
  for split in results:
    by_path[out.replace("{split}", split)].append(split)
  for path, splits in by_path.items():
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    decoding.write_ctm(path, {utt: words for s in splits
                              for utt, words in results[s].words.items()})
    skipped_path = skipped_file(path)
    tmp = skipped_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for s in splits:
        for entry in results[s].skipped:
          f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, skipped_path)
  return dict(by_path)


def skipped_file(ctm_path: str) -> str:
  """``<dir>/<stem>.skipped.jsonl`` for ``<dir>/<stem>.ctm``."""
  return os.path.splitext(ctm_path)[0] + ".skipped.jsonl"


def boundary_errors(hypothesis: Mapping[str, Sequence[corpora.Word]],
                    reference: Mapping[str, Sequence[corpora.Word]]) -> BoundaryErrors:
  """Signed start and end errors of every word of the utterances both alignments have.

  Both map utterance id -> words sorted by start (``corpora.read_ctm``).
  Words are compared after ``kws_tf.text.normalize``; an utterance whose
  word sequences differ is listed in ``mismatched`` and not compared.
  """
  starts, ends, mismatched, unreferenced, compared = [], [], [], [], 0
  for utt, words in hypothesis.items():
    if utt not in reference:
      unreferenced.append(utt)
      continue
    truth = reference[utt]
    if [text_lib.normalize(w.word) for w in words] != \
        [text_lib.normalize(w.word) for w in truth]:
      mismatched.append(utt)
      continue
    compared += 1
    starts.extend(h.start - r.start for h, r in zip(words, truth))
    ends.extend(h.end - r.end for h, r in zip(words, truth))
  return BoundaryErrors(np.array(starts, np.float64), np.array(ends, np.float64), compared,
                        mismatched, unreferenced)


def error_table(errors: BoundaryErrors) -> Dict[str, Dict[str, float]]:
  """Row (start, end, both) -> median, mean and p90 absolute error and signed mean, ms.

  Raises ValueError when no word was compared.
  """
  if not errors.start.size:
    raise ValueError("no word to compare: the alignments share no utterance with the same words")
  rows = {"start": errors.start, "end": errors.end,
          "both": np.concatenate([errors.start, errors.end])}
  return {name: {"median": 1000 * float(np.median(np.abs(e))),
                 "mean": 1000 * float(np.mean(np.abs(e))),
                 "p90": 1000 * float(np.percentile(np.abs(e), 90)),
                 "signed_mean": 1000 * float(np.mean(e))}
          for name, e in rows.items()}


def format_error_table(errors: BoundaryErrors) -> str:
  """A markdown table of :func:`error_table` with the counts above it."""
  lines = [f"{errors.utterances} utterances, {errors.start.size} words compared; "
           f"{len(errors.mismatched)} with other words, {len(errors.unreferenced)} "
           "without reference",
           "| boundary | median ms | mean ms | p90 ms | signed mean ms |",
           "|---|---|---|---|---|"]
  for name, row in error_table(errors).items():
    lines.append(f"| {name} | {row['median']:.1f} | {row['mean']:.1f} | {row['p90']:.1f} | "
                 f"{row['signed_mean']:+.1f} |")
  return "\n".join(lines)


def reference_report(paths: Dict[str, List[str]], reference: Sequence[str]) -> str:
  hypothesis = corpora.read_ctm(list(paths))
  return format_error_table(boundary_errors(hypothesis, corpora.read_ctm(reference)))
