"""Manifests, CTC-feasibility filtering, batch planning and the tf.data pipeline."""

import json

import numpy as np
import pytest
import soundfile as sf

from asr.config import FeatureConfig
from asr.corpora import read_subset
from asr.data import (
    Utterance,
    ctc_min_length,
    filter_utterances,
    make_dataset,
    padding_fraction,
    plan_batches,
    read_manifest,
    write_manifest,
)
from asr.errors import ConfigError, DataError
from asr.features import compute_stats, features_for_model, frames_for_duration
from asr.text import Vocabulary

CFG = FeatureConfig(normalization="utterance")
VOCAB = Vocabulary()


def write_lines(path, entries):
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    return path


@pytest.fixture
def corpus(tmp_path):
    """Eight short WAVs of 0.2-0.9 s and their utterances."""
    rng = np.random.default_rng(0)
    utts = []
    for i in range(8):
        seconds = round(0.2 + 0.1 * i, 2)
        path = tmp_path / "audio" / f"u{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", str(path), seconds, "ab" * (i + 1), "spk"))
    return utts


def test_manifest_round_trip_and_relative_paths(tmp_path, corpus):
    path = write_manifest(tmp_path / "m.jsonl", corpus)
    assert read_manifest(path) == corpus
    rel = write_lines(tmp_path / "rel.jsonl", [{"audio_filepath": "audio/u0.wav", "duration": 0.2, "text": "hi", "extra": 1}, ""])
    (utt,) = read_manifest(rel)
    assert utt.audio_filepath == corpus[0].audio_filepath and utt.id == "u0" and utt.speaker is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"audio_filepath": "audio/u0.wav", "text": "x"}', "missing key"),
        ('{"audio_filepath": "audio/u0.wav", "duration": -1, "text": "x"}', "duration must be"),
        ('{"audio_filepath": "audio/u0.wav", "duration": 1, "text": 5}', "text must be"),
        ('{"audio_filepath": "audio/none.wav", "duration": 1, "text": "x"}', "does not exist"),
        ('{"audio_filepath": "audio/u1.wav", "duration": 1, "text": "x", "id": "u0"}', "already used on line 1"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path, corpus, line, message):
    good = {"audio_filepath": "audio/u0.wav", "duration": 0.2, "text": "x"}
    path = write_lines(tmp_path / "bad.jsonl", [good, "", line])
    with pytest.raises(DataError, match=message) as info:
        read_manifest(path)
    assert "bad.jsonl:3:" in str(info.value)


def test_ctc_min_length():
    assert ctc_min_length([]) == 0
    assert ctc_min_length([1, 2, 3]) == 3
    assert ctc_min_length([1, 1, 2, 2, 2]) == 8  # "aabbb" needs a blank inside each repeat


def test_filter_skips_what_ctc_cannot_align(corpus):
    utts = corpus[:3] + [Utterance("oov", corpus[0].audio_filepath, 0.2, "ça", None), Utterance("rep", corpus[0].audio_filepath, 0.2, "a" * 11, None)]
    halve = lambda frames: frames // 2  # noqa: E731  -- 0.2 s = 21 frames -> 10 output steps
    kept, skipped = filter_utterances(utts, VOCAB, CFG, output_length_fn=halve, max_duration=0.35)
    assert [u.id for u, _ in kept] == ["u0", "u1"]
    reasons = dict(skipped)
    assert set(reasons) == {"u2", "oov", "rep"}
    assert "max_duration" in reasons["u2"] and "'ç'" in reasons["oov"] and "too short for CTC" in reasons["rep"]
    assert kept[0][1] == VOCAB.encode("ab")


def test_plan_batches_is_seeded_and_complete():
    durations = np.random.default_rng(1).uniform(1, 20, 2003)  # ~100 per 1 s bucket
    plan = plan_batches(durations, 16, 1.0, training=True, seed=5, epoch=2)
    assert plan == plan_batches(durations, 16, 1.0, training=True, seed=5, epoch=2)
    assert plan != plan_batches(durations, 16, 1.0, training=True, seed=5, epoch=3)
    assert sorted(i for b in plan for i in b) == list(range(2003))
    assert sorted(len(b) for b in plan)[1:] == [16] * 125  # only one short batch
    assert all(np.ptp(durations[b]) < 2.0 for b in plan)  # a batch spans at most two neighbouring buckets
    ordered = [i for b in plan_batches(durations, 16, 1.0, training=False) for i in b]
    assert list(durations[ordered]) == sorted(durations)


def test_dataset_batches(corpus, tmp_path):
    dataset, skipped = make_dataset(corpus, VOCAB, CFG, None, batch_size=3, bucket_width=0.25, training=True, seed=1, cache_dir=tmp_path / "c")
    assert skipped == [] and len(dataset) == 3
    batches = list(dataset.as_numpy_iterator())
    by_id = {u.id: u for u in corpus}
    seen = []
    for batch in batches:
        feats, lengths = batch["features"], batch["feature_lengths"]
        assert feats.dtype == np.float32 and feats.shape[2] == 39 and feats.shape[1] == lengths.max()
        for b, raw_id in enumerate(batch["ids"]):
            utt = by_id[raw_id.decode()]
            seen.append(utt.id)
            assert lengths[b] == frames_for_duration(utt.duration, CFG)
            # the training path gives exactly the inference path's features
            np.testing.assert_array_equal(feats[b, : lengths[b]], features_for_model(utt.audio_filepath, CFG, None))
            assert not feats[b, lengths[b] :].any()
            labels = batch["labels"][b]
            assert VOCAB.decode(labels[: batch["label_lengths"][b]]) == utt.text
            assert not labels[batch["label_lengths"][b] :].any()
    assert sorted(seen) == sorted(by_id)
    assert 0 <= padding_fraction(batches) < 0.5
    # autotuning off: with it, dropping an epoch's iterator waited up to 60 s (bench/data_iterator.py)
    assert dataset.options().autotune.enabled is False


def test_dataset_order_and_resume(corpus):
    def ids(**kw):
        dataset, _ = make_dataset(corpus, VOCAB, CFG, None, batch_size=2, bucket_width=0.25, **kw)
        return [list(b["ids"]) for b in dataset.as_numpy_iterator()]

    epoch0 = ids(training=True, seed=3, epoch=0)
    assert ids(training=True, seed=3, epoch=0) == epoch0
    assert ids(training=True, seed=3, epoch=1) != epoch0
    assert ids(training=True, seed=3, epoch=0, start_batch=2) == epoch0[2:]
    assert [i for b in ids(training=False) for i in b] == [f"u{i}".encode() for i in range(8)]  # shortest first


def test_real_librispeech_bucketing_pads_little(librispeech_root):
    """On the shared LibriSpeech data, batches of 16 bucketed by 1 s hold < 15% padded frames."""
    utts = read_subset(librispeech_root, "train-clean-5")
    frames = np.array([frames_for_duration(u.duration, CFG) for u in utts])
    plan = plan_batches([u.duration for u in utts], 16, 1.0, training=True, seed=0, epoch=0)
    padded = sum(len(b) * frames[b].max() - frames[b].sum() for b in plan)
    total = sum(len(b) * frames[b].max() for b in plan)
    assert padded / total < 0.15


def test_global_normalization_needs_stats(corpus):
    cfg = FeatureConfig()  # normalization: global
    with pytest.raises(ConfigError, match="statistics"):
        make_dataset(corpus, VOCAB, cfg, None, batch_size=4, bucket_width=1.0, training=False)
    stats = compute_stats([u.audio_filepath for u in corpus], cfg)
    dataset, _ = make_dataset(corpus, VOCAB, cfg, stats, batch_size=8, bucket_width=1.0, training=False)
    batch = next(dataset.as_numpy_iterator())
    first = corpus[0]  # the shortest comes first
    expected = features_for_model(first.audio_filepath, cfg, stats)
    np.testing.assert_array_equal(batch["features"][0, : len(expected)], expected)


def test_manifest_text_is_normalized(tmp_path):
    """A user's manifest may hold raw transcripts: they are normalized once, on reading."""
    import json

    import numpy as np
    import soundfile as sf

    from asr.data import read_manifest

    sf.write(tmp_path / "a.wav", np.zeros(1600, "f4"), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "a.wav", "duration": 0.1, "text": "Hello,  World! It's"}) + "\n")
    assert read_manifest(tmp_path / "m.jsonl")[0].text == "hello world it's"
