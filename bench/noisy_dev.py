"""Greedy dev CER/WER of models on a manifest's audio clean and with noise added at fixed SNRs.

Writes noisy copies of the manifest's audio (16-bit WAV, asr.augment.add_noise: pink noise,
power falling as 1/f from 50 Hz, at each --snr in dB, one generator seeded per utterance, so
every model hears the same noise) and a manifest for each into --out, then transcribes each
version with each model (greedy) and prints CER and WER. It measures what `augment.noise_prob`
buys on noisy speech and costs on clean speech. --out must be outside the shared data folder.

    python bench/noisy_dev.py exp/librispeech_small/data/dev.jsonl MODEL_DIR [MODEL_DIR ...]
                              --out /tmp/noisy_dev [--snr 20 10] [--exponent 1.0]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import load_audio
from asr.augment import add_noise
from asr.data import Utterance, read_manifest, write_manifest
from asr.evaluate import error_rates
from asr.inference import Recognizer

SAMPLE_RATE = 16000  # the noisy copies' rate (the recipes' features.sample_rate)


def noisy_manifest(utterances: list[Utterance], out: Path, snr_db: float, exponent: float) -> Path:
    """Writes each utterance's audio with noise at snr_db into out/snr<snr_db>/ and its manifest."""
    folder = out / f"snr{snr_db:g}"
    folder.mkdir(parents=True, exist_ok=True)
    noisy = []
    for utt in utterances:
        audio = load_audio(utt.audio_filepath, SAMPLE_RATE)
        rng = np.random.default_rng(zlib.crc32(utt.id.encode()))
        path = folder / f"{utt.id}.wav"
        if path.resolve() == Path(utt.audio_filepath).resolve():
            raise SystemExit(f"{path}: --out would overwrite the original audio; give another folder")
        sf.write(path, np.clip(add_noise(audio, SAMPLE_RATE, snr_db, exponent, rng), -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
        noisy.append(Utterance(utt.id, str(path), utt.duration, utt.text, utt.speaker))
    return write_manifest(folder / "manifest.jsonl", noisy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out", required=True, help="folder for the noisy copies (created)")
    parser.add_argument("--snr", type=float, nargs="+", default=[20.0, 10.0], help="signal-to-noise ratios, dB")
    parser.add_argument("--exponent", type=float, default=1.0, help="noise color: 0 white, 1 pink, 2 brown")
    args = parser.parse_args()
    utterances = read_manifest(args.manifest)
    versions = {"clean": utterances}
    for snr in args.snr:
        versions[f"{snr:g} dB"] = read_manifest(noisy_manifest(utterances, Path(args.out), snr, args.exponent))
    rows = []
    for model in args.models:
        recognizer = Recognizer(model)
        for name, utts in versions.items():
            hyps = recognizer.transcribe([u.audio_filepath for u in utts])
            rates = error_rates([u.text for u in utts], hyps)
            rows.append({"model": model, "audio": name, "cer": rates["cer"], "wer": rates["wer"]})
            print(f"{model}  {name:>8}: CER {100 * rates['cer']:.2f}%  WER {100 * rates['wer']:.2f}%", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
