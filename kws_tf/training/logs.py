"""What a run records as it goes: TensorBoard summaries and ``history.jsonl``.

In the model dir::

  tensorboard/train/       ``loss/<term>`` (each loss term of the objective,
                           mean over the steps since the last summary),
                           ``grad_norm``, ``learning_rate``,
                           ``examples_per_second``
  tensorboard/validation/  every validation metric
  history.jsonl            one line per validation: step, improved, metrics
"""
import dataclasses
import json
import os
from typing import Callable, Dict

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from tqdm import tqdm


@dataclasses.dataclass
class Window:
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


class RunLog:
  """The summaries and history of the run in ``model_dir``.

  Args:
    model_dir: the run's model dir.
    learning_rate: the schedule, learning rate of a 0-based update number.
  """

  def __init__(self, model_dir: str, learning_rate: Callable[[int], tf.Tensor]):
    self.model_dir = model_dir
    self.learning_rate = learning_rate
    self.writers = {name: tf.summary.create_file_writer(
        os.path.join(model_dir, "tensorboard", name)) for name in ("train", "validation")}

  def train(self, step: int, window: Window) -> None:
    """The means of ``window`` at 1-based ``step``, with this step's learning
    rate and the examples per second of the window."""
    with self.writers["train"].as_default(step=step):
      for key, value in window.means().items():
        tf.summary.scalar(f"loss/{key}" if key != "grad_norm" else key, value)
      tf.summary.scalar("learning_rate", float(self.learning_rate(step - 1)))
      if window.seconds > 0:
        tf.summary.scalar("examples_per_second", window.examples / window.seconds)
    self.writers["train"].flush()

  def validation(self, step: int, metrics: Dict[str, float], improved: bool) -> None:
    """The metrics of the validation at ``step`` (summaries, history line, console)."""
    with self.writers["validation"].as_default(step=step):
      for key, value in metrics.items():
        tf.summary.scalar(key, value)
    self.writers["validation"].flush()
    line = {"step": step, "improved": bool(improved), **metrics}
    with open(os.path.join(self.model_dir, "history.jsonl"), "a", encoding="utf-8") as f:
      f.write(json.dumps(line, sort_keys=True) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    tqdm.write(f"step {step} validation: {shown}{' (best)' if improved else ''}")
