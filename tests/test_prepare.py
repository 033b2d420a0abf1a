"""asr.corpora and data_scripts: LibriSpeech and FSDD manifests, resumable verified downloads, staged extraction."""

import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading

import numpy as np
import pytest
import soundfile as sf

from asr import download as dl
from asr.corpora import SUMMARY, download_subsets, parse_name, prepare_fsdd, prepare_librispeech
from asr.data import read_manifest
from asr.errors import DataError

DEV_SPEAKERS = ("32", "669", "7312")  # two women and a man, as in recipes/librispeech_small


def test_prepare_librispeech_holds_out_dev_speakers(librispeech_root, tmp_path):
    train_path, dev_path = prepare_librispeech(librispeech_root, tmp_path / "out", ["train-clean-5"], DEV_SPEAKERS)
    train, dev = read_manifest(train_path), read_manifest(dev_path)
    assert {u.speaker for u in dev} == set(DEV_SPEAKERS)
    assert not {u.speaker for u in train} & set(DEV_SPEAKERS)
    assert len(train) + len(dev) == 961
    utt = train[0]
    assert utt.id.startswith(f"{utt.speaker}-") and utt.audio_filepath.endswith(f"{utt.id}.flac")
    assert utt.text == utt.text.lower() and 0 < utt.duration < 40
    assert sf.info(utt.audio_filepath).frames / 16000 == pytest.approx(utt.duration)
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["oov_utterances"] == 0

    before = train_path.stat().st_mtime_ns
    assert prepare_librispeech(librispeech_root, tmp_path / "out", ["train-clean-5"], DEV_SPEAKERS) == (train_path, dev_path)
    assert train_path.stat().st_mtime_ns == before  # a finished stage is not redone
    with pytest.raises(DataError, match="dev speaker"):
        prepare_librispeech(librispeech_root, tmp_path / "other", ["train-clean-5"], ["99999"])
    assert download_subsets(librispeech_root, ["train-clean-5"]) == librispeech_root  # present: nothing fetched or written


def fake_librispeech(root):
    """A two-utterance LibriSpeech tree whose second transcript holds characters outside the alphabet."""
    chapter = root / "LibriSpeech" / "dev-clean-2" / "42" / "7"
    chapter.mkdir(parents=True)
    for i in range(2):
        sf.write(chapter / f"42-7-000{i}.flac", np.zeros(8000, np.float32), 16000)
    (chapter / "42-7.trans.txt").write_text("42-7-0000 HELLO WORLD\n42-7-0001 NAÏVE CAFÉ 1\n")


def test_prepare_counts_out_of_vocabulary_characters(tmp_path):
    fake_librispeech(tmp_path / "corpus")
    train_path, dev_path = prepare_librispeech(tmp_path / "corpus", tmp_path / "out", ["dev-clean-2"])
    assert [u.text for u in read_manifest(train_path)] == ["hello world", "naïve café 1"]
    assert dev_path.read_text() == ""  # no dev speakers: an empty dev manifest, which read_manifest refuses
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert summary["oov_characters"] == {"ï": 1, "é": 1, "1": 1} and summary["oov_utterances"] == 1
    with pytest.raises(DataError, match="no LibriSpeech transcripts"):
        prepare_librispeech(tmp_path / "corpus", tmp_path / "out2", ["train-clean-5"])


def test_fsdd_names_and_splits(fsdd_dir, tmp_path):
    assert parse_name("7_jackson_32.wav") == ("seven", "jackson", 32)
    with pytest.raises(DataError):
        parse_name("jackson.wav")
    train_path, test_path = prepare_fsdd(fsdd_dir, tmp_path / "by_index")
    train, test = read_manifest(train_path), read_manifest(test_path)
    assert (len(train), len(test)) == (2700, 300)
    assert all(int(u.id.split("_")[2]) < 5 for u in test)
    seven = next(u for u in test if u.id == "7_jackson_3")
    assert (seven.text, seven.speaker) == ("seven", "jackson")


def test_fsdd_speaker_split(tmp_path):
    recordings = tmp_path / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for digit in (3, 8):
        for speaker in ("theo", "lucas"):
            for index in range(6):
                sf.write(recordings / f"{digit}_{speaker}_{index}.wav", np.zeros(800, np.float32), 8000)
    train_path, test_path = prepare_fsdd(tmp_path / "fsdd", tmp_path / "out", test_speakers=["theo"])
    assert {u.speaker for u in read_manifest(test_path)} == {"theo"}
    assert {u.speaker for u in read_manifest(train_path)} == {"lucas"}
    assert {u.text for u in read_manifest(train_path)} == {"three", "eight"}
    with pytest.raises(DataError, match="test speaker"):
        prepare_fsdd(tmp_path / "fsdd", tmp_path / "out2", test_speakers=["nobody"])


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring 'Range: bytes=N-'."""

    payload = b""

    def do_GET(self):
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    RangeHandler.payload = bytes(range(256)) * 4000
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/file.bin", RangeHandler.payload
    httpd.shutdown()


def test_download_resumes_and_verifies(server, tmp_path):
    url, payload = server
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(payload[:1000])  # an interrupted earlier run
    assert dl.download(url, dest, md5).read_bytes() == payload
    assert not (tmp_path / "file.bin.part").exists()
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download(url, tmp_path / "other.bin", "0" * 32)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()


def test_extract_once(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    marker = tmp_path / "a.extracted"
    dl.extract(archive, tmp_path / "out", marker)
    assert (tmp_path / "out" / "data" / "x.txt").read_text() == "hi" and marker.is_file()
    (tmp_path / "out" / "data" / "x.txt").unlink()
    dl.extract(archive, tmp_path / "out", marker)  # done already: not extracted again
    assert not (tmp_path / "out" / "data" / "x.txt").exists()


UPPER_ARPA = """\\data\\
ngram 1=5
ngram 2=2

\\1-grams:
-1.0\t<unk>\t0
0\t<s>\t-0.30103
-1.0\t</s>\t0
-0.69897\tTHE\t-0.30103
-1.2E+00\tCAT'S\t-0.30103

\\2-grams:
-0.1\t<s> THE
-0.2\tTHE CAT'S

\\end\\
"""


class FilesHandler(RangeHandler):
    """Serves the files of FILES by name (with Range), 404 for anything else."""

    files: dict[str, bytes] = {}

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        RangeHandler.payload = self.files[name]
        super().do_GET()


def test_librispeech_lm_becomes_an_lm_directory(tmp_path):
    """OpenSLR 11's layout served locally: downloaded, verified, lower-cased, loadable by the decoder."""
    from asr.decode import DecodeOptions, Decoder, LanguageModel, resolve
    from asr.text import Vocabulary
    from data_scripts.librispeech_lm import LMS, VOCAB, fetch_librispeech_lm

    arpa_name, vocab_name = LMS["3-gram.pruned.1e-7"][0], VOCAB[0]
    FilesHandler.files = {arpa_name: gzip.compress(UPPER_ARPA.encode()), vocab_name: b"THE\nCAT'S\n"}
    md5s = {name: hashlib.md5(data).hexdigest() for name, data in FilesHandler.files.items()}
    httpd = http.server.HTTPServer(("127.0.0.1", 0), FilesHandler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_port}/resources/11"
    try:
        with pytest.raises(DataError, match="checksum mismatch"):
            fetch_librispeech_lm(tmp_path / "bad", base_url=base, checksums={arpa_name: "0" * 32, vocab_name: md5s[vocab_name]})
        assert not (tmp_path / "bad").exists()
        out = fetch_librispeech_lm(tmp_path / "lm", base_url=base, checksums=md5s)
    finally:
        httpd.shutdown()
    lm = LanguageModel.load(out)
    assert lm.words == ("the", "cat's") and lm.info["ngrams"] == {"1": 5, "2": 2}
    assert "-0.2\tthe cat's" in (out / "lm.arpa").read_text() and "-1.2e+00\tcat's" in (out / "lm.arpa").read_text()
    Decoder(Vocabulary(), resolve(DecodeOptions(lm_dir=str(out)), 1))  # KenLM loads it
    assert fetch_librispeech_lm(tmp_path / "lm", base_url="http://127.0.0.1:9/unreachable", checksums=md5s) == out  # done: no download
