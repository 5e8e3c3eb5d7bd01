"""On-the-fly augmentation of whole utterances (ctc training), with stateless random ops.

``augment.Augmenter`` cuts fixed windows from kws clips with context. A ctc
example is a whole utterance, so ``UtteranceAugmenter(augmenter)`` applies the
same random choices (``Augmenter.draw``: one seed per utterance) to a
zero-padded batch of utterances of their own lengths instead:

  speed      each sped-up row resampled by linear interpolation to
             ``round(length / factor)`` samples, output sample j at input
             position ``(j + 0.5) * factor - 0.5`` (tempo views too; their
             feature warp, ``choices["warp"]``, is the front end's); the
             batch widens to ``ceil(width / f)``, f the smallest factor below 1
  reverb     convolution with the drawn room's impulse response over the
             whole utterance (FFT of the batch's width plus the response),
             at the dry utterance's power
  noise      a stretch of the drawn bank from the drawn place, which leaves
             room for the longest utterance (``max_samples`` sped up at the
             slowest factor; a shorter bank wraps around), at the drawn SNR
             against the utterance's speech power, both over its valid samples
  telephone  the 300-3400 Hz band and 8-bit mu-law, on the padded row
  gain       in dB, then clipping to [-1, 1]

Samples past a row's (new) length are zero, as in any padded batch. No shift:
the whole utterance is the example. A row's result is a function of its
waveform, length and seed, and of the batch's width only through the
telephone band (an FFT over the padded row) and the rounding of the
reverberation's FFT; a resumed run makes the same batches and repeats it.
"""
import math
from typing import Dict, Tuple

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kws_tf import augment


def _valid(lengths: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """bool ``[batch, width]``: sample t of row b is before ``lengths[b]``."""
  return tf.range(width)[tf.newaxis] < lengths[:, tf.newaxis]


class UtteranceAugmenter:
  """An ``augment.Augmenter``'s choices applied to whole utterances; see the module.

  Args:
    augmenter: its config, banks and impulse responses are used; its window
      is not.
    max_samples: the longest utterance's samples.
  """

  def __init__(self, augmenter: augment.Augmenter, max_samples: int):
    self.augmenter = augmenter
    self.config = augmenter.config
    self.sample_rate = augmenter.sample_rate
    self.factors = list(augmenter.resampling_factors)
    self.slowest = min(self.factors + [1.0])
    longest = math.ceil(max_samples / self.slowest)
    self._noise_blocks = -(-longest // augment.NOISE_BLOCK)

  def draw(self, seeds: tf.Tensor, width: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``Augmenter.draw`` for utterances of a batch ``width`` samples wide
    (``seeds``: int ``[batch, 2]``)."""
    return self.augmenter.draw(seeds, None, width)

  def new_lengths(self, lengths: tf.Tensor, choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """int32 ``[batch]``: each utterance's samples after its speed or tempo change."""
    stretched = tf.round(tf.cast(lengths, tf.float32) / choices["factor"])
    return tf.maximum(tf.cast(stretched, tf.int32), 1)

  def apply(self, waveforms: tf.Tensor, lengths: tf.Tensor,
            choices: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """The augmented utterances of a padded batch.

    Args:
      waveforms: float32 ``[batch, width]`` in [-1, 1], zero-padded.
      lengths: int32 ``[batch]``, valid samples of each row.
      choices: ``draw``'s dict for the batch.

    Returns:
      float32 ``[batch, new_width]`` in [-1, 1] (zeros past each row's
      length) and the int32 ``[batch]`` new lengths (``new_lengths``).
    """
    c = self.config
    waveforms = tf.cast(waveforms, tf.float32)
    lengths = tf.cast(lengths, tf.int32)
    width = tf.shape(waveforms)[1]
    new_width = tf.cast(tf.math.ceil(tf.cast(width, tf.float32) / self.slowest), tf.int32)
    x = tf.pad(waveforms, [[0, 0], [0, new_width - width]])
    # One zero past the widest row: a position past a row's end reads zeros.
    padded = tf.pad(waveforms, [[0, 0], [0, 1]])
    for index, factor in enumerate(self.factors):
      if factor == 1.0:
        continue
      # In float64: a float32 position tens of thousands of samples in is off by 1e-3.
      position = tf.clip_by_value(
          (tf.range(new_width, dtype=tf.float64) + 0.5) * factor - 0.5, 0.0,
          tf.cast(width, tf.float64))
      below = tf.minimum(tf.cast(tf.floor(position), tf.int32), width)
      above = tf.minimum(below + 1, width)
      fraction = tf.cast(position - tf.cast(below, tf.float64), tf.float32)

      def resample(_, rows, below=below, above=above, fraction=fraction):
        rows_x = tf.gather(padded, rows)
        return (tf.gather(rows_x, below, axis=1) * (1.0 - fraction) +
                tf.gather(rows_x, above, axis=1) * fraction)

      x = augment.on_rows(tf.equal(choices["speed"], index), x, resample)
    lengths = self.new_lengths(lengths, choices)
    valid = _valid(lengths, new_width)
    x = tf.where(valid, x, 0.0)
    count = tf.cast(lengths, tf.float32)
    reference = tf.maximum(tf.reduce_sum(tf.square(x), axis=1) / count, augment.SILENCE_POWER)

    rirs = self.augmenter.rirs
    if rirs is not None and c.reverb_prob > 0:
      taps = int(rirs.shape[1])
      fft = tf.cast(2 ** tf.math.ceil(tf.math.log(tf.cast(new_width + taps - 1, tf.float32)) /
                                      math.log(2.0)), tf.int32)

      def reverberate(dry, rows):
        # Padded here: eager rfft does not pad a signal shorter than a tensor fft length.
        room = tf.signal.rfft(tf.pad(tf.gather(rirs, tf.gather(choices["room"], rows)),
                                     [[0, 0], [0, fft - taps]]), [fft])
        wet = tf.signal.irfft(tf.signal.rfft(tf.pad(dry, [[0, 0], [0, fft - new_width]]),
                                             [fft]) * room, [fft])[:, :new_width]
        wet = tf.where(tf.gather(valid, rows), wet, 0.0)
        return wet * tf.sqrt((tf.reduce_sum(tf.square(dry), 1, keepdims=True) + 1e-12) /
                             (tf.reduce_sum(tf.square(wet), 1, keepdims=True) + 1e-12))

      x = augment.on_rows(choices["reverb"], x, reverberate)

    if c.noise_prob > 0:
      x = self._add_noise(x, valid, count, reference, choices)
    if c.telephone_prob > 0:
      x = augment.on_rows(choices["telephone"], x,
                          lambda rows_x, _: augment.telephone(rows_x, self.sample_rate))
    x = x * tf.pow(10.0, choices["gain_db"] / 20.0)[:, tf.newaxis]
    return tf.where(valid, tf.clip_by_value(x, -1.0, 1.0), 0.0), lengths

  def _add_noise(self, x: tf.Tensor, valid: tf.Tensor, count: tf.Tensor, reference: tf.Tensor,
                 choices: Dict[str, tf.Tensor]) -> tf.Tensor:
    """``x [batch, width]`` plus, on the chosen rows, a stretch of each row's bank
    at its SNR against ``reference``, measured over the valid samples."""
    a = self.augmenter
    width = tf.shape(x)[1]
    blocks = (width + augment.NOISE_BLOCK - 1) // augment.NOISE_BLOCK

    def noise(_, rows):
      bank = tf.gather(choices["noise_bank"], rows)
      bank_blocks = tf.gather(a.bank_blocks, bank)
      starts = tf.maximum(bank_blocks - self._noise_blocks + 1, 1)
      start = tf.cast(tf.gather(choices["noise_at"], rows) * tf.cast(starts, tf.float32),
                      tf.int32)
      index = tf.gather(a.bank_start, bank)[:, tf.newaxis] + tf.math.floormod(
          start[:, tf.newaxis] + tf.range(blocks)[tf.newaxis], bank_blocks[:, tf.newaxis])
      stretch = tf.gather(a.banks, index)
      return tf.reshape(stretch, [-1, blocks * augment.NOISE_BLOCK])[:, :width]

    added = augment.on_rows(choices["add_noise"], tf.zeros_like(x), noise)
    added = tf.where(valid, added, 0.0)
    power = tf.maximum(tf.reduce_sum(tf.square(added), axis=1) / count, 1e-12)
    scale = tf.sqrt(reference / (power * tf.pow(10.0, choices["snr_db"] / 10.0)))
    return tf.where(choices["add_noise"][:, tf.newaxis], x + scale[:, tf.newaxis] * added, x)
