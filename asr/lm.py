"""Word n-gram language models from text: counting, modified Kneser-Ney as KenLM's lmplz, ARPA in and out."""

from __future__ import annotations

import array
import codecs
import dataclasses
import gzip
import json
import lzma
import re
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from asr.config import TextConfig
from asr.errors import ConfigError, DataError
from asr.io import atomic_dir, check_replaceable_dir
from asr.text import normalize_text

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2  # lmplz's ids for the special words; real words follow in order of first use
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz")
ARPA_FILE = "lm.arpa"  # an LM directory: the n-gram model (ARPA text, what KenLM loads) ...
WORDS_FILE = "words.txt"  # ... its words, most frequent first (the decoder's lexicon) ...
INFO_FILE = "lm.json"  # ... and how it was built
TUNED_FILE = "decoding.json"  # ... and, once asr lm tune ran, the best decoding settings found on a dev set
LM_DIR_FILES = (ARPA_FILE, WORDS_FILE, INFO_FILE, TUNED_FILE)
LEXICON_EXAMPLES = 10  # words outside the alphabet quoted in lm.json
MAX_ORDER = 6  # KenLM's default KENLM_MAX_ORDER, that of the kenlm the decoder loads LMs with
DEFAULT_PRUNE = (0, 1)  # build_lm's lmplz --prune: n-grams of order 2 and above seen once are dropped
_SENTENCE_BREAK = re.compile(r"[.!?;:]|\n\s*\n")  # sentence punctuation or a blank line
_BOS_LOG10_PROB = 0.0  # what lmplz writes as log10 P(<s>) (<s> is never predicted)
_ARPA_COUNT = re.compile(r"^ngram (\d+)=(\d+)$")


# ---------------------------------------------------------------------------------------------
# Text


def split_sentences(text: str) -> list[str]:
    """Raw text (capitals, punctuation, headings) -> normalized sentences, empty ones dropped.

    Sentences end at `.`, `!`, `?`, `;`, `:` and at blank lines; single line breaks are wrapped
    lines. Each piece goes through `asr.text.normalize_text`, the normalization of transcripts.
    """
    sentences = (normalize_text(piece) for piece in _SENTENCE_BREAK.split(text))
    return [s for s in sentences if s]


def find_text_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The text files named by paths: files as given, folders searched (recursively, sorted) for
    `.txt`, `.txt.gz` and `.txt.xz`. A missing path or a folder without text files is a DataError."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
            if not found:
                raise DataError(f"{path}: folder holds no text files ({', '.join(TEXT_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such text file or folder")
    if not files:
        raise DataError("no text files given")
    return files


def read_text(path: Path) -> str:
    """The UTF-8 text of a .txt, .txt.gz or .txt.xz file; DataError naming the file (and line)."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 (byte {data[exc.start]:#04x}); convert the file to UTF-8") from None


def read_corpus(paths: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Normalized sentences of the text files and folders in paths (see find_text_files).

    Raises DataError naming a file that holds no word at all after normalization (an empty
    file is a mistake, e.g. a failed download, rather than part of a corpus).
    """
    for path in find_text_files(paths):
        any_words = False
        for sentence in split_sentences(read_text(path)):
            any_words = True
            yield sentence
        if not any_words:
            raise DataError(f"{path}: no words after normalization (an empty text file); remove it from the corpus")


# ---------------------------------------------------------------------------------------------
# Counting


@dataclasses.dataclass
class NGramCounts:
    """The n-grams of a corpus as a trie of arrays, one entry per order k = 1..N.

    Sentences are `<s> w1 ... wn </s>`; an n-gram lies within one sentence. Unigram index = word
    id. Order k >= 2 holds M_k n-grams sorted by (prefix index, last word), i.e. by word ids:
    parents[k-1]  int64 [M_k] index of the n-gram's first k-1 words in order k-1
    suffixes[k-1] int64 [M_k] index of its last k-1 words in order k-1
    last[k-1]     int32 [M_k] its last word id
    counts[k-1]   int64 [M_k] times it occurs
    """

    words: list[str]
    parents: list[np.ndarray]
    suffixes: list[np.ndarray]
    last: list[np.ndarray]
    counts: list[np.ndarray]
    sentences: int

    @property
    def order(self) -> int:
        return len(self.counts)

    def starts_with_bos(self, k: int) -> np.ndarray:
        """bool [M_k]: which n-grams of order k begin with <s>."""
        bos = self.last[0] == BOS_ID
        for j in range(1, k):
            bos = bos[self.parents[j]]
        return bos


def encode_sentences(sentences: Iterable[str]) -> tuple[list[str], np.ndarray, int]:
    """(words, tokens, sentence count): word ids in order of first use after <unk>, <s>, </s>, and
    int32 [T] tokens `<s> w.. </s> <s> w.. </s> ...`. Empty sentences are skipped."""
    ids = {UNK: UNK_ID, BOS: BOS_ID, EOS: EOS_ID}
    buffer, n_sentences = array.array("i"), 0
    for sentence in sentences:
        words = sentence.split()
        if words:
            buffer.append(BOS_ID)
            buffer.extend([ids.setdefault(w, len(ids)) for w in words])
            buffer.append(EOS_ID)
            n_sentences += 1
    tokens = np.frombuffer(buffer, dtype=np.int32) if buffer else np.zeros(0, dtype=np.int32)
    specials = np.bincount(tokens[tokens <= EOS_ID], minlength=3)
    if specials[UNK_ID] or specials[BOS_ID] != n_sentences or specials[EOS_ID] != n_sentences:
        raise DataError(f"the text holds {UNK}, {BOS} or {EOS} as a word; normalize it first (normalize_text removes them)")
    return list(ids), tokens, n_sentences


def count_ngrams(sentences: Iterable[str], order: int) -> NGramCounts:
    """Counts the n-grams of orders 1..order of the sentences (words split at whitespace)."""
    words, tokens, n_sentences = encode_sentences(sentences)
    if n_sentences == 0:
        raise DataError("no sentences to count n-grams from (empty corpus)")
    vocab = np.int64(len(words))
    is_bos = tokens == BOS_ID
    position = np.arange(len(tokens)) - np.flatnonzero(is_bos)[np.cumsum(is_bos) - 1]  # 0 at each <s>
    ids = tokens.astype(np.int64)  # index of the n-gram of the current order ending at each token
    parents, suffixes, last = [np.full(len(words), -1)], [np.full(len(words), -1)], [np.arange(len(words), dtype=np.int32)]
    counts = [np.bincount(tokens, minlength=len(words)).astype(np.int64)]
    for k in range(2, order + 1):
        ends = np.flatnonzero(position >= k - 1)  # tokens that end a k-gram within their sentence
        keys, inverse, count = np.unique(ids[ends - 1] * vocab + tokens[ends], return_inverse=True, return_counts=True)
        suffix = np.empty(len(keys), dtype=np.int64)
        suffix[inverse] = ids[ends]
        parents.append(keys // vocab)
        last.append((keys % vocab).astype(np.int32))
        suffixes.append(suffix)
        counts.append(count.astype(np.int64))
        ids = np.full(len(tokens), -1, dtype=np.int64)
        ids[ends] = inverse
    return NGramCounts(words, parents, suffixes, last, counts, n_sentences)


# ---------------------------------------------------------------------------------------------
# Modified Kneser-Ney (Chen & Goodman 1998; Heafield et al. 2013, as lmplz computes it)


def prune_thresholds(order: int, prune: Sequence[int]) -> tuple[int, ...]:
    """lmplz's --prune: one threshold per order, the last repeated; n-grams of order >= 2 seen at
    most that many times are dropped; (0,) prunes nothing. Must start with 0 and not decrease."""
    if order < 1:
        raise ConfigError(f"LM order must be at least 1, got {order}")
    prune = tuple(int(t) for t in prune)
    if not prune or len(prune) > order or prune[0] != 0 or list(prune) != sorted(prune):
        raise ConfigError(
            f"--prune {' '.join(map(str, prune))}: expected 1 to {order} (the order) non-decreasing counts starting with 0 (unigrams are never pruned)"
        )
    return prune + (prune[-1],) * (order - len(prune))


def adjusted_counts(counts: NGramCounts) -> list[np.ndarray]:
    """Kneser-Ney adjusted counts per order: the highest order and n-grams starting with <s> keep
    their counts; other n-grams count the distinct words seen before them. <unk> and <s> get 0."""
    adjusted = []
    for k in range(1, counts.order):
        adjusted_k = np.bincount(counts.suffixes[k], minlength=len(counts.counts[k - 1])).astype(np.int64)
        if k > 1:
            bos = counts.starts_with_bos(k)
            adjusted_k[bos] = counts.counts[k - 1][bos]
        adjusted.append(adjusted_k)
    top = counts.counts[-1].copy()
    if counts.order == 1:
        top[[UNK_ID, BOS_ID]] = 0
    return adjusted + [top]


def discounts(adjusted: np.ndarray, k: int) -> np.ndarray:
    """float32 [4]: D(0)=0, D1, D2, D3+ for order k from its counts of counts (Chen & Goodman's
    eq. 26, in float32 as lmplz). Too little text for them is a DataError, as in lmplz."""
    n = np.bincount(np.minimum(adjusted, 5), minlength=6)[:5].astype(np.float32)
    for j in range(1, 4):
        if n[j] == 0:
            raise DataError(
                f"cannot estimate Kneser-Ney discounts for {k}-grams: none has adjusted count {j} "
                "(too little text for this order; use more text or a lower order)"
            )
    y = n[1] / np.float32(float(n[1]) + 2.0 * float(n[2]))
    d = np.zeros(4, dtype=np.float32)
    for j in range(1, 4):
        d[j] = np.float32(j) - np.float32(j + 1) * y * n[j + 1] / n[j]
        if not 0.0 <= d[j] <= j:
            raise DataError(f"Kneser-Ney discount D{j} for {k}-grams is {d[j]:.4f}, outside [0, {j}] (use more text)")
    return d


def _context_weights(contexts, n_contexts, adjusted, kept, d):
    """(uninterpolated probabilities [M], gamma [n_contexts], denominator [n_contexts]) for one order:
    p = (a - D(a)) / sum(a); gamma = (sum of D over kept n-grams + counts of pruned ones) / sum(a)."""
    discount = d[np.minimum(adjusted, 3)].astype(np.float64)
    denominator = np.bincount(contexts, weights=adjusted, minlength=n_contexts)
    freed = np.bincount(contexts, weights=np.where(kept, discount, adjusted), minlength=n_contexts)
    safe = np.where(denominator > 0, denominator, 1.0)
    return (adjusted - discount) / safe[contexts], freed / safe, denominator


@dataclasses.dataclass
class NGramLM:
    """An interpolated modified Kneser-Ney model as arrays per order k = 1..N (pruned n-grams removed):
    parents[k-1] int64 [M_k] prefix index in order k-1 (-1 for unigrams), last[k-1] int32 [M_k] word
    ids, log10_probs[k-1] / backoffs[k-1] float64 [M_k] (back-offs are 0 for order N)."""

    words: list[str]
    parents: list[np.ndarray]
    last: list[np.ndarray]
    log10_probs: list[np.ndarray]
    backoffs: list[np.ndarray]
    discounts: np.ndarray  # float32 [N, 4]: D(0)=0, D1, D2, D3+ per order
    word_counts: np.ndarray  # int64 [V]: times each word id occurs
    sentences: int

    @property
    def order(self) -> int:
        return len(self.last)

    def ngram_counts(self) -> list[int]:
        return [len(x) for x in self.last]


def estimate(counts: NGramCounts, prune: Sequence[int] = (0,)) -> NGramLM:
    """Interpolated modified Kneser-Ney with lmplz's defaults (--interpolate_unigrams 1): each
    order's discounted estimate plus gamma(context) x the next lower order, unigrams interpolated
    with the uniform distribution over the vocabulary without <s>. Pruning as lmplz --prune: an
    n-gram of order k >= 2 seen at most prune[k-1] times is dropped (raw counts, so the prefixes and
    suffixes of kept n-grams stay); its whole adjusted count moves to its context's gamma, so the
    discounts (from all n-grams) are unchanged and every context still sums to one."""
    thresholds = prune_thresholds(counts.order, prune)
    adjusted = adjusted_counts(counts)
    kept = [np.ones(len(counts.words), dtype=bool)] + [c > t for c, t in zip(counts.counts[1:], thresholds[1:])]
    d = np.stack([discounts(a, k + 1) for k, a in enumerate(adjusted)])
    probs, gammas, is_context = [], [], []
    for k in range(counts.order):
        contexts = counts.parents[k] if k else np.zeros(len(adjusted[0]), dtype=np.int64)
        n_contexts = len(counts.last[k - 1]) if k else 1
        uninterpolated, gamma, denominator = _context_weights(contexts, n_contexts, adjusted[k], kept[k], d[k])
        lower = probs[-1][counts.suffixes[k]] if k else 1.0 / (len(counts.words) - 1)  # uniform: <s> excluded
        probs.append(uninterpolated + gamma[contexts] * lower)
        gammas.append(gamma)
        is_context.append(denominator > 0)
    return _assemble(counts, kept, probs, gammas, is_context, d)


def _assemble(counts, kept, probs, gammas, is_context, d) -> NGramLM:
    """Drops pruned n-grams, re-indexes parents, and turns probabilities and gammas into log10.

    An n-gram's back-off is its gamma as a context of the next order; n-grams ending in </s> or
    <unk>, and those never followed by a word, get 0 (lmplz writes them so too).
    """
    parents, last, log_probs, backoffs = [np.full(len(counts.words), -1)], [], [], []
    for k in range(counts.order):
        keep = kept[k]
        last.append(counts.last[k][keep])
        log_probs.append(np.minimum(0.0, np.log10(probs[k][keep])))
        backoffs.append(np.zeros(len(last[-1])))
        if k + 1 < counts.order:
            has = is_context[k + 1][keep] & (last[-1] != UNK_ID) & (last[-1] != EOS_ID)
            backoffs[-1][has] = np.log10(gammas[k + 1][keep][has])
            # Non-decreasing thresholds keep the prefix (and suffix) of every kept n-gram.
            new_index = np.where(keep, np.cumsum(keep) - 1, -1)
            parents.append(new_index[counts.parents[k + 1][kept[k + 1]]])
    log_probs[0][BOS_ID] = _BOS_LOG10_PROB
    return NGramLM(counts.words, parents, last, log_probs, backoffs, d, counts.counts[0], counts.sentences)


# ---------------------------------------------------------------------------------------------
# ARPA


def _ngram_texts(lm: NGramLM) -> Iterator[list[str]]:
    """Per order, the text of each n-gram ("w1 w2 ... wk"), in the model's order."""
    words = np.array(lm.words, dtype=object)
    texts = list(words[lm.last[0]])
    yield texts
    for k in range(1, lm.order):
        prefixes = np.array(texts, dtype=object)[lm.parents[k]]
        texts = list(prefixes + " " + words[lm.last[k]])
        yield texts


def arpa_text_lines(lm: NGramLM) -> Iterator[str]:
    """The lines of the model's ARPA file, each ending in a newline."""
    yield "\\data\\\n"
    for k, n in enumerate(lm.ngram_counts(), start=1):
        yield f"ngram {k}={n}\n"
    for k, texts in enumerate(_ngram_texts(lm), start=1):
        yield f"\n\\{k}-grams:\n"
        probs = lm.log10_probs[k - 1].tolist()
        if k < lm.order:
            rows = zip(probs, texts, lm.backoffs[k - 1].tolist())
            yield from ("%.8g\t%s\t%.8g\n" % row for row in rows)
        else:
            yield from ("%.8g\t%s\n" % row for row in zip(probs, texts))
    yield "\n\\end\\\n"


def write_arpa(path: str | Path, lm: NGramLM) -> None:
    """Writes the model as an ARPA file (lmplz's layout; log10 numbers with 8 significant digits)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(arpa_text_lines(lm))


def _open_text_lines(path: Path):
    """A text stream of a plain, .gz or .xz file."""
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def read_arpa(path: str | Path) -> dict[int, dict[tuple[str, ...], tuple[float, float]]]:
    """An ARPA file (also .gz/.xz) -> {order: {(w1, ..., wk): (log10 prob, log10 backoff)}}.

    A truncated or malformed file is a DataError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such ARPA file")
    try:
        with _open_text_lines(path) as f:
            return _parse_arpa(path, enumerate(f, start=1))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason})") from None
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _parse_arpa(path, lines) -> dict:
    """The model from (line number, line) pairs: header, one section per order, then \\end\\."""
    declared, line_no = _parse_arpa_header(path, lines)
    model = {}
    order = max(declared)
    for k in range(1, order + 1):
        model[k], line_no = _parse_arpa_section(path, lines, k, declared[k], order, line_no)
    for line_no, line in lines:
        if line.strip() == "\\end\\":
            return model
        if line.strip():
            raise DataError(f"{path}: line {line_no}: expected \\end\\, got {line.strip()[:60]!r}")
    raise DataError(f"{path}: truncated after line {line_no}: no \\end\\ line")


def _parse_arpa_header(path, lines) -> tuple[dict[int, int], int]:
    """{order: declared count} from the \\data\\ section; stops at its blank line."""
    line_no, in_data, declared = 0, False, {}
    for line_no, line in lines:
        line = line.strip()
        if not in_data:
            in_data = line == "\\data\\"
            continue
        match = _ARPA_COUNT.match(line)
        if match:
            declared[int(match.group(1))] = int(match.group(2))
        elif line or declared:
            if line:
                raise DataError(f"{path}: line {line_no}: expected 'ngram N=count', got {line[:60]!r}")
            if sorted(declared) != list(range(1, len(declared) + 1)):
                raise DataError(f"{path}: line {line_no}: n-gram orders {sorted(declared)} are not 1..N")
            return declared, line_no
    missing = "incomplete \\data\\ section" if in_data else "no \\data\\ header"
    raise DataError(f"{path}: truncated after line {line_no}: {missing}")


def _expect_section(path, lines, k, line_no) -> int:
    """Skips blank lines up to the \\k-grams: header; returns its line number."""
    for line_no, line in lines:
        line = line.strip()
        if line == f"\\{k}-grams:":
            return line_no
        if line:
            raise DataError(f"{path}: line {line_no}: expected \\{k}-grams:, got {line[:60]!r}")
    raise DataError(f"{path}: truncated after line {line_no}: no \\{k}-grams: section")


def _parse_arpa_section(path, lines, k, expected, order, line_no):
    """Reads the \\k-grams: section: ({words: (log10 prob, log10 backoff)}, its last line number)."""
    line_no = _expect_section(path, lines, k, line_no)
    entries = {}
    while len(entries) < expected:
        line_no, line = next(lines, (line_no, None))
        if line is None:
            raise DataError(
                f"{path}: truncated after line {line_no}: \\{k}-grams: holds {len(entries)} of the {expected} n-grams declared"
            )
        fields = line.split()
        if len(fields) not in (k + 1, k + 2) or (len(fields) == k + 2 and k == order):
            raise DataError(f"{path}: line {line_no}: expected 'log10prob {k} words [backoff]', got {line.strip()[:60]!r}")
        ngram = tuple(fields[1:k + 1])
        if ngram in entries:
            raise DataError(f"{path}: line {line_no}: {' '.join(ngram)!r} appears twice")
        try:
            entries[ngram] = (float(fields[0]), float(fields[k + 1]) if len(fields) == k + 2 else 0.0)
        except ValueError:
            raise DataError(f"{path}: line {line_no}: not a number in {line.strip()[:60]!r}") from None
    return entries, line_no


def log10_prob(model: dict, context: Sequence[str], word: str) -> float:
    """log10 P(word | context) of a read_arpa model with back-off; context is oldest word first.
    A word outside the vocabulary is <unk>."""
    order = max(model)
    unigrams = model[1]
    word = word if (word,) in unigrams else UNK
    context = tuple(w if (w,) in unigrams else UNK for w in context)
    context = context[max(0, len(context) - (order - 1)):] if order > 1 else ()
    backoff = 0.0
    for start in range(len(context) + 1):
        history = context[start:]
        entry = model[len(history) + 1].get(history + (word,))
        if entry is not None:
            return backoff + entry[0]
        backoff += model[len(history)].get(history, (0.0, 0.0))[1] if history else 0.0
    raise DataError(f"{UNK} is missing from the model's unigrams")


# ---------------------------------------------------------------------------------------------
# Building an LM directory


def _word_list(lm: NGramLM) -> str:
    """The real words (not <unk>, <s>, </s>), most frequent first (ties: first seen first)."""
    ids = np.arange(EOS_ID + 1, len(lm.words))
    ranked = ids[np.argsort(-lm.word_counts[ids], kind="stable")]
    return "".join(lm.words[i] + "\n" for i in ranked)


def outside_alphabet(words: Sequence[str], alphabet: str) -> list[str]:
    """The words with a character outside alphabet (a decoder over that alphabet cannot spell them)."""
    letters = set(alphabet) - {" "}
    return [w for w in words if not set(w) <= letters]


def build_lm(out_dir: str | Path, text_paths, order: int = 3, prune: Sequence[int] | None = None,
             alphabet: str = TextConfig.alphabet) -> dict:
    """Builds an n-gram LM from text files/folders and writes out_dir atomically; returns lm.json's dict.

    out_dir: lm.arpa (interpolated modified Kneser-Ney, as KenLM's `lmplz -o ORDER --prune ...`),
    words.txt (the words, most frequent first) and lm.json (sources with byte sizes, order, prune
    thresholds, normalization, sentence/word/n-gram counts, discounts, seconds). text_paths: a path
    or paths of .txt/.txt.gz/.txt.xz files or folders of them, raw text split by split_sentences.
    prune: lmplz's --prune thresholds per order (the last one repeated), e.g. (0, 0, 1); None is
    DEFAULT_PRUNE, (0, 1, 1, ...): n-grams of order 2 and above seen once are dropped; (0,) keeps all.
    alphabet: the characters of the models it is for; words spelled outside it stay in the LM
    but a decoder drops them from its lexicon, and lm.json counts them ("lexicon").
    Raises DataError (out_dir not writable or a folder of other things, checked first; unreadable
    or empty text; too little text for the order) or ConfigError.
    """
    started = time.time()
    out_dir = Path(out_dir)
    check_replaceable_dir(out_dir, "LM directory to write", LM_DIR_FILES)
    if not 1 <= order <= MAX_ORDER:
        raise ConfigError(f"--order {order}: expected 1 to {MAX_ORDER} (KenLM, which decodes with the LM, loads at most {MAX_ORDER}-grams)")
    thresholds = prune_thresholds(order, DEFAULT_PRUNE[:order] if prune is None else prune)
    files = find_text_files(text_paths)
    lm = estimate(count_ngrams(read_corpus(files), order), thresholds)
    summary = {
        "sources": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "order": order,
        "prune": list(thresholds),
        "smoothing": "interpolated modified Kneser-Ney (lmplz defaults)",
        "normalization": f"{normalize_text.__module__}.{normalize_text.__name__}",
        "sentences": lm.sentences,
        "words": int(lm.word_counts[EOS_ID + 1:].sum()),
        "vocabulary": len(lm.words) - 3,
        "ngrams": {str(k): n for k, n in enumerate(lm.ngram_counts(), start=1)},
        "discounts": {str(k): [round(float(x), 6) for x in d[1:]] for k, d in enumerate(lm.discounts, start=1)},
        "lexicon": _lexicon_summary(lm, alphabet),
    }
    with atomic_dir(out_dir) as tmp:
        write_arpa(tmp / ARPA_FILE, lm)
        (tmp / WORDS_FILE).write_text(_word_list(lm), encoding="utf-8")
        summary["seconds"] = round(time.time() - started, 2)
        (tmp / INFO_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _lexicon_summary(lm: NGramLM, alphabet: str) -> dict:
    """How many of the LM's words a decoder over alphabet can spell, with examples of the others."""
    words = _word_list(lm).split()
    dropped = outside_alphabet(words, alphabet)
    return {"alphabet": alphabet, "words": len(words) - len(dropped), "dropped_outside_alphabet": len(dropped),
            "dropped_examples": dropped[:LEXICON_EXAMPLES]}
