"""CTC decoding (greedy, beam search), CTC forced alignment, word times and CTM files.

Conventions: CTC outputs are ``logits`` float ``[batch, frames, vocabulary]``
with valid lengths ``logit_length`` int ``[batch]`` (frames past a length are
padding and ignored); the blank is ``kws_tf.text.BLANK_INDEX`` (0) unless
``blank`` says otherwise. Decoders return token ids without blanks, one list
per example.

Forced alignment is the Viterbi best path of the standard CTC topology: for
tokens ``t1 .. tL`` the extended states are ``blank t1 blank t2 ... tL
blank``; a path starts in the first blank or ``t1``, at each frame stays in
its state, moves to the next one, or skips a blank between two *different*
tokens, and ends in ``tL`` or the last blank. Two equal neighbouring tokens
need a blank frame between them, so ``L`` tokens with ``R`` such repeats need
at least ``L + R`` frames. A token's span is the frames its state occupies
(``start_frame`` to ``end_frame``, both inclusive). A frame of the output
covers ``frame_seconds`` of audio (feature hop times the model's time
subsampling), so frame ``t`` starts at ``t * frame_seconds``.

CTM lines are ``<utterance> 1 <start> <duration> <word>``, times in seconds
with 3 decimals, as ``data_prep.corpora.read_ctm`` reads them.
"""
import os
from typing import List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np
import tensorflow as tf

from kws_tf import text as text_lib


class TokenSpan(NamedTuple):
  """Frames of one token in a forced alignment; both ends inclusive."""
  token: int
  start_frame: int
  end_frame: int


class WordTime(NamedTuple):
  """One aligned word; times in seconds from the start of the utterance."""
  word: str
  start: float
  end: float


def greedy_decode(logits, logit_length, blank: int = text_lib.BLANK_INDEX) -> List[List[int]]:
  """Best-path decoding: per frame argmax, merge repeats, drop blanks.

  Args:
    logits: float ``[B, T, V]`` logits or log-probabilities.
    logit_length: int ``[B]`` valid frames of each example.
    blank: index of the blank class.

  Returns:
    ``B`` lists of token ids.
  """
  logits, lengths = _check_batch(logits, logit_length)
  best = np.argmax(logits, axis=-1)
  decoded = []
  for path, length in zip(best, lengths):
    path = path[:length]
    new = np.ones(len(path), dtype=bool)
    new[1:] = path[1:] != path[:-1]
    decoded.append(path[new & (path != blank)].tolist())
  return decoded


def beam_search_decode(logits, logit_length, beam_width: int = 8,
                       blank: int = text_lib.BLANK_INDEX) -> List[List[int]]:
  """Prefix beam search with ``tf.nn.ctc_beam_search_decoder``: the most probable labelling.

  TensorFlow's decoder takes the *last* class as the blank and applies a
  softmax itself; the classes are reordered so that ``blank`` is last and the
  decoded ids mapped back. Arguments and result as :func:`greedy_decode`.
  """
  logits, lengths = _check_batch(logits, logit_length)
  batch, _, vocabulary = logits.shape
  # TensorFlow class k is our class order[k]; our blank becomes the last one.
  order = np.array([c for c in range(vocabulary) if c != blank] + [blank])
  time_major = tf.transpose(tf.gather(tf.constant(logits, tf.float32), order, axis=-1), [1, 0, 2])
  decoded, _ = tf.nn.ctc_beam_search_decoder(time_major, tf.constant(lengths, tf.int32),
                                             beam_width=beam_width, top_paths=1)
  rows = decoded[0].indices.numpy()[:, 0]
  ids = order[decoded[0].values.numpy()]
  return [ids[rows == b].tolist() for b in range(batch)]


def best_path(log_probs, tokens: Sequence[int],
              blank: int = text_lib.BLANK_INDEX) -> Tuple[np.ndarray, float]:
  """The most probable CTC path that collapses to ``tokens`` (module docstring).

  Args:
    log_probs: float ``[T, V]`` log-probabilities of one utterance's valid
      frames (unnormalised logits give the same path, another score).
    tokens: int ``[L]`` transcript ids, no blanks.
    blank: index of the blank class.

  Returns:
    The path, int64 ``[T]`` class per frame, and its log-probability (the sum
    of ``log_probs`` along it). Raises ValueError when the tokens cannot fit
    in ``T`` frames or every path has probability zero.
  """
  states, score, labels = _viterbi(log_probs, tokens, blank)
  return labels[states], score


def forced_align(log_probs, tokens: Sequence[int],
                 blank: int = text_lib.BLANK_INDEX) -> List[TokenSpan]:
  """Frames of each token on the :func:`best_path`: ``L`` spans, in transcript order."""
  states, _, _ = _viterbi(log_probs, tokens, blank)
  # Odd states are tokens: state 2 * i + 1 is token i; the path visits each.
  frames = np.flatnonzero(states % 2 == 1)
  token_index = states[frames] // 2
  positions = np.arange(len(tokens))
  starts = frames[np.searchsorted(token_index, positions, side="left")]
  ends = frames[np.searchsorted(token_index, positions, side="right") - 1]
  return [TokenSpan(int(t), int(s), int(e)) for t, s, e in zip(tokens, starts, ends)]


def word_times(alignment: Sequence[TokenSpan], vocabulary: text_lib.Vocabulary,
               frame_seconds: float, space_index: int = 1) -> List[WordTime]:
  """Words of a forced alignment with their times in seconds.

  Words are the runs of tokens between space tokens (``space_index``). A
  word starts at its first token's ``start_frame * frame_seconds`` and ends
  at ``(end_frame + 1) * frame_seconds`` of its last token.
  """
  words, current = [], []
  for span in alignment:
    if span.token != space_index:
      current.append(span)
    elif current:
      words.append(current)
      current = []
  if current:
    words.append(current)
  return [WordTime(vocabulary.decode(span.token for span in word),
                   word[0].start_frame * frame_seconds,
                   (word[-1].end_frame + 1) * frame_seconds)
          for word in words]


def ctm_lines(utterance_id: str, words: Sequence[WordTime]) -> List[str]:
  """CTM lines ``<utterance> 1 <start> <duration> <word>``, 3 decimals, no newlines.

  Start and end are rounded to milliseconds first, so start + duration is
  the rounded end.
  """
  if not utterance_id or len(utterance_id.split()) != 1:
    raise ValueError(f"an utterance id must be one non-empty field: {utterance_id!r}")
  lines = []
  for word in words:
    if not word.word or len(word.word.split()) != 1:
      raise ValueError(f"{utterance_id}: a CTM word must be one non-empty field: {word.word!r}")
    start, end = round(word.start, 3), round(word.end, 3)
    lines.append(f"{utterance_id} 1 {start:.3f} {end - start:.3f} {word.word}")
  return lines


def write_ctm(path: str, alignments: Mapping[str, Sequence[WordTime]]) -> None:
  """Writes the words of every utterance (id -> words) to one CTM file, atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for utterance_id, words in alignments.items():
      for line in ctm_lines(utterance_id, words):
        f.write(line + "\n")
  os.replace(tmp, path)


def _check_batch(logits, logit_length) -> Tuple[np.ndarray, np.ndarray]:
  """numpy ``[B, T, V]`` logits and int ``[B]`` lengths, checked."""
  logits = np.asarray(logits)
  lengths = np.asarray(logit_length).astype(np.int64)
  if logits.ndim != 3:
    raise ValueError(f"logits must be [batch, frames, vocabulary], got shape {logits.shape}")
  if lengths.shape != logits.shape[:1]:
    raise ValueError(f"logit_length {lengths.shape} does not match logits {logits.shape}")
  if lengths.size and (lengths.min() < 0 or lengths.max() > logits.shape[1]):
    raise ValueError(f"logit_length must be in [0, {logits.shape[1]}], got {lengths.tolist()}")
  return logits, lengths


def _viterbi(log_probs, tokens: Sequence[int], blank: int) -> Tuple[np.ndarray, float, np.ndarray]:
  """Viterbi over the extended states: (state per frame int64 ``[T]``, path
  log-probability, class of each state int64 ``[2L + 1]``)."""
  log_probs = np.asarray(log_probs, dtype=np.float64)
  tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
  if log_probs.ndim != 2:
    raise ValueError(f"log_probs must be [frames, vocabulary], got shape {log_probs.shape}")
  num_frames, vocabulary = log_probs.shape
  if num_frames == 0:
    raise ValueError("log_probs has no frames")
  if not 0 <= blank < vocabulary:
    raise ValueError(f"blank {blank} out of range for a vocabulary of {vocabulary}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= vocabulary or (tokens == blank).any()):
    raise ValueError(f"tokens must be in [0, {vocabulary}) and not the blank {blank}: "
                     f"{tokens.tolist()}")
  repeats = int(np.sum(tokens[1:] == tokens[:-1]))
  if num_frames < len(tokens) + repeats:
    raise ValueError(f"{len(tokens)} tokens with {repeats} repeated neighbours need at least "
                     f"{len(tokens) + repeats} frames, got {num_frames}")
  labels = np.full(2 * len(tokens) + 1, blank, dtype=np.int64)
  labels[1::2] = tokens
  num_states = len(labels)
  # A token state may be entered from two states back, skipping the blank
  # between it and the previous token, when the two tokens differ.
  can_skip = np.zeros(num_states, dtype=bool)
  can_skip[3::2] = tokens[1:] != tokens[:-1]
  emissions = log_probs[:, labels]  # [T, S]
  score = np.full(num_states, -np.inf)
  score[:2] = emissions[0, :2]
  # back[t, s]: how many states back the best path into s at frame t came from.
  back = np.zeros((num_frames, num_states), dtype=np.int8)
  candidates = np.full((3, num_states), -np.inf)
  for t in range(1, num_frames):
    candidates[0] = score
    candidates[1, 1:] = score[:-1]
    candidates[2, 2:] = np.where(can_skip[2:], score[:-2], -np.inf)
    back[t] = np.argmax(candidates, axis=0)
    score = candidates[back[t], np.arange(num_states)] + emissions[t]
  state = num_states - 1
  if num_states > 1 and score[num_states - 2] > score[state]:
    state = num_states - 2
  best_score = float(score[state])
  if best_score == -np.inf:
    raise ValueError("every CTC path of the transcript has probability zero")
  states = np.empty(num_frames, dtype=np.int64)
  for t in range(num_frames - 1, -1, -1):
    states[t] = state
    state -= int(back[t, state])
  return states, best_score, labels
