"""data_prep/build_lm.py: the Kneser-Ney ARPA writer against KenLM, and its text source
(data_prep/texts.py: Debian's Vietnamese documentation, less the gettext sentences)."""
import gzip
import math

import kenlm
import numpy as np
import pytest

from conftest import run_module
from data_prep import build_lm, lexicon, texts
from test_robustness import write_mo

SENTENCES = [s.split() for s in lexicon.generate_sentences(np.random.default_rng(0), 400)]
# Sentences the model never saw, one with a word outside its vocabulary.
UNSEEN = [["tôi", "thích", "phở", "và", "bún", "chả"], ["con", "mèo", "xyzw", "ăn", "cá"],
          ["không", "có", "ai"], []]


def kenlm_model(path):
  config = kenlm.Config()
  config.show_progress = False
  return kenlm.Model(str(path), config)


def kenlm_probabilities(model, context, vocabulary):
  """KenLM's P(w | context) for every w of the vocabulary; context starts with <s> or not."""
  state = kenlm.State()
  if context and context[0] == build_lm.BOS:
    model.BeginSentenceWrite(state)
    context = context[1:]
  else:
    model.NullContextWrite(state)
  for word in context:
    after = kenlm.State()
    model.BaseScore(state, word, after)
    state = after
  return np.array([10 ** model.BaseScore(state, w, kenlm.State()) for w in vocabulary])


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kenlm_reads_the_arpa_with_the_models_own_probabilities(order, tmp_path):
  model = build_lm.KneserNey(SENTENCES, order)
  assert not model.fallback_orders  # 400 sentences: discounts from counts of counts
  model.write_arpa(str(tmp_path / "lm.arpa"))
  reference = kenlm_model(tmp_path / "lm.arpa")
  assert reference.order == order
  compared = 0
  for words in SENTENCES[:40] + UNSEEN:
    history = [build_lm.BOS]
    scores = list(reference.full_scores(" ".join(words)))
    assert len(scores) == len(words) + 1
    for (log10_kenlm, _, _), word in zip(scores, words + [build_lm.EOS]):
      # KenLM backs off through the ARPA weights; the model interpolates.
      assert model.log10_probability(history, word) == pytest.approx(log10_kenlm, abs=2e-6)
      history.append(word)
      compared += 1
  assert compared > 300


@pytest.mark.parametrize("order", [2, 3])
def test_every_context_sums_to_one_in_kenlm(order, tmp_path):
  model = build_lm.KneserNey(SENTENCES, order)
  model.write_arpa(str(tmp_path / "lm.arpa"))
  reference = kenlm_model(tmp_path / "lm.arpa")
  vocabulary = [gram[0] for gram in model.counts[1]]  # the words, </s> and <unk>
  assert build_lm.EOS in vocabulary and build_lm.UNK in vocabulary
  rng = np.random.default_rng(1)
  seen = sorted(model.counts[order - 1])
  contexts = [seen[i] for i in rng.choice(len(seen), 40, replace=False)]
  contexts += [(), (build_lm.BOS,), ("xyzw",), ("tôi", "xyzw")]  # empty, start, unknown
  for context in contexts:
    probabilities = kenlm_probabilities(reference, context, vocabulary)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5), context
    assert probabilities.min() > 0


def test_discounts_follow_the_counts_of_counts():
  # n1..n4 = 10, 4, 2, 1: Y = 10 / 18, D1 = 1 - 2Y 4/10, D2 = 2 - 3Y 2/4, D3+ = 3 - 4Y 1/2.
  counts = [1] * 10 + [2] * 4 + [3] * 2 + [4] + [9] * 5
  y = 10 / 18
  assert build_lm._discounts(counts) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.5,
                                                      3 - 4 * y * 0.5))
  # No count of 4: D3+ = 3 (lmplz accepts it); no count of 3: no discounts.
  assert build_lm._discounts([1, 1, 2, 3]) == pytest.approx((0.5, 0.5, 3.0))
  assert build_lm._discounts([1, 1, 2]) is None
  assert build_lm._discounts([1, 2] + [3] * 10) is None  # D2 = 2 - 3 (1/3) 10 < 0


def read_arpa(text):
  """{n-gram: (log10 probability, log10 backoff)} of ARPA text."""
  entries, order = {}, 0
  for line in text.splitlines():
    if line.startswith("\\") and line.endswith("-grams:"):
      order = int(line[1:].split("-")[0])
    elif order and line and not line.startswith("\\"):
      fields = line.split("\t")
      entries[fields[1]] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
  return entries


# What KenLM's lmplz (built from the kenlm 0.3.0 source) wrote for LMPLZ_TEXT with
# "lmplz -o 3 --discount_fallback": every n-gram with its probability and backoff.
LMPLZ_TEXT = ["tôi ăn cơm", "bạn ăn cơm", "mẹ nấu cơm", "tôi ăn phở", "chúng tôi ăn cơm rồi"]
LMPLZ_ARPA = """\\data\\
ngram 1=12
ngram 2=15
ngram 3=14

\\1-grams:
-1.1962947\t<unk>\t0
0\t<s>\t-0.30103
-1.1962947\t</s>\t0
-1.013364\ttôi\t-0.30103
-1.013364\tăn\t-0.30103
-1.013364\tcơm\t-0.30103
-1.013364\tbạn\t-0.30103
-1.013364\tmẹ\t-0.30103
-1.013364\tnấu\t-0.30103
-1.013364\tphở\t-0.30103
-1.013364\tchúng\t-0.30103
-1.013364\trồi\t-0.30103

\\2-grams:
-0.43752688\tcơm </s>\t0
-0.27423686\tphở </s>\t0
-0.27423686\trồi </s>\t0
-0.6047001\t<s> tôi\t-0.30103
-0.26083535\tchúng tôi\t-0.30103
-0.26083535\ttôi ăn\t-0.30103
-0.26083535\tbạn ăn\t-0.30103
-0.4181434\tăn cơm\t-0.30103
-0.26083535\tnấu cơm\t-0.30103
-0.8283179\t<s> bạn\t-0.30103
-0.8283179\t<s> mẹ\t-0.30103
-0.26083535\tmẹ nấu\t-0.30103
-0.6672556\tăn phở\t-0.30103
-0.8283179\t<s> chúng\t-0.30103
-0.6672556\tcơm rồi\t-0.30103

\\3-grams:
-0.28742686\tăn cơm </s>
-0.16584913\tnấu cơm </s>
-0.115822785\tăn phở </s>
-0.115822785\tcơm rồi </s>
-0.111123055\t<s> chúng tôi
-0.111123055\t<s> tôi ăn
-0.111123055\tchúng tôi ăn
-0.111123055\t<s> bạn ăn
-0.28046787\ttôi ăn cơm
-0.1605791\tbạn ăn cơm
-0.111123055\tmẹ nấu cơm
-0.111123055\t<s> mẹ nấu
-0.5618653\ttôi ăn phở
-0.5618653\tăn cơm rồi

\\end\\
"""
# Some of what lmplz -o 3 wrote for SENTENCES (discounts from the counts of counts).
LMPLZ_SENTENCES = {"<unk>": (-3.3514442, 0.0), "</s>": (-1.0808944, 0.0),
                   "không": (-1.5652512, -0.52160597), "người": (-2.1658974, -0.23369162),
                   "vị với": (-0.8562832, -0.10295743), "hai người": (-0.9295642, -0.1485768),
                   "đợi chú dũng": (-0.6090317, 0.0), "rất đỏ </s>": (-0.21784645, 0.0),
                   "mặn không </s>": (-0.1950865, 0.0)}


def test_the_arpa_is_what_lmplz_writes(tmp_path):
  model = build_lm.KneserNey([s.split() for s in LMPLZ_TEXT], 3)
  assert model.fallback_orders == [2, 3]  # too little text for their discounts
  assert "fallback" in model.summary()
  model.write_arpa(str(tmp_path / "tiny.arpa"))
  written = read_arpa((tmp_path / "tiny.arpa").read_text(encoding="utf-8"))
  expected = read_arpa(LMPLZ_ARPA)
  assert written.keys() == expected.keys()
  for gram, values in expected.items():
    assert written[gram] == pytest.approx(values, abs=1e-6), gram

  build_lm.KneserNey(SENTENCES, 3).write_arpa(str(tmp_path / "lm.arpa"))
  written = read_arpa((tmp_path / "lm.arpa").read_text(encoding="utf-8"))
  assert len(written) == 469 + 1864 + 2594  # lmplz's n-gram counts
  for gram, values in LMPLZ_SENTENCES.items():
    assert written[gram] == pytest.approx(values, abs=1e-6), gram


def test_too_little_text_still_sums_to_one(tmp_path):
  model = build_lm.KneserNey([s.split() for s in LMPLZ_TEXT], 3)
  model.write_arpa(str(tmp_path / "lm.arpa"))
  reference = kenlm_model(tmp_path / "lm.arpa")
  vocabulary = [gram[0] for gram in model.counts[1]]
  for context in [(build_lm.BOS,), (build_lm.BOS, "tôi"), ("ăn",), ("tôi", "ăn"), ()]:
    assert kenlm_probabilities(reference, context, vocabulary).sum() == pytest.approx(1, abs=1e-5)
  # "cơm" follows "tôi ăn" more often than "phở" does.
  assert (model.log10_probability(["<s>", "tôi", "ăn"], "cơm")
          > model.log10_probability(["<s>", "tôi", "ăn"], "phở"))


def test_bad_text_and_orders_are_refused():
  with pytest.raises(ValueError, match="order must be 2 or more"):
    build_lm.KneserNey(SENTENCES, 1)
  with pytest.raises(ValueError, match="reserved"):
    build_lm.KneserNey([["tôi", "</s>"]], 3)
  with pytest.raises(ValueError, match="no sentence"):
    build_lm.KneserNey([], 3)


MAN_PAGE = r""".\" -*- coding: UTF-8 -*-
.TH CP 1 "Tháng 9 năm 2022" "GNU coreutils 9.1"
.SH "MÔ TẢ"
Sao chép \fINGUỒN\fP tới ĐÍCH hoặc nhiều tập tin
tới thư mục.
.TP
\fB\-f\fP, \fB\-\-force\fP
nếu không mở được tập tin đích thì xóa nó
.PP
Không thể mở tệp tin này, vui lòng kiểm tra lại quyền truy cập.
"""
GUIDE = """Bạn nên có động cơ để làm việc một mình.

   * upstream author: người đã tạo ra chương trình
     gốc.
"""


def test_documentation_sentences_join_wrapped_lines_and_leave_out_gettext_ones(tmp_path):
  man = tmp_path / "man" / "man1"
  man.mkdir(parents=True)
  with gzip.open(man / "cp.1.gz", "wt", encoding="utf-8") as f:
    f.write(MAN_PAGE)
  with gzip.open(tmp_path / "guide.txt.gz", "wt", encoding="utf-8") as f:
    f.write(GUIDE)
  locale = tmp_path / "locale"
  locale.mkdir()
  # A gettext sentence: the documentation run that holds it is left out.
  write_mo(locale / "coreutils.mo", {"Cannot open this file": "Không thể mở tệp tin này"})
  got = texts.documentation_sentences(str(tmp_path / "man"), str(tmp_path / "guide.txt.gz"),
                                      str(locale))
  assert got == sorted([
      "sao chép nguồn tới đích hoặc nhiều tập tin tới thư mục",  # wrapped line joined
      "nếu không mở được tập tin đích thì xóa nó",
      "vui lòng kiểm tra lại quyền truy cập",
      "bạn nên có động cơ để làm việc một mình",
      "người đã tạo ra chương trình gốc",  # after the English words
  ])
  # Without catalogues nothing is left out.
  assert "không thể mở tệp tin này" in texts.documentation_sentences(
      str(tmp_path / "man"), str(tmp_path / "guide.txt.gz"), str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError, match="manpages-vi and maint-guide-vi"):
    texts.documentation_sentences(str(tmp_path / "none"), str(tmp_path / "none.gz"))


def test_cli_writes_an_arpa_kenlm_reads_and_names_a_missing_file(tmp_path):
  corpus = tmp_path / "text.txt"
  corpus.write_text("\n".join(" ".join(s) for s in SENTENCES) + "\n\n", encoding="utf-8")
  out = tmp_path / "lm" / "lm.arpa"
  result = run_module("data_prep.build_lm", f"--output={out}", f"--text_files={corpus}",
                      "--order=3")
  assert f"{len(SENTENCES)} sentences" in result.stdout and "3-grams" in result.stdout
  model = kenlm_model(out)
  assert model.order == 3
  assert math.isfinite(model.score("tôi có một con mèo"))

  missing = run_module("data_prep.build_lm", f"--output={out}",
                       f"--text_files={tmp_path / 'nope.txt'}", check=False)
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1] == (
      f"error: --text_files: {tmp_path / 'nope.txt'}: no such file")
  bad_order = run_module("data_prep.build_lm", f"--output={out}", f"--text_files={corpus}",
                         "--order=1", check=False)
  assert bad_order.returncode == 2 and "error: the order must be 2 or more" in bad_order.stderr


def test_help_lists_the_flags():
  result = run_module("data_prep.build_lm", "--help", check=False)
  for flag in ("--output", "--order", "--text_files"):
    assert flag in result.stdout
