"""TFRecord schema, shard names, the atomic shard writer, metadata and fingerprints.

One record is a ``tf.train.Example`` with these features:

  id          bytes    example id (utterance id; for KWS clips ``<utt>-p<nnn>`` or ``<utt>-n<ms>``)
  features    bytes    little-endian float32 ``[num_frames, num_channels]`` row-major;
                       the raw format stores int16 samples ``[num_frames]`` instead
  num_frames  int64    frames (raw: samples)
  text        bytes    normalised transcript (ctc) or the keyword / "negative" (kws)
  labels      int64[]  ctc: character ids (no blanks)
  label       int64    kws: class index, ``len(keywords)`` is "negative"
  utterance   bytes    kws: the source utterance id
  start       float    kws: clip start in the source utterance, seconds
  shift_range float[2] kws: lowest and highest offsets of the clip start from
                       ``start`` (seconds) that keep its label true

The kws ``raw`` format holds ``params.context_seconds`` of audio before and
after the clip (``clip_seconds + 2 * context_seconds`` in all); the feature
formats hold the clip itself.

``num_channels`` is the same for every record of a format and is stored in
``metadata.json`` (``formats.<name>.num_channels``).
"""
import hashlib
import json
import os
from typing import Iterable, Optional, Sequence

import numpy as np

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"


def shard_name(split: str, index: int, count: int, compression: str = "none") -> str:
  """``<split>-<index:05d>-of-<count:05d>.tfrecord[.gz]``."""
  suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
  return f"{split}-{index:05d}-of-{count:05d}{suffix}"


def tf_compression(compression: str) -> str:
  """Flag value ``none|gzip`` -> the compression type TFRecord readers take."""
  if compression not in ("none", "gzip"):
    raise ValueError(f"compression must be none or gzip, got {compression!r}")
  return "GZIP" if compression == "gzip" else ""


def _bytes(values):
  import tensorflow as tf
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
  import tensorflow as tf
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
  import tensorflow as tf
  return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def serialize_example(example_id: str, features: np.ndarray, text: str,
                      labels: Optional[Iterable[int]] = None,
                      label: Optional[int] = None,
                      utterance: Optional[str] = None,
                      start: Optional[float] = None,
                      shift_range: Optional[Sequence[float]] = None) -> bytes:
  """One record, see the module docstring. Map order is fixed (``deterministic``),
  so the same example gives the same bytes in every process.

  Args:
    features: float32 ``[frames, channels]`` or int16 ``[samples]`` (raw).
  """
  import tensorflow as tf
  if features.dtype == np.int16:
    if features.ndim != 1:
      raise ValueError(f"raw samples must be 1-D, got shape {features.shape}")
  elif features.dtype == np.float32:
    if features.ndim != 2:
      raise ValueError(f"features must be [frames, channels], got {features.shape}")
  else:
    raise ValueError(f"features must be float32 or int16, got {features.dtype}")
  feature = {
      "id": _bytes([example_id.encode("utf-8")]),
      "features": _bytes([np.ascontiguousarray(
          features, features.dtype.newbyteorder("<")).tobytes()]),
      "num_frames": _ints([features.shape[0]]),
      "text": _bytes([text.encode("utf-8")]),
  }
  if labels is not None:
    feature["labels"] = _ints(list(labels))
  if label is not None:
    feature["label"] = _ints([label])
  if utterance is not None:
    feature["utterance"] = _bytes([utterance.encode("utf-8")])
  if start is not None:
    feature["start"] = _floats([start])
  if shift_range is not None:
    feature["shift_range"] = _floats(list(shift_range))
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


class ShardWriter:
  """Writes a shard under a temporary name; ``commit()`` renames it into place.

  A shard killed half-way leaves only ``<name>.tmp-<pid>``, never a file with
  the final name, so a resumed run can trust every final name it sees.
  """

  def __init__(self, path: str, compression: str = "none"):
    import tensorflow as tf
    self.path = path
    self._tmp = f"{path}.tmp-{os.getpid()}"
    self._writer = tf.io.TFRecordWriter(
        self._tmp, options=tf.io.TFRecordOptions(tf_compression(compression)))
    self.count = 0

  def write(self, record: bytes) -> None:
    self._writer.write(record)
    self.count += 1

  def commit(self) -> None:
    self._writer.close()
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    self._writer.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)


def write_json(path: str, data) -> None:
  """Writes JSON atomically (temporary file + rename), keys sorted, UTF-8."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def fingerprint(data) -> str:
  """sha256 of the canonical JSON of ``data`` (parameters, ids, labels)."""
  blob = json.dumps(data, ensure_ascii=False, sort_keys=True,
                    separators=(",", ":")).encode("utf-8")
  return hashlib.sha256(blob).hexdigest()


def load_metadata(records_dir: str) -> dict:
  """``<records_dir>/metadata.json``, with a clear error when it is missing."""
  path = os.path.join(records_dir, METADATA_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} does not exist: {records_dir} is not a finished "
        "create_tfrecords output (run or resume data_prep/create_tfrecords)")
  metadata = read_json(path)
  if metadata.get("schema_version") != SCHEMA_VERSION:
    raise ValueError(f"{path}: schema_version {metadata.get('schema_version')} "
                     f"is not {SCHEMA_VERSION}; re-create the records")
  return metadata
