"""`asr check-data` (issue 12, item 1): every problem of a deliberately broken manifest reported
with its id, exit 1; a clean manifest exit 0; training's filter skips the same ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.cli import main
from asr.config import load_recipe
from asr.data import filter_utterances, read_manifest
from asr.text import Vocabulary
from asr.train import filter_options
from conftest import REPO, SHARED_DATA, require

RECIPE = REPO / "recipes" / "librispeech_small"
CHAPTER = Path("librispeech_small/LibriSpeech/train-clean-5/1088/134315")


def _real(n: int) -> list[dict]:
    folder = require(SHARED_DATA / CHAPTER)
    texts = dict(line.split(" ", 1) for line in (folder / "1088-134315.trans.txt").read_text().splitlines())
    entries = []
    for uid in sorted(texts)[:n]:
        path = folder / f"{uid}.flac"
        entries.append({"id": uid, "audio_filepath": str(path), "duration": sf.info(str(path)).duration, "text": texts[uid].strip()})
    return entries


def _wav(path: Path, seconds: float) -> Path:
    sf.write(str(path), np.zeros(int(16000 * seconds), np.float32), 16000)
    return path


def _write(path: Path, entries) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def _run(capsys, *argv) -> tuple[int, str, dict]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    json_out = Path(argv[argv.index("--json-out") + 1])
    return code, out, json.loads(json_out.read_text())


def test_broken_manifest_every_problem_named(tmp_path, capsys):
    good = _real(3)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00not audio at all" * 4)
    entries = good + [
        {"id": "missing", "audio_filepath": str(tmp_path / "nowhere.wav"), "duration": 1.0, "text": "hello"},
        {"id": "broken", "audio_filepath": str(broken), "duration": 1.0, "text": "hello"},
        dict(good[0], text="a duplicate id"),
        dict(good[1], id="same-path"),
        {"id": "empty", "audio_filepath": str(_wav(tmp_path / "empty.wav", 1.0)), "duration": 1.0, "text": ""},
        {"id": "accents", "audio_filepath": str(_wav(tmp_path / "acc.wav", 2.0)), "duration": 2.0, "text": "café number 42"},
        {"id": "short", "audio_filepath": str(_wav(tmp_path / "short.wav", 0.3)), "duration": 0.3,
         "text": "this transcript is far too long for a third of a second of audio"},
        {"id": "long", "audio_filepath": str(_wav(tmp_path / "long.wav", 4.0)), "duration": 4.0, "text": "long"},
    ]
    manifest = _write(tmp_path / "m.jsonl", entries)
    with manifest.open("a") as f:
        f.write("{not json\n")
    code, out, report = _run(capsys, "check-data", manifest, "--recipe", RECIPE, "--set", "data.max_duration=3.5",
                             "--json-out", tmp_path / "r.json")
    assert code == 1
    kinds = {}
    for p in report["problems"]:
        kinds.setdefault(p["kind"], set()).add(p["id"])
    assert kinds["missing_audio"] == {"missing"}
    assert kinds["unreadable_audio"] == {"broken"}
    assert kinds["duplicate_id"] == {good[0]["id"]}
    assert kinds["duplicate_audio"] == {"same-path"}
    assert kinds["empty_transcript"] == {"empty"}
    assert kinds["oov_chars"] == {"accents"}
    assert kinds["too_short_for_ctc"] == {"short"}
    assert kinds["too_long"] == {"long"} | {g["id"] for g in good if g["duration"] > 3.5} | ({"same-path"} if good[1]["duration"] > 3.5 else set())
    assert len(kinds["bad_line"]) == 1
    short = next(p for p in report["problems"] if p["kind"] == "too_short_for_ctc")
    assert short["shortfall_steps"] > 0 and short["shortfall_frames"] >= short["shortfall_steps"]
    assert set(report["oov_chars"]) >= {"é", "4", "2"} and report["oov_chars"]["é"]["examples"] == ["accents"]
    assert report["sample_rates"] == {"16000": report["durations"]["files"]}
    assert "report written to" in out and "short" in out and "too_short_for_ctc" in out


def test_clean_manifest_exit_0_and_training_agrees(tmp_path, capsys):
    good = _real(4)
    manifest = _write(tmp_path / "clean.jsonl", good)
    code, out, report = _run(capsys, "check-data", manifest, "--recipe", RECIPE, "--json-out", tmp_path / "r.json")
    assert code == 0 and report["ok"] and report["problems"] == [] and report["trainable"] == 4
    assert "OK" in out

    # Training's filter skips exactly what check-data says it skips.
    mixed = good + [
        {"id": "accents", "audio_filepath": str(_wav(tmp_path / "acc.wav", 2.0)), "duration": 2.0, "text": "naïve"},
        {"id": "short", "audio_filepath": str(_wav(tmp_path / "s.wav", 0.2)), "duration": 0.2, "text": "much too long a text for this"},
        {"id": "long", "audio_filepath": str(_wav(tmp_path / "l.wav", 3.0)), "duration": 3.0, "text": "long"},
    ]
    manifest = _write(tmp_path / "mixed.jsonl", mixed)
    overrides = ["data.max_duration=2.5"]
    code, _, report = _run(capsys, "check-data", manifest, "--recipe", RECIPE, "--set", overrides[0], "--json-out", tmp_path / "m.json")
    assert code == 1
    config = load_recipe(RECIPE, overrides)
    _, skipped = filter_utterances(read_manifest(manifest), Vocabulary(config.text.alphabet), **filter_options(config))
    assert {i for i, _ in skipped} == set(report["skipped_by_training"]) >= {"accents", "short", "long"}


def test_model_config(tmp_path, capsys):
    manifest = _write(tmp_path / "clean.jsonl", _real(2))
    code, out, report = _run(capsys, "check-data", manifest, "--model", RECIPE / "model", "--json-out", tmp_path / "r.json")
    assert code == 0 and report["config"]["source"].startswith("model")


def test_mistakes_are_one_line(tmp_path, capsys):
    for argv in (["check-data", tmp_path / "nope.jsonl", "--json-out", tmp_path / "r.json"],
                 ["check-data", tmp_path / "nope.jsonl", "--recipe", RECIPE, "--model", RECIPE / "model"],
                 ["check-data", tmp_path / "nope.jsonl", "--recipe", tmp_path / "no-recipe"],
                 ["check-data", _write(tmp_path / "m.jsonl", []), "--json-out", tmp_path / "no" / "r.json"]):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "r.json").exists()
