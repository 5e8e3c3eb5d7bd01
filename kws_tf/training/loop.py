"""The one custom train loop, for teachers and students, kws and ctc.

``Trainer(config, model_dir, data_dir, guidance_dir).run()`` trains the model
named by ``config.model`` on ``config.data.format`` records of ``data_dir``:

* a ``tf.distribute`` strategy (default, MirroredStrategy over the local GPUs
  or the logical CPUs, MultiWorkerMirroredStrategy from TF_CONFIG): every
  worker reads the same global batch and each replica trains on its equal
  slice (a batch size that does not divide among the replicas is refused);
  a ``tf.function`` train step with a GradientTape, optionally XLA-compiled;
  a mixed-precision policy with dynamic loss scaling for float16; clipping
  of the global gradient (summed over the replicas); Adam or AdamW with
  warm-up and cosine decay;
* the loss of ``config.mode`` from ``kws_tf.distill.objectives`` (standard,
  distill, FitNet hint or FitNet KD), each of its terms logged;
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
* ``mode=quantized_distill`` (Polino et al. 2018): the train step's gradient
  is computed with the weights quantized (``config.quantization``) and applied
  to the full-precision weights (``kws_tf.distill.quantization``); validation,
  the best checkpoint and the final model use the quantized weights;
* ``mode=fitnet`` (Romero et al. 2014, ``kws_tf.distill.fitnet``), one stage
  per run (``kws_tf.training.fitnet_stages`` runs both): stage 1 trains the student
  up to its guided layer plus a regressor on hint guidance and validates on
  the hint MSE; stage 2 starts from stage 1's weights (``init_from``) and
  distils with an annealed KD weight;
* at the end the best weights are evaluated on ``data.test_split`` and
  ``results.json`` is written;
* multi-worker: every worker runs the whole loop (saving, validating and
  evaluating are collective) on the same input pipeline, so the chief's
  checkpointed iterator resumes them all and every worker takes the same
  best-checkpoint and early-stopping decisions; only the chief writes the
  model dir (``worker_dir``).

Model dir layout::

  config.yaml      the resolved config (a different config is refused)
  model.json       what the model takes and gives (``kws_tf.model_dir.ModelSpec``),
                   written before any checkpoint; records of another data
                   fingerprint are refused
  checkpoints/     ckpt-<step>.*  (full training state)
  best/            ckpt-<step>.*  (model only) + best.json
  tensorboard/     train/, validation/
  history.jsonl    one line per validation
  results.json     test metrics of the best weights, throughput, stop reason
"""
import contextlib
import dataclasses
import math
import os
import time
from typing import Dict, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras
from tqdm import tqdm

from kws_tf import config as config_lib
from kws_tf import data, records, text
from kws_tf import model_dir as model_dir_lib
from kws_tf.distill import fitnet, objectives, quantization
from kws_tf.evaluation import runner
from kws_tf.models import heads
from kws_tf.training import logs, runtime, schedules, worker_dir


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss, mismatched model dir, ...)."""


# Written by a run started from another run's weights (``init_from``).
INIT_FILE = "initialised_from.json"
_HIGHER_IS_BETTER = {"accuracy": True, "cer": False, "wer": False, "loss": False,
                     "hint": False}


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
    # Absolute: the checkpointed dataset iterator names the record files it
    # reads, so a resume finds them however the folders are spelled.
    self.data_dir = os.path.abspath(data_dir)
    self.guidance_dir = os.path.abspath(guidance_dir) if guidance_dir else guidance_dir
    self.init_from = init_from
    self._hint_stage = config.mode == "fitnet" and config.fitnet.stage == 1
    if config.mode == "fitnet" and config.fitnet.stage == 0:
      raise TrainingError("a Trainer runs one FitNet stage (fitnet.stage=1 or 2); "
                          "kws_tf.training.fitnet_stages.train runs both")
    if config.mode == "fitnet" and config.fitnet.stage == 2 and not init_from:
      raise TrainingError("FitNet stage 2 starts from a finished stage 1: give its model dir")
    self.metadata = records.load_metadata(data_dir)
    if self.metadata.task != config.task:
      raise TrainingError(f"{data_dir} holds {self.metadata['task']} records but the "
                          f"config's task is {config.task}")
    if config.data.format not in self.metadata.formats:
      raise TrainingError(f"{data_dir} has no {config.data.format!r} records (it has "
                          f"{', '.join(self.metadata['formats'])})")
    if config.augment.enabled:
      try:
        data.check_context(self.metadata, data_dir)
      except ValueError as e:
        raise TrainingError(f"augment.enabled: {e}") from None
    if config.mode != "standard" and not guidance_dir:
      raise TrainingError(f"mode={config.mode} needs --guidance_dir (made by create_guidance)")
    self.spec = model_dir_lib.training_spec(config, self.metadata)
    self.class_names = self.spec.classes or []
    self.vocabulary = (text.Vocabulary(self.spec.vocabulary["symbols"])
                       if self.spec.vocabulary else None)
    self.objective = objectives.for_config(config)

  # ---------------------------------------------------------------- set-up
  def _bind_model_dir(self) -> None:
    """``worker_dir.WorkerDir.bind``: TrainingError when the dir holds another
    config or was trained on records of another data fingerprint."""
    try:
      self._dir.bind(self.config, self.spec, self.data_dir)
    except config_lib.ConfigError as e:
      raise TrainingError(f"{e}; use another --model_dir or the same config") from None
    except ValueError as e:
      raise TrainingError(str(e)) from None

  def _guidance(self) -> Optional[data.Guidance]:
    if self.config.mode == "standard":
      return None
    try:
      guidance = data.open_guidance(self.guidance_dir, self.metadata)
      data.check_views(guidance, self.config.augment, self.config.data.train_split)
    except ValueError as e:
      raise TrainingError(str(e)) from None
    return guidance

  def _dataset(self, split: str, training: bool, keep=None, guidance=None) -> tf.data.Dataset:
    d = self.config.data
    spec_augment = None
    if d.spec_augment:
      spec_augment = data.SpecAugment(d.freq_masks, d.freq_mask_param,
                                      d.time_masks, d.time_mask_param)
    augmenter = None
    if training and self.config.augment.enabled:
      augmenter = data.make_augmenter(self.data_dir, self.config.augment, d.train_split)
    # Training repeats the split, so every batch has all of data.batch_size
    # examples: the replicas' slices are equal and no example is dropped.
    return data.make_dataset(
        self.data_dir, d.format, split,
        batch_size=d.batch_size if training else d.eval_batch_size,
        training=training, normalize=d.normalize, spec_augment=spec_augment,
        shuffle_buffer=d.shuffle_buffer,
        bucket=d.bucket, seed=self.config.train.seed, repeat=training,
        guidance=guidance, keep=keep, augmenter=augmenter)

  def _validation_dataset(self, guidance) -> tf.data.Dataset:
    d = self.config.data
    if d.validation_split:
      return self._dataset(d.validation_split, False, guidance=guidance)
    return self._dataset(d.train_split, False, keep=data.id_holdout(d.validation_fraction, True),
                         guidance=guidance)

  def _build(self) -> None:
    """The model (FitNet stage 1: its hint model), the optimizer, the loop's
    counters and, for quantized distillation, its quantized weights."""
    cfg = self.config
    with self._strategy.scope():
      try:
        self.model = model_dir_lib.build_model(self.spec)
      except ValueError as e:  # a value the builder refuses (the keys were checked)
        raise TrainingError(f"model.params: {e}") from None
      if self._hint_stage:
        self.model, self._fitnet = fitnet.stage1_model(
            self.model, self.guidance_dir, cfg.fitnet.guided_layer, self.spec.frame_seconds)
        self._dir.write_json(fitnet.SPEC_FILE, self._fitnet)
      self.optimizer, self._schedule = schedules.build_optimizer(
          cfg.optimizer, cfg.train.steps, cfg.train.mixed_precision)
      self.optimizer.build(self.model.trainable_variables)
    # Host-side counters, outside the strategy (only the loop updates them).
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    higher = _HIGHER_IS_BETTER[cfg.metric]
    self.best_value = tf.Variable(-math.inf if higher else math.inf, dtype=tf.float64,
                                  trainable=False, name="best_value")
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
    self.bad_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_evals")
    self.stopped = tf.Variable(False, trainable=False, name="stopped_early")
    # Build the model's random layers, so their generators exist to checkpoint (kws:
    # on a clip, which an unpadded model needs to be as long as its receptive field).
    frames = 8
    if self.spec.task == "kws":
      frames = self.spec.feature_config.num_frames(self.metadata.clip_samples)
      self._check_pooled_frames(frames)
    self.model({"features": tf.zeros([1, frames, self.spec.num_channels]),
                "num_frames": tf.constant([frames])}, training=False)
    self._quantized = None
    if cfg.mode == "quantized_distill":
      self._quantized = quantization.QuantizedTraining(
          self.model, **dataclasses.asdict(cfg.quantization), seed=cfg.train.seed)

  def _check_pooled_frames(self, frames: int) -> None:
    """TrainingError when a clip of ``frames`` input frames leaves the kws model
    no frame to pool: an unpadded model (wav2letter ``padding=valid``) whose
    receptive field is longer than the clip."""
    for layer in self.model.layers:
      if isinstance(layer, heads.FrameMask) and heads.output_frames(
          frames, layer.time_stride, layer.receptive_field) < 1:
        raise TrainingError(
            f"model.params: the model's frames read {layer.receptive_field} input frames "
            f"each (receptive field), the records' clips have {frames}: no frame to pool; "
            "use narrower model.params.widths")

  # ---------------------------------------------------------------- step
  def _make_train_step(self):
    strategy, model, optimizer, objective = (self._strategy, self.model, self.optimizer,
                                             self.objective)
    replicas = strategy.num_replicas_in_sync
    clip = self.config.optimizer.clip_norm
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)

    def gradients(batch):
      """The gradient of the replica's share of the loss, and the loss terms."""
      inputs = {"features": batch["features"], "num_frames": batch["num_frames"]}
      with tf.GradientTape() as tape:
        outputs = model(inputs, training=True)
        terms = objective(batch, outputs, optimizer.iterations)
        loss = terms["total"]
        if model.losses:
          loss += tf.add_n(model.losses)
        loss = loss / float(replicas)
        if scaled:
          loss = optimizer.get_scaled_loss(loss)
      grads = tape.gradient(loss, model.trainable_variables)
      if scaled:
        grads = optimizer.get_unscaled_gradients(grads)
      return grads, terms

    if self._quantized is not None:
      gradients = self._quantized.wrap(gradients, optimizer.iterations)

    def replica_step(batch):
      grads, terms = gradients(batch)
      pairs = [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None]
      # The gradient of the global batch (the sum of the replicas' shares) is
      # clipped, so the update is that of one replica on the whole batch.
      grads = tf.distribute.get_replica_context().all_reduce(
          tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
      norm = tf.linalg.global_norm(grads)
      if clip > 0:
        grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
      optimizer.apply_gradients(zip(grads, [v for _, v in pairs]),
                                skip_gradients_aggregation=True)
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
      if replicas > 1:
        batch = strategy.experimental_distribute_values_from_function(
            lambda context: runtime.replica_slice(batch, context))
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
    self._dir = None
    try:
      return self._run(stop_after)
    except (fitnet.FitNetError, model_dir_lib.CheckpointError) as e:
      raise TrainingError(str(e)) from None
    finally:
      if self._dir:
        self._dir.close()

  def _run(self, stop_after: Optional[int]) -> dict:
    cfg = self.config
    runtime.set_up(cfg.train)
    self._strategy = runtime.make_strategy(cfg.train.strategy)
    try:
      runtime.check_batch_size(cfg.data.batch_size, self._strategy)
    except ValueError as e:
      raise TrainingError(str(e)) from None
    self._dir = worker_dir.WorkerDir(self.model_dir, runtime.is_chief(self._strategy))
    self._bind_model_dir()
    guidance = self._guidance()
    self._fitnet = None
    self._hint_error = None
    self._build()
    train_ds = self._dataset(cfg.data.train_split, True, guidance=guidance,
                             keep=None if cfg.data.validation_split else
                             data.id_holdout(cfg.data.validation_fraction, False))
    # A plain (checkpointable) iterator of the global batches, the same on
    # every worker; the train step gives each replica its slice.
    iterator = iter(train_ds)
    checkpoint = tf.train.Checkpoint(
        model=self.model, optimizer=self.optimizer, step=self.step, iterator=iterator,
        best_value=self.best_value, best_step=self.best_step, bad_evals=self.bad_evals,
        stopped=self.stopped, rng=runtime.random_generators(self.model))
    manager = tf.train.CheckpointManager(
        checkpoint, self._dir.path("checkpoints"),
        max_to_keep=cfg.train.keep_checkpoints, step_counter=self.step)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=self.model), self._dir.path("best"),
        max_to_keep=1, step_counter=self.step)
    resume = self._dir.latest_checkpoint()
    self._initialise(fresh=resume is None)
    if resume:
      try:
        model_dir_lib.restore(checkpoint, resume).assert_existing_objects_matched()
      except model_dir_lib.InputPipelineStateError as e:
        raise TrainingError(str(e)) from None
      except model_dir_lib.CheckpointError as e:
        raise TrainingError(f"{e}; remove {resume}.* and run again: the run resumes from "
                            "the checkpoint before it (or starts afresh without one)") from None
      tqdm.write(f"resuming from {resume} (step {int(self.step)})")

    validation_ds = self._validation_dataset(guidance=guidance if self._hint_stage else None)
    if self._hint_stage:
      fitnet.check_model_frames(self.model, validation_ds, self._fitnet)
      self._hint_error = fitnet.HintError(self.model)
    self._forward = None
    train_step = self._make_train_step()
    log = logs.RunLog(self.model_dir, self._schedule) if self._dir.chief else None
    window = logs.Window()
    total_examples, total_seconds = 0, 0.0
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
            "the last good checkpoint is "
            f"{self._dir.latest_checkpoint() or 'none (no checkpoint yet)'}. "
            "Lower optimizer.learning_rate, clip gradients (optimizer.clip_norm) or check the data.")
      examples = int(terms.pop("examples"))
      window.add(terms, examples, seconds)
      total_examples += examples
      total_seconds += seconds
      bar.update(1)
      bar.set_postfix(loss=f"{terms['total']:.4f}")
      if log and (step % cfg.train.log_every == 0 or step == cfg.train.steps):
        log.train(step, window)
        window = logs.Window()
      if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
        # Quantized distillation validates (and keeps as best) the quantized model.
        with self._quantized.rounded() if self._quantized else contextlib.nullcontext():
          metrics = self._validate(validation_ds)
          improved = self._record_validation(step, metrics, best_manager)
          if log:
            log.validation(step, metrics, improved)
      if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or bool(self.stopped):
        self._dir.save(manager, step)
      if stop_after is not None and step >= stop_after:
        bar.close()
        return {}
    bar.close()
    reason = "early stopping" if bool(self.stopped) else "finished"
    return self._final_results(reason, total_examples, total_seconds)

  def _initialise(self, fresh: bool) -> None:
    """FitNet stage 2 takes stage 1's weights, another mode with ``init_from``
    the best weights of that run; only a ``fresh`` run (not a resumed one)."""
    if self.config.mode == "fitnet" and not self._hint_stage:
      try:
        if fresh:
          with self._strategy.scope():
            path = fitnet.initialise_from_stage1(self.model, self.init_from)
          tqdm.write(f"FitNet stage 2 starts from stage 1's weights: {path}")
        else:
          path = tf.train.latest_checkpoint(os.path.join(self.init_from, "best"))
      except (FileNotFoundError, AssertionError) as e:
        raise TrainingError(f"cannot start FitNet stage 2 from {self.init_from}: {e}") from None
      self._fitnet = {"initialised_from": path}
    elif self.init_from and fresh:
      try:
        with self._strategy.scope():
          best = model_dir_lib.restore_run(self.model, self.spec, self.init_from)
      except (FileNotFoundError, ValueError) as e:
        raise TrainingError(f"cannot start from {self.init_from}: {e}") from None
      self._dir.write_json(INIT_FILE, {"checkpoint": best})
      tqdm.write(f"starting from the weights of {best}")

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

  def _record_validation(self, step: int, metrics: Dict[str, float], best_manager) -> bool:
    """Early stopping and the best checkpoint after a validation; whether it improved."""
    cfg = self.config
    value = float(metrics[cfg.metric])  # cfg.metric is "hint" in FitNet stage 1
    higher = _HIGHER_IS_BETTER[cfg.metric]
    improved = value > float(self.best_value) if higher else value < float(self.best_value)
    if improved:
      self.best_value.assign(value)
      self.best_step.assign(step)
      self.bad_evals.assign(0)
      self._dir.save(best_manager, step)
      self._dir.write_json(os.path.join("best", "best.json"),
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
    return improved

  def _final_results(self, reason: str, examples: int, seconds: float) -> dict:
    cfg = self.config
    best = tf.train.latest_checkpoint(os.path.join(self.model_dir, "best"))
    if best:
      model_dir_lib.restore(tf.train.Checkpoint(model=self.model), best).expect_partial()
    results = {"task": cfg.task, "role": cfg.role, "mode": cfg.mode,
               "model": cfg.model.name, "parameters": int(self.model.count_params()),
               "steps": int(self.step), "stop_reason": reason,
               "best_step": int(self.best_step), "validation_metric": cfg.metric,
               "validation_value": float(self.best_value),
               "best_checkpoint": best,
               "train_examples_per_second": examples / seconds if seconds else None}
    if self._quantized is not None:
      results["quantization"] = self._quantized.report()
    init_path = os.path.join(self.model_dir, INIT_FILE)
    if os.path.exists(init_path):
      results["initialised_from"] = records.read_json(init_path)["checkpoint"]
    if self._fitnet is not None:
      results["fitnet"] = dict(self._fitnet, kd_weight_start=cfg.fitnet.kd_weight_start,
                               kd_weight_end=cfg.fitnet.kd_weight_end)
    if self._hint_stage:
      if cfg.data.test_split in self._fitnet["hint_splits"]:
        ds = self._dataset(cfg.data.test_split, False, guidance=self._guidance())
        results["test_split"] = cfg.data.test_split
        results["test"] = {"hint": self._hint_error(ds, f"split {cfg.data.test_split!r}")}
    elif cfg.data.test_split in self.metadata.splits:
      ds = self._dataset(cfg.data.test_split, False)
      results["test_split"] = cfg.data.test_split
      results["test"] = runner.evaluate(self.model, ds, cfg.task, class_names=self.class_names,
                                        vocabulary=self.vocabulary, summary_only=True)
    self._dir.write_json("results.json", results)
    return results
