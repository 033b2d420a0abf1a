"""`asr check-data`: everything in manifests that training would skip or trip on, before training.

Reads every entry leniently (read_manifest_lenient: a problem is collected, not raised), the audio
headers only (soundfile.info), and runs training's own filter (asr.data.check_utterances with
asr.train.filter_options) so that what it reports as skipped is what training skips.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Sequence

import soundfile as sf

from asr.config import Config
from asr.data import Utterance, check_utterances, read_manifest_lenient
from asr.text import Vocabulary

HISTOGRAM_EDGES = (0.0, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)  # seconds; the last bin is open
DURATION_TOLERANCE = 0.1  # seconds between the manifest's duration and the file's before it is reported
OOV_EXAMPLES = 3  # ids shown per character outside the alphabet
# Kinds that training skips (or fails on) rather than only a thing worth a look.
SKIPPED_KINDS = ("bad_line", "missing_audio", "unreadable_audio", "duplicate_id", "too_long", "oov_chars", "too_short_for_ctc")


def check_data(manifests: Sequence[str | Path], config: Config, vocab: Vocabulary, source: str = "defaults") -> dict:
    """The report of manifests as a JSON-ready dict (see check-data's --help); "ok" is False when
    anything was found. Raises DataError only for a manifest that cannot be read at all."""
    from asr.train import filter_options  # the options training filters with

    problems: list[dict] = []
    ids: dict[str, str] = {}
    paths: dict[str, str] = {}
    rates, channels = collections.Counter(), collections.Counter()
    durations: list[float] = []
    checkable: list[Utterance] = []
    where: dict[str, str] = {}
    total = 0
    for manifest in manifests:
        entries, bad = read_manifest_lenient(manifest)
        problems += [dict(p, id=None, where=f"{manifest}:{p['line']}") for p in bad]
        total += len(entries) + len(bad)
        for lineno, utt in entries:
            at = f"{manifest}:{lineno}"

            def problem(kind: str, reason: str, **extra) -> None:
                problems.append(dict(id=utt.id, kind=kind, where=at, audio_filepath=utt.audio_filepath, reason=reason, **extra))

            if utt.id in ids:
                problem("duplicate_id", f"id {utt.id!r} already used at {ids[utt.id]}", first=ids[utt.id])
                continue
            ids[utt.id] = at
            if utt.audio_filepath in paths:
                problem("duplicate_audio", f"audio file also used by {paths[utt.audio_filepath]!r}", other_id=paths[utt.audio_filepath])
            else:
                paths[utt.audio_filepath] = utt.id
            if not utt.text:
                problem("empty_transcript", "empty transcript (after normalization)")
            if not Path(utt.audio_filepath).is_file():
                problem("missing_audio", "audio file " + ("is a folder" if Path(utt.audio_filepath).is_dir() else "does not exist"))
                continue
            try:
                info = sf.info(utt.audio_filepath)
            except Exception as exc:  # libsndfile's many ways of refusing a file
                problem("unreadable_audio", f"not a readable audio file: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
                continue
            if info.frames <= 0 or info.samplerate <= 0:
                problem("unreadable_audio", "the audio file holds no samples")
                continue
            rates[info.samplerate] += 1
            channels[info.channels] += 1
            actual = info.frames / info.samplerate
            durations.append(actual)
            if abs(actual - utt.duration) > DURATION_TOLERANCE:
                problem("duration_mismatch", f"manifest says {utt.duration:.2f} s, the file holds {actual:.2f} s "
                        "(training filters and batches by the manifest's)", manifest_duration=utt.duration, file_duration=round(actual, 3))
            checkable.append(utt)
            where[utt.id] = at
        if not entries and not bad:
            problems.append(dict(id=None, kind="bad_line", where=str(manifest), reason="empty manifest (no utterance lines)"))
    _, skipped = check_utterances(checkable, vocab, **filter_options(config, training=True))
    for p in skipped:
        utt_at = where[p["id"]]
        problems.append(dict(p, where=utt_at))
    oov: dict[str, dict] = {}
    for utt in checkable:
        for char, n in vocab.oov_chars(utt.text).items():
            entry = oov.setdefault(char, {"count": 0, "examples": []})
            entry["count"] += n
            if len(entry["examples"]) < OOV_EXAMPLES:
                entry["examples"].append(utt.id)
    counts = collections.Counter(p["kind"] for p in problems)
    return {
        "manifests": [str(m) for m in manifests],
        "config": {"source": source, "alphabet": vocab.alphabet, "max_duration": config.data.max_duration,
                   "frame_stride": config.model.frame_stride, "sample_rate": config.features.sample_rate},
        "entries": total,
        "trainable": len(checkable) - len(skipped),
        "sample_rates": {str(k): v for k, v in sorted(rates.items())},
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "durations": _duration_summary(durations),
        "oov_chars": dict(sorted(oov.items(), key=lambda kv: -kv[1]["count"])),
        "counts": dict(sorted(counts.items())),
        "skipped_by_training": sorted({p["id"] or p["where"] for p in problems if p["kind"] in SKIPPED_KINDS}),
        "problems": problems,
        "ok": not problems,
    }


def _duration_summary(durations: list[float]) -> dict:
    bins = []
    for low, high in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:] + (None,)):
        n = sum(1 for d in durations if d >= low and (high is None or d < high))
        bins.append({"from": low, "to": high, "count": n})
    if not durations:
        return {"files": 0, "histogram": bins}
    return {"files": len(durations), "total_hours": round(sum(durations) / 3600, 3), "min": round(min(durations), 3),
            "max": round(max(durations), 3), "mean": round(sum(durations) / len(durations), 3), "histogram": bins}


def summary_text(report: dict, most: int = 5) -> str:
    """A short human summary of a check_data report."""
    lines = [f"{report['entries']} entries in {len(report['manifests'])} manifest(s); {report['trainable']} trainable "
             f"(config: {report['config']['source']}, max_duration {report['config']['max_duration']:g} s, "
             f"frame_stride {report['config']['frame_stride']})"]
    d = report["durations"]
    rates = ", ".join(f"{k} Hz: {v}" for k, v in report["sample_rates"].items()) or "none"
    chans = ", ".join(f"{k} ch: {v}" for k, v in report["channels"].items()) or "none"
    lines.append(f"sample rates: {rates}; channels: {chans}")
    if d["files"]:
        lines.append(f"durations: {d['total_hours']} h, {d['min']}-{d['max']} s (mean {d['mean']} s); histogram: "
                     + ", ".join(f"{b['from']:g}{'-' + format(b['to'], 'g') if b['to'] is not None else '+'} s: {b['count']}"
                                 for b in d["histogram"] if b["count"]))
    if report["oov_chars"]:
        lines.append("characters outside the alphabet: " + ", ".join(
            f"{c!r} x{e['count']} (e.g. {', '.join(e['examples'])})" for c, e in list(report["oov_chars"].items())[:10]))
    by_kind = collections.defaultdict(list)
    for p in report["problems"]:
        by_kind[p["kind"]].append(p)
    for kind, items in sorted(by_kind.items()):
        lines.append(f"{kind}: {len(items)}")
        for p in items[:most]:
            lines.append(f"  {p['id'] if p['id'] is not None else p['where']}: {p['reason']}")
        if len(items) > most:
            lines.append(f"  ... and {len(items) - most} more (see the JSON)")
    lines.append("OK: training would use every entry" if report["ok"] else
                 f"{len(report['skipped_by_training'])} entries would be skipped by training or stop it; "
                 f"{len(report['problems'])} problems in all")
    return "\n".join(lines)
