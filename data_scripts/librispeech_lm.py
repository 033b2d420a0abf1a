"""LibriSpeech's official n-gram LMs (OpenSLR 11) as asr LM directories, for users with the internet.

    python -m data_scripts.librispeech_lm --out-dir exp/lm/librispeech_3gram --lm 3-gram.pruned.1e-7

Stage 1 downloads the gzipped ARPA and the 200,000-word vocabulary (resumable, md5-verified as
OpenSLR publishes them) into OUT_DIR.downloads/; stage 2 writes OUT_DIR as an LM directory like
`asr lm build` makes: lm.arpa and words.txt in lower case (the OpenSLR files are upper case,
asr's transcripts lower case), and lm.json saying where they came from. Then tune it as any LM:
`asr lm tune MODEL DEV_MANIFEST --lm OUT_DIR`. Running it again after it finished does nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from asr.download import download, mark_done, stage_done
from asr.errors import AsrError, DataError
from asr.io import atomic_dir
from asr.lm import ARPA_FILE, INFO_FILE, WORDS_FILE

log = logging.getLogger(__name__)

OPENSLR_LM = "https://www.openslr.org/resources/11"
# md5 of each file as listed in OpenSLR 11's md5sum.txt.
LMS = {
    "3-gram.pruned.1e-7": ("3-gram.pruned.1e-7.arpa.gz", "9a0f1325bcaf3a0f7b7be4be10823c2a"),
    "3-gram.pruned.3e-7": ("3-gram.pruned.3e-7.arpa.gz", "8f67ec741827742eee05799ab7605b50"),
    "4-gram": ("4-gram.arpa.gz", "6abdcd5b055bd482e4f9defe91d40408"),
}
VOCAB = ("librispeech-vocab.txt", "bf3cc7a50112831ed8b0afa40cae96a5")
MARKER = ".librispeech_lm.json"  # in OUT_DIR: the arguments of the finished conversion
_NGRAM_COUNT = re.compile(r"^ngram (\d+)=(\d+)$")


def fetch_librispeech_lm(out_dir: str | Path, lm: str = "3-gram.pruned.1e-7", base_url: str = OPENSLR_LM,
                         checksums: dict[str, str] | None = None) -> Path:
    """Downloads one of LMS and its vocabulary and writes out_dir as an LM directory; returns it.

    checksums: file name -> md5, overriding the published ones (for tests against a local server).
    """
    if lm not in LMS:
        raise DataError(f"unknown LibriSpeech LM {lm!r}; known: {', '.join(LMS)}")
    out_dir = Path(out_dir)
    args = {"lm": lm, "base_url": base_url}
    if stage_done(out_dir / MARKER, args, out_dir / ARPA_FILE, out_dir / WORDS_FILE, out_dir / INFO_FILE):
        log.info("%s: already there, nothing to do", out_dir)
        return out_dir
    downloads = out_dir.with_name(out_dir.name + ".downloads")
    expected = {name: (checksums or {}).get(name, md5) for name, md5 in (LMS[lm], VOCAB)}
    files = {name: download(f"{base_url}/{name}", downloads / name, md5) for name, md5 in expected.items()}
    arpa, vocab = files[LMS[lm][0]], files[VOCAB[0]]
    with atomic_dir(out_dir) as tmp:
        counts = _lowercase_arpa(arpa, tmp / ARPA_FILE)
        words = _lowercase_words(vocab)
        (tmp / WORDS_FILE).write_text("".join(w + "\n" for w in words), encoding="utf-8")
        info = {"sources": [{"url": f"{base_url}/{name}", "md5": md5} for name, md5 in expected.items()],
                "order": len(counts), "ngrams": counts, "vocabulary": len(words),
                "normalization": "OpenSLR 11's own (upper case), lower-cased here"}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        mark_done(tmp / MARKER, args)
    return out_dir


def _lowercase_arpa(source: Path, dest: Path) -> dict[str, int]:
    """Streams a gzipped ARPA into dest in lower case; returns its n-gram counts from the header.

    Lower-casing touches only the words: section names and <s>, </s>, <unk> are lower case already,
    and a float's exponent reads the same as 'e'.
    """
    counts: dict[str, int] = {}
    try:
        with gzip.open(source, "rt", encoding="utf-8") as lines, open(dest, "w", encoding="utf-8") as out:
            for line in lines:
                match = _NGRAM_COUNT.match(line.strip())
                if match:
                    counts[match.group(1)] = int(match.group(2))
                out.write(line.lower())
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: not a readable gzipped ARPA file ({exc}); delete it and run again") from None
    if not counts:
        raise DataError(f"{source}: no \\data\\ header with n-gram counts; delete it and run again")
    return counts


def _lowercase_words(vocab: Path) -> list[str]:
    try:
        words = vocab.read_text(encoding="utf-8").split()
    except UnicodeDecodeError as exc:
        raise DataError(f"{vocab}: not UTF-8 text ({exc}); delete it and run again") from None
    if not words:
        raise DataError(f"{vocab}: empty vocabulary; delete it and run again")
    return [w.lower() for w in words]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_scripts.librispeech_lm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="the LM directory to write")
    parser.add_argument("--lm", default="3-gram.pruned.1e-7", choices=sorted(LMS), help="which of OpenSLR 11's LMs")
    parser.add_argument("--base-url", default=OPENSLR_LM, help="an OpenSLR 11 mirror")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = fetch_librispeech_lm(args.out_dir, args.lm, args.base_url)
    except AsrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"LM directory: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
