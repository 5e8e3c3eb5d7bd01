"""Both FitNet stages in one call: the hint stage, then distillation from it.

``train(config, model_dir, data_dir, guidance_dir, hints_dir)`` with
``config.mode == "fitnet"`` runs ``config.fitnet.stage`` (0: both, 1, 2):

  stage 1  ``<model_dir>/fitnet_stage1``: the student up to
           ``fitnet.guided_layer`` plus the regressor, trained for
           ``fitnet.hint_steps`` on the hints in ``hints_dir``
           (``create_guidance --guidance=hints --up_to=L``);
  stage 2  ``<model_dir>``: the whole student, initialised from stage 1,
           trained for ``train.steps`` on the logits in ``guidance_dir``.

Each stage is an ordinary ``Trainer`` run in its own model dir, so either
resumes after a kill; re-running a finished stage only re-reads its results.
"""
import dataclasses
import os
from typing import Optional

from kws_tf import config as config_lib
from kws_tf.distill import fitnet
from kws_tf.training import loop


def stage1_config(config: config_lib.Config) -> config_lib.Config:
  """Stage 1's config: ``fitnet.hint_steps`` steps at ``fitnet.hint_learning_rate``."""
  f = config.fitnet
  optimizer = dataclasses.replace(
      config.optimizer, learning_rate=f.hint_learning_rate or config.optimizer.learning_rate,
      warmup_steps=min(config.optimizer.warmup_steps, f.hint_steps // 10))
  train = dataclasses.replace(config.train, steps=f.hint_steps,
                              eval_every=min(config.train.eval_every, f.hint_steps),
                              checkpoint_every=min(config.train.checkpoint_every, f.hint_steps))
  return dataclasses.replace(config, optimizer=optimizer, train=train,
                             fitnet=dataclasses.replace(f, stage=1)).validate()


def train(config: config_lib.Config, model_dir: str, data_dir: str,
          guidance_dir: Optional[str], hints_dir: Optional[str]) -> dict:
  """Runs the stage(s) of ``config.fitnet.stage``; returns the last stage's results."""
  if config.mode != "fitnet":
    raise loop.TrainingError(f"fitnet_stages.train needs mode=fitnet, not {config.mode!r}")
  stage1_dir = os.path.join(model_dir, fitnet.STAGE1_DIR)
  results = {}
  if config.fitnet.stage in (0, 1):
    if not hints_dir:
      raise loop.TrainingError("FitNet stage 1 needs --hints_dir (create_guidance "
                               "--guidance=hints --up_to=<teacher layer>)")
    results = loop.Trainer(stage1_config(config), stage1_dir, data_dir, hints_dir).run()
  if config.fitnet.stage in (0, 2):
    if not guidance_dir:
      raise loop.TrainingError("FitNet stage 2 needs --guidance_dir (create_guidance "
                               "--guidance=logits)")
    stage2 = dataclasses.replace(config, fitnet=dataclasses.replace(config.fitnet, stage=2))
    results = loop.Trainer(stage2, model_dir, data_dir, guidance_dir,
                           init_from=stage1_dir).run()
  return results
