"""CTC decoding (greedy, beam search, beam search with a word language model),
CTC forced alignment, word times and CTM files.

Conventions: CTC outputs are ``logits`` float ``[batch, frames, vocabulary]``
with valid lengths ``logit_length`` int ``[batch]`` (frames past a length are
padding and ignored); the blank is ``kws_tf.text.BLANK_INDEX`` (0) unless
``blank`` says otherwise. Decoders return token ids without blanks, one list
per example.

The decoders (``DECODERS``, ``CtcDecoder`` runs one): ``greedy`` takes the
best path; ``beam`` the most probable labelling found by prefix beam search
(TensorFlow's); ``beam_lm`` (:func:`beam_lm_decode`) a prefix beam search of
its own whose prefixes are ranked by

  ln P_ctc(prefix) + lm_weight ln P_lm(words) + word_bonus |words| + hotword bonuses

where the words are the completed runs of characters between spaces (for
Vietnamese: syllables, as the LM's words), ``P_lm`` a KenLM n-gram model
(``LanguageModel``; ``kws-build-lm`` writes one) scoring each word when the
space after it (or the end) arrives, and the last word and ``</s>`` are
scored at the end of the utterance. A word under way that no word of the LM
begins with is ranked as the unknown word it must become (its ``<unk>``
score), before it ends. Its prefixes are texts: a space at the start, after a
space or at the end separates no word, so labellings that differ only by such
spaces are one prefix (their probabilities add up) and the result has single
spaces between words and none around them.

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
import math
import os
import sys
import tempfile
import unicodedata
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from kws_tf import text as text_lib

DECODERS = ("greedy", "beam", "beam_lm")
# beam_lm tries at a frame only the characters at least this likely (log
# probability; -5 is 0.0067, pyctcdecode's default), and always the most likely
# one: on the undertrained model of benchmarks/README.md (flat outputs), -10
# decoded about 10 times slower than -5 for about the same error rates.
TOKEN_MIN_LOGP = -5.0
_LN10 = math.log(10.0)
_KENLM_ADVICE = "Loading the LM will be faster if you build a binary file."


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
  import tensorflow as tf
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


class LanguageModel:
  """A word n-gram language model read by KenLM: an ARPA file or a KenLM binary.

  Scores are log10 probabilities; a state is KenLM's (the words that still
  matter as context). A word outside the model's vocabulary is ``<unk>``.
  ``prefixes`` holds every beginning of a word of an ARPA file's vocabulary
  (read from its 1-grams, NFC); None for a binary, whose vocabulary KenLM's
  Python API does not list. Raises FileNotFoundError when ``path`` does not
  exist and ValueError when KenLM cannot read it (or the ``kenlm`` package is
  missing), naming ``path``.
  """

  def __init__(self, path: str):
    try:
      import kenlm
    except ImportError:
      raise ValueError(f"{path}: reading a language model needs the kenlm package "
                       "(pip install kenlm)") from None
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such language model file")
    config = kenlm.Config()
    config.show_progress = False
    # KenLM writes to fd 2 (C++ std::cerr) while it loads; its advice to
    # build a binary (pip's kenlm has no build_binary) is held back.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
      os.dup2(captured.fileno(), 2)
      try:
        self._model = kenlm.Model(path, config)
      except (OSError, RuntimeError) as error:
        reason = str(error.__cause__ or error).split(" threw ")[-1].replace("\n", " ")
        raise ValueError(f"{path}: KenLM cannot read it as an ARPA or binary language model "
                         f"({reason})") from None
      finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        said = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
        sys.stderr.write("".join(line for line in said if not line.startswith(_KENLM_ADVICE)))
    self._kenlm = kenlm
    self.path = path
    self.order = self._model.order
    words = _arpa_unigrams(path)
    self.prefixes = None if words is None else {
        word[:end] for word in words for end in range(1, len(word) + 1)}

  def start(self):
    """The state at the start of a sentence (after ``<s>``)."""
    state = self._kenlm.State()
    self._model.BeginSentenceWrite(state)
    return state

  def score(self, state, word: str) -> Tuple[float, object]:
    """log10 P(word | state) and the state after ``word``."""
    after = self._kenlm.State()
    return self._model.BaseScore(state, word, after), after

  def end(self, state) -> float:
    """log10 P(</s> | state)."""
    return self._model.BaseScore(state, "</s>", self._kenlm.State())

  def __contains__(self, word: str) -> bool:
    return word in self._model


def _arpa_unigrams(path: str) -> Optional[List[str]]:
  """The words (NFC) of an ARPA file's 1-grams but ``<s>``, ``</s>`` and
  ``<unk>``; None when the file is not ARPA text (a KenLM binary)."""
  with open(path, "rb") as f:
    if not f.read(64).lstrip().startswith(b"\\data\\"):
      return None
    f.seek(0)
    lines = iter(f)
    for line in lines:
      if line.strip() == b"\\1-grams:":
        break
    words = []
    for line in lines:
      fields = line.decode("utf-8", "replace").split()
      if not fields or fields[0].startswith("\\"):
        break
      if len(fields) >= 2 and fields[1] not in ("<s>", "</s>", "<unk>"):
        words.append(unicodedata.normalize("NFC", fields[1]))
  return words


class _Words(NamedTuple):
  """What a beam_lm prefix holds beyond its characters: the LM state after its
  completed words, their score (lm_weight ln P_lm + word_bonus + hotword
  bonuses, nats), the last completed words (for hotword phrases), the
  characters of the word under way and its look-ahead score (nats, for
  ranking only): lm_weight ln P_lm(<unk>) once no word of the LM begins with
  it (it can only end as an unknown word), else 0."""
  state: object
  score: float
  recent: Tuple[str, ...]
  partial: str
  ahead: float = 0.0


def beam_lm_decode(logits, logit_length, vocabulary: text_lib.Vocabulary,
                   lm: Optional[LanguageModel] = None, beam_width: int = 8,
                   lm_weight: float = 0.5, word_bonus: float = 1.0,
                   hotwords: Sequence[Sequence[str]] = (), hotword_weight: float = 5.0,
                   token_min_logp: float = TOKEN_MIN_LOGP) -> List[List[int]]:
  """CTC prefix beam search ranked with a word language model (module docstring).

  Each prefix (a labelling: character ids, repeats and blanks collapsed)
  carries the probability of the CTC paths that end in a blank and of those
  that end in its last character; at each frame every kept prefix is
  extended by a blank, by its last character (the same prefix, or the
  character once more after a blank) and by each other character of log
  probability >= ``token_min_logp``; prefixes reached in several ways merge;
  the ``beam_width`` best by the ranking score stay. A space that would start
  a prefix or follow its space adds the path to the prefix itself (the same
  text), and at the end a prefix with a trailing space merges with the one
  without. The ranking score adds
  to the completed words' score a look-ahead for the word under way: once no
  word of an ARPA LM begins with it, ``lm_weight`` times the LM's ``<unk>``
  log-probability (the score it will get), so a beam does not keep a
  misspelling over a word the LM knows until the word ends. At the end the
  last word and ``</s>`` are scored and the best prefix wins.

  Hotwords are words or phrases (tuples of words): a completed word that
  continues one (the words before it are the phrase's first words, it the
  next) earns ``hotword_weight`` nats, and a word under way that is the start
  of such a next word earns that weight times the fraction of it typed so
  far, so beams keep a hotword before it completes.

  Args:
    logits: float ``[B, T, V]`` logits or log-probabilities (log-softmax is
      applied per frame).
    logit_length: int ``[B]`` valid frames of each example.
    vocabulary: the model's vocabulary (``V`` symbols, blank id 0); its space
      separates words.
    lm: the language model, or None for none (then ``lm_weight`` is unused).
    beam_width: prefixes kept per frame.
    lm_weight: weight of the LM's natural-log probabilities.
    word_bonus: nats added per completed word.
    hotwords: phrases to favour, each a sequence of words.
    hotword_weight: nats per hotword word (see above).
    token_min_logp: characters less likely at a frame are not tried there.

  Returns:
    ``B`` lists of token ids.
  """
  logits, lengths = _check_batch(logits, logit_length)
  if logits.shape[-1] != len(vocabulary):
    raise ValueError(f"logits have {logits.shape[-1]} classes, the vocabulary "
                     f"{len(vocabulary)} symbols")
  if beam_width < 1:
    raise ValueError(f"beam_width must be >= 1, got {beam_width}")
  shifted = logits - logits.max(axis=-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
  search = _PrefixSearch(vocabulary, lm, beam_width, lm_weight, word_bonus,
                         [tuple(p) for p in hotwords], hotword_weight, token_min_logp)
  return [search.run(rows[:length]) for rows, length in zip(log_probs, lengths)]


class _PrefixSearch:
  """The search of :func:`beam_lm_decode` for one utterance at a time."""

  def __init__(self, vocabulary, lm, beam_width, lm_weight, word_bonus, hotwords,
               hotword_weight, token_min_logp):
    self.symbols = vocabulary.symbols
    self.space = self.symbols.index(" ") if " " in self.symbols else None
    self.lm, self.beam_width, self.token_min_logp = lm, beam_width, token_min_logp
    self.lm_weight, self.word_bonus = lm_weight, word_bonus
    self.hotwords, self.hotword_weight = hotwords, hotword_weight
    self.longest_hotword = max((len(p) for p in hotwords), default=0)

  def run(self, log_probs: np.ndarray) -> List[int]:
    """The best labelling of one utterance's ``[T, V]`` log-probabilities."""
    blank = text_lib.BLANK_INDEX
    # prefix -> (log P of its paths ending in a blank, ... in its last character)
    beams: Dict[Tuple[int, ...], Tuple[float, float]] = {(): (0.0, -math.inf)}
    words = {(): _Words(self.lm.start() if self.lm else None, 0.0, (), "")}
    for row in log_probs:
      tried = set(np.flatnonzero(row >= self.token_min_logp).tolist())
      tried.add(int(np.argmax(row)))
      tried.discard(blank)
      tried = sorted(tried)
      frame = row.tolist()  # Python floats: scalar arithmetic without numpy's overhead
      extended: Dict[Tuple[int, ...], List[float]] = {}
      for prefix, (p_blank, p_char) in beams.items():
        total = _logaddexp(p_blank, p_char)
        _add(extended, prefix, 0, total + frame[blank])
        last = prefix[-1] if prefix else None
        for c in tried:
          if c == self.space and last in (None, self.space):
            # A leading or repeated space: the same text. After a space its
            # paths continue that space (ending in a character); at the start
            # they are as if the frame were blank.
            _add(extended, prefix, 0 if last is None else 1, total + frame[c])
            continue
          longer = prefix + (c,)
          if c == last:
            _add(extended, prefix, 1, p_char + frame[c])
            _add(extended, longer, 1, p_blank + frame[c])
          else:
            _add(extended, longer, 1, total + frame[c])
          if longer not in words:
            words[longer] = self._extend(words[prefix], self.symbols[c])
      ranked = sorted(extended.items(), key=lambda item: -(
          _logaddexp(*item[1]) + self._rank_score(words[item[0]])))
      beams = {prefix: tuple(p) for prefix, p in ranked[:self.beam_width]}
      words = {prefix: words[prefix] for prefix in beams}
    # text -> [log P_ctc of its prefixes (with and without a trailing space), final score]
    finals: Dict[Tuple[int, ...], List[float]] = {}
    for prefix, p in beams.items():
      text = prefix[:-1] if prefix and prefix[-1] == self.space else prefix
      entry = finals.setdefault(text, [-math.inf, self._final_score(words[prefix])])
      entry[0] = _logaddexp(entry[0], _logaddexp(*p))
    return list(max(finals, key=lambda text: sum(finals[text])))

  def _extend(self, before: _Words, symbol: str) -> _Words:
    """The words of a prefix after one more character."""
    if symbol != " ":  # NFC: a combining-mark symbol joins the letter before it
      partial = unicodedata.normalize("NFC", before.partial + symbol)
      ahead = before.ahead
      if not ahead and self.lm is not None and self.lm.prefixes is not None and (
          partial not in self.lm.prefixes):
        ahead = self.lm_weight * _LN10 * self.lm.score(before.state, "<unk>")[0]
      return _Words(before.state, before.score, before.recent, partial, ahead)
    return self._complete(before)  # a space after a word (never a leading or repeated one)

  def _complete(self, before: _Words) -> _Words:
    """The words after the word under way is complete (scored)."""
    word = before.partial
    score = before.score + self.word_bonus
    state = before.state
    if self.lm is not None:
      log10, state = self.lm.score(state, word)
      score += self.lm_weight * _LN10 * log10
    if self._continues_hotword(before.recent, word):
      score += self.hotword_weight
    recent = (before.recent + (word,))[-self.longest_hotword:] if self.longest_hotword else ()
    return _Words(state, score, recent, "")

  def _continues_hotword(self, recent: Tuple[str, ...], word: str) -> bool:
    for phrase in self.hotwords:
      for j, next_word in enumerate(phrase):
        if next_word == word and (j == 0 or recent[-j:] == phrase[:j]):
          return True
    return False

  def _rank_score(self, words: _Words) -> float:
    """The score a prefix is ranked by beyond its CTC probability."""
    if not words.partial or not self.hotwords:
      return words.score + words.ahead
    started = 0.0
    for phrase in self.hotwords:
      for j, next_word in enumerate(phrase):
        if next_word.startswith(words.partial) and (j == 0 or words.recent[-j:] == phrase[:j]):
          started = max(started, len(words.partial) / len(next_word))
    return words.score + words.ahead + self.hotword_weight * started

  def _final_score(self, words: _Words) -> float:
    """The score of a prefix at the end: its last word and ``</s>`` scored."""
    if words.partial:
      words = self._complete(words)
    if self.lm is None:
      return words.score
    return words.score + self.lm_weight * _LN10 * self.lm.end(words.state)


def _add(table: Dict[Tuple[int, ...], List[float]], prefix: Tuple[int, ...], ending: int,
         log_p: float) -> None:
  """Adds probability ``exp(log_p)`` to ``table[prefix][ending]`` (0: blank, 1: character)."""
  entry = table.setdefault(prefix, [-math.inf, -math.inf])
  entry[ending] = _logaddexp(entry[ending], log_p)


def _logaddexp(a: float, b: float) -> float:
  """log(exp(a) + exp(b)) of two floats (-inf allowed)."""
  if a < b:
    a, b = b, a
  if b == -math.inf:
    return a
  return a + math.log1p(math.exp(b - a))


class CtcDecoder(NamedTuple):
  """A decoder of ``DECODERS`` with its settings; :meth:`decode` runs it.

  ``beam_width`` is used by ``beam`` and ``beam_lm``; the rest by ``beam_lm``
  (see :func:`beam_lm_decode`); ``hotwords_source`` names where the hotwords
  came from in errors.
  """
  name: str = "greedy"
  beam_width: int = 8
  lm: Optional[LanguageModel] = None
  lm_weight: float = 0.5
  word_bonus: float = 1.0
  hotwords: Tuple[Tuple[str, ...], ...] = ()
  hotword_weight: float = 5.0
  hotwords_source: str = "hotwords"

  def decode(self, logits, logit_length, vocabulary: text_lib.Vocabulary) -> List[List[int]]:
    """Token ids of each example of ``logits [B, T, V]`` (module docstring)."""
    if self.name == "greedy":
      return greedy_decode(logits, logit_length)
    if self.name == "beam":
      return beam_search_decode(logits, logit_length, beam_width=self.beam_width)
    if self.name != "beam_lm":
      raise ValueError(f"unknown decoder {self.name!r}; known: {', '.join(DECODERS)}")
    for phrase in self.hotwords:
      missing = vocabulary.unknown(" ".join(phrase), normalized=True)
      if missing:
        raise ValueError(f"{self.hotwords_source}: {' '.join(phrase)!r} has characters "
                         f"outside the model's vocabulary: {missing}")
    return beam_lm_decode(logits, logit_length, vocabulary, self.lm, self.beam_width,
                          self.lm_weight, self.word_bonus, self.hotwords, self.hotword_weight)


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
