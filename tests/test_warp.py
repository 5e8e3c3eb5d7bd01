"""Vocal tract length perturbation of features (kws_tf.warp)."""
import dataclasses

import numpy as np
import pytest

from kws_tf import augment, features, warp
from kws_tf import config as config_lib

RATE = 16000
CONFIGS = {
    "mfcc": features.MfccConfig(),
    "mfcc_phone": features.MfccConfig(frame_length=320, frame_step=320, fft_length=320,
                                      num_mel_bins=40, num_mfcc=13),
    "logmel": features.LogMelConfig(),
    "power": features.PowerConfig(),
}


def _tone(hz: float, seconds: float = 0.5) -> np.ndarray:
  t = np.arange(int(seconds * RATE)) / RATE
  return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_warp_hz_scales_below_the_boundary_and_keeps_nyquist():
  nyquist = RATE / 2
  hz = np.linspace(0, nyquist, 1001)
  for factor in (0.9, 1.0, 1.1):
    moved = warp.warp_hz(hz, factor, nyquist)
    assert np.all(np.diff(moved) > 0)
    assert moved[0] == 0 and moved[-1] == pytest.approx(nyquist)
    low = hz < warp.CUTOFF * nyquist * min(factor, 1) / factor
    np.testing.assert_allclose(moved[low], hz[low] * factor)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_factor_one_is_the_identity(name):
  np.testing.assert_allclose(warp.channel_map(CONFIGS[name], 1.0),
                             np.eye(CONFIGS[name].num_channels), atol=1e-6)


def _envelope(config, values: np.ndarray) -> np.ndarray:
  """Per-band spectrum of a frame (mfcc: the cepstra's smooth log-mel envelope)."""
  if isinstance(config, features.MfccConfig):
    return values[..., :config.num_mfcc] @ config.dct_matrix().T
  return values


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_warped_tone_peaks_where_the_moved_tone_does(name, factor):
  """A 1 kHz tone's features warped by ``factor`` peak in the band of a real tone
  at ``factor`` kHz (the warp is linear below 0.8 of Nyquist)."""
  config = CONFIGS[name]
  original = config.compute(_tone(1000.0)).numpy()
  moved = config.compute(_tone(1000.0 * factor)).numpy()
  warped = original @ warp.channel_map(config, factor)
  frame = original.shape[0] // 2
  peak = lambda values: int(np.argmax(_envelope(config, values[frame])))
  assert peak(original) != peak(moved)  # the move is visible at this resolution
  assert abs(peak(warped) - peak(moved)) <= 1, (peak(original), peak(warped), peak(moved))


def test_feature_warp_applies_each_examples_factor():
  config = CONFIGS["mfcc"]
  values = np.random.default_rng(0).standard_normal((3, 7, config.num_channels))
  values = values.astype(np.float32)
  feature_warp = warp.FeatureWarp(config, [0.9, 1.1])
  out = feature_warp(values, np.array([-1, 0, 1], np.int32)).numpy()
  np.testing.assert_allclose(out[0], values[0], atol=1e-6)
  np.testing.assert_allclose(out[1], values[1] @ warp.channel_map(config, 0.9), atol=1e-5)
  np.testing.assert_allclose(out[2], values[2] @ warp.channel_map(config, 1.1), atol=1e-5)
  with pytest.raises(ValueError, match="needs spectral features, not 'raw'"):
    warp.channel_map(features.RawConfig(), 1.1)


def test_draws_keep_the_waveform_choices_and_views_ignore_the_warp():
  plain = config_lib.AugmentConfig(enabled=True)
  warped = config_lib.AugmentConfig(enabled=True, vtlp_prob=0.5)
  seeds = np.stack([np.arange(200), np.full(200, 7)], 1)
  a = augment.Augmenter(plain, RATE, 1.0).draw(seeds, None, 24000)
  b = augment.Augmenter(warped, RATE, 1.0).draw(seeds, None, 24000)
  for key in a:
    if key != "warp":
      np.testing.assert_array_equal(a[key], b[key])
  assert np.all(a["warp"] == -1)
  chosen = b["warp"].numpy()
  assert 0.35 < np.mean(chosen >= 0) < 0.65 and chosen.max() == augment.VTLP_VALUES - 1
  assert augment.view_fields(plain) == augment.view_fields(warped)
  with pytest.raises(config_lib.ConfigError, match="vtlp_min must be <= augment.vtlp_max"):
    config_lib.AugmentConfig(vtlp_min=1.2, vtlp_max=1.1).validate()


def test_tempo_keeps_a_tones_spectrum_where_speed_moves_it():
  """A stationary 700 Hz tone: resampled by 1.25 its features' spectral peak
  moves up; changed in tempo alone (resampled, then warped back) it stays."""
  from kws_tf import data
  params = CONFIGS["mfcc_phone"].to_dict()
  tone = np.tile(_tone(700.0, 2.0)[None], (8, 1))
  seeds = np.stack([np.arange(8), np.full(8, 3)], 1)
  quiet = dict(enabled=True, max_shift_seconds=0.0, reverb_prob=0.0, noise_prob=0.0,
               telephone_prob=0.0, gain_db_min=0.0, gain_db_max=0.0)
  peaks = {}
  for name, fields in {"plain": dict(speed_prob=0.0),
                       "speed": dict(speed_prob=1.0, speed_min=1.25, speed_max=1.25),
                       "tempo": dict(speed_prob=0.0, tempo_prob=1.0, tempo_min=1.25,
                                     tempo_max=1.25)}.items():
    augmenter = augment.Augmenter(config_lib.AugmentConfig(**quiet, **fields), RATE, 1.0)
    choices = augmenter.draw(seeds, None, tone.shape[1])
    front_end = data.WaveformFrontEnd(params, None, augmenter.warp_factors)
    values = front_end(augmenter.apply(tone, choices), choices["warp"]).numpy()
    peaks[name] = np.argmax(_envelope(CONFIGS["mfcc_phone"], values[:, 20]), axis=-1)
    if name == "tempo":
      assert np.all(choices["factor"].numpy() == 1.25) and np.all(choices["warp"].numpy() == 0)
  assert np.all(peaks["speed"] >= peaks["plain"] + 2), peaks
  assert np.all(np.abs(peaks["tempo"] - peaks["plain"]) <= 1), peaks


def test_tempo_draws_only_rows_not_sped_up_and_joins_the_views_when_on():
  config = config_lib.AugmentConfig(enabled=True, speed_prob=0.5, tempo_prob=1.0)
  augmenter = augment.Augmenter(config, RATE, 1.0)
  choices = augmenter.draw(np.stack([np.arange(400), np.full(400, 1)], 1), None, 32000)
  speed, factor = choices["speed"].numpy(), choices["factor"].numpy()
  sped, timed = (speed >= 0) & (speed < augment.SPEED_VALUES), speed >= augment.SPEED_VALUES
  assert np.all(sped | timed) and 0.4 < sped.mean() < 0.6
  assert np.all(choices["warp"].numpy()[sped] == -1)
  assert np.all(choices["warp"].numpy()[timed] == speed[timed] - augment.SPEED_VALUES)
  np.testing.assert_allclose(np.array(augmenter.warp_factors)[choices["warp"].numpy()[timed]],
                             1.0 / factor[timed], rtol=1e-6)
  # With VTLP too: the rows sped up take a VTLP warp, which a teacher does not.
  both = augment.Augmenter(dataclasses.replace(config, vtlp_prob=1.0), RATE, 1.0)
  choices = both.draw(np.stack([np.arange(400), np.full(400, 1)], 1), None, 32000)
  warp, teacher = choices["warp"].numpy(), both.teacher_warp(choices).numpy()
  vtlp = warp < augment.VTLP_VALUES
  assert 0.4 < vtlp.mean() < 0.6 and np.all(teacher[vtlp] == -1)
  np.testing.assert_array_equal(teacher[~vtlp], warp[~vtlp])
  assert "tempo_max" in augment.view_fields(config)
  assert "tempo_max" not in augment.view_fields(config_lib.AugmentConfig(enabled=True))
  # Views made before tempo_in_views existed list the same fields.
  assert "tempo_in_views" not in augment.view_fields(config)


def test_tempo_outside_the_views_comes_from_the_steps_draws():
  """tempo_in_views=false: a view's other choices still come from its seed, its
  tempo from the step's seeds (none without them, as in a teacher's views); with
  the step's seeds equal to the view's (no guidance) nothing changes."""
  config = config_lib.AugmentConfig(enabled=True, speed_prob=0.5, tempo_prob=1.0)
  own = dataclasses.replace(config, tempo_in_views=False)
  views = np.stack([np.arange(400), np.full(400, 1)], 1)
  steps = np.stack([np.arange(400) + 1000, np.full(400, 3)], 1)
  inside = augment.Augmenter(config, RATE, 1.0).draw(views, None, 32000)
  outside = augment.Augmenter(own, RATE, 1.0)
  for key, value in outside.draw(views, None, 32000, step_seeds=views).items():
    np.testing.assert_array_equal(value.numpy(), inside[key].numpy(), err_msg=key)
  stepped = outside.draw(views, None, 32000, step_seeds=steps)
  teacher = outside.draw(views, None, 32000)
  for choices in (stepped, teacher):
    for key in ("room", "snr_db", "noise_bank", "gain_db", "reverb", "telephone"):
      np.testing.assert_array_equal(choices[key].numpy(), inside[key].numpy(), err_msg=key)
  sped = inside["speed"].numpy() < augment.SPEED_VALUES
  # The rows sped up keep their speed; the others take the step's tempo, or none.
  for choices in (stepped, teacher):
    np.testing.assert_array_equal(choices["speed"].numpy()[sped], inside["speed"].numpy()[sped])
  assert np.all(teacher["speed"].numpy()[~sped] == -1)
  assert np.all(teacher["factor"].numpy()[~sped] == 1.0)
  tempo = stepped["speed"].numpy()[~sped]
  assert np.all(tempo >= augment.SPEED_VALUES)
  assert np.mean(tempo != inside["speed"].numpy()[~sped]) > 0.5
  assert "tempo_max" not in augment.view_fields(own)
  with pytest.raises(config_lib.ConfigError, match="tempo_in_views"):
    config_lib.Config(task="ctc", augment=own).validate()
  # fresh_view_prob is the student's: not part of a view, kws only.
  fresh = dataclasses.replace(config, fresh_view_prob=0.3)
  assert augment.view_fields(fresh) == augment.view_fields(config)
  with pytest.raises(config_lib.ConfigError, match="fresh_view_prob is for kws"):
    config_lib.Config(task="ctc", augment=fresh).validate()
  with pytest.raises(config_lib.ConfigError, match="fresh_view_prob must be in"):
    config_lib.Config(augment=dataclasses.replace(config, fresh_view_prob=1.5)).validate()
