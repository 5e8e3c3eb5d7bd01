"""The one custom train loop, for teachers and students, kws and ctc.

``Trainer(config, model_dir, data_dir, guidance_dir).run()`` trains the model
named by ``config.model`` on ``config.data.format`` records of ``data_dir``:

* a ``tf.distribute`` strategy (default, MirroredStrategy over the local GPUs
  or the logical CPUs, MultiWorkerMirroredStrategy from TF_CONFIG); a
  ``tf.function`` train step with a GradientTape, optionally XLA-compiled;
  a mixed-precision policy with dynamic loss scaling for float16; gradient
  clipping; Adam or AdamW with warm-up and cosine decay;
* a CheckpointManager every ``train.checkpoint_every`` steps holding the model,
  the optimizer, the step, the position of the input pipeline (the tf.data
  iterator, shuffle buffer included), the dropout random generators and the
  early-stopping state: a run killed and resumed ends with the weights of an
  uninterrupted one (with ``train.deterministic``);
* validation every ``train.eval_every`` steps, early stopping on
  ``config.metric``, the best weights kept apart in ``best/``;
* TensorBoard summaries (each loss term, learning rate, gradient norm,
  examples/s, validation metrics), a progress bar, ``history.jsonl``;
* a NaN or Inf loss stops the run with a TrainingError before anything is
  saved, so the last checkpoint is the last good one;
* ``mode=quantized_distill`` (Polino et al. 2018): every step runs forward
  and backward with the weights quantized (``config.quantization``) and applies
  the gradient to the full-precision weights; validation, the best checkpoint
  and the final model use the quantized weights;
* ``mode=fitnet`` (Romero et al. 2014, ``kws_tf.distill.fitnet``), one stage
  per run (``kws_tf.training.fitnet_stages`` runs both): stage 1 trains the student
  up to its guided layer plus a regressor on hint guidance and validates on
  the hint MSE; stage 2 starts from stage 1's weights (``init_from``) and
  distils with an annealed KD weight;
* at the end the best weights are evaluated on ``data.test_split`` and
  ``results.json`` is written.

Model dir layout::

  config.yaml      the resolved config (a different config is refused)
  model.json       what the model takes and gives (``kws_tf.model_dir.ModelSpec``)
  checkpoints/     ckpt-<step>.*  (full training state)
  best/            ckpt-<step>.*  (model only) + best.json
  tensorboard/     train/, validation/
  history.jsonl    one line per validation
  results.json     test metrics of the best weights, throughput, stop reason
"""
import dataclasses
import json
import math
import os
import time
from typing import Dict, List, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras
import yaml
from tqdm import tqdm

from kws_tf import config as config_lib
from kws_tf import data, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import fitnet, losses, quantization
from kws_tf.evaluation import runner
from kws_tf.training import schedules


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, mismatched model dir, ...)."""


# Written by a run started from another run's weights (``init_from``).
INIT_FILE = "initialised_from.json"
_HIGHER_IS_BETTER = {"accuracy": True, "cer": False, "wer": False, "loss": False,
                     "hint": False}


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The distribution strategy called ``name`` (see ``TrainConfig.strategy``)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"unknown strategy {name!r}")


def _workers(strategy: tf.distribute.Strategy):
  """(number of workers, this worker's index): (1, 0) unless multi-worker."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return 1, 0
  return resolver.cluster_spec().num_tasks("worker"), resolver.task_id or 0


def _replica_slice(batch: Dict[str, tf.Tensor], context, local_replicas: int):
  """The part of a worker's batch that one of its ``local_replicas`` replicas trains on."""
  index = context.replica_id_in_sync_group % local_replicas
  size = tf.shape(batch["features"])[0] // local_replicas
  return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def random_generators(model: keras.Model) -> Dict[str, tf.random.Generator]:
  """The tf.random.Generator of every random layer (dropout, noise), by layer path.

  tf-keras keeps these generators out of ``model.weights`` and checkpoints;
  the train loop checkpoints them itself so dropout masks continue exactly
  after a resume. Needs ``keras.backend.experimental.enable_tf_random_generator``
  before the model is built.
  """
  found = {}

  def visit(layer, path):
    generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
    if isinstance(generator, tf.random.Generator):
      found[path] = generator
    for child in getattr(layer, "_self_tracked_trackables", []):
      if isinstance(child, keras.layers.Layer):
        visit(child, f"{path}/{child.name}")

  visit(model, model.name)
  return found


@dataclasses.dataclass
class _Window:
  """Running sums of the loss terms between two training summaries."""
  sums: Dict[str, float] = dataclasses.field(default_factory=dict)
  steps: int = 0
  examples: int = 0
  seconds: float = 0.0

  def add(self, terms: Dict[str, float], examples: int, seconds: float) -> None:
    for key, value in terms.items():
      self.sums[key] = self.sums.get(key, 0.0) + value
    self.steps += 1
    self.examples += examples
    self.seconds += seconds

  def means(self) -> Dict[str, float]:
    return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


class Trainer:
  """Trains one model; see the module docstring.

  Args:
    config: the resolved, validated recipe.
    model_dir: where checkpoints, summaries and results go.
    data_dir: a ``create_tfrecords`` output folder of ``config.task``.
    guidance_dir: a ``create_guidance`` output folder (``mode=distill``,
      ``quantized_distill`` and FitNet stage 2: logits; FitNet stage 1: hints).
    init_from: a model dir whose best weights a fresh run starts from: FitNet
      stage 2's stage 1 (its layers up to the guided layer), or for the other
      modes a finished run of the same model (fine-tuning, e.g. quantized
      distillation from the float distilled student). Ignored on resume.
  """

  def __init__(self, config: config_lib.Config, model_dir: str, data_dir: str,
               guidance_dir: Optional[str] = None, init_from: Optional[str] = None):
    self.config = config.validate()
    self.model_dir = model_dir
    self.data_dir = data_dir
    self.guidance_dir = guidance_dir
    self.init_from = init_from
    self._hint_stage = config.mode == "fitnet" and config.fitnet.stage == 1
    if config.mode == "fitnet" and config.fitnet.stage == 0:
      raise TrainingError("a Trainer runs one FitNet stage (fitnet.stage=1 or 2); "
                          "kws_tf.training.fitnet_stages.train runs both")
    if config.mode == "fitnet" and config.fitnet.stage == 2 and not init_from:
      raise TrainingError("FitNet stage 2 starts from a finished stage 1: give its model dir")
    self.metadata = records.load_metadata(data_dir)
    if self.metadata.task != config.task:
      raise TrainingError(f"{data_dir} holds {self.metadata.task} records but the "
                          f"config's task is {config.task}")
    if config.data.format not in self.metadata.formats:
      raise TrainingError(f"{data_dir} has no {config.data.format!r} records (it has "
                          f"{', '.join(self.metadata.formats)})")
    if config.augment.enabled:
      try:
        data.check_context(self.metadata, data_dir)
      except ValueError as e:
        raise TrainingError(f"augment.enabled: {e}") from None
    if config.mode != "standard" and not guidance_dir:
      raise TrainingError(f"mode={config.mode} needs --guidance_dir (made by create_guidance)")
    if config.task == "kws":
      self.class_names: List[str] = list(self.metadata.classes)
      self.vocabulary = None
      self.num_classes = len(self.class_names)
    else:
      self.class_names = []
      self.vocabulary = text.Vocabulary(self.metadata.vocabulary["symbols"])
      self.num_classes = len(self.vocabulary)
    self.spec = self._model_spec()

  # ---------------------------------------------------------------- set-up
  def _prepare_model_dir(self) -> None:
    os.makedirs(self.model_dir, exist_ok=True)
    path = os.path.join(self.model_dir, "config.yaml")
    resolved = config_lib.dump(self.config)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        previous = f.read()
      if previous != resolved:
        old = config_lib.to_dict(config_lib.from_dict(yaml.safe_load(previous)))
        new = config_lib.to_dict(self.config)
        diff = sorted(_differences(old, new))
        # No difference: the file predates a config field and holds its default.
        if diff:
          raise TrainingError(
              f"{self.model_dir} holds a run with another config (differs in: "
              f"{', '.join(diff)}); use another --model_dir or the same config")
      return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(resolved)
    os.replace(tmp, path)
    model_dir_lib.write_spec(self.model_dir, self.spec)

  def _model_spec(self) -> model_dir_lib.ModelSpec:
    """The spec of the model this run trains, on ``config.data.format`` records."""
    cfg, fmt = self.config, self.config.data.format
    kws = cfg.task == "kws"
    return model_dir_lib.ModelSpec(
        name=cfg.model.name, task=cfg.task, role=cfg.role,
        num_channels=self.metadata.formats[fmt].num_channels,
        num_classes=self.num_classes, projection_dim=cfg.model.projection_dim,
        params=dict(cfg.model.params), format=fmt,
        feature_params=self.metadata.formats[fmt].params,
        normalization=self.metadata.normalization.get(fmt) if cfg.data.normalize else None,
        data_fingerprint=self.metadata.fingerprint,
        classes=self.class_names if kws else None,
        vocabulary=None if kws else self.metadata.vocabulary,
        quantization=(dataclasses.asdict(cfg.quantization)
                      if cfg.mode == "quantized_distill" else None))

  def _set_up_runtime(self) -> None:
    train = self.config.train
    keras.utils.set_random_seed(train.seed)
    keras.backend.experimental.enable_tf_random_generator()
    if train.deterministic:
      tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(train.mixed_precision)

  def _build_optimizer(self) -> keras.optimizers.Optimizer:
    opt = self.config.optimizer
    schedule = self._schedule = schedules.WarmupSchedule(
        opt.learning_rate, opt.warmup_steps, self.config.train.steps, opt.schedule,
        opt.final_learning_rate_ratio)
    if opt.name == "adamw":
      optimizer = keras.optimizers.AdamW(schedule, weight_decay=opt.weight_decay)
    else:
      optimizer = keras.optimizers.Adam(schedule)
    if self.config.train.mixed_precision == "mixed_float16":
      optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer

  def _guidance(self) -> Optional[data.Guidance]:
    if self.config.mode == "standard":
      return None
    try:
      guidance = data.open_guidance(self.guidance_dir, self.metadata)
    except ValueError as e:
      raise TrainingError(str(e)) from None
    self._check_views(guidance)
    return guidance

  def _check_views(self, guidance: data.Guidance) -> None:
    """Distilling with augmentation needs the teacher's logits for the student's views."""
    cfg = self.config
    if not cfg.augment.enabled:
      if guidance.views:
        raise TrainingError(f"{self.guidance_dir} holds the teacher's logits for "
                            f"{guidance.views} augmented views per clip: train with the "
                            "augment section they were made with (augment.enabled=true)")
      return
    if not guidance.views:
      raise TrainingError(
          f"augment.enabled: the student would see augmented clips while {self.guidance_dir} "
          "holds the teacher's logits for the clean ones; make guidance of the same views: "
          "kws-create-guidance --views=8 --augment_recipe=<this recipe> (same --override)")
    wanted = dataclasses.asdict(cfg.augment)
    wanted.pop("enabled")
    made = guidance.metadata.get("augment", {})
    differ = sorted(k for k in set(wanted) | set(made) if wanted.get(k) != made.get(k))
    if guidance.metadata.get("babble_split") != cfg.data.train_split:
      differ.append("data.train_split (babble)")
    if differ:
      raise TrainingError(f"the views in {self.guidance_dir} were made with another augment "
                          f"section (differs in: {', '.join(differ)}); make them again with "
                          "this recipe")

  def _dataset(self, split: str, training: bool, keep=None, guidance=None) -> tf.data.Dataset:
    d = self.config.data
    spec_augment = None
    if d.spec_augment:
      spec_augment = data.SpecAugment(d.freq_masks, d.freq_mask_param,
                                      d.time_masks, d.time_mask_param)
    augmenter = None
    if training and self.config.augment.enabled:
      augmenter = data.make_augmenter(self.data_dir, self.config.augment, d.train_split)
    workers, index = _workers(self._strategy)
    ds = data.make_dataset(
        self.data_dir, d.format, split,
        batch_size=d.batch_size // workers if training else d.eval_batch_size,
        training=training, normalize=d.normalize, spec_augment=spec_augment,
        shuffle_buffer=d.shuffle_buffer,
        bucket=d.bucket, seed=self.config.train.seed, repeat=training,
        drop_remainder=training and self._strategy.num_replicas_in_sync > 1,
        guidance=guidance, keep=keep, augmenter=augmenter)
    if training and workers > 1:
      ds = ds.shard(workers, index)
    return ds

  def _validation_dataset(self, guidance) -> tf.data.Dataset:
    d = self.config.data
    if d.validation_split:
      return self._dataset(d.validation_split, False, guidance=guidance)
    return self._dataset(d.train_split, False, keep=data.id_holdout(d.validation_fraction, True),
                         guidance=guidance)

  # ---------------------------------------------------------------- steps
  def _loss_terms(self, batch, outputs) -> Dict[str, tf.Tensor]:
    cfg = self.config
    if self._hint_stage:
      loss = fitnet.hint_loss(outputs["hint"], outputs["hint_frames"], batch["guidance_hint"],
                              batch["guidance_frames"])
      return {"hint": loss, "total": loss}
    terms = self._task_terms(batch, outputs)
    if cfg.mode == "fitnet":
      f = cfg.fitnet
      weight = fitnet.kd_weight(self.optimizer.iterations, cfg.train.steps, f.kd_weight_start,
                                f.kd_weight_end)
      terms["total"] = fitnet.stage2_total(terms, weight, cfg.distill.temperature,
                                           cfg.distill.feature_weight)
      terms["kd_weight"] = weight
    return terms

  def _task_terms(self, batch, outputs) -> Dict[str, tf.Tensor]:
    """The task's plain terms (standard) or distillation terms (other modes)."""
    cfg = self.config
    if cfg.task == "kws":
      if cfg.mode == "standard":
        return losses.standard_terms("kws", labels=batch["label"], logits=outputs["logits"])
      return losses.distillation_terms(
          "kws", self._distill_config, labels=batch["label"],
          student_logits=outputs["logits"], teacher_logits=batch["guidance_logits"],
          student_projection=outputs.get("projection"),
          teacher_features=batch.get("guidance_features"))
    if cfg.mode == "standard":
      return losses.standard_terms(
          "ctc", labels=batch["labels"], label_length=batch["label_length"],
          logits=outputs["logits"], logit_length=outputs["logit_frames"])
    # The teacher and the student both give 20 ms frames; their counts can
    # differ by one frame (STFT centring), so both losses run over the
    # frames they have in common.
    frames = tf.minimum(tf.shape(outputs["logits"])[1], tf.shape(batch["guidance_logits"])[1])
    valid = tf.minimum(outputs["logit_frames"], batch["guidance_frames"])
    features = batch.get("guidance_features")
    projection = outputs.get("projection")
    return losses.distillation_terms(
        "ctc", self._distill_config, labels=batch["labels"],
        label_length=batch["label_length"], student_logits=outputs["logits"][:, :frames],
        logit_length=valid, teacher_logits=batch["guidance_logits"][:, :frames],
        student_projection=None if projection is None else projection[:, :frames],
        teacher_features=None if features is None else features[:, :frames])

  def _make_train_step(self):
    strategy, model, optimizer = self._strategy, self.model, self.optimizer
    replicas = float(strategy.num_replicas_in_sync)
    local_replicas = strategy.num_replicas_in_sync // _workers(strategy)[0]
    clip = self.config.optimizer.clip_norm
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    quantizer = self._quantizer
    seed = tf.constant(self.config.train.seed, tf.int64)

    def replica_step(batch):
      inputs = {"features": batch["features"], "num_frames": batch["num_frames"]}
      if quantizer is not None:
        # Quantized distillation: forward and backward at the quantized weights,
        # the gradient applied to the full-precision ones (straight-through).
        full_precision = quantizer.quantize_in_place(
            tf.stack([seed, tf.cast(optimizer.iterations, tf.int64)]))
      with tf.GradientTape() as tape:
        outputs = model(inputs, training=True)
        terms = self._loss_terms(batch, outputs)
        loss = terms["total"]
        if model.losses:
          loss += tf.add_n(model.losses)
        loss = loss / replicas
        if scaled:
          loss = optimizer.get_scaled_loss(loss)
      variables = model.trainable_variables
      grads = tape.gradient(loss, variables)
      if scaled:
        grads = optimizer.get_unscaled_gradients(grads)
      if quantizer is not None:
        quantizer.restore(full_precision)
      pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
      grads = [g for g, _ in pairs]
      norm = tf.linalg.global_norm(grads)
      if clip > 0:
        grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
      optimizer.apply_gradients(zip(grads, [v for _, v in pairs]))
      terms = {k: tf.cast(v, tf.float32) for k, v in terms.items()}
      terms["grad_norm"] = norm
      terms["examples"] = tf.cast(tf.shape(batch["features"])[0], tf.float32)
      return terms

    @tf.function(jit_compile=self.config.train.jit_compile or None)
    def compiled_step(batch):
      return replica_step(batch)

    @tf.function
    def train_step(iterator):
      # Ids are strings, which XLA cannot take; the step does not need them.
      batch = {k: v for k, v in next(iterator).items() if k != "id"}
      if local_replicas > 1:
        batch = strategy.experimental_distribute_values_from_function(
            lambda context: _replica_slice(batch, context, local_replicas))
      per_replica = strategy.run(compiled_step, args=(batch,))
      out = {}
      for key, value in per_replica.items():
        summed = key in ("examples", "infeasible")
        op = tf.distribute.ReduceOp.SUM if summed else tf.distribute.ReduceOp.MEAN
        out[key] = strategy.reduce(op, value, axis=None)
      return out

    return train_step

  # ---------------------------------------------------------------- run
  def run(self, stop_after: Optional[int] = None) -> dict:
    """Trains to ``train.steps`` (or early stopping) and evaluates the best weights.

    ``stop_after`` ends the call after that step, as if the process were
    killed right after its checkpoint (tests use it); run() again resumes.
    Returns the results dict (also written to ``results.json``).
    """
    cfg = self.config
    self._prepare_model_dir()
    self._set_up_runtime()
    self._strategy = make_strategy(cfg.train.strategy)
    self._distill_config = losses.DistillConfig(
        temperature=cfg.distill.temperature, alpha=cfg.distill.alpha,
        beta=cfg.distill.beta, feature_weight=cfg.distill.feature_weight)
    guidance = self._guidance()
    self._fitnet = None
    self._hint_sums = None  # _hint_error's tf.function
    with self._strategy.scope():
      self.model = model_dir_lib.build_model(self.spec)
      if self._hint_stage:
        self.model = self._hint_model(self.model)
      self.optimizer = self._build_optimizer()
      self.optimizer.build(self.model.trainable_variables)
    # Host-side counters, outside the strategy (only the loop updates them).
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    higher = _HIGHER_IS_BETTER[cfg.metric]
    self.best_value = tf.Variable(-math.inf if higher else math.inf, dtype=tf.float64,
                                  trainable=False, name="best_value")
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
    self.bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_evals")
    self.stopped = tf.Variable(False, trainable=False, name="stopped_early")
    # Build the model's random layers, so their generators exist to checkpoint.
    self.model({"features": tf.zeros([1, 8, self.spec.num_channels]),
                "num_frames": tf.constant([8])}, training=False)
    self._quantizer = self._rounder = None
    if cfg.mode == "quantized_distill":
      q = cfg.quantization
      self._quantized = quantization.quantizable_weights(self.model, q.keep_first_last_float)
      self._quantizer = quantization.QuantizedWeights(self._quantized, q.bits, q.bucket_size,
                                                      q.stochastic)
      # Validation and the saved best model use deterministic rounding.
      self._rounder = quantization.QuantizedWeights(self._quantized, q.bits, q.bucket_size)

    train_ds = self._dataset(cfg.data.train_split, True, guidance=guidance,
                             keep=None if cfg.data.validation_split else
                             data.id_holdout(cfg.data.validation_fraction, False))
    # A plain (checkpointable) iterator of this worker's batches; the train
    # step splits each batch among the local replicas.
    iterator = iter(train_ds)
    checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step, iterator=iterator,
        best_value=self.best_value, best_step=self.best_step, bad_evals=self.bad_evals,
        stopped=self.stopped, rng=random_generators(self.model))
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(self.model_dir, "checkpoints"),
        max_to_keep=cfg.train.keep_checkpoints, step_counter=self.step)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model), os.path.join(self.model_dir, "best"),
        max_to_keep=1, step_counter=self.step)
    if cfg.mode == "fitnet" and not self._hint_stage:
      self._fitnet = {"initialised_from": self._initialise_from_stage1(
          fresh=not manager.latest_checkpoint)}
    elif self.init_from and not manager.latest_checkpoint:
      self._initialise_from_run()
    if manager.latest_checkpoint:
      checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
      tqdm.write(f"resuming from {manager.latest_checkpoint} (step {int(self.step)})")

    validation_ds = self._validation_dataset(guidance=guidance if self._hint_stage else None)
    if self._hint_stage:
      self._check_hint_frames(validation_ds)
    self._forward = None
    train_step = self._make_train_step()
    writers = {name: tf.summary.create_file_writer(os.path.join(self.model_dir, "tensorboard", name))
               for name in ("train", "validation")}
    window = _Window()
    total_examples, total_seconds = 0, 0.0
    reason = "finished"
    bar = tqdm(total=cfg.train.steps, initial=int(self.step), unit="step",
               desc=f"{cfg.role} {cfg.model.name}", dynamic_ncols=True)
    while int(self.step) < cfg.train.steps and not bool(self.stopped):
      start = time.perf_counter()
      terms = {k: float(v) for k, v in train_step(iterator).items()}
      seconds = time.perf_counter() - start
      step = int(self.step.assign_add(1))
      if not math.isfinite(terms["total"]):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items() if k != "examples")
        raise TrainingError(
            f"the loss is not finite at step {step} ({shown}); stopped without saving, "
            f"the last good checkpoint is {manager.latest_checkpoint or 'none (no checkpoint yet)'}. "
            "Lower optimizer.learning_rate, clip gradients (optimizer.clip_norm) or check the data.")
      examples = int(terms.pop("examples"))
      window.add(terms, examples, seconds)
      total_examples += examples
      total_seconds += seconds
      bar.update(1)
      bar.set_postfix(loss=f"{terms['total']:.4f}")
      if step % cfg.train.log_every == 0 or step == cfg.train.steps:
        self._write_train_summaries(writers["train"], step, window)
        window = _Window()
      if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
        # Quantized distillation validates (and keeps as best) the quantized model.
        full_precision = self._rounder.quantize_in_place() if self._rounder else None
        metrics = self._validate(validation_ds)
        self._record_validation(writers["validation"], step, metrics, best_manager)
        if full_precision is not None:
          self._rounder.restore(full_precision)
      if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or bool(self.stopped):
        manager.save(checkpoint_number=step)
      if stop_after is not None and step >= stop_after:
        bar.close()
        return {}
    bar.close()
    if bool(self.stopped):
      reason = "early stopping"
    results = self._final_results(reason, total_examples, total_seconds)
    return results

  # ---------------------------------------------------------------- validation
  def _validate(self, dataset) -> Dict[str, float]:
    if self._hint_stage:
      return {"hint": self._hint_error(dataset, "the validation set")}
    if self._forward is None:
      self._forward = runner.make_forward(self.model, self.config.task, dataset.element_spec)
    try:
      return runner.evaluate(self.model, dataset, self.config.task,
                             class_names=self.class_names, vocabulary=self.vocabulary,
                             summary_only=True, forward=self._forward)
    except runner.EmptyDatasetError:
      d = self.config.data
      where = (f"split {d.validation_split!r}" if d.validation_split else
               f"the {d.validation_fraction:g} of {d.train_split!r} held out")
      raise TrainingError(f"the validation set ({where}) is empty; raise "
                          "data.validation_fraction or set data.validation_split") from None

  def _record_validation(self, writer, step: int, metrics: Dict[str, float],
                         best_manager) -> None:
    cfg = self.config
    value = float(metrics[cfg.metric])  # cfg.metric is "hint" in FitNet stage 1
    higher = _HIGHER_IS_BETTER[cfg.metric]
    improved = value > float(self.best_value) if higher else value < float(self.best_value)
    if improved:
      self.best_value.assign(value)
      self.best_step.assign(step)
      self.bad_evals.assign(0)
      best_manager.save(checkpoint_number=step)
      records.write_json(os.path.join(self.model_dir, "best", "best.json"),
                         {"step": step, "metric": cfg.metric, "value": value,
                          "metrics": metrics})
    else:
      self.bad_evals.assign_add(1)
      patience = cfg.train.early_stopping_patience
      if patience and int(self.bad_evals) >= patience:
        self.stopped.assign(True)
        tqdm.write(f"early stopping at step {step}: {cfg.metric} has not improved for "
                   f"{patience} validations (best {float(self.best_value):.4f} at step "
                   f"{int(self.best_step)})")
    with writer.as_default(step=step):
      for key, val in metrics.items():
        tf.summary.scalar(key, val)
    writer.flush()
    line = {"step": step, "improved": bool(improved), **metrics}
    with open(os.path.join(self.model_dir, "history.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(line, sort_keys=True) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    tqdm.write(f"step {step} validation: {shown}{' (best)' if improved else ''}")

  def _write_train_summaries(self, writer, step: int, window: _Window) -> None:
    with writer.as_default(step=step):
      for key, value in window.means().items():
        tf.summary.scalar(f"loss/{key}" if key != "grad_norm" else key, value)
      # The rate of this step's update (the schedule counts updates from 0).
      tf.summary.scalar("learning_rate", float(self._schedule(step - 1)))
      if window.seconds > 0:
        tf.summary.scalar("examples_per_second", window.examples / window.seconds)
    writer.flush()

  def _final_results(self, reason: str, examples: int, seconds: float) -> dict:
    cfg = self.config
    best_dir = os.path.join(self.model_dir, "best")
    best = tf.train.latest_checkpoint(best_dir)
    if best:
      tf.train.Checkpoint(model=self.model).restore(best).expect_partial()
    results = {"task": cfg.task, "role": cfg.role, "mode": cfg.mode,
               "model": cfg.model.name, "parameters": int(self.model.count_params()),
               "steps": int(self.step), "stop_reason": reason,
               "best_step": int(self.best_step), "validation_metric": cfg.metric,
               "validation_value": float(self.best_value),
               "best_checkpoint": best,
               "train_examples_per_second": examples / seconds if seconds else None}
    if self._rounder is not None:
      q = cfg.quantization
      results["quantization"] = {
          "bits": q.bits, "bucket_size": q.bucket_size, "stochastic": q.stochastic,
          "keep_first_last_float": q.keep_first_last_float,
          **quantization.model_size_bits(self.model, self._quantized, q.bits, q.bucket_size)}
    init_path = os.path.join(self.model_dir, INIT_FILE)
    if os.path.exists(init_path):
      results["initialised_from"] = records.read_json(init_path)["checkpoint"]
    if self._fitnet is not None:
      results["fitnet"] = dict(self._fitnet, kd_weight_start=cfg.fitnet.kd_weight_start,
                               kd_weight_end=cfg.fitnet.kd_weight_end)
    splits = self.metadata.splits
    if self._hint_stage:
      if cfg.data.test_split in self._fitnet["hint_splits"]:
        ds = self._dataset(cfg.data.test_split, False, guidance=self._guidance())
        results["test_split"] = cfg.data.test_split
        results["test"] = {"hint": self._hint_error(ds, f"split {cfg.data.test_split!r}")}
    elif cfg.data.test_split in splits:
      ds = self._dataset(cfg.data.test_split, False)
      results["test_split"] = cfg.data.test_split
      results["test"] = runner.evaluate(self.model, ds, cfg.task, class_names=self.class_names,
                                        vocabulary=self.vocabulary, summary_only=True)
    records.write_json(os.path.join(self.model_dir, "results.json"), results)
    return results


  # ---------------------------------------------------------------- FitNet
  def _hint_model(self, student: keras.Model) -> keras.Model:
    """Stage 1's model over ``student``; writes its plan to ``fitnet.json``."""
    try:
      hints = fitnet.hint_metadata(self.guidance_dir)
      self._fitnet = fitnet.plan(student, self.config.fitnet.guided_layer,
                                 self.spec.frame_seconds, hints)
      model = fitnet.build_hint_model(student, self._fitnet)
    except fitnet.FitNetError as e:
      raise TrainingError(str(e)) from None
    records.write_json(os.path.join(self.model_dir, fitnet.SPEC_FILE), self._fitnet)
    return model

  def _check_hint_frames(self, dataset: tf.data.Dataset) -> None:
    """TrainingError when the guided layer's frames cannot line up with the hint's."""
    batch = next(iter(dataset))
    outputs = self.model({"features": batch["features"], "num_frames": batch["num_frames"]},
                         training=False)
    try:
      fitnet.check_frames(outputs["hint_frames"], batch["guidance_frames"],
                          self._fitnet["factor"], self._fitnet["guided_layer"],
                          self._fitnet["hint_layer"])
    except fitnet.FitNetError as e:
      raise TrainingError(str(e)) from None

  def _initialise_from_stage1(self, fresh: bool) -> str:
    """Stage 2: the student takes stage 1's weights (when ``fresh``); returns their path."""
    try:
      if fresh:
        with self._strategy.scope():
          path = fitnet.initialise_from_stage1(self.model, self.init_from)
        tqdm.write(f"FitNet stage 2 starts from stage 1's weights: {path}")
        return path
      return tf.train.latest_checkpoint(os.path.join(self.init_from, "best"))
    except (FileNotFoundError, AssertionError) as e:
      raise TrainingError(f"cannot start FitNet stage 2 from {self.init_from}: {e}") from None

  def _initialise_from_run(self) -> None:
    """A fresh run takes the best weights of the finished run in ``init_from``.

    That run must have trained the same model (name, parameters, task) on the
    same input (format, feature parameters, normalisation); TrainingError
    naming the difference otherwise. The path read is
    written to ``<model_dir>/initialised_from.json`` (and results.json).
    """
    try:
      other = model_dir_lib.read_spec(self.init_from)
    except FileNotFoundError:
      raise TrainingError(f"cannot start from {self.init_from}: it has no model.json "
                          "(not a kws-train model dir)") from None
    keys = ("name", "task", "params", "num_channels", "num_classes", "projection_dim", "format",
            "feature_params", "normalization")
    differ = [k for k in keys if getattr(other, k) != getattr(self.spec, k)]
    if differ:
      values = "; ".join(f"{getattr(other, k)} vs {getattr(self.spec, k)}" for k in differ)
      raise TrainingError(f"cannot start from {self.init_from}: its model differs in "
                          f"{', '.join(differ)} ({values})")
    best = tf.train.latest_checkpoint(os.path.join(self.init_from, "best"))
    if best is None:
      raise TrainingError(f"cannot start from {self.init_from}: no best/ checkpoint "
                          "(has that run validated yet?)")
    with self._strategy.scope():
      tf.train.Checkpoint(model=self.model).restore(best).expect_partial() \
          .assert_existing_objects_matched()
    records.write_json(os.path.join(self.model_dir, INIT_FILE), {"checkpoint": best})
    tqdm.write(f"starting from the weights of {best}")

  def _hint_error(self, dataset: tf.data.Dataset, what: str) -> float:
    """Hint MSE over every valid (frame, channel) value of ``dataset``."""
    if self._hint_sums is None:  # one function for every evaluation: traced once
      model = self.model

      @tf.function(reduce_retracing=True)
      def sums(batch):
        outputs = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                        training=False)
        return fitnet.hint_error_sums(outputs["hint"], outputs["hint_frames"],
                                      batch["guidance_hint"], batch["guidance_frames"])

      self._hint_sums = sums
    total = count = 0.0
    for batch in dataset:
      batch_total, batch_count = self._hint_sums({k: v for k, v in batch.items() if k != "id"})
      total += float(batch_total)
      count += float(batch_count)
    if count == 0:
      raise TrainingError(f"{what} has no hint frames to measure")
    return total / count


def _differences(old, new, prefix: str = "") -> List[str]:
  keys = set(old) | set(new)
  out = []
  for key in keys:
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict) and key != "params":
      out.extend(_differences(a, b, f"{prefix}{key}."))
    elif a != b:
      out.append(f"{prefix}{key}")
  return out
