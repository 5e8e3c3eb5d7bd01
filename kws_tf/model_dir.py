"""A trained model dir: what its model takes and gives, and its weights.

``kws-train`` writes, among the files of ``kws_tf.training.loop``'s layout::

  model.json     the ``ModelSpec``: rebuilds the model and its front end
  best/          ckpt-<step>.* of the best validation weights (model only)
  checkpoints/   ckpt-<step>.* of the full training state

A model dir is bound to the records it was trained on: ``bind_spec`` writes
``model.json`` before any checkpoint and refuses a run on records of another
data fingerprint. Every stage that runs a trained model (guidance, alignment,
evaluation, export) reads the dir through ``read_spec``, ``load_trained_model``
and ``model_records``.
"""
import copy
import dataclasses
import glob
import os
from typing import Any, Dict, List, Mapping, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import config as config_lib
from kws_tf import data, features, records
from kws_tf.models import heads, registry

SPEC_FILE = "model.json"
# Checkpoint name -> folder of the model dir that holds it.
CHECKPOINT_FOLDERS = {"best": "best", "last": "checkpoints"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a trained model takes and gives (the keys of ``model.json``).

  Fields:
    name, params: the ``kws_tf.models.registry`` name and its keyword arguments.
    task: "kws" or "ctc". role: "teacher" or "student".
    num_channels: channels of the input features ``[batch, frames, num_channels]``.
    num_classes: size of the logits' last axis (kws classes, ctc vocabulary).
    projection_dim: size of the feature-projector output (0: none).
    format: the records' feature format the model reads.
    feature_params: the ``kws_tf.features`` config dict of that format.
    normalization: per-channel ``{"mean": [num_channels], "std": [num_channels]}``
      applied to the features, or None (features as stored).
    data_fingerprint: fingerprint of the records the model was trained on.
    classes: kws class names by label index; None for ctc.
    vocabulary: ctc ``{"blank_index", "symbols"}`` of the records; None for kws.
    quantization: the weight quantization of quantized distillation
      (``config.QuantizationConfig`` fields), or None.
  """
  name: str
  task: str
  role: str
  num_channels: int
  num_classes: int
  projection_dim: int
  params: Dict[str, Any]
  format: str
  feature_params: Dict[str, Any]
  normalization: Optional[Dict[str, List[float]]]
  data_fingerprint: str
  classes: Optional[List[str]] = None
  vocabulary: Optional[Dict[str, Any]] = None
  quantization: Optional[Dict[str, Any]] = None

  def __post_init__(self):
    if self.task not in ("kws", "ctc"):
      raise ValueError(f"unknown task {self.task!r}, expected kws or ctc")
    labels = "classes" if self.task == "kws" else "vocabulary"
    if getattr(self, labels) is None:
      raise ValueError(f"a {self.task} model spec needs {labels}")

  @classmethod
  def from_json(cls, spec: Mapping[str, Any]) -> "ModelSpec":
    """The spec of a ``model.json`` dict; ValueError naming missing or unknown keys."""
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    missing = sorted(required - set(spec))
    unknown = sorted(set(spec) - {f.name for f in fields})
    if missing or unknown:
      problems = [f"{what} keys {keys}" for what, keys in (("missing", missing),
                                                             ("unknown", unknown)) if keys]
      raise ValueError(f"not a model spec: {', '.join(problems)}")
    return cls(**copy.deepcopy(dict(spec)))

  def to_json(self) -> Dict[str, Any]:
    """The ``model.json`` dict: every field, the optional ones only when set."""
    out = dataclasses.asdict(self)
    for key in ("classes", "vocabulary", "quantization"):
      if out[key] is None:
        del out[key]
    return out

  @property
  def feature_config(self):
    """The ``kws_tf.features`` config of the input (``feature_params``)."""
    return features.from_dict(self.feature_params)

  @property
  def sample_rate(self) -> int:
    """Samples per second of the waveform the front end takes."""
    return self.feature_config.sample_rate

  @property
  def frame_seconds(self) -> float:
    """Seconds between two input frames: the front end's hop (raw: one sample)."""
    return self.feature_config.frame_seconds

  @property
  def time_stride(self) -> Optional[int]:
    """Input frames per frame of the model's frame-level outputs, or None.

    ctc: ``heads.CTC_TIME_STRIDE``, the stride of every ctc model's logits
    (``heads.check_time_stride``). A model registered with a fixed stride (the
    Whisper teacher: its encoder's, ``whisper.TIME_STRIDE``) has it for kws too:
    its hints and guidance frames come at that stride. None for the other kws
    models: their logits are one vector per clip.
    """
    fixed = registry.time_stride(self.name)
    if fixed is not None:
      return fixed
    return heads.CTC_TIME_STRIDE if self.task == "ctc" else None

  @property
  def output_frame_seconds(self) -> Optional[float]:
    """Seconds between two frames of the frame-level outputs (ctc logits, a
    Whisper teacher's encoder frames and hints): ``frame_seconds * time_stride``;
    None when the model has none (``time_stride``)."""
    stride = self.time_stride
    return None if stride is None else self.frame_seconds * stride

  @property
  def clip_samples(self) -> Optional[int]:
    """Samples every waveform is padded or trimmed to by the front end
    (logmel ``pad_to_seconds``); None when it takes any length."""
    return getattr(self.feature_config, "padded_samples", None)

  @property
  def clip_seconds(self) -> Optional[float]:
    """``clip_samples`` in seconds, or None."""
    samples = self.clip_samples
    return None if samples is None else samples / self.sample_rate


# Keys of two specs that must agree for one model's weights to fit the other.
_SAME_MODEL = ("name", "task", "params", "num_channels", "num_classes", "projection_dim",
               "format", "feature_params", "normalization")

# Model params that choose which weights train and how, not which weights exist: a run may
# start from another's weights when its params differ in these alone (e.g. a Whisper teacher
# fine-tuned further with more of its blocks trained).
TRAINING_ONLY_PARAMS = ("trainable_blocks", "dropout", "dropouts", "head_dropout")


def differing_fields(a: "ModelSpec", b: "ModelSpec", fields) -> List[str]:
  """The ``fields`` in which specs ``a`` and ``b`` differ; ``params`` compared
  without ``TRAINING_ONLY_PARAMS``."""
  def value(spec: ModelSpec, field: str):
    if field == "params":
      return {k: v for k, v in spec.params.items() if k not in TRAINING_ONLY_PARAMS}
    return getattr(spec, field)
  return [f for f in fields if value(a, f) != value(b, f)]


def training_spec(config: config_lib.Config, metadata: records.RecordsMetadata) -> ModelSpec:
  """The spec of the model ``config`` trains on the records described by
  ``metadata`` (a ``create_tfrecords`` metadata.json), in ``config.data.format``."""
  fmt, kws = config.data.format, config.task == "kws"
  return ModelSpec(
      name=config.model.name, task=config.task, role=config.role,
      num_channels=metadata.formats[fmt].num_channels,
      num_classes=len(metadata.classes if kws else metadata.vocabulary["symbols"]),
      projection_dim=config.model.projection_dim, params=dict(config.model.params),
      format=fmt, feature_params=metadata.formats[fmt].params,
      normalization=metadata.normalization.get(fmt) if config.data.normalize else None,
      data_fingerprint=metadata.fingerprint,
      classes=list(metadata.classes) if kws else None,
      vocabulary=None if kws else metadata.vocabulary,
      quantization=(dataclasses.asdict(config.quantization)
                    if config.mode == "quantized_distill" else None))


def spec_path(model_dir: str) -> str:
  """``<model_dir>/model.json``."""
  return os.path.join(model_dir, SPEC_FILE)


def read_spec(model_dir: str) -> ModelSpec:
  """The ``ModelSpec`` of ``<model_dir>/model.json``.

  FileNotFoundError when the file is missing, ValueError naming it when it
  is not a model spec.
  """
  path = spec_path(model_dir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {model_dir} a kws_tf model dir?")
  try:
    return ModelSpec.from_json(records.read_json(path))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def write_spec(model_dir: str, spec: ModelSpec) -> None:
  """Writes ``<model_dir>/model.json`` atomically."""
  records.write_json(spec_path(model_dir), spec.to_json())


def check_spec(model_dir: str, spec: ModelSpec, data_dir: str) -> bool:
  """Whether ``model_dir`` has a ``model.json``; ValueError giving both data
  fingerprints when it names records other than ``spec.data_fingerprint``,
  or naming the file when it is not a model spec."""
  if not os.path.exists(spec_path(model_dir)):
    return False
  bound = read_spec(model_dir).data_fingerprint
  if bound != spec.data_fingerprint:
    raise ValueError(
        f"{model_dir} was trained on other data: its data fingerprint ({SPEC_FILE}) is "
        f"{bound}, the records' fingerprint in {data_dir} is {spec.data_fingerprint}; "
        "use another --model_dir or the --data_dir it was trained on")
  return True


def bind_spec(model_dir: str, spec: ModelSpec, data_dir: str) -> None:
  """Binds ``model_dir`` to the records of ``spec`` (read from ``data_dir``):
  writes ``model.json`` (atomically) when the dir has none, else checks it
  (``check_spec``)."""
  if not check_spec(model_dir, spec, data_dir):
    write_spec(model_dir, spec)


def build_model(spec: ModelSpec) -> keras.Model:
  """A freshly initialised model of ``spec``."""
  return registry.build(spec.name, task=spec.task, num_channels=spec.num_channels,
                        num_classes=spec.num_classes, projection_dim=spec.projection_dim,
                        **spec.params)


def checkpoint_path(model_dir: str, checkpoint: str = "best") -> str:
  """The checkpoint prefix that ``checkpoint`` names.

  ``checkpoint`` is ``best`` (the latest in ``best/``: the best validation
  weights), ``last`` (the latest in ``checkpoints/``) or a checkpoint path
  prefix, returned as it is. FileNotFoundError naming the folder when it
  holds no checkpoint.
  """
  if checkpoint not in CHECKPOINT_FOLDERS:
    return checkpoint
  folder = os.path.join(model_dir, CHECKPOINT_FOLDERS[checkpoint])
  path = tf.train.latest_checkpoint(folder)
  if path is None:
    raise FileNotFoundError(f"no {checkpoint} checkpoint in {folder}: has {model_dir} "
                            "been trained (and validated) yet?")
  return path


class CheckpointError(ValueError):
  """A checkpoint whose files cannot be read (truncated, corrupt, missing)."""


class InputPipelineStateError(CheckpointError):
  """A training checkpoint whose input-pipeline position names a record file
  that is not there (the records moved, or were given by another path)."""


def restore(checkpoint: tf.train.Checkpoint, path: str):
  """``checkpoint.restore(path)``: the load status.

  CheckpointError naming the files of ``path`` and TensorFlow's reason when
  they cannot be read (a truncated ``.data`` file, a corrupt ``.index``, a
  missing shard); InputPipelineStateError when the files are sound but the
  dataset iterator they hold reads a record file that does not exist.
  """
  try:
    return checkpoint.restore(path)
  except (tf.errors.OpError, IndexError) as e:
    # TensorFlow: an OpError (corrupt or missing file) or an IndexError ("Read
    # less bytes than requested": a truncated .data file).
    reason = records.tf_error_reason(
        e.message if isinstance(e, tf.errors.OpError) else str(e)) or type(e).__name__
    if "dataset iterator" in reason:
      raise InputPipelineStateError(
          f"checkpoint {path} holds the input pipeline's position in record files that "
          f"are not there ({reason}): resume with the records and guidance of the run that "
          "wrote it, at the same place") from None
    files = sorted(os.path.basename(f) for f in glob.glob(glob.escape(path) + ".*"))
    raise CheckpointError(f"checkpoint {path} ({', '.join(files) or 'no files'}) is truncated "
                          f"or corrupt: {reason}") from None


def load_trained_model(model_dir: str, checkpoint: str = "best") -> keras.Model:
  """The model of ``model_dir`` rebuilt from ``model.json``, with the weights of
  ``checkpoint`` (see ``checkpoint_path``); CheckpointError when its files
  cannot be read."""
  model = build_model(read_spec(model_dir))
  path = checkpoint_path(model_dir, checkpoint)
  try:
    status = restore(tf.train.Checkpoint(model=model), path)
  except CheckpointError as e:
    raise CheckpointError(f"{e}; restore {model_dir} from a copy, or train it again") from None
  status.expect_partial().assert_existing_objects_matched()
  return model


def model_records(model_dir: str, data_dir: str):
  """``(spec, metadata, parse)`` for running a trained model over ``data_dir``'s records.

  ``metadata`` is the records' ``records.RecordsMetadata``. Checks that the
  records are of the model's task and hold its feature format made with the
  same parameters (ValueError naming both otherwise); ``parse`` reads one
  record of that format and normalises it with the statistics the model was
  trained with (``spec.normalization``), not the records' own.
  """
  spec = read_spec(model_dir)
  metadata = records.load_metadata(data_dir)
  if metadata.task != spec.task:
    raise ValueError(f"{model_dir} is a {spec.task} model but {data_dir} holds "
                     f"{metadata.task} records")
  fmt = spec.format
  if fmt not in metadata.formats:
    raise ValueError(f"{model_dir} reads {fmt!r} features, which {data_dir} does not have "
                     f"(it has {', '.join(metadata.formats)})")
  if metadata.formats[fmt].params != spec.feature_params:
    raise ValueError(f"the {fmt} features of {data_dir} were made with other parameters than "
                     f"those {model_dir} was trained on: {metadata.formats[fmt].params} "
                     f"vs {spec.feature_params}")
  model_meta = dataclasses.replace(metadata, normalization={fmt: spec.normalization})
  parse = data.make_parser(model_meta, fmt, normalize=spec.normalization is not None)
  return spec, metadata, parse


def restore_run(model: keras.Model, spec: ModelSpec, model_dir: str) -> str:
  """Sets ``model`` (built from ``spec``) to the best weights of the run in ``model_dir``.

  That run must have trained the same model (name, parameters, task, number of
  classes, projection) on the same input (format, feature parameters,
  normalisation); its parameters may differ in ``TRAINING_ONLY_PARAMS``.
  Returns the checkpoint read; ValueError naming the keys that differ
  (CheckpointError, a ValueError, when the checkpoint cannot be read),
  FileNotFoundError when ``model_dir`` has no model.json or no best checkpoint.
  """
  other = read_spec(model_dir)
  differ = differing_fields(other, spec, _SAME_MODEL)
  if differ:
    values = "; ".join(f"{getattr(other, k)} vs {getattr(spec, k)}" for k in differ)
    raise ValueError(f"its model differs in {', '.join(differ)} ({values})")
  best = checkpoint_path(model_dir, "best")
  restore(tf.train.Checkpoint(model=model), best).expect_partial() \
      .assert_existing_objects_matched()
  return best
