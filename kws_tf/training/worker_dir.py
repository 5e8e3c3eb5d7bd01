"""A trained model dir as one worker of a run sees it: the chief writes it, the others only read.

Every worker of a multi-worker run makes the same saves (saving is collective),
but only the chief (``runtime.is_chief``) writes ``model_dir``. Any other
worker saves into a temporary dir of its own, removed after each save and at
the end (as tf.distribute's multi-worker guide does), checks the
``config.yaml`` and ``model.json`` the chief wrote (so that a mismatch stops
every worker with the same error) and resumes from the chief's checkpoints,
so the model dir must be on a file system every worker reads. A
single-process run is its own chief.
"""
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

from kws_tf import config as config_lib
from kws_tf import model_dir as model_dir_lib
from kws_tf import records


class WorkerDir:
  """``model_dir`` for the chief (``chief=True``) or for another worker."""

  def __init__(self, model_dir: str, chief: bool):
    self.model_dir = model_dir
    self.chief = chief
    self._scratch = None if chief else tempfile.mkdtemp(prefix="kws_tf_worker_")

  def bind(self, config: config_lib.Config, spec: model_dir_lib.ModelSpec,
           data_dir: str) -> None:
    """The chief writes ``config.yaml`` and ``model.json`` (``config_lib.write_once``,
    ``model_dir.bind_spec``), another worker checks them; ConfigError when the
    dir holds another config, ValueError when it was bound to other records."""
    path = os.path.join(self.model_dir, "config.yaml")
    if self.chief:
      os.makedirs(self.model_dir, exist_ok=True)
      config_lib.write_once(path, config)
      model_dir_lib.bind_spec(self.model_dir, spec, data_dir)
    else:
      config_lib.check_file(path, config)
      model_dir_lib.check_spec(self.model_dir, spec, data_dir)

  def path(self, folder: str) -> str:
    """Where this worker saves ``folder``: ``<model_dir>/<folder>`` on the chief,
    the same folder in its temporary dir on another worker."""
    return os.path.join(self.model_dir if self.chief else self._scratch, folder)

  def save(self, manager: tf.train.CheckpointManager, step: int) -> None:
    """``manager.save`` of ``step`` (made by every worker); another worker's
    copy is removed at once."""
    manager.save(checkpoint_number=step)
    if not self.chief:
      shutil.rmtree(manager.directory)

  def write_json(self, relative: str, value) -> None:
    """``<model_dir>/<relative>`` as JSON, on the chief only."""
    if self.chief:
      records.write_json(os.path.join(self.model_dir, relative), value)

  def latest_checkpoint(self) -> Optional[str]:
    """The chief's newest training checkpoint whose files are there (one removed
    by hand is skipped), or None; every worker resumes from it."""
    state = tf.train.get_checkpoint_state(os.path.join(self.model_dir, "checkpoints"))
    saved = state.all_model_checkpoint_paths if state else []
    return next((path for path in reversed(saved) if os.path.exists(path + ".index")), None)

  def close(self) -> None:
    """Removes another worker's temporary dir."""
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)
      self._scratch = None
