"""kws_tf.evaluation.decoding: CTC decoders, forced alignment against brute force, CTM output."""
import copy
import itertools

import numpy as np
import pytest

from data_prep import corpora
from kws_tf import text as text_lib
from kws_tf.evaluation import decoding


def log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_greedy_decode_by_hand():
  # Per-frame argmax: example 0 is 1 1 0 1 2 -> [1, 1, 2]; example 1 is
  # 2 2 2 | 1 1 with only 3 valid frames -> [2].
  best = np.array([[1, 1, 0, 1, 2], [2, 2, 2, 1, 1]])
  logits = np.eye(3)[best] * 5.0 - 1.0  # [2, 5, 3]
  assert decoding.greedy_decode(logits, [5, 3]) == [[1, 1, 2], [2]]
  # Another blank: class 1 is dropped, class 0 kept.
  assert decoding.greedy_decode(logits, [5, 3], blank=1) == [[0, 2], [2]]
  assert decoding.greedy_decode(logits, [0, 1]) == [[], [2]]


@pytest.mark.parametrize("blank", [0, 2, 5])
def test_beam_search_agrees_with_greedy_when_peaky(blank):
  rng = np.random.default_rng(1)
  best = rng.integers(0, 6, size=(3, 20))
  logits = 10.0 * np.eye(6)[best] + rng.normal(0, 0.1, size=(3, 20, 6))
  lengths = [20, 13, 5]
  greedy = decoding.greedy_decode(logits, lengths, blank=blank)
  assert decoding.beam_search_decode(logits, lengths, blank=blank) == greedy
  assert all(blank not in ids for ids in greedy)
  assert sum(len(ids) for ids in greedy) > 10


@pytest.mark.parametrize("blank, a, b", [(0, 1, 2), (1, 0, 2), (2, 0, 1), (2, 1, 0)])
def test_beam_search_beats_greedy_and_maps_the_blank(blank, a, b):
  # Two frames with P(blank) = 0.5, P(a) = 0.3, P(b) = 0.2 each. The best
  # path is blank blank -> "" (P = 0.25), but "a" sums the paths a a, a -,
  # - a: 0.09 + 0.15 + 0.15 = 0.39, more than any other labelling
  # ("b": 0.24, "ab" and "ba": 0.06).
  probabilities = np.zeros(3)
  probabilities[[blank, a, b]] = [0.5, 0.3, 0.2]
  logits = np.log(np.tile(probabilities, (1, 2, 1)))
  assert decoding.greedy_decode(logits, [2], blank=blank) == [[]]
  assert decoding.beam_search_decode(logits, [2], beam_width=4, blank=blank) == [[a]]


def test_decoders_check_shapes():
  with pytest.raises(ValueError, match="logits must be"):
    decoding.greedy_decode(np.zeros((4, 3)), [4])
  with pytest.raises(ValueError, match="logit_length must be in"):
    decoding.beam_search_decode(np.zeros((1, 4, 3)), [5])


def collapse(path, blank):
  """CTC collapse of a frame path: merge repeats, drop blanks."""
  return tuple(label for i, label in enumerate(path)
               if label != blank and (i == 0 or label != path[i - 1]))


def spans_of_path(path, blank):
  """(token, first frame, last frame) of each run of one non-blank label."""
  spans = []
  for t, label in enumerate(path):
    if label == blank:
      continue
    if t > 0 and path[t - 1] == label:
      spans[-1] = (label, spans[-1][1], t)
    else:
      spans.append((label, t, t))
  return spans


def test_forced_align_matches_brute_force():
  rng = np.random.default_rng(0)
  feasible = 0
  for _ in range(60):
    num_frames = int(rng.integers(1, 8))
    vocabulary = 3 if num_frames == 7 else 4
    blank = int(rng.integers(0, vocabulary))
    labels = [c for c in range(vocabulary) if c != blank]
    tokens = [int(rng.choice(labels)) for _ in range(int(rng.integers(0, num_frames + 1)))]
    log_probs = log_softmax(rng.normal(0, 2, size=(num_frames, vocabulary)))
    paths = np.array(list(itertools.product(range(vocabulary), repeat=num_frames)))
    matching = [p for p in paths if collapse(list(p), blank) == tuple(tokens)]
    if not matching:
      with pytest.raises(ValueError, match="need at least"):
        decoding.forced_align(log_probs, tokens, blank=blank)
      continue
    feasible += 1
    matching = np.array(matching)
    path_scores = log_probs[np.arange(num_frames), matching].sum(axis=1)
    expected = matching[np.argmax(path_scores)]
    path, score = decoding.best_path(log_probs, tokens, blank=blank)
    np.testing.assert_array_equal(path, expected)
    assert score == pytest.approx(path_scores.max())
    assert decoding.forced_align(log_probs, tokens, blank=blank) == \
        spans_of_path(list(expected), blank)
  assert feasible >= 30


def test_forced_align_long_transcript():
  # 100 tokens (201 states), each 2 frames then a blank frame, on a peaky output.
  rng = np.random.default_rng(2)
  tokens = rng.integers(1, 30, size=100)
  frame_ids = np.stack([tokens, tokens, np.zeros_like(tokens)], axis=1).reshape(-1)
  log_probs = log_softmax(6.0 * np.eye(30)[frame_ids] + rng.normal(0, 0.1, (300, 30)))
  expected = [(int(t), 3 * i, 3 * i + 1) for i, t in enumerate(tokens)]
  assert decoding.forced_align(log_probs, tokens) == expected


def test_forced_align_repeats_need_a_blank():
  log_probs = log_softmax(np.zeros((3, 3)))
  assert decoding.forced_align(log_probs, [1, 1], blank=0) == [(1, 0, 0), (1, 2, 2)]
  with pytest.raises(ValueError, match="2 tokens with 1 repeated neighbours need at least "
                                       "3 frames, got 2"):
    decoding.forced_align(log_probs[:2], [1, 1])
  assert decoding.forced_align(log_probs[:2], [1, 2]) == [(1, 0, 0), (2, 1, 1)]


def test_forced_align_edge_cases():
  log_probs = log_softmax(np.array([[0.0, 1.0, 2.0]] * 4))
  path, _ = decoding.best_path(log_probs, [])
  np.testing.assert_array_equal(path, [0, 0, 0, 0])
  assert decoding.forced_align(log_probs, []) == []
  with pytest.raises(ValueError, match="not the blank"):
    decoding.forced_align(log_probs, [1, 0])
  with pytest.raises(ValueError, match="no frames"):
    decoding.forced_align(log_probs[:0], [])
  impossible = log_probs.copy()
  impossible[:, 1] = -np.inf
  with pytest.raises(ValueError, match="probability zero"):
    decoding.forced_align(impossible, [1])


def test_word_times_and_ctm_round_trip(tmp_path):
  vocabulary = text_lib.Vocabulary.from_texts(["có không"])
  tokens = vocabulary.encode("có không")
  ids = {symbol: i for i, symbol in enumerate(vocabulary.symbols)}
  blank = text_lib.BLANK
  # A peaky output whose best path is: - c ó ó - ␣ k h ô n g g -
  path = [blank, "c", "ó", "ó", blank, " ", "k", "h", "ô", "n", "g", "g", blank]
  frame_ids = [ids[c] for c in path]
  log_probs = log_softmax(8.0 * np.eye(len(vocabulary))[frame_ids])
  alignment = decoding.forced_align(log_probs, tokens)
  assert [(s.start_frame, s.end_frame) for s in alignment] == [
      (1, 1), (2, 3), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (10, 11)]
  words = decoding.word_times(alignment, vocabulary, frame_seconds=0.04)
  assert [w.word for w in words] == ["có", "không"]
  assert [t for w in words for t in (w.start, w.end)] == pytest.approx([0.04, 0.16, 0.24, 0.48])
  lines = decoding.ctm_lines("VIVOSDEV01_R001", words)
  assert lines == ["VIVOSDEV01_R001 1 0.040 0.120 có", "VIVOSDEV01_R001 1 0.240 0.240 không"]

  path = tmp_path / "align.ctm"
  decoding.write_ctm(str(path), {"VIVOSDEV01_R001": words, "utt2": words[1:]})
  assert not (tmp_path / "align.ctm.tmp").exists()
  read = corpora.read_ctm([str(path)])
  assert sorted(read) == ["VIVOSDEV01_R001", "utt2"]
  assert [w.word for w in read["VIVOSDEV01_R001"]] == ["có", "không"]
  assert [t for w in read["VIVOSDEV01_R001"] for t in (w.start, w.end)] == \
      pytest.approx([0.04, 0.16, 0.24, 0.48])
  assert [w.word for w in read["utt2"]] == ["không"]


def test_word_times_skips_empty_words():
  vocabulary = text_lib.Vocabulary.from_texts(["ab"])
  space, a, b = 1, vocabulary.encode("a")[0], vocabulary.encode("b")[0]
  alignment = [decoding.TokenSpan(space, 0, 1), decoding.TokenSpan(a, 2, 2),
               decoding.TokenSpan(space, 3, 3), decoding.TokenSpan(space, 4, 4),
               decoding.TokenSpan(b, 5, 6), decoding.TokenSpan(a, 7, 7),
               decoding.TokenSpan(space, 8, 9)]
  assert decoding.word_times(alignment, vocabulary, frame_seconds=0.5) == [
      ("a", 1.0, 1.5), ("ba", 2.5, 4.0)]


def test_ctm_lines_reject_fields_with_spaces():
  with pytest.raises(ValueError, match="utterance id"):
    decoding.ctm_lines("utt 1", [])
  with pytest.raises(ValueError, match="CTM word"):
    decoding.ctm_lines("utt1", [decoding.WordTime("có không", 0.0, 1.0)])


# ------------------------------------------------------- beam search with a language model

from data_prep import build_lm  # noqa: E402
from kws_tf.evaluation import runner  # noqa: E402
from kws_tf.evaluation import report  # noqa: E402

ABC = text_lib.Vocabulary([text_lib.BLANK, " ", "a", "b"])
VIETNAMESE = text_lib.Vocabulary.read("vietnamese")
LM_SENTENCES = ["tôi ăn cơm", "bạn ăn cơm", "mẹ nấu cơm", "tôi ăn phở", "chúng tôi ăn cơm rồi"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  """A 3-gram LM of five sentences, read by KenLM."""
  path = tmp_path_factory.mktemp("lm") / "tiny.arpa"
  build_lm.KneserNey([s.split() for s in LM_SENTENCES], 3).write_arpa(str(path))
  return decoding.LanguageModel(str(path))


def ctc_log_probability(log_probs, labels):
  """log P(labels | log_probs [T, V]) by the CTC forward algorithm (blank 0)."""
  extended = [0]
  for label in labels:
    extended += [label, 0]
  alpha = np.full(len(extended), -np.inf)
  alpha[0] = log_probs[0, 0]
  if len(extended) > 1:
    alpha[1] = log_probs[0, extended[1]]
  for frame in log_probs[1:]:
    previous = alpha.copy()
    for s in range(len(extended)):
      paths = [previous[s]] + ([previous[s - 1]] if s >= 1 else [])
      if s >= 2 and extended[s] != 0 and extended[s] != extended[s - 2]:
        paths.append(previous[s - 2])
      alpha[s] = np.logaddexp.reduce(paths) + frame[extended[s]]
  return np.logaddexp.reduce(alpha[-2:]) if len(extended) > 1 else alpha[-1]


def test_beam_lm_without_lm_finds_the_most_probable_labelling():
  # 2 letters, up to 5 frames: at most 63 labellings, so a beam of 64 searches all of
  # them; the result must be the argmax of the exact CTC probability over all labellings.
  rng = np.random.default_rng(2)
  vocabulary = text_lib.Vocabulary([text_lib.BLANK, "a", "b"])
  for _ in range(30):
    frames = int(rng.integers(1, 6))
    logits = rng.normal(0, 1.5, size=(1, frames, 3))
    log_probs = log_softmax(logits[0])
    labellings = [list(ids) for n in range(frames + 1)
                  for ids in itertools.product([1, 2], repeat=n)]
    best = max(labellings, key=lambda ids: ctc_log_probability(log_probs, ids))
    found = decoding.beam_lm_decode(logits, [frames], vocabulary, None, beam_width=64,
                                    word_bonus=0.0, token_min_logp=-np.inf)[0]
    assert ctc_log_probability(log_probs, found) == pytest.approx(
        ctc_log_probability(log_probs, best), abs=1e-9)


def test_beam_lm_with_lm_weight_0_equals_beam_search(tiny_lm):
  """With weight 0, no word bonus and every character tried, beam_lm ranks prefixes by
  their CTC probability alone, as TensorFlow's prefix beam search does: the same best
  labelling on random logits. (With beams of 2 or 4, 2 of 480 such cases differed: the
  two searches prune ties and near-ties differently, and each was the better one once.)
  No space in the vocabulary: beam_lm merges labellings that differ only by leading,
  repeated or trailing spaces, which TensorFlow's search keeps apart."""
  rng = np.random.default_rng(0)
  vocabulary = text_lib.Vocabulary([text_lib.BLANK, "a", "b", "c"])
  for _ in range(30):
    frames = int(rng.integers(1, 15))
    logits = rng.normal(0, 1.5, size=(3, frames, 4))
    lengths = rng.integers(0, frames + 1, size=3)
    expected = decoding.beam_search_decode(logits, lengths, beam_width=16)
    for lm in (None, tiny_lm):
      assert decoding.beam_lm_decode(logits, lengths, vocabulary, lm, beam_width=16,
                                     lm_weight=0.0, word_bonus=0.0,
                                     token_min_logp=-np.inf) == expected


def test_beam_lm_finds_the_most_probable_text_spaces_merged():
  # Labellings over " ", "a", "b" that differ only by leading, repeated or trailing
  # spaces are one text. Up to 4 frames there are at most 121 labellings, so a beam of
  # 256 searches all of them; the result must be the text of the largest summed CTC
  # probability, written with single spaces between words.
  rng = np.random.default_rng(5)
  for _ in range(40):
    frames = int(rng.integers(1, 5))
    logits = rng.normal(0, 1.5, size=(1, frames, 4))
    logits[0, :, 1] += 1.0  # spaces likely, so that doubled ones compete
    log_probs = log_softmax(logits[0])
    texts = {}
    for n in range(frames + 1):
      for ids in itertools.product([1, 2, 3], repeat=n):
        text = " ".join(ABC.decode(ids).split())
        texts[text] = np.logaddexp(texts.get(text, -np.inf),
                                   ctc_log_probability(log_probs, list(ids)))
    found = ABC.decode(decoding.beam_lm_decode(logits, [frames], ABC, None, beam_width=256,
                                               word_bonus=0.0, token_min_logp=-np.inf)[0])
    assert found == " ".join(found.split())
    assert texts[found] == pytest.approx(max(texts.values()), abs=1e-9)


def frames_of(symbols, vocabulary=VIETNAMESE):
  """Log-probabilities ``[1, T, V]``: each item a symbol (certain) or {symbol: p}, a
  certain blank after each."""
  rows = []
  for item in symbols:
    choices = item if isinstance(item, dict) else {item: 1.0}
    row = np.full(len(vocabulary), 1e-6)
    for symbol, p in choices.items():
      row[vocabulary.symbols.index(symbol)] = p
    blank = np.full(len(vocabulary), 1e-6)
    blank[0] = 1.0
    rows += [row / row.sum(), blank / blank.sum()]
  return np.log(np.array(rows))[np.newaxis]


# "tôi ăn c?m" with "ớ" a little likelier than "ơ": "cớm" is no word of the LM, "cơm" is.
AMBIGUOUS = list("tôi ăn c") + [{"ớ": 0.55, "ơ": 0.45}, "m"]


def test_a_tiny_lm_steers_an_ambiguous_word_to_the_lm_word(tiny_lm):
  log_probs = frames_of(AMBIGUOUS)
  length = [log_probs.shape[1]]
  decode = VIETNAMESE.decode
  assert decode(decoding.greedy_decode(log_probs, length)[0]) == "tôi ăn cớm"
  assert decode(decoding.beam_search_decode(log_probs, length)[0]) == "tôi ăn cớm"
  assert decode(decoding.beam_lm_decode(log_probs, length, VIETNAMESE, tiny_lm, 8, 0.0,
                                        0.0)[0]) == "tôi ăn cớm"
  assert decode(decoding.beam_lm_decode(log_probs, length, VIETNAMESE, tiny_lm, 8, 0.5,
                                        1.0)[0]) == "tôi ăn cơm"
  # The LM scores words when they end: "cơm" wins at the end of the utterance too.
  assert decode(decoding.CtcDecoder("beam_lm", 8, tiny_lm).decode(
      log_probs, length, VIETNAMESE)[0]) == "tôi ăn cơm"


def test_a_hotword_steers_an_ambiguous_word_and_must_be_spellable():
  log_probs = frames_of(AMBIGUOUS)
  length = [log_probs.shape[1]]
  found = decoding.beam_lm_decode(log_probs, length, VIETNAMESE, None, 8, word_bonus=0.0,
                                  hotwords=[("ăn", "cơm")], hotword_weight=1.0)
  assert VIETNAMESE.decode(found[0]) == "tôi ăn cơm"
  decoder = decoding.CtcDecoder("beam_lm", 8, None, hotwords=(("cơm", "xyz"),),
                                hotwords_source="--hotwords=h.txt")
  with pytest.raises(ValueError, match=r"--hotwords=h.txt: 'cơm xyz' has characters outside "
                                       r"the model's vocabulary: \['z'\]"):
    decoder.decode(log_probs, length, VIETNAMESE)


def test_language_model_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.arpa: no such language model file"):
    decoding.LanguageModel(str(tmp_path / "nope.arpa"))
  bad = tmp_path / "bad.arpa"
  bad.write_text("hello\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.arpa: KenLM cannot read it .*not \\data\\"):
    decoding.LanguageModel(str(bad))


def test_score_reports_greedy_beam_and_beam_lm(tiny_lm):
  log_probs = frames_of(AMBIGUOUS)[0]
  reference = VIETNAMESE.encode("tôi ăn cơm")
  predictions = {"ids": ["u1", "u2"], "labels": [reference, reference],
                 "logits": [log_probs, log_probs[:-2]], "loss": 1.0}
  results = runner.score("ctc", predictions, vocabulary=VIETNAMESE, beam_width=4,
                         lm_decoder=decoding.CtcDecoder("beam_lm", 4, tiny_lm))
  assert results["examples"][0]["greedy"] == "tôi ăn cớm"
  assert results["examples"][0]["beam_lm"] == "tôi ăn cơm"
  assert results["beam_lm_wer"] < results["beam_wer"] == results["wer"]
  assert results["lm"]["path"] == tiny_lm.path and results["lm"]["lm_weight"] == 0.5
  results.update(model="m", model_dir="/x/run", role="student", parameters=10, task="ctc")
  header, _, row = report.side_by_side([results]).splitlines()
  assert header.endswith("| beam+LM CER | beam+LM WER |")
  assert row.endswith(f"| {results['beam_lm_cer']:.4f} | {results['beam_lm_wer']:.4f} |")


def test_a_word_no_lm_word_begins_with_ranks_low_before_it_ends(tiny_lm):
  # One prefix kept per frame: "cớ" beats "cơ" on the CTC, and only the look-ahead (no
  # word of the LM begins with "cớ", so it can only end as <unk>) keeps "cơ" until "m".
  assert "cơ" in tiny_lm.prefixes and "cớ" not in tiny_lm.prefixes
  assert tiny_lm.prefixes >= set(" ".join(LM_SENTENCES).split())
  log_probs = frames_of(AMBIGUOUS)
  length = [log_probs.shape[1]]
  found = decoding.beam_lm_decode(log_probs, length, VIETNAMESE, tiny_lm, beam_width=1)
  assert VIETNAMESE.decode(found[0]) == "tôi ăn cơm"
  # Without the look-ahead (an LM whose vocabulary is not listed, as a KenLM binary's)
  # the single beam keeps "cớm", and the LM at the word's end comes too late.
  unlisted = copy.copy(tiny_lm)
  unlisted.prefixes = None
  found = decoding.beam_lm_decode(log_probs, length, VIETNAMESE, unlisted, beam_width=1)
  assert VIETNAMESE.decode(found[0]) == "tôi ăn cớm"
