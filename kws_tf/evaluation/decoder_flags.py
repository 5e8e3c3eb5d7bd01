"""The CTC decoder flags of ``kws-evaluate`` and ``kws-infer``, and the decoder they make.

A binary calls ``define_flags`` once at import (and adopts this module's key
flags, so ``--help`` lists them); ``decoder_from_flags`` checks them and
returns a ``decoding.CtcDecoder``, raising ValueError / FileNotFoundError with
a one-line message that names the flag or file at fault.
"""
from typing import Tuple

from absl import flags

from kws_tf import text
from kws_tf.evaluation import decoding

FLAGS = flags.FLAGS


def define_flags(default_decoder: str) -> None:
  """Defines --decoder (default ``default_decoder``), --beam_width, --lm, --lm_weight,
  --word_bonus, --hotwords and --hotword_weight."""
  flags.DEFINE_enum("decoder", default_decoder, decoding.DECODERS,
                    "ctc: greedy (best path), beam (prefix beam search) or beam_lm (prefix beam "
                    "search with the word language model of --lm).")
  flags.DEFINE_integer("beam_width", 8, "ctc: prefixes the beam decoders keep per frame; "
                       "0: greedy decoding (older commands).")
  flags.DEFINE_string("lm", None, "ctc, --decoder=beam_lm: a word n-gram language model, an ARPA "
                      "file or a KenLM binary (kws-build-lm writes one).")
  flags.DEFINE_float("lm_weight", 0.5, "ctc, beam_lm: weight of the language model's "
                     "log-probabilities (alpha).")
  flags.DEFINE_float("word_bonus", 1.0, "ctc, beam_lm: score added per decoded word, nats "
                     "(beta).")
  flags.DEFINE_string("hotwords", None, "ctc, beam_lm: a UTF-8 file of words or phrases to "
                      "favour, one a line.")
  flags.DEFINE_float("hotword_weight", 5.0, "ctc, beam_lm: score per decoded word of a "
                     "--hotwords phrase, nats.")


def read_hotwords(path: str) -> Tuple[Tuple[str, ...], ...]:
  """The phrases of a hotwords file: non-empty lines, normalised, as word tuples.

  Raises FileNotFoundError / ValueError naming ``--hotwords`` and the file
  when it is missing, not UTF-8 or holds no phrase.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise FileNotFoundError(f"--hotwords={path}: no such file") from None
  except UnicodeDecodeError as error:
    raise ValueError(f"--hotwords={path}: not UTF-8 ({error})") from None
  phrases = tuple(tuple(text.normalize(line).split()) for line in lines)
  phrases = tuple(p for p in phrases if p)
  if not phrases:
    raise ValueError(f"--hotwords={path}: holds no word")
  return phrases


def decoder_from_flags() -> decoding.CtcDecoder:
  """The decoder the flags ask for, checked (module docstring)."""
  name = FLAGS.decoder
  if FLAGS.beam_width < 0:
    raise ValueError(f"--beam_width must be >= 0, got {FLAGS.beam_width}")
  if FLAGS.beam_width == 0:
    if name == "beam_lm":
      raise ValueError("--decoder=beam_lm needs --beam_width >= 1")
    name = "greedy"
  if name != "beam_lm":
    for flag in ("lm", "hotwords"):
      if FLAGS[flag].value is not None:
        raise ValueError(f"--{flag} is used only with --decoder=beam_lm (got "
                         f"--decoder={FLAGS.decoder})")
    return decoding.CtcDecoder(name, FLAGS.beam_width)
  if not FLAGS.lm:
    raise ValueError("--decoder=beam_lm needs --lm=<ARPA or KenLM binary file> "
                     "(kws-build-lm writes one)")
  if FLAGS.lm_weight < 0:
    raise ValueError(f"--lm_weight must be >= 0, got {FLAGS.lm_weight}")
  hotwords = read_hotwords(FLAGS.hotwords) if FLAGS.hotwords else ()
  try:
    lm = decoding.LanguageModel(FLAGS.lm)
  except (FileNotFoundError, ValueError) as error:
    raise type(error)(f"--lm={error}") from None
  return decoding.CtcDecoder("beam_lm", FLAGS.beam_width, lm, FLAGS.lm_weight,
                             FLAGS.word_bonus, hotwords, FLAGS.hotword_weight,
                             f"--hotwords={FLAGS.hotwords}")
