"""asr: a CTC speech recognizer on TensorFlow 2.

    import asr
    recognizer = asr.load_model("recipes/librispeech_small/model")
    print(recognizer.transcribe(["speech.wav"]))
"""

__version__ = "0.1.0"


def load_model(model_dir):
    """A Recognizer for a model directory (config.json, vocab.json, stats.json, weights.npz)."""
    from asr.inference import Recognizer

    return Recognizer(model_dir)


def transcribe(model_dir, paths, beam_width: int = 1) -> list[str]:
    """Transcripts of audio files (any sample rate, mono or stereo) with a model directory."""
    return load_model(model_dir).transcribe(list(paths), beam_width=beam_width)
