r"""Peak memory of kws-infer on long audio: ctc transcription in chunks against one pass.

  .venv/bin/python benchmarks/infer_memory.py --model=<an exported ctc .tflite file> \
      [--minutes=2,10] [--chunk_seconds=20,0] [--audio_dir=workdir/corpus]

Not a test. For each length of ``--minutes`` it writes a 16 kHz WAV file (the
utterances under ``--audio_dir`` one after the other, repeated to the length;
white noise without it) and runs ``python -m kws_tf.bin.infer --model=...
--audio=<file> --chunk_seconds=S`` in a fresh process for each ``S`` of
``--chunk_seconds`` (0: the whole file in one model call, as kws-infer did
before it read audio in blocks and chunked ctc models). It prints one markdown
table of the peak resident memory of each process (GNU time's ``%M``) and
its wall time; the first row is a 1 s file, the cost of
starting the program and loading the model. Needs GNU time (``/usr/bin/time``).
"""
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

import numpy as np
from absl import app, flags

from kws_tf import audio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAMPLE_RATE = 16000

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "An exported ctc .tflite file (its card next to it).")
flags.DEFINE_list("minutes", ["2", "10"], "Lengths of the audio files, minutes.")
flags.DEFINE_list("chunk_seconds", ["20", "0"], "kws-infer --chunk_seconds values to run.")
flags.DEFINE_string("audio_dir", None, "Audio files (.wav) to tile into the long files; "
                    "white noise when not given.")
flags.mark_flags_as_required(["model"])


def long_audio(samples: int, audio_dir: str) -> np.ndarray:
  """``samples`` float32 samples: the .wav files of ``audio_dir`` (sorted) repeated, or
  white noise at 0.1 rms."""
  if not audio_dir:
    return np.random.default_rng(0).normal(0, 0.1, samples).astype(np.float32)
  paths = sorted(os.path.join(root, n) for root, _, names in os.walk(audio_dir)
                 for n in names if n.endswith(".wav"))
  if not paths:
    raise app.UsageError(f"no .wav files under {audio_dir}")
  pieces, total = [], 0
  while total < samples:
    for path in paths:
      pieces.append(audio.read_audio(path, SAMPLE_RATE))
      total += len(pieces[-1])
      if total >= samples:
        break
  return np.concatenate(pieces)[:samples]


def peak_memory(args: List[str], folder: str) -> Tuple[float, float, int]:
  """(peak resident MB, wall seconds, exit code) of a command, run by GNU time: the
  resident peak Linux reports for a child starts at its parent's size when it forks,
  and this process holds the long audio it wrote; time's own child starts small."""
  report = os.path.join(folder, "time.txt")
  start = time.perf_counter()
  code = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report, *args], cwd=REPO,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
  seconds = time.perf_counter() - start
  with open(report) as f:
    kilobytes = int(f.read().split()[-1])
  return kilobytes / 1024, seconds, code


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for minutes in [1 / 60] + [float(m) for m in FLAGS.minutes]:
      path = os.path.join(folder, f"{minutes:g}min.wav")
      audio.write_wav(path, long_audio(int(minutes * 60 * SAMPLE_RATE), FLAGS.audio_dir),
                      SAMPLE_RATE)
      for chunk in FLAGS.chunk_seconds:
        memory, seconds, code = peak_memory(
            [sys.executable, "-m", "kws_tf.bin.infer", f"--model={FLAGS.model}",
             f"--audio={path}", f"--chunk_seconds={chunk}"], folder)
        length = "1 s" if minutes < 1 else f"{minutes:g} min"
        rows.append(f"| {length} | {chunk} | {memory:,.0f} | {seconds:.1f} | "
                    f"{'ok' if code == 0 else f'exit {code}'} |")
      os.remove(path)
  print(f"kws-infer --model={FLAGS.model}")
  print("| audio | --chunk_seconds | peak memory (MB) | wall time (s) | |")
  print("|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  app.run(main)
