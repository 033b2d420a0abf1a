"""The model committed under recipes/librispeech_small/model works right after installation."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from asr.cli import main
from asr.evaluate import error_rates

MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
README_DEV_CER = 0.2174  # recipes/librispeech_small/README.md, greedy: the 96-epoch run (native loop), epoch 95
# a held-out (dev) speaker's 15 s utterance, the main README's example; the 2 s one used before
# (7312-92432-0000, 33 characters) is too short for a 40% bound to mean much: run 3's model got
# under it, run 5's gets 42% there while its CER over the 78 dev utterances fell from 28.7% to 25.2%
DEV_UTTERANCE = ("32/21631/32-21631-0000.flac", "32-21631-0000")


def reference(root: Path) -> tuple[Path, str]:
    audio = root / "LibriSpeech" / "train-clean-5" / DEV_UTTERANCE[0]
    transcript = audio.parent / ("-".join(DEV_UTTERANCE[1].split("-")[:2]) + ".trans.txt")
    line = next(line for line in transcript.read_text().splitlines() if line.startswith(DEV_UTTERANCE[1]))
    return audio, line.split(" ", 1)[1].lower()


@pytest.fixture(scope="module")
def recognizer():
    import asr

    return asr.load_model(MODEL)


def test_transcribes_an_unseen_speaker(recognizer, librispeech_root):
    audio, text = reference(librispeech_root)
    hyp = recognizer.transcribe([audio])[0]
    assert error_rates([text], [hyp])["cer"] < 0.4, (text, hyp)


def test_dev_speakers_score_what_the_readme_says(recognizer, librispeech_root, tmp_path):
    """Greedy CER on the recipe's 78 held-out utterances: the README's figure, under the 30% target."""
    from asr.corpora import prepare_librispeech
    from asr.data import read_manifest
    from asr.inference import evaluate_manifest

    config = recognizer.config
    _, dev_path = prepare_librispeech(librispeech_root, tmp_path, config.data.subsets, config.data.dev_speakers, config.text.alphabet)
    results, skipped = evaluate_manifest(recognizer, read_manifest(dev_path))
    assert not skipped
    rates = error_rates([r["reference"] for r in results], [r["hypothesis"] for r in results])
    assert len(results) == 78
    assert abs(rates["cer"] - README_DEV_CER) < 0.0005 and rates["cer"] <= 0.30, rates


def test_any_rate_and_stereo_give_the_same_transcript(recognizer, librispeech_root, tmp_path):
    audio, _ = reference(librispeech_root)
    samples, rate = sf.read(audio, dtype="float32")
    stereo = np.stack([soxr.resample(samples, rate, 44100)] * 2, axis=1)
    sf.write(tmp_path / "stereo44k.wav", stereo, 44100)
    original, converted = recognizer.transcribe([audio, tmp_path / "stereo44k.wav"])
    assert error_rates([original], [converted])["cer"] < 0.1, (original, converted)


def test_long_file_and_cli(librispeech_root, tmp_path, capsys):
    """A three-minute file goes through `asr transcribe` in one piece."""
    audio, text = reference(librispeech_root)
    samples, rate = sf.read(audio, dtype="float32")
    repeats = int(np.ceil(180 * rate / len(samples)))
    sf.write(tmp_path / "long.flac", np.tile(samples, repeats), rate)
    assert main(["transcribe", str(MODEL), str(tmp_path / "long.flac"), "--beam-width", "4"]) == 0
    words = capsys.readouterr().out.split()
    assert len(words) > repeats * len(text.split()) * 0.6
