"""kws_tf.evaluation.decoding: CTC decoders, forced alignment against brute force, CTM output."""
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
