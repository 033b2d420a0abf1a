"""LM decoding on the dev set: ctc-beam-decoder (what asr uses) against flashlight-text, WER and RTF side by side.

The acoustic log-probabilities of the dev manifest are computed once; then each decoder decodes
them at the same beam widths with the same LM directory (asr lm build), and the decoding time
alone is divided by the audio duration (RTF; lower is faster). ctc-beam-decoder runs with the LM
directory's tuned weights (asr lm tune); flashlight-text's lexicon decoder scales the LM
differently, so it gets a small grid of its own and its best point is printed. Greedy and
asr.ctc's prefix beam search (no LM) are the baselines.

    pip install -e ".[bench]"   # flashlight-text, for the comparison only
    python bench/lm_decode.py recipes/librispeech_small/model exp/librispeech_small/data/dev.jsonl --lm exp/lm/3gram_p001
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from asr.data import read_manifest
from asr.decode import DecodeOptions, Decoder, LanguageModel, lexicon_words, resolve
from asr.evaluate import error_rates
from asr.inference import Recognizer

FLASHLIGHT_GRID = ((1.0, -1.0), (1.5, -1.0), (1.5, 0.0), (2.0, -1.0), (2.0, -2.0))  # (lm_weight, word_score)
FLASHLIGHT_BEAM_THRESHOLD = 25.0  # hypotheses this far below the best are dropped (torchaudio's default)


def timed_decode(decode_one, posteriors) -> tuple[list[str], float, float]:
    """Hypotheses, wall seconds and CPU seconds of this process (steadier on a shared machine:
    the decoders run on one thread)."""
    start, cpu = time.perf_counter(), time.process_time()
    hyps = [" ".join(decode_one(lp).split()) for lp in posteriors]
    return hyps, time.perf_counter() - start, time.process_time() - cpu


def flashlight_decoder(recognizer: Recognizer, lm: LanguageModel, beam: int, lm_weight: float, word_score: float):
    """flashlight-text's lexicon decoder over the same ARPA and word list, as torchaudio builds it."""
    from flashlight.lib.text.decoder import (CriterionType, KenLM, LexiconDecoder, LexiconDecoderOptions,
                                             SmearingMode, Trie)
    from flashlight.lib.text.dictionary import Dictionary

    vocab = recognizer.vocab
    space = vocab.encode(" ")[0]
    words = lexicon_words(lm.words, vocab)[0]
    word_dict = Dictionary()
    for word in ["<unk>", *words]:
        word_dict.add_entry(word)
    kenlm = KenLM(str(lm.arpa), word_dict)
    trie, start = Trie(vocab.size, space), kenlm.start(False)
    for word in words:
        index = word_dict.get_index(word)
        trie.insert(vocab.encode(word) + [space], index, kenlm.score(start, index)[1])
    trie.smear(SmearingMode.MAX)
    options = LexiconDecoderOptions(beam_size=beam, beam_size_token=vocab.size, beam_threshold=FLASHLIGHT_BEAM_THRESHOLD,
                                    lm_weight=lm_weight, word_score=word_score, unk_score=float("-inf"), sil_score=0.0,
                                    log_add=False, criterion_type=CriterionType.CTC)
    decoder = LexiconDecoder(options, trie, kenlm, space, vocab.blank, word_dict.get_index("<unk>"), [], False)

    def decode_one(log_probs):
        # Every spelling ends in a space; one certain space frame lets the last word end too.
        closing = np.full((1, log_probs.shape[1]), -1e4, np.float32)
        closing[0, space] = 0.0
        frames = np.ascontiguousarray(np.concatenate([log_probs, closing]), np.float32)
        best = decoder.decode(frames.ctypes.data, frames.shape[0], frames.shape[1])[0]
        return " ".join(word_dict.get_entry(i) for i in best.words if i >= 0)

    return decode_one


def report(name: str, refs: list[str], hyps: list[str], seconds: float, cpu_seconds: float, audio: float) -> float:
    """Prints one decoder's line and returns its decoding seconds."""
    rates = error_rates(refs, hyps)
    print(f"{name:<48} WER {100 * rates['wer']:6.2f}%  CER {100 * rates['cer']:6.2f}%  "
          f"RTF {seconds / audio:.4f} (CPU time {cpu_seconds / audio:.4f})", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("manifest")
    parser.add_argument("--lm", required=True, help="an LM directory, tuned with asr lm tune")
    parser.add_argument("--beams", type=int, nargs="+", default=[50, 100])
    args = parser.parse_args()
    recognizer = Recognizer(args.model_dir)
    utts = read_manifest(args.manifest)
    posteriors = recognizer.posteriors([recognizer.features(u.audio_filepath) for u in utts])
    refs, audio = [u.text for u in utts], sum(u.duration for u in utts)
    print(f"{len(utts)} utterances, {audio / 60:.1f} min; LM {args.lm}")
    for name, options in {"greedy": DecodeOptions(beam_width=1), "asr.ctc prefix beam 8 (no LM)": DecodeOptions(beam_width=8)}.items():
        report(name, refs, *timed_decode(Decoder(recognizer.vocab, resolve(options, 1)).decode_one, posteriors), audio)
    lm = LanguageModel.load(args.lm)
    for beam in args.beams:
        ours = {}
        for lexicon in (True, False):
            decoder = Decoder(recognizer.vocab, resolve(DecodeOptions(beam_width=beam, lm_dir=args.lm, lexicon=lexicon), 1))
            s = decoder.settings
            name = f"ctc-beam-decoder beam {beam} {'lexicon' if lexicon else 'lexicon-free'} a={s.lm_weight:g} b={s.word_score:g}"
            ours[lexicon] = report(name, refs, *timed_decode(decoder.decode_one, posteriors), audio)
        try:
            theirs = [report(f"flashlight-text beam {beam} lexicon a={alpha:g} b={beta:g}", refs,
                             *timed_decode(flashlight_decoder(recognizer, lm, beam, alpha, beta), posteriors), audio)
                      for alpha, beta in FLASHLIGHT_GRID]
            print(f"beam {beam}: lexicon decoding time, ctc-beam-decoder / flashlight-text (median of its grid): "
                  f"{ours[True] / float(np.median(theirs)):.2f}")
        except ImportError:
            print("flashlight-text is not installed (pip install -e '.[bench]'): no comparison")


if __name__ == "__main__":
    main()
