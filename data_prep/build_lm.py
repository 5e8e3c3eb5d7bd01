r"""Builds a word n-gram language model (ARPA) for the CTC decoder's ``--decoder=beam_lm``.

  kws-build-lm --output=workdir/lm/vietnamese_3gram.arpa --order=3

Text: by default the sentences of Debian's Vietnamese documentation
(``data_prep.texts.documentation_sentences``: the man pages of ``manpages-vi``
and the New Maintainers' Guide of ``maint-guide-vi``, less anything that holds
a sentence of the gettext catalogues), which no corpus and no test set of the
project reads; or ``--text_files``, one sentence a line. Every sentence is
``kws_tf.text.normalize``d; its words are the space-separated tokens (for
Vietnamese: syllables, as in the transcripts).

The model is interpolated modified Kneser-Ney (Chen and Goodman 1998), the
estimate of KenLM's ``lmplz``, which the pip package ``kenlm`` does not ship.
Each sentence is ``<s> w1 .. wn </s>``. The highest order counts n-grams;
a lower-order n-gram counts the distinct words seen before it (its
continuation count), except one that starts with ``<s>``, which keeps its
count. For a context ``h`` and a word ``w`` with count ``a(h w)`` at order k:

  P(w | h) = max(a(h w) - D_k(a(h w)), 0) / a(h .) + gamma(h) P(w | h')
  gamma(h) = (D_k1 N1(h .) + D_k2 N2(h .) + D_k3+ N3+(h .)) / a(h .)

where ``h'`` is ``h`` without its first word, ``a(h .)`` sums the counts
after ``h`` and ``N1/N2/N3+(h .)`` count the words seen once, twice, three
or more times after it. A context never followed by a word has P(w | h) =
P(w | h'). Unigrams interpolate with the uniform distribution over the words,
``</s>`` and ``<unk>`` (``<s>`` is never predicted). The discounts of order k
come from its counts of counts n1..n4: Y = n1 / (n1 + 2 n2), D_k1 = 1 - 2 Y n2
/ n1, D_k2 = 2 - 3 Y n3 / n2, D_k3+ = 3 - 4 Y n4 / n3; when n1, n2 or n3
is 0 or a discount falls outside [0, i], as on small texts, the order takes
``FALLBACK_DISCOUNTS`` instead (``lmplz --discount_fallback``'s), and the
summary says so.

In the ARPA file every n-gram seen in the text has its interpolated log10
probability, and every context its backoff weight log10 gamma(h), so that
ARPA backoff (P(w | h) = gamma(h) P(w | h') for an unseen ``h w``) gives the
same distribution; ``<s>``, never predicted, is written with log10
probability 0, as ``lmplz`` writes it. KenLM (``kenlm.Model``) reads the file
(tests/test_build_lm.py checks its scores against
``KneserNey.log10_probability``); on the default text the file holds the
n-grams, probabilities and backoffs ``lmplz`` writes, to its 7 digits
(BUILD.md, "The CTC decoder's language model").
"""
import collections
import math
import os
import sys
from typing import Dict, Iterable, List, Sequence, Tuple

from absl import app, flags

from kws_tf import cli

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
Ngram = Tuple[str, ...]

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "The ARPA file to write.")
flags.DEFINE_integer("order", 3, "The n-gram order (2 or more).")
flags.DEFINE_list("text_files", None, "UTF-8 text files, one sentence a line (comma-separated); "
                  "default: Debian's Vietnamese documentation (manpages-vi, maint-guide-vi), "
                  "which no corpus or test set reads.")
flags.mark_flags_as_required(["output"])


class KneserNey:
  """An interpolated modified Kneser-Ney n-gram model of word sentences (module docstring).

  Args:
    sentences: each a sequence of words (none of them ``<s>``, ``</s>`` or
      ``<unk>``); empty sentences count as ``<s> </s>``.
    order: the highest n-gram order, 2 or more (KenLM reads no unigram model).
  """

  def __init__(self, sentences: Iterable[Sequence[str]], order: int):
    if order < 2:
      raise ValueError(f"the order must be 2 or more (KenLM reads no unigram model), "
                       f"got {order}")
    self.order = order
    raw: List[collections.Counter] = [collections.Counter() for _ in range(order + 1)]
    for words in sentences:
      reserved = {BOS, EOS, UNK} & set(words)
      if reserved:
        raise ValueError(f"a sentence holds the reserved word(s) {sorted(reserved)}: "
                         f"{' '.join(words)!r}")
      tokens = (BOS, *words, EOS)
      for k in range(1, order + 1):
        for i in range(len(tokens) - k + 1):
          raw[k][tokens[i:i + k]] += 1
    if not raw[1]:
      raise ValueError("no sentence to estimate a language model from")
    # counts[k]: the (adjusted) count of each n-gram of order k that occurs.
    self.counts: List[Dict[Ngram, int]] = [{}]
    for k in range(1, order + 1):
      if k == order:
        self.counts.append(dict(raw[k]))
        continue
      left = collections.Counter(gram[1:] for gram in raw[k + 1])
      self.counts.append({gram: count if gram[0] == BOS else left[gram]
                          for gram, count in raw[k].items()})
    # The unigram distribution predicts every word but <s>, and <unk>.
    del self.counts[1][(BOS,)]
    self.counts[1][(UNK,)] = 0
    self.vocabulary_size = len(self.counts[1])
    self.discounts: List[Tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
    self.fallback_orders: List[int] = []
    for k in range(1, order + 1):
      discounts = _discounts(self.counts[k].values())
      if discounts is None:
        discounts = FALLBACK_DISCOUNTS
        self.fallback_orders.append(k)
      self.discounts.append(discounts)
    # Per context h of order k (k - 1 words): a(h .) and the discounted mass
    # D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .).
    self._context_total: List[Dict[Ngram, int]] = [{} for _ in range(order + 1)]
    self._context_mass: List[Dict[Ngram, float]] = [{} for _ in range(order + 1)]
    for k in range(1, order + 1):
      total, mass = self._context_total[k], self._context_mass[k]
      for gram, count in self.counts[k].items():
        if count == 0:
          continue
        context = gram[:-1]
        total[context] = total.get(context, 0) + count
        mass[context] = mass.get(context, 0.0) + self._discount(k, count)
    self._probabilities: List[Dict[Ngram, float]] = [{}]
    for k in range(1, order + 1):
      self._probabilities.append({gram: self._interpolated(gram) for gram in self.counts[k]})

  def _discount(self, k: int, count: int) -> float:
    return self.discounts[k][min(count, 3) - 1]

  def gamma(self, context: Ngram) -> float:
    """The weight of the lower order after ``context``; 1 when nothing follows it."""
    k = len(context) + 1
    total = self._context_total[k].get(context, 0) if k <= self.order else 0
    if not total:
      return 1.0
    return self._context_mass[k][context] / total

  def _interpolated(self, gram: Ngram) -> float:
    """P(w | h) of the module docstring for ``gram`` = h + (w,), len(h) < order."""
    context, word = gram[:-1], gram[-1]
    k = len(gram)
    if k == 1:
      lower = 1.0 / self.vocabulary_size
    else:
      lower = self._probabilities[k - 1].get(gram[1:])
      if lower is None:
        lower = self._interpolated(gram[1:])
    total = self._context_total[k].get(context, 0)
    if not total:
      return lower
    count = self.counts[k].get(gram, 0)
    seen = max(count - self._discount(k, count), 0.0) / total if count else 0.0
    return seen + self._context_mass[k][context] / total * lower

  def log10_probability(self, history: Sequence[str], word: str) -> float:
    """log10 P(word | history), computed by interpolation (not from the ARPA form).

    ``history`` is the words before ``word`` starting with ``<s>``; only its
    last ``order - 1`` count. A word outside the vocabulary is ``<unk>``.
    """
    known = self.counts[1]
    word = word if (word,) in known else UNK
    history = tuple(w if w == BOS or (w,) in known else UNK for w in history)
    context = history[-(self.order - 1):]
    return math.log10(self._interpolated((*context, word)))

  def write_arpa(self, path: str) -> None:
    """Writes the model as an ARPA file (module docstring), atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write("\\data\\\n")
      sizes = [len(self.counts[1]) + 1] + [len(self.counts[k]) for k in range(2, self.order + 1)]
      for k, size in enumerate(sizes, start=1):
        f.write(f"ngram {k}={size}\n")
      for k in range(1, self.order + 1):
        f.write(f"\n\\{k}-grams:\n")
        grams = sorted(self.counts[k])
        if k == 1:
          f.write(self._arpa_line(0.0, (BOS,), k))
        for gram in grams:
          f.write(self._arpa_line(math.log10(self._probabilities[k][gram]), gram, k))
      f.write("\n\\end\\\n")
    os.replace(tmp, path)

  def _arpa_line(self, log10_probability: float, gram: Ngram, k: int) -> str:
    line = f"{log10_probability:.7g}\t{' '.join(gram)}"
    if k < self.order and self._context_total[k + 1].get(gram):
      line += f"\t{math.log10(self.gamma(gram)):.7g}"
    return line + "\n"

  def summary(self) -> str:
    """n-gram counts and discounts per order, one line each."""
    lines = [f"vocabulary: {self.vocabulary_size} (words, </s>, <unk>)"]
    for k in range(1, self.order + 1):
      note = " (fallback: too little text)" if k in self.fallback_orders else ""
      lines.append(f"{k}-grams: {len(self.counts[k]) + (k == 1)}, discounts "
                   f"{', '.join(f'{d:.3f}' for d in self.discounts[k])}{note}")
    return "\n".join(lines)


def _discounts(counts: Iterable[int]) -> Tuple[float, float, float]:
  """D1, D2, D3+ from the counts of counts n1..n4 (module docstring); None when
  n1, n2 or n3 is 0 or a discount falls outside [0, i]."""
  of = collections.Counter(c for c in counts if 1 <= c <= 4)
  n = [of[i] for i in range(1, 5)]
  if min(n[:3]) == 0:
    return None
  y = n[0] / (n[0] + 2 * n[1])
  discounts = tuple(i - (i + 1) * y * n[i] / n[i - 1] for i in range(1, 4))
  if any(not 0 <= d <= i for i, d in enumerate(discounts, start=1)):
    return None
  return discounts


def read_sentences(paths: Sequence[str]) -> List[List[str]]:
  """The normalised non-empty lines of UTF-8 text files, as word lists.

  FileNotFoundError / ValueError naming the file when one is missing or not UTF-8.
  """
  from kws_tf import text
  sentences = []
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--text_files: {path}: no such file")
    try:
      with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    except UnicodeDecodeError as error:
      raise ValueError(f"--text_files: {path}: not UTF-8 ({error})") from None
    sentences.extend(words for words in (text.normalize(line).split() for line in lines) if words)
  return sentences


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from data_prep import texts
  try:
    if FLAGS.text_files:
      sentences = read_sentences(FLAGS.text_files)
      source = ", ".join(FLAGS.text_files)
    else:
      sentences = [s.split() for s in texts.documentation_sentences()]
      source = f"Debian's Vietnamese documentation ({texts.MAN_DIR}, {texts.MAINT_GUIDE})"
    model = KneserNey(sentences, FLAGS.order)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  directory = os.path.dirname(os.path.abspath(FLAGS.output))
  os.makedirs(directory, exist_ok=True)
  model.write_arpa(FLAGS.output)
  print(f"{len(sentences)} sentences, {sum(map(len, sentences))} words from {source}")
  print(model.summary())
  print(f"wrote {FLAGS.output}")
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
