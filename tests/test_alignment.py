"""CTC forced alignment and word frames on hand-made posteriors with known answers, and against brute force."""

import itertools

import numpy as np
import pytest

from asr.ctc import BLANK, align_words, forced_align, greedy_decode

A, B, C, SPACE = 1, 2, 3, 4  # label ids; 0 is the blank


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def peaked(*ids: int, vocab: int = 5, peak: float = 6.0) -> np.ndarray:
    """Log-probabilities [T, vocab] whose most probable label at frame t is ids[t]."""
    return log_softmax(peak * np.eye(vocab)[list(ids)])


def collapse(path) -> tuple[int, ...]:
    return tuple(c for t, c in enumerate(path) if c != BLANK and (t == 0 or path[t - 1] != c))


def path_of(positions: np.ndarray, labels) -> list[int]:
    """Frame labels of an alignment given as label positions (-1 = blank)."""
    return [BLANK if p < 0 else labels[p] for p in positions]


def test_known_alignment():
    log_probs = peaked(0, A, A, 0, B, 0, 0, C)
    assert forced_align(log_probs, [A, B, C]).tolist() == [-1, 0, 0, -1, 1, -1, -1, 2]


def test_a_repeated_label_needs_a_blank_between():
    # The frames say "a" three times; two a's must be split by a blank, at the least likely frame.
    log_probs = log_softmax(np.array([[0, 5, 0, 0, 0], [1, 3, 0, 0, 0], [0, 5, 0, 0, 0]], float))
    assert forced_align(log_probs, [A, A]).tolist() == [0, -1, 1]
    assert forced_align(log_probs, [A]).tolist() == [0, 0, 0]


def test_labels_the_frames_do_not_favour_still_get_a_frame_each():
    log_probs = peaked(0, 0, 0, 0, 0, 0)
    positions = forced_align(log_probs, [A, B, C])
    assert sorted(set(positions.tolist()) - {-1}) == [0, 1, 2]
    assert (np.diff(positions[positions >= 0]) >= 0).all()


def test_empty_labels_and_infeasible_labels():
    assert forced_align(peaked(A, B), []).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="at least 3 frames"):
        forced_align(peaked(A, B), [A, A])  # a a needs a blank between: 3 frames
    with pytest.raises(ValueError, match="at least 3 frames"):
        forced_align(peaked(A, B), [A, B, C])


@pytest.mark.parametrize("labels", [(A,), (A, B), (A, A), (B, A, B), (A, A, B)])
def test_viterbi_matches_brute_force(labels):
    """The path found is the most probable of all V**T paths that collapse to the labels."""
    rng = np.random.default_rng(len(labels) * 7 + labels[-1])
    for _ in range(5):
        log_probs = log_softmax(2.0 * rng.normal(size=(6, 3)))
        best = max(
            (sum(log_probs[t, c] for t, c in enumerate(p)), p)
            for p in itertools.product(range(3), repeat=6) if collapse(p) == labels
        )
        found = path_of(forced_align(log_probs, labels), labels)
        assert collapse(found) == labels
        assert sum(log_probs[t, c] for t, c in enumerate(found)) == pytest.approx(best[0], abs=1e-9)


def test_the_alignment_of_the_greedy_text_is_the_greedy_path():
    """The argmax path is the best of all paths, so it is the best one for the text it spells."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        log_probs = log_softmax(3.0 * rng.normal(size=(40, 5)))
        labels = greedy_decode(log_probs[None], [40])[0]
        assert path_of(forced_align(log_probs, labels), labels) == log_probs.argmax(axis=1).tolist()


def test_words_frames_and_confidences():
    # "ab c": a on frames 1-2, b on 4, space on 6, c on 8-9; each emitting frame at probability p.
    ids = [0, A, A, 0, B, 0, SPACE, 0, C, C, 0]
    p = np.array([0.9, 0.8, 0.6, 0.9, 0.7, 0.9, 0.5, 0.9, 0.4, 0.6, 0.9])
    probs = np.zeros((len(ids), 5))
    probs[np.arange(len(ids)), ids] = p
    for t, c in enumerate(ids):  # the rest spread over the other labels
        probs[t, [v for v in range(5) if v != c]] = (1 - p[t]) / 4
    words = align_words(np.log(probs), [A, B, SPACE, C], separator=SPACE)
    assert [w[:4] for w in words] == [(0, 2, 1, 4), (3, 4, 8, 9)]
    assert words[0][4] == pytest.approx((0.8 + 0.6 + 0.7) / 3)
    assert words[1][4] == pytest.approx((0.4 + 0.6) / 2)


def test_words_ignore_leading_trailing_and_double_separators():
    log_probs = peaked(SPACE, A, 0, SPACE, 0, SPACE, B, SPACE)
    words = align_words(log_probs, [SPACE, A, SPACE, SPACE, B, SPACE], separator=SPACE)
    assert [w[:4] for w in words] == [(1, 2, 1, 1), (4, 5, 6, 6)]
    assert align_words(peaked(0, 0), [], separator=SPACE) == []
