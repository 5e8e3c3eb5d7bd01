"""kws_tf.audio on real files written by the tests."""
import os

import librosa
import numpy as np
import pytest
import soundfile as sf

from kws_tf import audio


def sine(freq, seconds, rate, amplitude=0.5):
  """float32 [seconds * rate]: a sine of ``freq`` Hz."""
  t = np.arange(int(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples, rate):
  """Frequency in Hz of the largest magnitude in the spectrum."""
  spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
  return np.argmax(spectrum) * rate / len(samples)


def test_reads_int16_wav_at_its_rate(tmp_path):
  x = sine(440, 0.5, 16000)
  path = str(tmp_path / "a.wav")
  sf.write(path, x, 16000, subtype="PCM_16")
  y = audio.read_audio(path)
  assert y.dtype == np.float32 and y.shape == (8000,)
  np.testing.assert_allclose(y, x, atol=1 / 32768)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_int16_samples_equal_libsndfile_float_decoding(tmp_path, channels):
  # PCM_16 is read as integers and scaled in numpy: exactly libsndfile's floats.
  # (libsndfile writes 3 channels as WAVE_FORMAT_EXTENSIBLE, which Python
  # 3.11's wave module refuses: that file takes the soundfile path.)
  rng = np.random.default_rng(0)
  samples = rng.integers(-32768, 32768, size=(4000, channels), dtype=np.int16)
  samples[:3, 0] = [-32768, 32767, 0]
  path = str(tmp_path / "pcm16.wav")
  sf.write(path, samples, 16000, subtype="PCM_16")
  reference, _ = sf.read(path, dtype="float32", always_2d=True)
  expected = reference.mean(axis=1, dtype=np.float32) if channels > 1 else reference[:, 0]
  np.testing.assert_array_equal(audio.read_audio(path), expected)


@pytest.mark.parametrize("channels", [1, 2])
def test_wave_and_soundfile_paths_agree(tmp_path, channels):
  samples = np.random.default_rng(1).integers(-32768, 32768, (3000, channels), np.int16)
  path = str(tmp_path / "pcm16.wav")
  sf.write(path, samples, 22050, subtype="PCM_16")
  from_wave = audio._read_pcm16_wav(path)
  assert from_wave is not None
  from_soundfile = audio._read_with_soundfile(path)
  assert from_wave[1] == from_soundfile[1] == 22050
  assert from_wave[0].dtype == from_soundfile[0].dtype == np.int16
  np.testing.assert_array_equal(from_wave[0], samples)
  np.testing.assert_array_equal(from_soundfile[0], samples)


def test_keep_int16_only_for_pcm16_mono_at_the_rate(tmp_path):
  samples = np.random.default_rng(2).integers(-32768, 32768, 1600, np.int16)
  path = str(tmp_path / "pcm16.wav")
  sf.write(path, samples, 16000, subtype="PCM_16")
  kept = audio.read_audio(path, keep_int16=True)
  assert kept.dtype == np.int16
  np.testing.assert_array_equal(kept, samples)
  np.testing.assert_array_equal(audio.read_audio(path), samples / np.float32(32768))
  # Resampled, downmixed or float files still give float32.
  assert audio.read_audio(path, 8000, keep_int16=True).dtype == np.float32
  sf.write(path, np.stack([samples, samples], axis=1), 16000, subtype="PCM_16")
  assert audio.read_audio(path, keep_int16=True).dtype == np.float32
  sf.write(path, samples / 32768.0, 16000, subtype="FLOAT")
  assert audio.read_audio(path, keep_int16=True).dtype == np.float32


def test_stereo_is_averaged(tmp_path):
  left, right = sine(440, 0.25, 16000, 0.8), sine(440, 0.25, 16000, 0.2)
  path = str(tmp_path / "stereo.wav")
  sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
  assert audio.audio_info(path).channels == 2
  np.testing.assert_allclose(audio.read_audio(path), (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("rate,subtype", [(22050, "PCM_16"), (44100, "FLOAT")])
def test_resampling_matches_librosa_and_keeps_the_frequency(tmp_path, rate, subtype):
  x = sine(1000, 1.0, rate)
  path = str(tmp_path / f"{rate}.wav")
  sf.write(path, x, rate, subtype=subtype)
  y = audio.read_audio(path, sample_rate=16000)
  assert y.dtype == np.float32 and y.shape == (16000,)
  stored = sf.read(path, dtype="float32")[0]
  expected = librosa.resample(stored, orig_sr=rate, target_sr=16000, res_type="soxr_hq")
  np.testing.assert_allclose(y, expected, atol=1e-5)
  assert abs(peak_hz(y, 16000) - 1000) <= 1


def test_flac_downsampled_to_8k(tmp_path):
  path = str(tmp_path / "a.flac")
  sf.write(path, sine(700, 1.0, 16000), 16000)
  y = audio.read_audio(path, sample_rate=8000)
  assert y.shape == (8000,)
  assert abs(peak_hz(y, 8000) - 700) <= 1


def test_loud_float_file_is_clipped(tmp_path):
  path = str(tmp_path / "loud.wav")
  sf.write(path, np.array([0.5, 2.0, -3.0] * 100, np.float32), 16000, subtype="FLOAT")
  y = audio.read_audio(path)
  assert y.min() == -1.0 and y.max() == 1.0


def expect_error(path, reason, **kwargs):
  with pytest.raises(audio.AudioError) as caught:
    audio.read_audio(path, **kwargs)
  assert caught.value.reason == reason
  assert caught.value.path == str(path)
  assert str(path) in str(caught.value) and reason in str(caught.value)
  return caught.value


def test_missing_file(tmp_path):
  expect_error(tmp_path / "nope.wav", "missing")
  with pytest.raises(audio.AudioError, match="missing"):
    audio.audio_info(tmp_path / "nope.wav")


def test_random_bytes_are_unreadable(tmp_path):
  path = tmp_path / "corrupt.wav"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
  expect_error(path, "unreadable")
  with pytest.raises(audio.AudioError, match="unreadable"):
    audio.audio_info(path)


def test_zero_byte_file_is_unreadable(tmp_path):
  path = tmp_path / "zero.wav"
  path.write_bytes(b"")
  expect_error(path, "unreadable")


@pytest.mark.parametrize("keep_bytes", [44, 45, 1000, 16000])
def test_truncated_wav(tmp_path, keep_bytes):
  whole = tmp_path / "whole.wav"
  sf.write(str(whole), sine(440, 1.0, 16000), 16000, subtype="PCM_16")
  cut = tmp_path / "cut.wav"
  cut.write_bytes(whole.read_bytes()[:keep_bytes])
  # libsndfile itself opens the cut file and reports the shortened length.
  assert sf.info(str(cut)).frames == (keep_bytes - 44) // 2
  error = expect_error(cut, "truncated")
  assert "32000" in error.message


def test_truncated_flac(tmp_path):
  whole = tmp_path / "whole.flac"
  sf.write(str(whole), sine(440, 1.0, 16000), 16000)
  cut = tmp_path / "cut.flac"
  cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
  expect_error(cut, "unreadable")


def test_truncated_mp3_decodes_fewer_frames_than_declared(tmp_path):
  whole = tmp_path / "whole.mp3"
  sf.write(str(whole), sine(440, 1.0, 16000), 16000)
  assert audio.read_audio(whole).shape == (16000,)
  cut = tmp_path / "cut.mp3"
  cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) * 7 // 10])
  expect_error(cut, "truncated")


def test_wav_with_unknown_data_size_is_not_truncated(tmp_path):
  path = tmp_path / "stream.wav"
  sf.write(str(path), sine(440, 0.1, 16000), 16000, subtype="PCM_16")
  data = bytearray(path.read_bytes())
  assert data[36:40] == b"data"
  data[40:44] = b"\xff\xff\xff\xff"
  path.write_bytes(bytes(data))
  assert audio.read_audio(path).shape == (1600,)


def test_empty_wav(tmp_path):
  path = str(tmp_path / "empty.wav")
  sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
  expect_error(path, "empty")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
  x = sine(440, 0.1, 16000)
  x[10] = bad
  path = str(tmp_path / "nan.wav")
  sf.write(path, x, 16000, subtype="FLOAT")
  expect_error(path, "nan")


def test_duration_bounds(tmp_path):
  path = str(tmp_path / "one_second.wav")
  sf.write(path, sine(440, 1.0, 22050), 22050, subtype="PCM_16")
  expect_error(path, "too_short", min_seconds=1.5)
  expect_error(path, "too_long", max_seconds=0.5)
  assert audio.read_audio(path, min_seconds=1.0, max_seconds=1.0).shape == (16000,)


def test_audio_info(tmp_path):
  path = str(tmp_path / "a.flac")
  sf.write(path, np.zeros((22050, 2), np.float32), 44100)
  info = audio.audio_info(path)
  assert info == (44100, 22050, 2, 0.5)
  assert info.duration == 0.5


def test_unknown_reason_is_refused():
  with pytest.raises(ValueError):
    audio.AudioError("x.wav", "bad", "no such reason")


def test_write_wav_round_trip_clips_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / "out" / "a.wav")
  x = np.array([0.0, 0.25, -0.5, 1.5, -2.0], np.float32)
  audio.write_wav(path, x, 16000)
  info = sf.info(path)
  assert (info.samplerate, info.subtype, info.frames) == (16000, "PCM_16", 5)
  np.testing.assert_allclose(audio.read_audio(path), np.clip(x, -1, 1), atol=1 / 32768)
  assert os.listdir(tmp_path / "out") == ["a.wav"]


def test_write_wav_replaces_and_refuses_nan(tmp_path):
  path = str(tmp_path / "a.wav")
  audio.write_wav(path, np.zeros(100, np.float32), 16000)
  audio.write_wav(path, np.full(50, 0.5, np.float32), 8000)
  assert sf.info(path).frames == 50
  with pytest.raises(ValueError, match="NaN"):
    audio.write_wav(path, np.array([0.0, np.nan], np.float32), 16000)
  assert sf.info(path).frames == 50
  assert os.listdir(tmp_path) == ["a.wav"]
