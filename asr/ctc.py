"""CTC loss, decoders (greedy, prefix beam search) over batch-major logits with blank = 0, and forced alignment."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

BLANK = 0  # the CTC blank's index in every vocabulary (asr.text adds it at 0)
CHAR_PRUNE_PROB = 1e-3  # beam search: a label below this frame probability never extends a prefix


def ctc_loss(labels, label_lengths, logits, logit_lengths, blank: int = BLANK) -> tf.Tensor:
    """Per-utterance CTC negative log-likelihood, [B] float32.

    labels: [B, L] int, padded past label_lengths [B] (any padding value);
    logits: [B, T, V] unnormalized scores (batch-major), padded past logit_lengths [B].
    Padded frames and padded labels never count: only the first label_lengths labels of each row
    and the first logit_lengths frames enter the loss. An utterance whose labels cannot fit in its
    frames (labels + repeated neighbours > frames) gets +inf (and a zero gradient), so that the
    trainer can report and skip it instead of failing. An empty batch (B = 0) has an empty loss.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    label_lengths = tf.convert_to_tensor(label_lengths, tf.int32)
    logit_lengths = tf.convert_to_tensor(logit_lengths, tf.int32)
    valid = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    # TensorFlow's C++ CTC kernel wants the blank last and sparse labels; tf.nn.ctc_loss with
    # dense labels falls back to dense [L', L'] transition matmuls, ~20x slower on a CPU
    # (B=16, T=500, L=200: 8.6 s against 0.39 s forward and backward).
    num_classes = tf.shape(logits)[-1]
    rotated = tf.roll(tf.cast(logits, tf.float32), shift=-blank - 1, axis=-1)  # blank -> last
    values = tf.math.floormod(tf.boolean_mask(labels, valid) - blank - 1, num_classes)
    loss = tf.cond(  # the kernel refuses an empty batch: a replica's share of a short last batch
        tf.shape(logits)[0] > 0,
        lambda: _ctc_kernel(tf.transpose(rotated, [1, 0, 2]), tf.where(valid), values, logit_lengths),
        lambda: tf.zeros([0], tf.float32),
    )
    feasible = min_frames(labels, label_lengths) <= logit_lengths
    return tf.where(feasible, loss, tf.constant(np.inf, tf.float32))


@tf.custom_gradient
def _ctc_kernel(logits_tm, indices, values, lengths):
    """tf.raw_ops.CTCLoss on time-major logits [T, B, V] (blank last) -> [B]; its own gradient."""
    loss, grad = tf.raw_ops.CTCLoss(
        inputs=logits_tm,
        labels_indices=indices,
        labels_values=values,
        sequence_length=lengths,
        preprocess_collapse_repeated=False,
        ctc_merge_repeated=True,
        ignore_longer_outputs_than_inputs=True,  # infeasible rows: loss 0 here, +inf in ctc_loss
    )

    def backward(upstream):
        return upstream[None, :, None] * grad, None, None, None

    return loss, backward


def min_frames(labels, label_lengths) -> tf.Tensor:
    """Frames CTC needs for each label row [B, L]: its length plus its adjacent repeats -> [B]."""
    valid = tf.sequence_mask(label_lengths, tf.shape(labels)[1])
    repeats = tf.logical_and(tf.equal(labels[:, 1:], labels[:, :-1]), valid[:, 1:])
    return label_lengths + tf.reduce_sum(tf.cast(repeats, tf.int32), axis=1)


def greedy_decode(logits, lengths, blank: int = BLANK) -> list[list[int]]:
    """Best-path decoding: argmax per frame, merge repeats, drop blanks.

    logits: [B, T, V] (tf tensor or numpy; log-probabilities or raw scores alike), lengths: [B]
    valid frames per utterance; frames past a length are ignored. Returns B label-id lists.
    """
    logits, lengths = _as_numpy(logits, lengths)
    best = logits.argmax(axis=-1)  # [B, T]
    # A label is emitted where it differs from the previous frame's (repeats merge) and is no blank.
    previous = np.concatenate([np.full_like(best[:, :1], -1), best[:, :-1]], axis=1)
    in_length = np.arange(best.shape[1])[None, :] < lengths[:, None]
    emit = (best != previous) & (best != blank) & in_length
    return [row[keep].tolist() for row, keep in zip(best, emit)]


def beam_search_decode(
    logits, lengths, beam_width: int = 8, blank: int = BLANK, prune_prob: float = CHAR_PRUNE_PROB
) -> list[list[int]]:
    """CTC prefix beam search: the label sequence with the highest summed alignment probability.

    logits: [B, T, V] unnormalized scores (tf tensor or numpy), lengths: [B] valid frames.
    Each prefix keeps two log-probabilities (ending in blank / in its last label) so that
    "a a" (two labels) and "aa" (one) are told apart. Per frame only the beam_width + 1 most
    probable labels above prune_prob extend a prefix (0 disables the threshold). The final
    beams and the greedy path are rescored exactly, so the result is never less probable
    than greedy decoding's. Returns B label-id lists.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}")
    logits, lengths = _as_numpy(logits, lengths)
    log_probs = _log_softmax(logits.astype(np.float64))  # float64: sums over hundreds of frames
    greedy = greedy_decode(log_probs, lengths, blank)
    log_prune = np.log(prune_prob) if prune_prob > 0 else -np.inf
    decoded = []
    for utterance, length, best_path in zip(log_probs, lengths, greedy):
        beams = _prefix_beam_search(utterance[:length], beam_width, blank, log_prune)
        decoded.append(_most_probable(utterance[:length], beams + [best_path], blank))
    return decoded


def _as_numpy(logits, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Checks shapes ([B, T, V] and [B], lengths within T) and returns numpy arrays."""
    logits = np.asarray(logits)
    lengths = np.asarray(lengths).astype(np.int64).reshape(-1)
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, time, vocab], got shape {logits.shape}")
    if lengths.shape[0] != logits.shape[0]:
        raise ValueError(f"{lengths.shape[0]} lengths for a batch of {logits.shape[0]}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > logits.shape[1]):
        raise ValueError(f"lengths must lie in [0, {logits.shape[1]}], got {lengths.tolist()}")
    return logits, lengths


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class _PrefixTree:
    """Label prefixes as integer nodes (0 = empty prefix): equal prefixes share one node id,
    so beams that reach the same prefix by different paths merge by id, in O(1) per extension."""

    def __init__(self) -> None:
        self.parent = [-1]
        self.last = [-1]  # the prefix's last label; -1 for the empty prefix
        self._children: dict[tuple[int, int], int] = {}

    def child(self, node: int, label: int) -> int:
        """The node of prefix(node) + [label], created on first use."""
        key = (node, label)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = len(self.parent)
            self.parent.append(node)
            self.last.append(label)
        return found

    def labels(self, node: int) -> list[int]:
        out = []
        while node > 0:
            out.append(self.last[node])
            node = self.parent[node]
        return out[::-1]


def _prefix_beam_search(log_probs: np.ndarray, beam_width: int, blank: int, log_prune: float) -> list[list[int]]:
    """Decodes one utterance. log_probs: [T, V] log-softmax, valid frames only.

    Returns the final beams' label sequences (their beam scores are lower bounds: paths through
    pruned prefixes are lost, which is why the caller rescores them exactly).
    """
    tree = _PrefixTree()
    # The beam: prefix node ids, their last labels, log P(prefix, ends in blank / in its last label).
    beam = (np.zeros(1, np.int64), np.full(1, -1), np.zeros(1), np.full(1, -np.inf))
    for frame, candidates in zip(log_probs, _candidates(log_probs, beam_width, blank, log_prune)):
        beam = _step(tree, beam, frame, candidates, blank)
        if len(beam[0]) <= beam_width:  # nothing to prune (a frame no label may extend)
            continue
        order = np.argsort(-np.logaddexp(beam[2], beam[3]), kind="stable")[:beam_width]
        beam = tuple(part[order] for part in beam)
    return [tree.labels(int(node)) for node in beam[0]]


def _candidates(log_probs: np.ndarray, beam_width: int, blank: int, log_prune: float) -> list[np.ndarray]:
    """Per frame, the labels that may extend a prefix: the beam_width + 1 most probable non-blank
    labels above the threshold. A less probable label could only enter the beam through a merge:
    each beam has beam_width better extensions (beam_width + 1 less the one that repeats its last
    label, which needs a blank first and so may score lower), all ranking above it."""
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, : beam_width + 2]  # [T, K], blank may be in it
    keep = (order != blank) & (np.take_along_axis(log_probs, order, axis=1) >= log_prune)
    return [row[mask][: beam_width + 1] for row, mask in zip(order, keep)]


def _step(tree: _PrefixTree, beam: tuple, frame: np.ndarray, candidates: np.ndarray, blank: int) -> tuple:
    """One frame of the prefix recursion: N beams -> at most 2N merged entries, not yet pruned.

    Exact for the kept beam: every entry that could rank among the N best is produced.
    """
    nodes, last, p_blank, p_label = beam
    total = np.logaddexp(p_blank, p_label)
    # The prefix stays the same on a blank, or when its last label repeats without a blank between.
    stay_blank = total + frame[blank]
    stay_label = np.where(last >= 0, p_label + frame[np.maximum(last, 0)], -np.inf)
    if candidates.size == 0:
        return nodes, last, stay_blank, stay_label
    # A label equal to the prefix's last one starts a new label only after a blank.
    before = np.where(last[:, None] == candidates[None, :], p_blank[:, None], total[:, None])
    grown = before + frame[candidates][None, :]  # [N, C]: beam i extended by candidates[j]
    _merge_extensions_into_beam(tree, nodes, candidates, grown, stay_label)
    # Fresh prefixes never coincide with one another, so only the N best can survive pruning:
    # creating tree nodes for just those keeps the Python work per frame at O(N).
    best = np.argsort(-grown, axis=None, kind="stable")[: len(nodes)]
    best = best[np.isfinite(grown.ravel()[best])]
    rows, cols = np.unravel_index(best, grown.shape)
    children = [tree.child(n, c) for n, c in zip(nodes[rows].tolist(), candidates[cols].tolist())]
    return (
        np.concatenate([nodes, np.array(children, np.int64)]),
        np.concatenate([last, candidates[cols]]),
        np.concatenate([stay_blank, np.full(len(children), -np.inf)]),
        np.concatenate([stay_label, grown[rows, cols]]),
    )


def _merge_extensions_into_beam(tree, nodes, candidates, grown, stay_label) -> None:
    """Where beam i's prefix is beam k's prefix plus candidate j ("ab" = "a" + "b", both in the
    beam), adds grown[k, j] to stay_label[i] and removes it from grown (in place)."""
    position = {node: i for i, node in enumerate(nodes.tolist())}
    column = {label: j for j, label in enumerate(candidates.tolist())}
    for i, node in enumerate(nodes.tolist()):
        k, j = position.get(tree.parent[node]), column.get(tree.last[node])
        if k is not None and j is not None:  # the empty prefix has parent -1: never found
            stay_label[i] = np.logaddexp(stay_label[i], grown[k, j])
            grown[k, j] = -np.inf


def _most_probable(log_probs: np.ndarray, hypotheses: list[list[int]], blank: int) -> list[int]:
    """The hypothesis with the highest exact CTC log-probability. log_probs: [T, V] log-softmax."""
    hypotheses = [list(labels) for labels in dict.fromkeys(map(tuple, hypotheses))]  # greedy is often a beam
    return hypotheses[int(np.argmax(sequence_log_probs(log_probs, hypotheses, blank)))]


def sequence_log_probs(log_probs: np.ndarray, hypotheses: list[list[int]], blank: int = BLANK) -> np.ndarray:
    """log P(labels | frames) summed over all CTC alignments, for H label sequences at once: [H].

    log_probs: [T, V] log-softmax of one utterance's valid frames. Forward algorithm over each
    hypothesis' 2L+1 states (blank, label 1, blank, ..., label L, blank), padded to the longest;
    padding states only ever feed later padding states, so they never reach a real one.
    """
    sizes = np.array([2 * len(labels) + 1 for labels in hypotheses])
    if len(log_probs) == 0:
        return np.where(sizes == 1, 0.0, -np.inf)
    states = np.full((len(hypotheses), sizes.max()), blank)
    for h, labels in enumerate(hypotheses):
        states[h, 1 : sizes[h] : 2] = labels
    # A label state may skip the blank before it unless it repeats the label two states back.
    skip = np.zeros(states.shape)
    skip[:, 3::2] = states[:, 3::2] != states[:, 1:-2:2]
    # Probability space with per-frame rescaling (Rabiner): as exact as log space for the
    # sums that matter, and several times faster than logaddexp on every state.
    emissions = np.exp(log_probs)[:, states]  # [T, H, S]
    alpha = np.zeros(states.shape)
    alpha[:, :2] = emissions[0, :, :2]  # an alignment starts on the first blank or label
    scales = np.ones((len(log_probs), len(hypotheses)))
    for t in range(1, len(log_probs)):
        step = alpha.copy()
        step[:, 1:] += alpha[:, :-1]
        step[:, 2:] += alpha[:, :-2] * skip[:, 2:]
        step *= emissions[t]
        scale = step.max(axis=1)
        scales[t] = np.where(scale > 0, scale, 1.0)  # an impossible hypothesis stays at zero
        alpha = step / scales[t][:, None]
    rows = np.arange(len(hypotheses))
    # It ends on the final blank or on the last label (the empty sequence has only the blank).
    final = alpha[rows, sizes - 1] + np.where(sizes > 1, alpha[rows, sizes - 2], 0.0)
    with np.errstate(divide="ignore"):
        return np.log(final) + np.log(scales).sum(axis=0)


# --- forced alignment ------------------------------------------------------------------------------


def forced_align(log_probs: np.ndarray, labels, blank: int = BLANK) -> np.ndarray:
    """The most probable CTC alignment (Viterbi path) of a label sequence with an utterance's frames.

    log_probs: [T, V] log-softmax of one utterance's valid frames; labels: [L] ids, no blank.
    Returns int64 [T]: for each frame, the position (0 .. L-1) in labels of the label the frame
    emits, or -1 where it emits a blank. Every label gets at least one frame, in order, and a label
    equal to the one before it is separated from it by a blank frame. The search runs over the
    2L+1 states (blank, label 1, blank, ..., label L, blank) as in sequence_log_probs, with max in
    place of sum; ties go to the earliest state change. Raises ValueError when the labels cannot
    fit in the frames (L plus adjacent repeats > T).
    """
    log_probs = np.asarray(log_probs, np.float64)
    labels = np.asarray(labels, np.int64).reshape(-1)
    num_frames, num_labels = len(log_probs), len(labels)
    needed = num_labels + int(np.sum(labels[1:] == labels[:-1]))
    if needed > num_frames:
        raise ValueError(f"{num_labels} labels need at least {needed} frames, got {num_frames}")
    if num_labels == 0:
        return np.full(num_frames, -1, np.int64)
    states = np.full(2 * num_labels + 1, blank, np.int64)
    states[1::2] = labels
    skip = np.zeros(len(states), bool)  # a label state may come straight from the label before it ...
    skip[3::2] = labels[1:] != labels[:-1]  # ... unless it repeats it (then a blank must come between)
    moves, final = _viterbi(log_probs[:, states], skip)
    # It ends on the final blank or on the last label.
    state = len(states) - 1 if final[-1] >= final[-2] else len(states) - 2
    if not np.isfinite(final[state]):
        raise ValueError("no alignment of the labels with these frames has a nonzero probability")
    path = np.empty(num_frames, np.int64)
    for t in range(num_frames - 1, -1, -1):
        path[t] = state
        state -= int(moves[t, state])
    return np.where(path % 2 == 1, (path - 1) // 2, -1)


def _viterbi(emissions: np.ndarray, skip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best-path recursion over CTC states. emissions: [T, S] log-probabilities of each state's
    label at each frame; skip: [S], where a state may be entered from two states back. Returns the
    back pointers [T, S] int8 (0: stayed, 1: came from the state before, 2: skipped a blank) and
    the best log-probability [S] of ending in each state."""
    num_frames, num_states = emissions.shape
    moves = np.zeros((num_frames, num_states), np.int8)
    score = np.full(num_states, -np.inf)
    score[:2] = emissions[0, :2]  # an alignment starts on the first blank or the first label
    from_before = np.full(num_states, -np.inf)
    from_skip = np.full(num_states, -np.inf)
    for t in range(1, num_frames):
        from_before[1:] = score[:-1]
        from_skip[2:] = np.where(skip[2:], score[:-2], -np.inf)
        best = score.copy()
        for move, candidate in ((1, from_before), (2, from_skip)):
            better = candidate > best
            best[better] = candidate[better]
            moves[t, better] = move
        score = best + emissions[t]
    return moves, score


def align_words(log_probs: np.ndarray, labels, separator: int, blank: int = BLANK) -> list[tuple[int, int, int, int, float]]:
    """Words of a decoded label sequence with their frames, from its forced alignment.

    log_probs: [T, V] log-softmax of one utterance's valid frames; labels: [L] ids of the text;
    words are the runs of labels between separator labels (the space). Returns per word, in
    order, (first label, end label (exclusive), first frame, last frame, confidence): the frames
    run from the first frame of its first character to the last frame of its last one, and the
    confidence is the mean posterior of its characters over the frames aligned to them.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    positions = forced_align(log_probs, labels, blank)
    frames = np.flatnonzero(positions >= 0)  # the frames that emit a label, in label order
    owner = positions[frames]
    posterior = np.exp(np.asarray(log_probs, np.float64)[frames, labels[owner]])
    first_frame = np.full(len(labels), -1)
    first_frame[owner[::-1]] = frames[::-1]  # written last to first: each label keeps its first frame
    last_frame = np.full(len(labels), -1)
    last_frame[owner] = frames
    words = []
    for start, end in _runs(labels != separator):
        mine = (owner >= start) & (owner < end)
        words.append((start, end, int(first_frame[start]), int(last_frame[end - 1]), float(posterior[mine].mean())))
    return words


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a boolean [N]."""
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))
