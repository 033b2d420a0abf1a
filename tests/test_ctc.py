"""CTC loss and decoders on hand-made inputs with known answers, and against brute force."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from asr.ctc import beam_search_decode, ctc_loss, greedy_decode, sequence_log_probs

A, B, C = 1, 2, 3  # label ids; 0 is the blank


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def brute_force(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """log P(labels) for every label sequence, summing all V**T alignments of a [T, V] input."""
    num_frames, vocab = log_probs.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=num_frames):
        labels = tuple(c for t, c in enumerate(path) if c != 0 and (t == 0 or path[t - 1] != c))
        score = sum(log_probs[t, c] for t, c in enumerate(path))
        totals[labels] = np.logaddexp(totals.get(labels, -np.inf), score)
    return totals


def frames(*ids: int, vocab: int = 4, peak: float = 5.0) -> np.ndarray:
    """Logits [T, vocab] whose argmax at frame t is ids[t]."""
    return peak * np.eye(vocab, dtype=np.float32)[list(ids)]


def random_logits(rng, shape, scale=2.0) -> np.ndarray:
    return (scale * rng.normal(size=shape)).astype(np.float32)


# ---- ctc_loss ---------------------------------------------------------------------------------


def test_loss_ignores_padded_frames_and_labels():
    rng = np.random.default_rng(0)
    short = random_logits(rng, (1, 5, 4))
    alone = ctc_loss([[A, B]], [2], short, [5]).numpy()
    # Pad the short utterance in time (with loud garbage) and in labels (with -1 and a real id),
    # next to a longer utterance.
    padded = np.concatenate([short, 9.0 * rng.normal(size=(1, 4, 4))], axis=1).astype(np.float32)
    logits = np.concatenate([padded, random_logits(rng, (1, 9, 4))])
    for pad in (-1, C):
        batch = ctc_loss([[A, B, pad, pad], [C, A, B, C]], [2, 4], logits, [5, 9]).numpy()
        np.testing.assert_allclose(batch[0], alone[0], rtol=1e-5)


def test_loss_gives_padded_frames_no_gradient():
    logits = tf.Variable(random_logits(np.random.default_rng(1), (2, 6, 4)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ctc_loss([[A, B], [C, C]], [2, 2], logits, [4, 6]))
    grad = tape.gradient(loss, logits).numpy()
    assert np.all(grad[0, 4:] == 0.0)
    assert np.all(np.isfinite(grad)) and np.abs(grad[0, :4]).sum() > 0


@pytest.mark.parametrize("labels", [[A], [A, B], [A, A], [B, A, B]])
def test_loss_matches_brute_force(labels):
    logits = random_logits(np.random.default_rng(len(labels)), (1, 5, 3))
    expected = brute_force(log_softmax(logits[0].astype(np.float64)))[tuple(labels)]
    loss = ctc_loss([labels], [len(labels)], logits, [5]).numpy()
    np.testing.assert_allclose(-loss[0], expected, rtol=1e-5)


def test_sequence_log_probs_matches_brute_force_and_tf():
    logits = random_logits(np.random.default_rng(2), (1, 5, 3))
    log_probs = log_softmax(logits[0].astype(np.float64))
    totals = brute_force(log_probs)
    hypotheses = [[], [A], [A, A], [B, A, B], [A, B, A, B, A]]
    got = sequence_log_probs(log_probs, hypotheses)
    np.testing.assert_allclose(got, [totals[tuple(h)] for h in hypotheses], rtol=1e-9)
    long = random_logits(np.random.default_rng(3), (1, 60, 5), scale=3.0)
    labels = greedy_decode(long, [60])[0]
    tf_score = -ctc_loss([labels], [len(labels)], long, [60]).numpy()[0]
    ours = sequence_log_probs(log_softmax(long[0].astype(np.float64)), [labels])
    np.testing.assert_allclose(ours, [tf_score], rtol=1e-5)


# ---- greedy_decode ----------------------------------------------------------------------------


def test_greedy_merges_repeats_and_drops_blanks():
    logits = frames(A, A, 0, B, B, 0, B, C)[None]
    assert greedy_decode(logits, [8]) == [[A, B, B, C]]


def test_greedy_ignores_frames_past_the_length():
    logits = np.stack([frames(A, 0, B, C, C, A), frames(C, C, 0, 0, B, B)])
    assert greedy_decode(logits, [3, 6]) == [[A, B], [C, B]]
    assert greedy_decode(tf.constant(logits), tf.constant([0, 1])) == [[], [C]]


def test_greedy_all_blank_is_empty():
    assert greedy_decode(frames(0, 0, 0)[None], [3]) == [[]]


def test_decoders_reject_bad_shapes():
    with pytest.raises(ValueError, match="lengths"):
        greedy_decode(frames(A, B)[None], [3])
    with pytest.raises(ValueError, match="batch, time, vocab"):
        beam_search_decode(frames(A, B), [2])


# ---- beam_search_decode -----------------------------------------------------------------------


def test_beam_finds_the_most_probable_sequence_where_greedy_does_not():
    # Two frames, P(a) = 0.4 in each: the best path is blank-blank (0.36), but "a" has
    # 0.4*0.4 + 0.4*0.6 + 0.6*0.4 = 0.64, spread over three alignments.
    logits = np.log(np.array([[[0.6, 0.4], [0.6, 0.4]]]))
    assert greedy_decode(logits, [2]) == [[]]
    assert beam_search_decode(logits, [2], beam_width=2) == [[A]]


def test_beam_keeps_repeated_labels_apart_through_a_blank():
    logits = frames(A, 0, A, A, B)[None]
    assert beam_search_decode(logits, [5], beam_width=4) == [[A, A, B]]


def test_beam_matches_brute_force_on_tiny_inputs():
    rng = np.random.default_rng(4)
    for _ in range(40):
        num_frames, vocab = int(rng.integers(1, 6)), int(rng.integers(2, 4))
        logits = random_logits(rng, (1, num_frames, vocab))
        totals = brute_force(log_softmax(logits[0].astype(np.float64)))
        decoded = tuple(beam_search_decode(logits, [num_frames], beam_width=16, prune_prob=0.0)[0])
        assert totals[decoded] == pytest.approx(max(totals.values()), abs=1e-9)


def test_beam_ignores_frames_past_the_length():
    rng = np.random.default_rng(5)
    logits = random_logits(rng, (3, 12, 5))
    lengths = [12, 7, 0]
    batch = beam_search_decode(logits, lengths, beam_width=4)
    alone = [beam_search_decode(logits[i : i + 1, :n], [n], beam_width=4)[0] for i, n in enumerate(lengths)]
    assert batch == alone and batch[2] == []


def test_beam_of_one_equals_greedy_on_confident_frames():
    logits = np.stack([frames(A, A, 0, B, 0, B, C, 0), frames(C, 0, C, C, 0, 0, A, A)])
    assert beam_search_decode(logits, [8, 8], beam_width=1) == greedy_decode(logits, [8, 8])


@pytest.mark.parametrize("beam_width", [1, 4, 16])
def test_beam_is_never_less_probable_than_greedy(beam_width):
    rng = np.random.default_rng(6)
    logits = random_logits(rng, (16, 30, 6), scale=3.0)
    lengths = rng.integers(10, 31, size=16)
    greedy = greedy_decode(logits, lengths)
    beam = beam_search_decode(logits, lengths, beam_width=beam_width)
    for i, n in enumerate(lengths):
        log_probs = log_softmax(logits[i, :n].astype(np.float64))
        beam_score, greedy_score = sequence_log_probs(log_probs, [beam[i], greedy[i]])
        assert beam_score >= greedy_score - 1e-9


def test_beam_accepts_tf_tensors():
    logits = frames(A, 0, B, B)[None]
    assert beam_search_decode(tf.constant(logits), tf.constant([4])) == [[A, B]]


def test_infeasible_utterance_gets_inf_and_no_gradient():
    """Labels that need more frames than there are (3 labels + 1 repeat > 3 frames) -> +inf, zero grad."""
    import tensorflow as tf

    from asr.ctc import ctc_loss, min_frames

    labels, label_lengths = tf.constant([[1, 1, 2], [1, 2, 0]]), tf.constant([3, 2])
    assert min_frames(labels, label_lengths).numpy().tolist() == [4, 2]
    logits = tf.random.normal([2, 3, 4], seed=1)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = ctc_loss(labels, label_lengths, logits, tf.constant([3, 3]))
        total = tf.reduce_sum(tf.where(tf.math.is_finite(loss), loss, 0.0))
    grad = tape.gradient(total, logits).numpy()
    assert np.isinf(loss.numpy()[0]) and np.isfinite(loss.numpy()[1])
    assert np.all(grad[0] == 0) and np.any(grad[1] != 0)
