"""The exported graph: waveform -> features -> normalisation -> model outputs.

``ServingModule`` wraps a trained student (or a QAT copy of it) with the
feature front end it was trained on (``model.json``'s ``feature_params``, see
``kws_tf.features``) and the per-channel normalisation of its training data,
so an app feeds raw audio and gets the model's outputs:

  input   waveform  float32 ``[1, samples]``, 16 kHz (the front end's
                    ``sample_rate``), in [-1, 1]; kws: exactly
                    ``clip_samples`` samples (the records' clip length);
                    ctc: any length of at least one sample
  kws     logits         float32 ``[1, classes]``
          probabilities  float32 ``[1, classes]``, softmax of ``logits``
  ctc     logits         float32 ``[1, frames, vocabulary]``, 20 ms frames
          logit_frames   int32 ``[1]``, valid frames (all of them here)

The training-only ``projection`` output is dropped. The front end is the
model's own config, except that the DFT is a matrix product (``dft="matmul"``)
when its FFT size is not a power of two: TFLite's RFFT takes only powers of two
(Whisper's log-mel has an FFT size of 400). Both give the same features to
float32 rounding.

``receptive_field`` measures which samples a ctc logit frame reads (the model
card records it; ``kws_tf.inference`` overlaps the chunks of long audio by it).
"""
import dataclasses
import os
import shutil
from typing import Dict, Optional

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import features
from kws_tf import model_dir as model_dir_lib

SIGNATURE = "serving_default"
WAVEFORM = "waveform"
# Name scope of the normalisation: in a TFLite file the normalised features (the
# model's input) are the tensor "front_end/mul".
FRONT_END_SCOPE = "front_end"
# Length of the probe waveform of ``receptive_field``: a model whose logits
# reach half of it (10 s) on either side counts as reading the whole input.
PROBE_SECONDS = 20.0


def is_power_of_two(n: int) -> bool:
  """True for 1, 2, 4, 8, ..."""
  return n > 0 and n & (n - 1) == 0


def export_front_end(feature_params: dict):
  """The front end of an exported model: the config of ``feature_params``.

  ``dft`` becomes "matmul" when the FFT size is not a power of two (TFLite's
  RFFT needs one); otherwise the config is kept as trained.
  """
  config = features.from_dict(feature_params)
  fft_length = getattr(config, "fft_length", None)
  if fft_length is not None and not is_power_of_two(fft_length):
    config = dataclasses.replace(config, dft="matmul")
  return config


class ServingModule(tf.Module):
  """A trained model with its front end and normalisation (module docstring).

  Args:
    model: a model of the ``kws_tf.models`` contract.
    spec: its ``ModelSpec`` (task, feature_params, normalization).
    clip_samples: kws: samples of one clip (the fixed input length); ctc: None.
  """

  def __init__(self, model, spec: model_dir_lib.ModelSpec,
               clip_samples: Optional[int] = None):
    super().__init__(name="serving")
    if (spec.task == "kws") != (clip_samples is not None):
      raise ValueError("a kws model takes clips of a fixed length (clip_samples), a ctc "
                       f"model any length (clip_samples None); got task {spec.task} "
                       f"with clip_samples {clip_samples}")
    # The SavedModel tracks the model's variables, not the Keras model: saving
    # that would also trace every layer's call, which no reader of the file uses.
    object.__setattr__(self, "model", model)
    self.model_variables = list(model.variables)
    self.task = spec.task
    self.front_end = export_front_end(spec.feature_params)
    self.clip_samples = clip_samples
    norm = spec.normalization
    self._mean = None if norm is None else np.asarray(norm["mean"], np.float32)
    self._inverse_std = None if norm is None else 1.0 / np.asarray(norm["std"], np.float32)
    self.serve = tf.function(
        self._serve, input_signature=[tf.TensorSpec([1, clip_samples], tf.float32, WAVEFORM)])

  def model_inputs(self, waveform: tf.Tensor) -> Dict[str, tf.Tensor]:
    """The model's inputs for a waveform ``[1, samples]``.

    Returns ``features`` float32 ``[1, frames, channels]`` (normalised) and
    ``num_frames`` int32 ``[1]``.
    """
    with tf.name_scope(FRONT_END_SCOPE):
      values = self.front_end.compute(waveform)
      if self._mean is not None:
        values = (values - self._mean) * self._inverse_std
      num_frames = self.front_end.num_frames(tf.shape(waveform)[1:])
    return {"features": values, "num_frames": tf.cast(num_frames, tf.int32)}

  def _serve(self, waveform: tf.Tensor) -> Dict[str, tf.Tensor]:
    outputs = self.model(self.model_inputs(waveform), training=False)
    if self.task == "kws":
      return {"logits": outputs["logits"],
              "probabilities": tf.nn.softmax(outputs["logits"], axis=-1)}
    return {"logits": outputs["logits"],
            "logit_frames": tf.cast(outputs["logit_frames"], tf.int32)}

  def save(self, path: str) -> None:
    """Writes the SavedModel to ``path`` (a temporary folder renamed into place)."""
    tmp = f"{path.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(self, tmp, signatures={SIGNATURE: self.serve})
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def receptive_field(module: ServingModule, spec: model_dir_lib.ModelSpec,
                    seed: int = 0) -> Optional[Dict[str, int]]:
  """The samples a ctc logit frame reads, measured on ``module``'s serving graph.

  Logit frame ``j`` is taken as centred on sample ``j * hop`` (``hop`` the
  logit frame length in samples). A noise waveform of ``PROBE_SECONDS`` goes
  through the graph three times: as it is, with the samples from the middle
  (``pivot``) on replaced by other noise, and with those before the middle
  replaced by louder noise. The first frame ``f`` whose logits change at all
  in the second call bounds the right reach, ``pivot - (f - 1) * hop``; the
  last frame ``l`` changed in the third bounds the left reach, ``(l + 1) *
  hop - pivot``. Both are upper bounds, to a frame, of the window of the
  front end, its deltas and every convolution (a frame that reads no changed
  sample is computed from the same numbers, so it comes out the same). Not a
  window, so not measured: the mfcc and log-mel clamp of mel levels at the
  input's loudest minus 80 dB, which only levels that far down (digital
  silence, never the probe's noise) feel.

  Returns ``{"left_samples", "right_samples", "logit_hop_samples"}``, or None
  when a change reaches the first or last frame (attention, squeeze-excite or
  another layer that sees the whole input).
  """
  hop = int(round(spec.output_frame_seconds * spec.sample_rate))
  length = int(PROBE_SECONDS * spec.sample_rate) // (2 * hop) * 2 * hop
  pivot = length // 2
  rng = np.random.default_rng(seed)
  base = rng.uniform(-0.1, 0.1, length).astype(np.float32)
  other = rng.uniform(-0.5, 0.5, length).astype(np.float32)

  def logits(waveform):
    out = module.serve(tf.constant(waveform[np.newaxis]))
    return out["logits"][0, :int(out["logit_frames"][0])].numpy()

  reference = logits(base)

  def changed(waveform):
    return np.flatnonzero(np.any(logits(waveform) != reference, axis=-1))

  right = changed(np.concatenate([base[:pivot], other[pivot:]]))
  left = changed(np.concatenate([other[:pivot], base[pivot:]]))
  last = len(reference) - 1
  if (len(right) and right[0] == 0) or (len(left) and left[-1] == last):
    return None
  return {"left_samples": int((left[-1] + 1) * hop - pivot) if len(left) else 0,
          "right_samples": int(pivot - (right[0] - 1) * hop) if len(right) else 0,
          "logit_hop_samples": hop}
