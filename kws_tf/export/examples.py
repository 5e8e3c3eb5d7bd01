"""The labelled examples of the parity check and the waveforms of int8 calibration.

``load_examples`` takes examples spread evenly over a records split: the
features stored in the records (normalised as in training, what the Keras
model reads) and the waveform of the same example (what an exported file
reads).

Waveforms: when the records hold the ``raw`` format, its samples are the
waveforms (a kws raw record's context on both sides is cut off); otherwise
they are read again from the corpus under ``audio_dir``, where the audio file
of utterance ``u`` is the one named ``u.<wav|flac|ogg|mp3>`` (the id is the
file stem in the VIVOS, LibriSpeech and manifest layouts); a kws clip is cut
at the record's ``start`` exactly as the converter cut it.
"""
import os
from typing import Dict, List, NamedTuple, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import audio, data, inference
from kws_tf import model_dir as model_dir_lib
from kws_tf.export.errors import ExportError


class Example(NamedTuple):
  """One labelled example as the model and the exported files see it.

  ``features`` float32 ``[frames, channels]``, normalised as in training;
  ``waveform`` float32 ``[samples]``; ``label`` (kws class) or ``labels``
  (ctc character ids).
  """
  id: str
  features: np.ndarray
  waveform: np.ndarray
  label: Optional[int] = None
  labels: Optional[List[int]] = None


def audio_index(audio_dir: str) -> Dict[str, Optional[str]]:
  """Audio file stem -> path of every audio file under ``audio_dir``.

  A stem found twice maps to None (ambiguous); ``read_waveform`` refuses it.
  """
  if not os.path.isdir(audio_dir):
    raise ExportError(f"--audio_dir {audio_dir} is not a folder")
  index: Dict[str, Optional[str]] = {}
  for root, _, names in os.walk(audio_dir):
    for name in names:
      stem, ext = os.path.splitext(name)
      if ext.lower() in inference.AUDIO_EXTENSIONS:
        index[stem] = None if stem in index else os.path.join(root, name)
  return index


def read_waveform(index: Dict[str, Optional[str]], utterance: str, audio_dir: str,
                  sample_rate: int) -> np.ndarray:
  """The audio of ``utterance`` (``audio_index``) at ``sample_rate``, as the converter read it."""
  if utterance not in index:
    raise ExportError(f"no audio file named {utterance}.<wav|flac|ogg|mp3> under {audio_dir}")
  if index[utterance] is None:
    raise ExportError(f"several audio files named {utterance}.* under {audio_dir}")
  try:
    return audio.read_audio(index[utterance], sample_rate)
  except audio.AudioError as e:
    raise ExportError(f"cannot read the audio of {utterance}: {e}") from e


def load_examples(model_dir: str, data_dir: str, split: str, limit: int,
                  audio_dir: Optional[str] = None) -> List[Example]:
  """``limit`` examples spread evenly over ``split`` (every k-th record, from the first),
  with their waveforms (module docstring).

  Raises ExportError when the records have no ``raw`` format and no
  ``audio_dir`` is given, or an example's audio cannot be found or read.
  """
  spec, metadata, parse = model_dir_lib.model_records(model_dir, data_dir)
  compression = metadata.compression
  sample_rate = metadata.sample_rate
  data.shard_paths(data_dir, spec.format, split, metadata)  # checks the split
  every = max(1, metadata.splits[split].examples // max(limit, 1))

  def spread(fmt):
    paths = data.shard_paths(data_dir, fmt, split, metadata)
    return data.records_dataset(paths, compression).shard(every, 0).take(limit)

  serialized = spread(spec.format)
  if "raw" in metadata.formats:
    raw_parse = data.make_parser(metadata, "raw", normalize=False)
    context = metadata.context_samples

    def clip(record):
      waveform = raw_parse(record)["features"].numpy()[:, 0]
      return waveform[context:len(waveform) - context]

    waveforms = (clip(r) for r in spread("raw"))
    source = None
  elif audio_dir:
    waveforms = None
    source = audio_index(audio_dir)
  else:
    raise ExportError(
        f"{data_dir} holds features but no waveforms (no 'raw' format); the parity check and "
        "int8 calibration need the audio: pass --audio_dir=<the corpus the records were made "
        "from>")
  kws = spec.task == "kws"
  extra_spec = {"utterance": tf.io.FixedLenFeature([], tf.string, b""),
                "start": tf.io.FixedLenFeature([], tf.float32, 0.0)}
  cache = {}
  examples = []
  for record in serialized:
    parsed = parse(record)
    example_id = parsed["id"].numpy().decode("utf-8")
    if waveforms is not None:
      waveform = next(waveforms)
    else:
      extra = tf.io.parse_single_example(record, extra_spec)
      utterance = extra["utterance"].numpy().decode("utf-8") if kws else example_id
      if utterance not in cache:
        cache.clear()
        cache[utterance] = read_waveform(source, utterance, audio_dir, sample_rate)
      waveform = cache[utterance]
      if kws:
        waveform = audio.cut_clip(waveform, float(extra["start"]),
                                  metadata.clip_samples, sample_rate)
    examples.append(Example(
        example_id, parsed["features"].numpy(), waveform,
        label=int(parsed["label"]) if kws else None,
        labels=None if kws else parsed["labels"].numpy().tolist()))
  if not examples:
    raise ExportError(f"split {split!r} of {data_dir} has no examples")
  return examples
