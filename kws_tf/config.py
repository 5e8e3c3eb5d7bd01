"""Typed training configs: dataclasses read from YAML plus ``key=value`` overrides.

Recipes ship inside the package, in ``kws_tf/configs/`` (``configs/`` at the
repository root points there); ``find_recipe`` resolves a bare name such as
``kws_small`` to that file and passes a path through. A training recipe in
``configs/<name>.yaml`` is a nested mapping whose keys are the
fields below (``task``, ``mode``, ``role``, ``data.*``, ``model.*``,
``augment.*``, ``optimizer.*``, ``distill.*``, ``quantization.*``, ``fitnet.*``, ``train.*``).
Unknown keys are errors that name the key and the file; values are converted
to the field's type, so ``--override train.steps=500`` and ``--override
optimizer.learning_rate=3e-4`` work from the command line. ``model.params``
are the keyword arguments of the model's builder: a key its signature does
not name is an error (``kws_tf.models.registry.check_params``).

The resolved config (recipe + overrides + flags) is written next to the
checkpoints as ``config.yaml``; evaluation and export rebuild the model from it.
"""
import dataclasses
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from kws_tf import text

TASKS = ("kws", "ctc")
MODES = ("standard", "distill", "quantized_distill", "fitnet")
ROLES = ("teacher", "student")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")


class ConfigError(ValueError):
  """A recipe or override that does not fit the config schema."""


@dataclasses.dataclass
class DataConfig:
  """Input pipeline (see ``kws_tf.data.make_dataset``).

  Fields:
    format: feature format of the records to train on (``mfcc``, ``logmel``...).
    batch_size: examples per step (global, over all replicas; a multiple of
      the number of replicas).
    eval_batch_size: examples per evaluation batch.
    train_split: split trained on.
    validation_split: split for early stopping; "" holds out
      ``validation_fraction`` of ``train_split`` by a hash of the example id.
    validation_fraction: share of ``train_split`` held out when
      ``validation_split`` is "".
    test_split: split that ``evaluate`` reports on by default.
    shuffle_buffer: examples in the shuffle buffer. Checkpoints hold the
      buffer (exact resume), so it sets their size: 1024 one-second log-mel
      clips are about 33 MB.
    bucket: ctc only; batch utterances of similar length together.
    normalize: standardise the features per channel with the train split's
      mean and standard deviation (metadata.json). False for a pretrained
      Whisper encoder, which takes Whisper's own log-mel scaling.
    spec_augment: apply SpecAugment masks while training.
    freq_masks, freq_mask_param, time_masks, time_mask_param: SpecAugment
      (channels, frames).
  """
  format: str = "mfcc"
  batch_size: int = 32
  eval_batch_size: int = 64
  train_split: str = "train"
  validation_split: str = ""
  validation_fraction: float = 0.1
  test_split: str = "test"
  shuffle_buffer: int = 1024
  bucket: bool = True
  normalize: bool = True
  spec_augment: bool = False
  freq_masks: int = 2
  freq_mask_param: int = 8
  time_masks: int = 2
  time_mask_param: int = 10


@dataclasses.dataclass
class AugmentConfig:
  """On-the-fly waveform augmentation of training examples (``kws_tf.augment``).

  Training then reads the records' ``raw`` format, augments the waveform and
  computes ``data.format``'s features from it with the records' own
  front-end parameters. kws: windows of clips with context
  (``kws-create-tfrecords --formats=raw,... --context_seconds``); ctc: whole
  utterances (``kws_tf.utterance_augment``). A distilled student takes
  guidance of the same views (``kws-create-guidance --views``). Validation
  and evaluation read the stored, clean features.

  Fields:
    enabled: augment the training examples.
    max_shift_seconds: kws: the window moves up to this far from the centred
      clip (from ``shift_bias_seconds``), within each record's shift range (the
      offsets that keep its label).
    shift_bias_seconds: kws: the centre of the window's moves. Negative: the
      windows start earlier, so a keyword sits later in them, towards the
      window's end, where a streaming detector sees it first (a shorter delay
      after the keyword's end); 0: centred.
    speed_prob, speed_min, speed_max: speed perturbation (tempo and pitch).
    reverb_prob, rt60_min, rt60_max: reverberation, RT60 in seconds
      (synthetic rooms unless ``rir_dir`` is set).
    rir_dir: a folder of room impulse responses (WAV/FLAC, any rate).
    noise_prob, snr_db_min, snr_db_max: additive noise at an SNR in dB.
    coloured_noise_weight, babble_weight, recorded_noise_weight: relative
      chances of the noise types (babble: other training clips summed;
      recorded: segments of the files in ``noise_dir``).
    babble_talkers: at most this many clips in a babble (at least 2).
    babble_seconds: seconds of training clips in the babble bank.
    noise_dir: a folder of noise recordings (e.g. Speech Commands'
      ``_background_noise_``), read recursively.
    telephone_prob: a 300-3400 Hz band and 8-bit mu-law.
    gain_db_min, gain_db_max: level change in dB (then clipped to [-1, 1]).
    vtlp_prob, vtlp_min, vtlp_max: vocal tract length perturbation of the
      features (``kws_tf.warp``): the frequency axis scaled by a factor in
      ``[vtlp_min, vtlp_max]``. The student's own perturbation, as SpecAugment:
      it leaves the waveform, and so the teacher's guidance views, unchanged.
    tempo_prob, tempo_min, tempo_max: of the views not sped up, these change
      their tempo alone by a factor in ``[tempo_min, tempo_max]``: speed
      perturbation, then the features' frequency axis warped back (spectral
      features; a teacher's guidance views take the same warp).
    tempo_in_views: True: a view's tempo is part of the view (drawn from its
      seed; a teacher's guidance for it heard the same tempo). False: kws
      guidance views have no tempo, and the student changes the tempo of the
      view it trains on afresh at every step (the step's own draws), taking
      the teacher's logits for the view at its own tempo as the target for
      every tempo of it. Without guidance the two are the same.
    fresh_view_prob: kws with guidance of views: the chance that an example
      takes a fresh view, drawn from the training step's own draws as without
      guidance, instead of one of its stored views; such an example adds to
      the label loss only (its teacher terms have weight 0). 0: every example
      takes a stored view. Not part of the views: guidance made without it
      serves.
  """
  enabled: bool = False
  max_shift_seconds: float = 0.3
  shift_bias_seconds: float = 0.0
  speed_prob: float = 0.5
  speed_min: float = 0.85
  speed_max: float = 1.15
  reverb_prob: float = 0.3
  rt60_min: float = 0.1
  rt60_max: float = 0.7
  rir_dir: str = ""
  noise_prob: float = 0.8
  snr_db_min: float = 0.0
  snr_db_max: float = 30.0
  coloured_noise_weight: float = 1.0
  babble_weight: float = 1.0
  recorded_noise_weight: float = 1.0
  babble_talkers: int = 6
  babble_seconds: float = 120.0
  noise_dir: str = ""
  telephone_prob: float = 0.15
  gain_db_min: float = -12.0
  gain_db_max: float = 6.0
  vtlp_prob: float = 0.0
  vtlp_min: float = 0.9
  vtlp_max: float = 1.1
  tempo_prob: float = 0.0
  tempo_min: float = 0.8
  tempo_max: float = 1.25
  tempo_in_views: bool = True
  fresh_view_prob: float = 0.0

  def validate(self) -> None:
    """ConfigError naming the first bad field."""
    for key in ("speed_prob", "reverb_prob", "noise_prob", "telephone_prob", "vtlp_prob",
                "tempo_prob", "fresh_view_prob"):
      if not 0.0 <= getattr(self, key) <= 1.0:
        raise ConfigError(f"augment.{key} must be in [0, 1]; got {getattr(self, key)}")
    ranges = [("speed", self.speed_min, self.speed_max, 0.0),
              ("rt60", self.rt60_min, self.rt60_max, 0.0),
              ("snr_db", self.snr_db_min, self.snr_db_max, None),
              ("gain_db", self.gain_db_min, self.gain_db_max, None),
              ("vtlp", self.vtlp_min, self.vtlp_max, 0.0),
              ("tempo", self.tempo_min, self.tempo_max, 0.0)]
    for name, low, high, floor in ranges:
      if low > high or (floor is not None and low <= floor):
        raise ConfigError(f"augment.{name}_min must be <= augment.{name}_max"
                          f"{' and > 0' if floor is not None else ''}; got {low} and {high}")
    if self.max_shift_seconds < 0:
      raise ConfigError(f"augment.max_shift_seconds must be >= 0; got {self.max_shift_seconds}")
    if self.babble_seconds <= 0:
      raise ConfigError(f"augment.babble_seconds must be > 0; got {self.babble_seconds}")


@dataclasses.dataclass
class ModelConfig:
  """Model name in ``kws_tf.models.registry`` and its builder parameters.

  Fields:
    name: registered model name.
    projection_dim: size of the feature-projector output (0: none).
    params: further keyword arguments of the builder.
  """
  name: str = "wav2letter_kws_small"
  projection_dim: int = 0
  params: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OptimizerConfig:
  """Optimizer and learning-rate schedule.

  Fields:
    name: ``adam`` or ``adamw``.
    learning_rate: peak learning rate, reached after ``warmup_steps``.
    weight_decay: decoupled weight decay (adamw only).
    warmup_steps: linear warm-up from 0.
    schedule: ``cosine`` (decay to ``final_learning_rate_ratio`` x peak at the
      last step) or ``constant``.
    final_learning_rate_ratio: see ``schedule``.
    clip_norm: clip gradients to this global norm (0: no clipping).
  """
  name: str = "adam"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  warmup_steps: int = 100
  schedule: str = "cosine"
  final_learning_rate_ratio: float = 0.01
  clip_norm: float = 5.0


@dataclasses.dataclass
class DistillConfig:
  """Distillation loss weights (``kws_tf.distill.losses``, ``kws_tf.distill.objectives``).

  The loss of ``mode=distill`` and ``quantized_distill`` is
  ``hard_weight * hard + alpha * kd + feature_weight * feature`` with ``kd``
  the ``T^2``-scaled KL; FitNet stage 2 multiplies ``alpha`` by its annealed
  ``lambda`` (``FitNetConfig``).

  Fields:
    temperature: softmax temperature T > 0 applied to teacher and student logits.
    alpha: weight of the T^2-scaled KL term, in [0, 1].
    beta: weight of the hard loss, >= 0; None means ``1 - alpha``.
    feature_weight: weight of the feature-matching MSE, >= 0; 0 turns it off
      (> 0 needs ``model.projection_dim`` and teacher features in the guidance).
  """
  temperature: float = 5.0
  alpha: float = 0.5
  beta: Optional[float] = None
  feature_weight: float = 0.0

  @property
  def hard_weight(self) -> float:
    """Weight of the hard loss: ``beta``, or ``1 - alpha`` when beta is None."""
    return 1.0 - self.alpha if self.beta is None else self.beta

  def validate(self) -> "DistillConfig":
    """ConfigError naming the first bad field."""
    if self.temperature <= 0:
      raise ConfigError(f"distill.temperature must be > 0; got {self.temperature}")
    if not 0.0 <= self.alpha <= 1.0:
      raise ConfigError(f"distill.alpha must be in [0, 1]; got {self.alpha}")
    if self.beta is not None and self.beta < 0:
      raise ConfigError(f"distill.beta must be >= 0 or null; got {self.beta}")
    if self.feature_weight < 0:
      raise ConfigError(f"distill.feature_weight must be >= 0; got {self.feature_weight}")
    return self


@dataclasses.dataclass
class QuantizationConfig:
  """Quantized distillation (Polino et al. 2018; ``kws_tf.distill.quantization``).

  Fields (``mode=quantized_distill``):
    bits: bits per weight (2^bits levels per bucket).
    bucket_size: weights sharing one scale and offset (64 bits per bucket).
    stochastic: unbiased stochastic rounding while training (deterministic
      rounding for validation and the final model).
    keep_first_last_float: leave the first weight layer and the classifier
      in float32.
  """
  bits: int = 4
  bucket_size: int = 256
  stochastic: bool = False
  keep_first_last_float: bool = False


@dataclasses.dataclass
class FitNetConfig:
  """FitNets (Romero et al. 2014; ``kws_tf.distill.fitnet``), ``mode=fitnet``.

  Fields:
    stage: 0 runs both stages; 1 only the hint stage (the student up to
      ``guided_layer`` plus a regressor learns the teacher's hints); 2 only
      the distillation stage, initialised from a finished stage 1.
    guided_layer: the student layer whose output is regressed onto the hint;
      "" picks the output of the student's middle block.
    hint_steps: optimizer steps of stage 1 (stage 2 runs ``train.steps``).
    hint_learning_rate: peak learning rate of stage 1 (0: that of
      ``optimizer.learning_rate``).
    kd_weight_start, kd_weight_end: stage 2's loss is the ``distill``
      section's, ``hard_weight * hard + lambda * alpha * T^2 *
      KL(teacher_T || student_T) + feature_weight * feature``, with lambda
      going linearly from start to end over the stage (the paper: 4 to 1).
      ``distill.alpha=1/T^2`` and ``distill.beta=1`` give the paper's
      ``hard + lambda * KL``.
  """
  stage: int = 0
  guided_layer: str = ""
  hint_steps: int = 1000
  hint_learning_rate: float = 0.0
  kd_weight_start: float = 4.0
  kd_weight_end: float = 1.0


@dataclasses.dataclass
class TrainConfig:
  """The train loop.

  Fields:
    steps: optimizer steps in the whole run.
    log_every: steps between TensorBoard training summaries.
    eval_every: steps between validations (and early-stopping checks).
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept (the best one is kept apart).
    early_stopping_patience: validations without improvement before stopping
      (0: never stop early).
    metric: validation metric for early stopping and the best checkpoint;
      "" means ``accuracy`` (kws, higher is better) or ``cer`` (ctc, lower is
      better); ``loss`` is also accepted.
    mixed_precision: ``float32``, ``mixed_float16`` (GPU, with loss scaling)
      or ``mixed_bfloat16`` (CPU/TPU).
    jit_compile: compile the train step with XLA.
    strategy: ``default``, ``mirrored`` (all local GPUs, or CPUs in tests) or
      ``multi_worker`` (cluster from TF_CONFIG).
    seed: seeds weights, shuffling and dropout.
    deterministic: enable TensorFlow op determinism, so a run resumed after a
      kill ends with the same weights as an uninterrupted one.
  """
  steps: int = 2000
  log_every: int = 50
  eval_every: int = 200
  checkpoint_every: int = 200
  keep_checkpoints: int = 3
  early_stopping_patience: int = 5
  metric: str = ""
  mixed_precision: str = "float32"
  jit_compile: bool = False
  strategy: str = "default"
  seed: int = 0
  deterministic: bool = True


@dataclasses.dataclass
class Config:
  """A whole training recipe."""
  task: str = "kws"
  mode: str = "standard"
  role: str = "student"
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
  quantization: QuantizationConfig = dataclasses.field(default_factory=QuantizationConfig)
  fitnet: FitNetConfig = dataclasses.field(default_factory=FitNetConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  @property
  def metric(self) -> str:
    """The validation metric: ``hint`` (the hint MSE) in FitNet stage 1, else
    ``train.metric`` or the task's default."""
    if self.mode == "fitnet" and self.fitnet.stage == 1:
      return "hint"
    return self.train.metric or ("accuracy" if self.task == "kws" else "cer")

  def validate(self) -> "Config":
    """Checks the choices; raises ConfigError naming the bad field."""
    choices = [("task", self.task, TASKS), ("mode", self.mode, MODES),
               ("role", self.role, ROLES),
               ("optimizer.name", self.optimizer.name, ("adam", "adamw")),
               ("optimizer.schedule", self.optimizer.schedule, ("cosine", "constant")),
               ("train.mixed_precision", self.train.mixed_precision, PRECISIONS),
               ("train.strategy", self.train.strategy, STRATEGIES),
               ("train.metric", self.train.metric, ("", "accuracy", "cer", "wer", "loss"))]
    for key, value, allowed in choices:
      if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    if self.role == "teacher" and self.mode != "standard":
      raise ConfigError(f"a teacher trains with mode=standard, not {self.mode!r}")
    if self.task == "ctc" and not self.augment.tempo_in_views:
      raise ConfigError("augment.tempo_in_views=false is for kws: a ctc utterance's tempo "
                        "is part of its view")
    if self.task == "ctc" and self.augment.fresh_view_prob:
      raise ConfigError("augment.fresh_view_prob is for kws: a ctc student's frames follow "
                        "its view's tempo, so the teacher's frames of a stored view cannot "
                        "weigh in per utterance")
    positive = [("train.steps", self.train.steps), ("data.batch_size", self.data.batch_size),
                ("data.eval_batch_size", self.data.eval_batch_size),
                ("data.shuffle_buffer", self.data.shuffle_buffer),
                ("train.eval_every", self.train.eval_every),
                ("train.checkpoint_every", self.train.checkpoint_every),
                ("train.log_every", self.train.log_every),
                ("train.keep_checkpoints", self.train.keep_checkpoints),
                ("optimizer.learning_rate", self.optimizer.learning_rate)]
    for key, value in positive:
      if not value > 0:  # NaN too
        raise ConfigError(f"{key} must be > 0; got {value}")
    non_negative = [("optimizer.weight_decay", self.optimizer.weight_decay),
                    ("optimizer.warmup_steps", self.optimizer.warmup_steps),
                    ("optimizer.clip_norm", self.optimizer.clip_norm),
                    ("train.early_stopping_patience", self.train.early_stopping_patience),
                    ("fitnet.hint_learning_rate", self.fitnet.hint_learning_rate)]
    for key, value in non_negative:
      if not value >= 0:
        raise ConfigError(f"{key} must be >= 0; got {value}")
    if not 0.0 <= self.optimizer.final_learning_rate_ratio <= 1.0:
      raise ConfigError("optimizer.final_learning_rate_ratio must be in [0, 1]; got "
                        f"{self.optimizer.final_learning_rate_ratio}")
    for key, rate in _dropout_rates(self.model.params, "model.params."):
      if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"{key} must be a rate in [0, 1); got {rate!r}")
    self._check_model()
    if not 1 <= self.quantization.bits <= 16 or self.quantization.bucket_size < 1:
      raise ConfigError("quantization.bits must be in 1..16 and quantization.bucket_size >= 1")
    if self.fitnet.stage not in (0, 1, 2) or self.fitnet.hint_steps <= 0:
      raise ConfigError("fitnet.stage must be 0 (both), 1 or 2 and fitnet.hint_steps > 0; got "
                        f"{self.fitnet.stage} and {self.fitnet.hint_steps}")
    if (self.model.name == "whisper_teacher" and self.model.params.get("checkpoint")
        and self.data.normalize):
      raise ConfigError("a pretrained Whisper encoder (model.params.checkpoint) takes Whisper's "
                        "own log-mel scaling, not standardised features; set "
                        "data.normalize=false (configs/teacher_*_whisper.yaml do)")
    self.augment.validate()
    self.distill.validate()
    if self.augment.enabled and self.mode == "fitnet":
      raise ConfigError("augment.enabled: FitNet hints are stored for the clean clips; "
                        "train FitNets without waveform augmentation")
    if not 0.0 <= self.data.validation_fraction < 1.0:
      raise ConfigError("data.validation_fraction must be in [0, 1); got "
                        f"{self.data.validation_fraction}")
    return self

  def _check_model(self) -> None:
    """ConfigError for an unknown ``model.name`` or ``model.params`` that its
    builder does not take (``registry.check_params``)."""
    from kws_tf.models import registry  # imports the model modules (TensorFlow)

    try:
      registry.check_params(self.model.name, self.model.params)
    except KeyError as e:
      raise ConfigError(f"model.name: {e.args[0]}") from None
    except ValueError as e:
      raise ConfigError(f"model.params: {e}") from None


def _dropout_rates(params: Dict[str, Any], prefix: str) -> List[tuple]:
  """``(dotted key, rate)`` of every dropout rate in ``params`` and the mappings
  nested in it: the value of a key ending in ``dropout``, each item of one
  ending in ``dropouts``."""
  found = []
  for key, value in params.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      found += _dropout_rates(value, f"{name}.")
    elif key.endswith("dropouts") and isinstance(value, (list, tuple)):
      found += [(f"{name}[{i}]", rate) for i, rate in enumerate(value)]
    elif key.endswith("dropout"):
      found.append((name, value))
  return found


def _field_types(cls) -> Dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, kind: Any, key: str) -> Any:
  """``value`` converted to the annotated type ``kind``; ConfigError if impossible."""
  origin = typing.get_origin(kind)
  if origin is typing.Union:  # Optional[X]
    if value is None:
      return None
    inner = [k for k in typing.get_args(kind) if k is not type(None)][0]
    return _coerce(value, inner, key)
  if origin in (dict, Dict):
    if not isinstance(value, dict):
      raise ConfigError(f"{key} must be a mapping; got {value!r}")
    return dict(value)
  if kind is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    raise ConfigError(f"{key} must be true or false; got {value!r}")
  if kind is int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
      raise ConfigError(f"{key} must be an integer; got {value!r}")
    try:
      return int(value)
    except ValueError:
      raise ConfigError(f"{key} must be an integer; got {value!r}") from None
  if kind is float:
    if isinstance(value, bool):
      raise ConfigError(f"{key} must be a number; got {value!r}")
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ConfigError(f"{key} must be a number; got {value!r}") from None
  if kind is str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
      raise ConfigError(f"{key} must be a string; got {value!r}")
    return str(value)
  raise ConfigError(f"{key}: unsupported field type {kind}")


def _build(cls, values: Dict[str, Any], prefix: str, source: str):
  if not isinstance(values, dict):
    raise ConfigError(f"{prefix or 'the config'} in {source} must be a mapping")
  types = _field_types(cls)
  kwargs = {}
  for key, value in values.items():
    name = f"{prefix}{key}"
    if key not in types:
      raise ConfigError(f"unknown config key {name!r} in {source}; known keys here: "
                        f"{', '.join(prefix + k for k in types)}")
    kind = types[key]
    if dataclasses.is_dataclass(kind):
      kwargs[key] = _build(kind, value, f"{name}.", source)
    else:
      kwargs[key] = _coerce(value, kind, name)
  return cls(**kwargs)


def from_dict(values: Dict[str, Any], source: str = "the config") -> Config:
  """A Config from a nested mapping; unknown keys are ConfigErrors."""
  return _build(Config, values or {}, "", source)


def to_dict(config: Config) -> Dict[str, Any]:
  """The config as a nested mapping of plain values."""
  return dataclasses.asdict(config)


def _set_path(values: Dict[str, Any], path: List[str], value: Any) -> None:
  for part in path[:-1]:
    values = values.setdefault(part, {})
    if not isinstance(values, dict):
      raise ConfigError(f"cannot set {'.'.join(path)}: {part!r} is not a mapping")
  values[path[-1]] = value


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
  """Applies ``key.sub=value`` strings to a nested mapping (YAML values)."""
  values = yaml.safe_load(yaml.safe_dump(values)) or {}
  for override in overrides:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"an override must look like key=value; got {override!r}")
    _set_path(values, key.strip().split("."), yaml.safe_load(text) if text.strip() else "")
  return values


RECIPES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def find_recipe(name: str) -> str:
  """The file of recipe ``name``: a path to an existing file as it is, else a bare
  name (``kws_small`` or ``kws_small.yaml``) looked up in ``RECIPES``.

  ConfigError naming both places when neither holds it.
  """
  if os.path.isfile(name):
    return name
  if os.sep not in name and "/" not in name:
    candidate = os.path.join(RECIPES, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(candidate):
      return candidate
  raise ConfigError(f"config file not found: {name} (neither a file nor a recipe of {RECIPES})")


def load(path: Optional[str], overrides: Sequence[str] = ()) -> Config:
  """Reads a YAML recipe (a path or a bare recipe name, see ``find_recipe``; the
  defaults when None) plus overrides."""
  values: Dict[str, Any] = {}
  source = "the defaults"
  if path:
    path = find_recipe(path)
    source = path
    try:
      with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    except FileNotFoundError:
      raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
      raise ConfigError(f"{path} is not valid YAML: {e}") from None
  if overrides:
    values = apply_overrides(values, overrides)
    source = f"{source} with overrides"
  return from_dict(values, source).validate()


def dump(config: Config) -> str:
  """The config as YAML text (what ``config.yaml`` in a model dir holds)."""
  return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def differences(old: Config, new: Config) -> List[str]:
  """The dotted keys whose values differ between two configs, sorted
  (``model.params`` compared as a whole)."""
  def walk(a: Dict[str, Any], b: Dict[str, Any], prefix: str) -> List[str]:
    out = []
    for key in set(a) | set(b):
      x, y = a.get(key), b.get(key)
      if isinstance(x, dict) and isinstance(y, dict) and key != "params":
        out.extend(walk(x, y, f"{prefix}{key}."))
      elif x != y:
        out.append(f"{prefix}{key}")
    return out

  return sorted(walk(to_dict(old), to_dict(new), ""))


def check_file(path: str, config: Config) -> bool:
  """Whether ``path`` exists; ConfigError naming the keys that differ when it
  holds another config. A file written before a field existed holds that
  field's default, so it differs in nothing."""
  if not os.path.exists(path):
    return False
  with open(path, encoding="utf-8") as f:
    previous = f.read()
  if previous != dump(config):
    diff = differences(from_dict(yaml.safe_load(previous), path), config)
    if diff:
      raise ConfigError(f"{path} holds another config (differs in: {', '.join(diff)})")
  return True


def write_once(path: str, config: Config) -> bool:
  """Writes ``dump(config)`` to ``path`` unless the file exists; returns whether it wrote.

  An existing file must hold the same config (``check_file``). The write is atomic.
  """
  if check_file(path, config):
    return False
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(dump(config))
  os.replace(tmp, path)
  return True


@dataclasses.dataclass
class DataRecipe:
  """What ``create_tfrecords`` writes for a task: a ``records_<task>.yaml`` recipe.

  Fields:
    formats: feature formats of the records (``raw``, ``logmel``, ``mfcc``...).
    feature_params: format -> {parameter: value} overriding the converter's
      defaults (``kws_tf.features``; lengths in samples, frequencies in Hz).
    vocab: ctc: the character vocabulary, a shipped one's name (``vietnamese``)
      or a vocabulary file (``kws_tf.text``); "" leaves the converter's default.
  """
  formats: List[str]
  feature_params: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  vocab: str = ""

  def overrides(self) -> List[str]:
    """``feature_params`` as ``<format>.<name>=<value>`` items (``--feature_params``)."""
    return [f"{fmt}.{key}={value}" for fmt, params in self.feature_params.items()
            for key, value in params.items()]

  def converter_flags(self) -> List[str]:
    """The ``create_tfrecords`` flags that make these records."""
    flags = [f"--formats={','.join(self.formats)}"]
    if self.overrides():
      flags.append(f"--feature_params={','.join(self.overrides())}")
    if self.vocab:
      flags.append(f"--vocab={self.vocab}")
    return flags


def load_data_recipe(name: str) -> DataRecipe:
  """Reads a data recipe (a path or a bare name, see ``find_recipe``).

  ConfigError for an unknown key, no formats, parameters of a format the
  recipe does not write, or a vocabulary that does not read.
  """
  path = find_recipe(name)
  with open(path, encoding="utf-8") as f:
    values = yaml.safe_load(f) or {}
  unknown = sorted(set(values) - {"formats", "feature_params", "vocab"})
  if unknown:
    raise ConfigError(f"{path}: unknown key {unknown[0]!r} (a data recipe has formats, "
                      "feature_params and vocab)")
  recipe = DataRecipe(list(values.get("formats") or []), dict(values.get("feature_params") or {}),
                      str(values.get("vocab") or ""))
  if not recipe.formats:
    raise ConfigError(f"{path}: formats is empty")
  for fmt in recipe.feature_params:
    if fmt not in recipe.formats:
      raise ConfigError(f"{path}: feature_params.{fmt} is for a format the recipe does not "
                        f"write ({', '.join(recipe.formats)})")
  if recipe.vocab:
    try:
      text.Vocabulary.read(recipe.vocab)
    except (FileNotFoundError, ValueError) as error:
      raise ConfigError(f"{path}: vocab: {error}") from None
  return recipe
