"""Vocal tract length perturbation (VTLP) of feature frames, as linear maps of channels.

A speaker's vocal tract length scales the frequencies of their formants. VTLP
(Jaitly and Hinton 2013) trains on spectra whose frequency axis is warped by a
random factor ``alpha`` (about 0.9-1.1): the content at frequency ``f`` moves
to ``warp_hz(f, alpha)``, piecewise linearly, so that the band up to ``CUTOFF``
of Nyquist scales by ``alpha`` and the rest is squeezed or stretched to keep
Nyquist at Nyquist.

Here the warp is applied to features, not to the waveform, as a ``[channels,
channels]`` matrix per factor that a frame (a row vector) is multiplied by:

  power, log power  each bin takes the spectrum at the bin's source frequency
                    ``warp_hz^-1(f)``, interpolated linearly between bins
  logmel            the same over the mel bands' centre frequencies,
                    interpolated on the mel scale; rows of the map sum to 1,
                    so Whisper's ``(x + 4) / 4`` commutes with it
  mfcc              the cepstra's smooth log-mel envelope (the orthonormal
                    DCT's transpose), warped as above, back to cepstra; the
                    deltas are linear in time and take the same map

Warping features keeps the waveform, and so a teacher's guidance for the
view, unchanged: like SpecAugment, it is the student's own perturbation.
"""
from typing import Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import librosa
import numpy as np
import tensorflow as tf

from kws_tf import features

CUTOFF = 0.8  # fraction of Nyquist below which frequencies scale by the factor


def warp_hz(hz: np.ndarray, factor: float, nyquist: float) -> np.ndarray:
  """Where content at ``hz`` moves under the warp of ``factor``: ``hz * factor``
  below the boundary ``CUTOFF * nyquist * min(factor, 1) / factor``, then a line
  to ``(nyquist, nyquist)``. Monotone, 0 -> 0, Nyquist -> Nyquist."""
  hz = np.asarray(hz, np.float64)
  boundary = CUTOFF * nyquist * min(factor, 1.0) / factor
  slope = (nyquist - boundary * factor) / (nyquist - boundary)
  return np.where(hz <= boundary, hz * factor, boundary * factor + slope * (hz - boundary))


def _interpolation(source: np.ndarray, centres: np.ndarray) -> np.ndarray:
  """``[len(source), len(centres)]``: row j interpolates linearly at position
  ``source[j]`` among ``centres`` (increasing; clamped at the ends)."""
  position = np.interp(source, centres, np.arange(len(centres)))
  low = np.minimum(np.floor(position).astype(int), len(centres) - 2)
  frac = position - low
  matrix = np.zeros((len(source), len(centres)))
  rows = np.arange(len(source))
  matrix[rows, low] = 1.0 - frac
  matrix[rows, low + 1] += frac
  return matrix


def band_warp(centres_hz: np.ndarray, factor: float, nyquist: float, mel: bool) -> np.ndarray:
  """``[bands, bands]``: row j gives band j of the warped spectrum from the
  bands at its source frequency ``warp_hz^-1(centres_hz[j])``; interpolated on
  the mel scale when ``mel``, else in Hz."""
  grid = np.linspace(0.0, nyquist, 4097)
  source = np.interp(centres_hz, warp_hz(grid, factor, nyquist), grid)
  if mel:
    return _interpolation(librosa.hz_to_mel(source), librosa.hz_to_mel(centres_hz))
  return _interpolation(source, centres_hz)


def channel_map(config: features._FeatureConfig, factor: float) -> np.ndarray:
  """float32 ``[channels, channels]``: a frame of ``config``'s features times
  this matrix is the frame of the spectrum warped by ``factor`` (module
  docstring). ValueError for raw waveforms."""
  nyquist = config.sample_rate / 2
  if isinstance(config, features.MfccConfig):
    centres = librosa.mel_frequencies(config.num_mel_bins + 2, fmin=config.lower_edge_hertz,
                                      fmax=config.upper_edge_hertz, htk=False)[1:-1]
    bands = band_warp(centres, factor, nyquist, mel=True)
    dct = config.dct_matrix().astype(np.float64)
    block = dct.T @ bands.T @ dct
    blocks = config.num_channels // config.num_mfcc
    return np.kron(np.eye(blocks), block).astype(np.float32)
  if isinstance(config, features.LogMelConfig):
    centres = librosa.mel_frequencies(config.num_mel_bins + 2, fmin=0.0, fmax=nyquist,
                                      htk=False)[1:-1]
    return band_warp(centres, factor, nyquist, mel=True).T.astype(np.float32)
  if isinstance(config, features.PowerConfig):
    centres = np.arange(config.num_channels) * config.sample_rate / config.fft_length
    return band_warp(centres, factor, nyquist, mel=False).T.astype(np.float32)
  raise ValueError(f"vocal tract length perturbation needs spectral features, not "
                   f"{config.format!r}")


class FeatureWarp:
  """Warps batches of ``config``'s feature frames by one of ``factors``.

  ``warp(values, index)``: ``values`` float32 ``[batch, frames, channels]``,
  ``index`` int32 ``[batch]``, the factor of each example (-1: unchanged).
  """

  def __init__(self, config: features._FeatureConfig, factors: Sequence[float]):
    self.factors = [float(f) for f in factors]
    identity = np.eye(config.num_channels, dtype=np.float32)
    self._maps = tf.constant(np.stack([identity] + [channel_map(config, f)
                                                    for f in self.factors]))

  def __call__(self, values: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    maps = tf.gather(self._maps, index + 1)
    return tf.einsum("btc,bcd->btd", values, maps)
