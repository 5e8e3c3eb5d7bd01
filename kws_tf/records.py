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
``metadata.json`` (``formats.<name>.num_channels``), typed as ``RecordsMetadata``:
``load_metadata`` reads it, ``write_metadata`` writes it.
"""
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

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


def tf_error_reason(message: str) -> str:
  """The first line of a TensorFlow error ``message`` without the ``{{function_node ...}}``
  before it and the ``[Op:...] name: ...`` after it: ``truncated record at 418794'
  failed with Read less bytes than requested``."""
  lines = message.splitlines()
  return re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*", "",
                lines[0] if lines else "")


class ShardWriter:
  """Writes a shard under a temporary name; ``commit()`` renames it into place.

  A shard killed half-way leaves only ``<name>.tmp-<pid>``, never a file with
  the final name, so a resumed run can trust every final name it sees. A
  failed write (a full disk) raises OSError whose ``filename`` is the shard's
  final path (TensorFlow's file errors become OSError too); ``abort()`` then
  still removes the temporary file.
  """

  def __init__(self, path: str, compression: str = "none"):
    import tensorflow as tf
    self.path = path
    self._tmp = f"{path}.tmp-{os.getpid()}"
    self._errors = (OSError, tf.errors.OpError)
    with self._as_os_error():
      self._writer = tf.io.TFRecordWriter(
          self._tmp, options=tf.io.TFRecordOptions(tf_compression(compression)))
    self.count = 0

  @contextlib.contextmanager
  def _as_os_error(self):
    """Raises an OSError naming ``self.path`` for an OSError or TensorFlow error inside."""
    try:
      yield
    except self._errors as error:
      if isinstance(error, OSError):
        reason = error.strerror or str(error)
      else:  # TensorFlow's message is "<file>; <reason>"
        reason = error.message.replace(f"{self._tmp}; ", "")
      raise OSError(getattr(error, "errno", None), reason, self.path) from error

  def write(self, record: bytes) -> None:
    with self._as_os_error():
      self._writer.write(record)
    self.count += 1

  def commit(self) -> None:
    with self._as_os_error():
      self._writer.close()
      os.replace(self._tmp, self.path)

  def abort(self) -> None:
    try:
      self._writer.close()
    except self._errors:
      pass  # a full disk fails the last flush too; the file goes anyway
    if os.path.exists(self._tmp):
      os.remove(self._tmp)


def write_json(path: str, data) -> None:
  """Writes JSON atomically (temporary file + rename), keys sorted, UTF-8."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def write_bytes(path: str, content: bytes) -> None:
  """Writes ``content`` atomically (temporary file + rename)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(content)
  os.replace(tmp, path)


def read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


# A test set's rows (the robustness set, the always-on set), one JSON object per line.
SET_MANIFEST = "manifest.jsonl"


def read_set_manifest(set_dir: str, keys: Sequence[str], kind: str, maker: str,
                      convert=None) -> List[dict]:
  """The rows of a test set's ``<set_dir>/manifest.jsonl`` (one JSON object per line).

  Each row must hold ``keys``; its ``path`` is made absolute (under
  ``set_dir``), and ``convert(row)``, when given, rewrites fields in place.
  FileNotFoundError naming ``maker`` (the program that makes the set) when the
  file is missing; a one-line ValueError naming the file and line for a line
  that is not JSON, a row without ``keys`` (a "``kind`` row"), or a row that
  ``convert`` refuses (ValueError, TypeError, KeyError, AttributeError).
  """
  path = os.path.join(set_dir, SET_MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: make the set with {maker}")
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not JSON ({error})") from None
      missing = [k for k in keys if k not in row] if isinstance(row, dict) else list(keys)
      if missing:
        raise ValueError(f"{path}:{number}: not a {kind} row (needs {', '.join(missing)})")
      if convert is not None:
        try:
          convert(row)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
          raise ValueError(f"{path}:{number}: {error}") from None
      row["path"] = os.path.join(set_dir, row["path"])
      rows.append(row)
  return rows


def fingerprint(data) -> str:
  """sha256 of the canonical JSON of ``data`` (parameters, ids, labels)."""
  blob = json.dumps(data, ensure_ascii=False, sort_keys=True,
                    separators=(",", ":")).encode("utf-8")
  return hashlib.sha256(blob).hexdigest()


def _check_object(data: Any, where: str) -> None:
  """ValueError naming ``where`` unless ``data`` is a JSON object (a mapping)."""
  if not isinstance(data, Mapping):
    raise ValueError(f"{where} is not a JSON object")


def _check_keys(data: Any, where: str, required: Iterable[str],
                optional: Iterable[str] = ()) -> None:
  """ValueError naming ``where`` and its missing or unknown keys."""
  _check_object(data, where)
  required = set(required)
  missing = sorted(required - set(data))
  unknown = sorted(set(data) - required - set(optional))
  if missing or unknown:
    problems = [f"{what} keys {keys}" for what, keys in (("missing", missing),
                                                           ("unknown", unknown)) if keys]
    raise ValueError(f"{where}: {', '.join(problems)}")


def _json_fields(cls) -> tuple:
  """``(required, optional)`` field names of a dataclass: optional ones have defaults."""
  fields = dataclasses.fields(cls)
  return ({f.name for f in fields if f.default is dataclasses.MISSING},
          {f.name for f in fields if f.default is not dataclasses.MISSING})


def _without_unset(data: Dict[str, Any], cls) -> Dict[str, Any]:
  """``data`` without the optional fields of ``cls`` that are None (not written)."""
  _, optional = _json_fields(cls)
  return {k: v for k, v in data.items() if not (k in optional and v is None)}


@dataclasses.dataclass(frozen=True)
class ConversionParams:
  """The converter's parameters (``params`` of metadata.json).

  Fields:
    corpus, splits, formats, task: ``--corpus``, ``--splits`` (as given, before
      prefixes are expanded), ``--formats``, ``--task``.
    examples_per_shard, limit, compression: ``--examples_per_shard``,
      ``--limit`` (None: every utterance), ``--compression`` (none|gzip).
    min_seconds, max_seconds: utterances outside this duration were skipped.
    vocab_source: ctc: the file name of ``--vocab`` (``vietnamese.txt``,
      ``vocab.json``...); "file" or "splits" (built from the transcripts) in
      records made before the vocabulary was fixed.
    oov: ctc: ``--oov`` (map, drop or skip: what characters outside the
      vocabulary did); absent in records made before it existed.
    keywords, clip_seconds, context_seconds, negatives_per_positive, seed: kws
      (``--keywords`` without "negative", ...); context_seconds may be absent
      in records made before raw clips kept context (then 0).
  """
  corpus: str
  splits: List[str]
  formats: List[str]
  task: str
  examples_per_shard: int
  limit: Optional[int]
  compression: str
  min_seconds: float
  max_seconds: float
  vocab_source: Optional[str] = None
  oov: Optional[str] = None
  keywords: Optional[List[str]] = None
  clip_seconds: Optional[float] = None
  context_seconds: Optional[float] = None
  negatives_per_positive: Optional[float] = None
  seed: Optional[int] = None

  @classmethod
  def from_json(cls, data: Mapping[str, Any], where: str = "params") -> "ConversionParams":
    """The params of a metadata.json; ValueError naming ``where`` and bad keys."""
    required, optional = _json_fields(cls)
    _check_keys(data, where, required, optional)
    return cls(**copy.deepcopy(dict(data)))

  def to_json(self) -> Dict[str, Any]:
    """The metadata.json dict: the optional fields only when set."""
    return _without_unset(dataclasses.asdict(self), ConversionParams)


@dataclasses.dataclass(frozen=True)
class FormatInfo:
  """One feature format of the records (``formats.<name>`` of metadata.json).

  Fields:
    dir: the folder of its shards, relative to the records dir.
    dtype: "float32" (features ``[frames, num_channels]``) or "int16" (raw
      samples ``[samples]``, read as ``[samples, 1]``).
    num_channels: channels of every record of the format.
    params: its ``kws_tf.features`` config dict, the same as a model's
      ``ModelSpec.feature_params`` when it was trained on this format.
  """
  dir: str
  dtype: str
  num_channels: int
  params: Dict[str, Any]

  @classmethod
  def from_json(cls, data: Mapping[str, Any], where: str) -> "FormatInfo":
    """The format of a metadata.json; ValueError naming ``where`` and bad keys."""
    required, optional = _json_fields(cls)
    _check_keys(data, where, required, optional)
    if "sample_rate" not in data["params"]:
      raise ValueError(f"{where}.params: missing keys ['sample_rate']")
    return cls(**copy.deepcopy(dict(data)))

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def raw(self) -> bool:
    """True for the int16 waveform (``raw``) format."""
    return self.dtype == "int16"

  @property
  def feature_config(self):
    """The ``kws_tf.features`` config of ``params``."""
    from kws_tf import features
    return features.from_dict(self.params)

  @property
  def sample_rate(self) -> int:
    """Samples per second of the waveforms the features were computed from."""
    return int(self.params["sample_rate"])

  @property
  def frame_seconds(self) -> float:
    """Seconds between two frames of a record: the front end's hop
    (``frame_step / sample_rate``; raw: one sample, ``1 / sample_rate``)."""
    return self.feature_config.frame_seconds


@dataclasses.dataclass(frozen=True)
class Shard:
  """One shard of a split: its file name (the same in every format folder) and records."""
  name: str
  examples: int


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  """One split of the records (``splits.<name>`` of metadata.json).

  Fields:
    examples: records of the split (in every format).
    shards: its shards, in order.
    max_frames: per format, the most frames (raw: samples) of one record.
    max_label_length: ctc: the longest label sequence (kws: 0).
    utterances, seconds, hours: source utterances and their total duration.
    classes: kws: records per class text; ctc: ``{"utterances": examples}``.
  """
  examples: int
  shards: List[Shard]
  max_frames: Dict[str, int]
  max_label_length: int
  utterances: int
  seconds: float
  hours: float
  classes: Dict[str, int]

  @classmethod
  def from_json(cls, data: Mapping[str, Any], where: str) -> "SplitInfo":
    """The split of a metadata.json; ValueError naming ``where`` and bad keys."""
    required, optional = _json_fields(cls)
    _check_keys(data, where, required, optional)
    data = copy.deepcopy(dict(data))
    shards = []
    for index, shard in enumerate(data.pop("shards")):
      _check_keys(shard, f"{where}.shards[{index}]", ("name", "examples"))
      shards.append(Shard(**shard))
    return cls(shards=shards, **data)

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RecordsMetadata:
  """A ``create_tfrecords`` output's metadata.json, typed.

  Fields:
    schema_version: ``SCHEMA_VERSION`` of the record layout.
    tool, tool_version: the converter that wrote the records.
    fingerprint: sha256 of the parameters, ids and labels (``fingerprint``);
      models and guidance record it to name the data they were made from.
    task: "kws" or "ctc".
    params: the converter's parameters.
    formats: format name -> its ``FormatInfo``.
    splits: split name -> its ``SplitInfo``.
    normalization: format name -> per-channel statistics of the
      ``normalization_splits``: ``{"mean": [num_channels], "std": [num_channels],
      "frames": int}``.
    normalization_splits: the splits the statistics were computed on.
    skipped: utterances left out (listed in skipped.jsonl).
    classes: kws class names by label index, the last is "negative"; None for ctc.
    vocabulary: ctc ``{"blank_index", "symbols"}``; None for kws.

  On disk the statistics are one object, ``normalization`` =
  ``{"splits": [...], <format>: {...}}``. Records written before the sample
  rate was stored once also hold ``params.sample_rate`` and
  ``params.feature_params`` (a copy of ``formats.<name>.params``); they are
  read, checked against ``formats`` and dropped.
  """
  schema_version: int
  tool: str
  tool_version: str
  fingerprint: str
  task: str
  params: ConversionParams
  formats: Dict[str, FormatInfo]
  splits: Dict[str, SplitInfo]
  normalization: Dict[str, Dict[str, Any]]
  normalization_splits: List[str]
  skipped: int
  classes: Optional[List[str]] = None
  vocabulary: Optional[Dict[str, Any]] = None

  def __post_init__(self):
    if self.task not in ("kws", "ctc"):
      raise ValueError(f"unknown task {self.task!r}, expected kws or ctc")
    labels = "classes" if self.task == "kws" else "vocabulary"
    if getattr(self, labels) is None:
      raise ValueError(f"{self.task} records need {labels}")
    if not self.formats:
      raise ValueError("the records have no formats")
    rates = {name: f.sample_rate for name, f in self.formats.items()}
    if len(set(rates.values())) > 1:
      raise ValueError(f"the formats were computed at different sample rates: {rates}")

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "RecordsMetadata":
    """The metadata of a metadata.json dict; ValueError naming missing or unknown keys
    (``formats.mfcc: missing keys ['dir']``) or values that contradict each other."""
    required = ["schema_version", "tool", "tool_version", "fingerprint", "task", "params",
                "formats", "splits", "normalization", "skipped"]
    _check_keys(data, "metadata", required, ("classes", "vocabulary"))
    labels = {"kws": "classes", "ctc": "vocabulary"}.get(data["task"])
    _check_keys(data, "metadata", required + ([labels] if labels else []))
    _check_object(data["formats"], "formats")
    formats = {name: FormatInfo.from_json(info, f"formats.{name}")
               for name, info in data["formats"].items()}
    # Records written before the sample rate was stored once: check and drop the copies.
    params = dict(data["params"]) if isinstance(data["params"], Mapping) else data["params"]
    if isinstance(params, dict):
      old_rate = params.pop("sample_rate", None)
      old_features = params.pop("feature_params", None) or {}
      for name, info in formats.items():
        if old_rate is not None and info.sample_rate != old_rate:
          raise ValueError(f"params.sample_rate {old_rate} differs from "
                           f"formats.{name}.params.sample_rate {info.sample_rate}")
        if old_features.get(name, info.params) != info.params:
          raise ValueError(f"params.feature_params.{name} differs from formats.{name}.params")
    params = ConversionParams.from_json(params)
    if params.task != data["task"]:
      raise ValueError(f"params.task {params.task!r} differs from task {data['task']!r}")
    normalization = data["normalization"]
    _check_keys(normalization, "normalization", ["splits"], formats)
    stats = {}
    for name, values in normalization.items():
      if name != "splits":
        _check_keys(values, f"normalization.{name}", ("mean", "std", "frames"))
        stats[name] = copy.deepcopy(dict(values))
    _check_object(data["splits"], "splits")
    return cls(
        schema_version=data["schema_version"], tool=data["tool"],
        tool_version=data["tool_version"], fingerprint=data["fingerprint"], task=data["task"],
        params=params, formats=formats,
        splits={name: SplitInfo.from_json(info, f"splits.{name}")
                for name, info in data["splits"].items()},
        normalization=stats, normalization_splits=list(normalization["splits"]),
        skipped=data["skipped"], classes=copy.deepcopy(data.get("classes")),
        vocabulary=copy.deepcopy(data.get("vocabulary")))

  def to_json(self) -> Dict[str, Any]:
    """The metadata.json dict (the layout ``from_json`` reads)."""
    out = {
        "schema_version": self.schema_version, "tool": self.tool,
        "tool_version": self.tool_version, "fingerprint": self.fingerprint, "task": self.task,
        "params": self.params.to_json(),
        "formats": {name: f.to_json() for name, f in self.formats.items()},
        "splits": {name: s.to_json() for name, s in self.splits.items()},
        "normalization": {"splits": list(self.normalization_splits),
                          **copy.deepcopy(self.normalization)},
        "skipped": self.skipped,
    }
    if self.classes is not None:
      out["classes"] = list(self.classes)
    if self.vocabulary is not None:
      out["vocabulary"] = copy.deepcopy(self.vocabulary)
    return out

  @classmethod
  def load(cls, records_dir: str) -> "RecordsMetadata":
    """``<records_dir>/metadata.json``. FileNotFoundError when it is missing; ValueError
    naming the file for another schema version or malformed content."""
    path = os.path.join(records_dir, METADATA_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} does not exist: {records_dir} is not a finished "
          "create_tfrecords output (run or resume data_prep/create_tfrecords)")
    data = read_json(path)
    if not isinstance(data, Mapping) or data.get("schema_version") != SCHEMA_VERSION:
      version = data.get("schema_version") if isinstance(data, Mapping) else None
      raise ValueError(f"{path}: schema_version {version} "
                       f"is not {SCHEMA_VERSION}; re-create the records")
    try:
      return cls.from_json(data)
    except (ValueError, TypeError) as e:
      raise ValueError(f"{path}: not a create_tfrecords metadata.json: {e}") from None

  @property
  def compression(self) -> str:
    """Compression of every shard: "none" or "gzip"."""
    return self.params.compression

  @property
  def sample_rate(self) -> int:
    """Samples per second of the audio every format was computed from."""
    return next(iter(self.formats.values())).sample_rate

  @property
  def clip_seconds(self) -> Optional[float]:
    """kws: length of one clip, seconds; None for ctc (utterances of any length)."""
    return self.params.clip_seconds

  @property
  def clip_samples(self) -> Optional[int]:
    """kws: samples of one clip, ``round(clip_seconds * sample_rate)``; None for ctc."""
    if self.clip_seconds is None:
      return None
    return int(round(self.clip_seconds * self.sample_rate))

  @property
  def context_seconds(self) -> float:
    """kws: audio the raw format keeps before and after each clip, seconds (else 0)."""
    return self.params.context_seconds or 0.0

  @property
  def context_samples(self) -> int:
    """``context_seconds`` in samples: what to cut from each end of a raw kws record."""
    return int(round(self.context_seconds * self.sample_rate))

  @property
  def raw_clip_samples(self) -> Optional[int]:
    """kws: samples of a raw record, the clip with its context on both sides
    (``round((clip_seconds + 2 * context_seconds) * sample_rate)``, as the
    converter cuts it); None for ctc."""
    if self.clip_seconds is None:
      return None
    return int(round((self.clip_seconds + 2 * self.context_seconds) * self.sample_rate))

  @property
  def negative_label(self) -> Optional[int]:
    """kws: the label index of "negative" (the last class); None for ctc."""
    return None if self.classes is None else len(self.classes) - 1


def load_metadata(records_dir: str) -> RecordsMetadata:
  """``RecordsMetadata.load(records_dir)``: the records' metadata.json, typed."""
  return RecordsMetadata.load(records_dir)


def write_metadata(records_dir: str, metadata: RecordsMetadata) -> None:
  """Writes ``<records_dir>/metadata.json`` (``metadata.to_json()``) atomically."""
  write_json(os.path.join(records_dir, METADATA_FILE), metadata.to_json())
