"""Reading and writing audio files with explicit, machine-readable failures.

A 16-bit PCM WAV file (VIVOS, espeak, most corpora) is read with the standard
library's ``wave`` module (its int16 samples copied as they are); every other
file, and any WAV that ``wave`` cannot parse, is decoded with soundfile
(libsndfile: WAV, FLAC, OGG, MP3). Both give the same floats (x / 32768 for
16-bit samples). The result is mixed down to mono by averaging the channels
and resampled with soxr ("HQ") to the rate the caller asks for. A file that
cannot be used raises :class:`AudioError` whose ``reason`` is one of
:data:`REASONS`, so a corpus converter can count and report skipped files by
reason.

libsndfile does not fail on a truncated WAV: it silently shortens the stream
to the bytes present. :func:`read_audio` therefore compares the size that the
WAV ``data`` chunk header declares with the bytes in the file, and, for every
format, the frame count in the header with the frames actually decoded
(a cut MP3 keeps its declared length but decodes fewer frames).

A caller may ask for one segment of a file (a NeMo manifest entry's
``offset`` and ``duration``): only that part is decoded, after a seek.
"""
import os
import struct
import tempfile
import wave
from typing import BinaryIO, Iterator, NamedTuple, Optional, Tuple

import numpy as np
import soundfile as sf
import soxr

REASONS = (
    "missing",      # no file at the path
    "unreadable",   # libsndfile cannot open or decode it (corrupt, unknown format)
    "truncated",    # the header (or a segment asked for) declares more audio than the file holds
    "empty",        # zero samples
    "nan",          # a NaN or infinite sample
    "too_short",    # shorter than min_seconds
    "too_long",     # longer than max_seconds
)


class AudioInfo(NamedTuple):
  """Header facts of an audio file."""
  sample_rate: int   # Hz
  frames: int        # samples per channel
  channels: int
  duration: float    # seconds, frames / sample_rate


# A segment may end this many seconds past the end of its file (manifests round
# their durations); the part past the end is not there to read.
SEGMENT_END_SLACK = 0.02

# WAV writers that stream to a pipe leave these in the data chunk size because
# they cannot know the length up front; such a size says nothing about truncation.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)


class AudioError(Exception):
  """An audio file that cannot be used.

  Attributes:
    path: the file, as given.
    reason: one of :data:`REASONS`.
    message: a human explanation.
  """

  def __init__(self, path, reason: str, message: str):
    if reason not in REASONS:
      raise ValueError(f"unknown audio error reason {reason!r}")
    self.path = os.fspath(path)
    self.reason = reason
    self.message = message
    super().__init__(f"{self.path}: {reason}: {message}")


def audio_info(path) -> AudioInfo:
  """Header facts of an audio file, without decoding it.

  Raises AudioError ("missing", "unreadable").
  """
  _check_exists(path)
  try:
    info = sf.info(os.fspath(path))
  except (sf.SoundFileError, RuntimeError) as error:
    raise AudioError(path, "unreadable", str(error)) from error
  return AudioInfo(info.samplerate, info.frames, info.channels,
                   info.frames / info.samplerate)


def read_audio(path, sample_rate: int = 16000,
               min_seconds: Optional[float] = None,
               max_seconds: Optional[float] = None,
               keep_int16: bool = False, offset: float = 0.0,
               duration: Optional[float] = None) -> np.ndarray:
  """Decodes a file (or a segment of it) to mono float32 at ``sample_rate`` Hz.

  Args:
    path: a WAV, FLAC, OGG or MP3 file.
    sample_rate: output rate in Hz; the file is resampled (soxr "HQ") when its
      rate differs.
    min_seconds, max_seconds: inclusive bounds on the duration in seconds;
      None means unbounded.
    keep_int16: return the samples of a 16-bit PCM mono file at
      ``sample_rate`` as they are stored (int16; ``x / 32768`` is the float
      waveform), which saves the conversion when the consumer takes integers
      (``kws_tf.features``). Other files still give float32.
    offset, duration: decode only the segment from ``offset`` seconds for
      ``duration`` seconds (None: to the end of the file); ``min_seconds`` and
      ``max_seconds`` bound the segment. A segment that starts after the end of
      the file or ends more than ``SEGMENT_END_SLACK`` past it is "truncated".

  Returns:
    float32 [samples] in [-1, 1] (float files holding louder samples, and the
    resampler's overshoot, are clipped), or int16 [samples] (``keep_int16``).

  Raises:
    AudioError with reason "missing", "unreadable", "truncated", "empty",
    "nan", "too_short" or "too_long".
  """
  _check_exists(path)
  decoded = _read_pcm16_wav(path, offset, duration)
  if decoded is None:
    decoded = _read_with_soundfile(path, offset, duration)
  data, file_rate = decoded
  integer = data.dtype == np.int16
  if len(data) == 0:
    raise AudioError(path, "empty", "no samples")
  # The sum of float samples is finite when every sample is (the full check
  # only runs otherwise).
  if (not integer and not np.isfinite(data.sum(dtype=np.float64))
      and not np.all(np.isfinite(data))):
    raise AudioError(path, "nan", "NaN or infinite samples")
  seconds = len(data) / file_rate
  if min_seconds is not None and seconds < min_seconds:
    raise AudioError(path, "too_short", f"{seconds:.3f} s < {min_seconds} s")
  if max_seconds is not None and seconds > max_seconds:
    raise AudioError(path, "too_long", f"{seconds:.3f} s > {max_seconds} s")
  if integer and data.shape[1] == 1 and file_rate == sample_rate:
    return data[:, 0] if keep_int16 else pcm16_to_float(data[:, 0])
  if integer:
    data = pcm16_to_float(data)
  mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
  if file_rate != sample_rate:
    mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
  mono = np.ascontiguousarray(mono, dtype=np.float32)
  return np.clip(mono, -1.0, 1.0, out=mono)


def stream_audio(path, sample_rate: int = 16000,
                 block_samples: int = 1 << 18) -> Iterator[np.ndarray]:
  """Decodes a file block by block: the samples of ``read_audio(path, sample_rate)``
  as consecutive float32 mono blocks, so a long file never sits in memory whole.

  Blocks of ``block_samples`` file frames are read with soundfile, mixed down
  and resampled with soxr's streaming resampler ("HQ", the same samples as the
  one-shot resampler); blocks may be shorter or longer than ``block_samples``
  after resampling, and none is empty.

  Raises AudioError ("missing", "unreadable", "truncated", "empty", "nan"),
  the last three possibly after some blocks were yielded.
  """
  _check_exists(path)
  _check_wav_not_truncated(path)
  try:
    f = sf.SoundFile(os.fspath(path))
  except (sf.SoundFileError, RuntimeError) as error:
    raise AudioError(path, "unreadable", str(error)) from error
  with f:
    file_rate, declared = f.samplerate, f.frames
    resampler = (soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ")
                 if file_rate != sample_rate else None)
    decoded = 0
    while True:
      try:
        data = f.read(block_samples, dtype="float32", always_2d=True)
      except (sf.SoundFileError, RuntimeError) as error:
        raise AudioError(path, "unreadable", str(error)) from error
      last = len(data) < block_samples
      decoded += len(data)
      if not np.all(np.isfinite(data)):
        raise AudioError(path, "nan", "NaN or infinite samples")
      mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
      if resampler is not None:
        mono = resampler.resample_chunk(mono, last=last)
      if len(mono):
        yield np.clip(np.ascontiguousarray(mono, np.float32), -1.0, 1.0)
      if last:
        break
  if decoded == 0:
    raise AudioError(path, "empty", "no samples")
  if decoded < declared:
    raise AudioError(path, "truncated", f"header declares {declared} frames, decoded {decoded}")


def read_pcm16(stream: BinaryIO, block_samples: int,
               name: str = "-") -> Iterator[np.ndarray]:
  """Raw 16-bit little-endian mono PCM from a binary stream (standard input) as
  float32 blocks (``pcm16_to_float``) of ``block_samples`` samples, the last
  possibly shorter; each block is yielded as soon as its bytes have arrived.

  Raises AudioError naming the stream ``name``: "empty" when it ends before a
  sample, "truncated" when it ends inside a sample (an odd number of bytes).
  """
  pending = b""
  received = 0
  while True:
    data = stream.read(block_samples * 2 - len(pending))
    if not data:
      break
    pending += data
    if len(pending) < block_samples * 2:
      continue
    received += block_samples
    yield pcm16_to_float(np.frombuffer(pending, "<i2"))
    pending = b""
  if len(pending) % 2:
    raise AudioError(name, "truncated", f"the stream ended inside a 16-bit sample "
                     f"(after {received * 2 + len(pending)} bytes, an odd number)")
  if pending:
    received += len(pending) // 2
    yield pcm16_to_float(np.frombuffer(pending, "<i2"))
  if received == 0:
    raise AudioError(name, "empty", "no samples")


def pcm16_to_float(samples: np.ndarray) -> np.ndarray:
  """float32 ``x / 32768`` of int16 samples (any shape), in [-1, 1): exact, and
  what libsndfile's float decoding gives."""
  out = samples.astype(np.float32)
  out *= np.float32(1.0 / 32768.0)
  return out


def _segment_frames(path, rate: int, frames: int, offset: float,
                    duration: Optional[float]) -> Tuple[int, int]:
  """(first frame, end frame) of the segment ``offset`` .. ``offset + duration``
  seconds (None: to the end) of a file of ``frames`` frames at ``rate`` Hz; an
  end up to ``SEGMENT_END_SLACK`` past the file's is cut to it.

  Raises AudioError("truncated") when the segment is not inside the file.
  """
  start = int(round(offset * rate))
  stop = frames if duration is None else int(round((offset + duration) * rate))
  if start > frames or stop > frames + int(round(SEGMENT_END_SLACK * rate)):
    raise AudioError(path, "truncated",
                     f"the segment from {offset:.3f} s to {stop / rate:.3f} s is not inside "
                     f"the file's {frames / rate:.3f} s")
  return start, min(stop, frames)


def _read_pcm16_wav(path, offset: float = 0.0,
                    duration: Optional[float] = None) -> Optional[Tuple[np.ndarray, int]]:
  """(int16 ``[frames, channels]``, rate in Hz) of a 16-bit PCM WAV file whose
  data chunk declares its size, or of its segment (``read_audio``); None for any
  other file, or when ``wave`` cannot parse it (soundfile decides then).

  Raises AudioError("truncated") when the file holds fewer samples than the
  data chunk declares before the segment's end, or the segment is not in it.
  """
  try:
    with wave.open(os.fspath(path), "rb") as f:
      if f.getsampwidth() != 2:
        return None
      channels, rate, declared = f.getnchannels(), f.getframerate(), f.getnframes()
      frame_bytes = 2 * channels
      # 0 or 0xFFFFFFFF bytes: a writer that streamed and never knew the size.
      if declared == 0 or declared >= _UNKNOWN_WAV_SIZES[1] // frame_bytes:
        return None
      start, stop = _segment_frames(path, rate, declared, offset, duration)
      f.setpos(start)
      payload = f.readframes(stop - start)
  except (wave.Error, EOFError):
    return None
  frames = len(payload) // frame_bytes
  if frames < stop - start:
    raise AudioError(path, "truncated",
                     f"data chunk declares {declared * frame_bytes} bytes, "
                     f"file holds {start * frame_bytes + len(payload)}")
  return np.frombuffer(payload, "<i2").reshape(frames, channels), rate


def _read_with_soundfile(path, offset: float = 0.0,
                         duration: Optional[float] = None) -> Tuple[np.ndarray, int]:
  """(``[frames, channels]``, rate in Hz) of any file libsndfile decodes, or of
  its segment (``read_audio``): int16 for 16-bit PCM (the caller scales it to
  float32 in numpy), float32 otherwise.

  Raises AudioError ("unreadable", "truncated").
  """
  _check_wav_not_truncated(path)
  try:
    with sf.SoundFile(os.fspath(path)) as f:
      file_rate = f.samplerate
      declared_frames = f.frames
      start, stop = _segment_frames(path, file_rate, declared_frames, offset, duration)
      dtype = "int16" if f.subtype == "PCM_16" else "float32"
      if start:
        f.seek(start)
      # Without a duration, to the decoded end (which may differ from the header's).
      data = f.read(-1 if duration is None else stop - start, dtype=dtype, always_2d=True)
  except (sf.SoundFileError, RuntimeError) as error:
    raise AudioError(path, "unreadable", str(error)) from error
  if len(data) < stop - start:
    raise AudioError(path, "truncated",
                     f"header declares {declared_frames} frames, decoded {start + len(data)}")
  return data, file_rate


def cut_clip(waveform: np.ndarray, start_seconds: float, clip_samples: int,
             sample_rate: int) -> np.ndarray:
  """``clip_samples`` samples of ``waveform [samples]`` (float32 or int16, kept)
  from ``start_seconds`` (may be negative or run past the end); zeros outside
  the waveform. The kws clips of the converter and of the export's parity check."""
  start = int(round(start_seconds * sample_rate))
  clip = np.zeros(clip_samples, waveform.dtype)
  lo, hi = max(start, 0), min(start + clip_samples, len(waveform))
  if hi > lo:
    clip[lo - start:hi - start] = waveform[lo:hi]
  return clip


def write_wav(path, samples: np.ndarray, sample_rate: int) -> None:
  """Writes 16-bit PCM WAV atomically (temporary file + os.replace).

  Args:
    path: destination; its folder is created when missing.
    samples: float [samples] or [samples, channels], nominally in [-1, 1];
      values outside are clipped.
    sample_rate: rate in Hz.

  Raises:
    ValueError if a sample is NaN or infinite.
  """
  samples = np.asarray(samples, dtype=np.float32)
  if not np.all(np.isfinite(samples)):
    raise ValueError(f"{path}: NaN or infinite samples")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".wav")
  os.close(fd)
  try:
    sf.write(tmp, np.clip(samples, -1.0, 1.0), sample_rate,
             format="WAV", subtype="PCM_16")
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


def _check_exists(path) -> None:
  if not os.path.isfile(path):
    raise AudioError(path, "missing", "no such file")


def _check_wav_not_truncated(path) -> None:
  """Raises AudioError("truncated") when a RIFF/WAVE file holds fewer data
  bytes than its ``data`` chunk header declares."""
  chunk = _wav_data_chunk(path)
  if chunk is None:
    return
  offset, declared = chunk
  present = os.path.getsize(path) - offset
  if declared not in _UNKNOWN_WAV_SIZES and present < declared:
    raise AudioError(path, "truncated",
                     f"data chunk declares {declared} bytes, file holds {present}")


def _wav_data_chunk(path) -> Optional[Tuple[int, int]]:
  """(byte offset of the audio data, declared data size in bytes) of a
  RIFF/WAVE file; None for other files or when no data chunk header is found."""
  with open(path, "rb") as f:
    header = f.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
      return None
    while True:
      chunk_header = f.read(8)
      if len(chunk_header) < 8:
        return None
      chunk_id, size = chunk_header[:4], struct.unpack("<I", chunk_header[4:])[0]
      if chunk_id == b"data":
        return f.tell(), size
      f.seek(size + (size & 1), os.SEEK_CUR)
