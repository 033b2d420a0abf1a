"""Word and character error rates, and the report files (Markdown, JSON, HTML) a person reads."""

from __future__ import annotations

import collections
import datetime
import json
import re
from pathlib import Path

import jiwer

from asr.io import atomic_write_text, check_output_dir

TOP_CONFUSIONS = 20  # most frequent substitutions, deletions and insertions listed in a report


# ---- scoring ----------------------------------------------------------------------------------


def utterance_result(utt, hypothesis: str) -> dict:
    """One decoded utterance (an asr.data.Utterance and its hypothesis) as build_report takes it."""
    return dict(id=utt.id, reference=utt.text, hypothesis=hypothesis, speaker=utt.speaker, duration=utt.duration,
                audio_filepath=str(utt.audio_filepath))


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER and CER with their counts, for normalized texts (asr.text does the normalizing).

    Runs of whitespace count as one space, in CER too: a word boundary is one character.
    Returns {wer, cer, substitutions, deletions, insertions, hits, reference_words,
    char_errors, reference_chars}; rates are fractions (0.25 = 25%).
    """
    words, chars = _process(references, hypotheses)
    return _rates({**_word_counts(words), **_char_counts(chars)})


def _process(references: list[str], hypotheses: list[str]):
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    refs = [" ".join(text.split()) for text in references]
    hyps = [" ".join(text.split()) for text in hypotheses]
    return jiwer.process_words(refs, hyps), jiwer.process_characters(refs, hyps)


def _word_counts(words) -> dict:
    return {
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "hits": words.hits,
        "reference_words": words.substitutions + words.deletions + words.hits,
    }


def _char_counts(chars) -> dict:
    return {
        "char_errors": chars.substitutions + chars.deletions + chars.insertions,
        "reference_chars": chars.substitutions + chars.deletions + chars.hits,
    }


def _rates(counts: dict) -> dict:
    """Puts wer and cer before the word and character counts. An empty reference divides by 1,
    as jiwer does, so that words inserted into silence still count as errors."""
    word_errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {
        "wer": word_errors / max(counts["reference_words"], 1),
        "cer": counts["char_errors"] / max(counts["reference_chars"], 1),
        **counts,
    }


def _sum_counts(rows: list[dict]) -> dict:
    keys = ("substitutions", "deletions", "insertions", "hits", "reference_words", "char_errors", "reference_chars")
    return {key: sum(row[key] for row in rows) for key in keys}


# ---- the report -------------------------------------------------------------------------------


def build_report(results: list[dict]) -> dict:
    """A JSON-safe report of decoded utterances.

    results: [{id, reference, hypothesis, speaker (optional), duration (optional, seconds),
    audio_filepath (optional: the report page plays it)}].
    Returns {summary, speakers, confusions, utterances}: corpus WER/CER with counts; per speaker
    (where given), worst first; the TOP_CONFUSIONS commonest substitutions, deletions and
    insertions; every utterance with its rates and word alignment, worst first.
    """
    for index, result in enumerate(results):
        missing = {"id", "reference", "hypothesis"} - result.keys()
        if missing:
            raise ValueError(f"result {index} lacks {', '.join(sorted(missing))}")
    words, chars = _process([r["reference"] for r in results], [r["hypothesis"] for r in results])
    utterances = [
        _utterance(result, refs, hyps, word_chunks, char_chunks)
        for result, refs, hyps, word_chunks, char_chunks in zip(
            results, words.references, words.hypotheses, words.alignments, chars.alignments
        )
    ]
    summary = {**_rates({**_word_counts(words), **_char_counts(chars)}), "utterances": len(results)}
    if all("duration" in u for u in utterances):  # a partial sum would understate the audio
        summary["duration"] = float(sum(u["duration"] for u in utterances))
    return {
        "summary": summary,
        "speakers": _per_speaker(utterances),
        "confusions": _confusions(utterances),
        "utterances": sorted(utterances, key=_worst_first),
    }


def _utterance(result: dict, refs: list[str], hyps: list[str], word_chunks, char_chunks) -> dict:
    """One utterance's entry; ops is its word alignment as [kind, reference word, hypothesis word]."""
    ops = _alignment_ops(refs, hyps, word_chunks)
    counts = {
        "substitutions": sum(op[0] == "sub" for op in ops),
        "deletions": sum(op[0] == "del" for op in ops),
        "insertions": sum(op[0] == "ins" for op in ops),
        "hits": sum(op[0] == "equal" for op in ops),
        "reference_words": len(refs),
        **_chunk_char_counts(char_chunks),
    }
    entry = {"id": str(result["id"]), "reference": " ".join(refs), "hypothesis": " ".join(hyps)}
    for key in ("speaker", "duration", "audio_filepath"):
        if result.get(key) is not None:
            entry[key] = float(result[key]) if key == "duration" else str(result[key])
    return {**entry, **_rates(counts), "alignment": _alignment_text(ops), "ops": ops}


def _chunk_char_counts(chunks) -> dict:
    errors = reference = 0
    for chunk in chunks:
        ref_len = chunk.ref_end_idx - chunk.ref_start_idx
        hyp_len = chunk.hyp_end_idx - chunk.hyp_start_idx
        reference += ref_len
        if chunk.type != "equal":
            errors += max(ref_len, hyp_len)  # a substitution chunk pairs them one to one
    return {"char_errors": errors, "reference_chars": reference}


def _alignment_ops(refs: list[str], hyps: list[str], chunks) -> list[list]:
    """jiwer's chunks -> one [kind, ref, hyp] per word; kind is equal, sub, del or ins."""
    ops = []
    for chunk in chunks:
        ref_words = refs[chunk.ref_start_idx : chunk.ref_end_idx]
        hyp_words = hyps[chunk.hyp_start_idx : chunk.hyp_end_idx]
        if chunk.type == "equal":
            ops += [["equal", ref, hyp] for ref, hyp in zip(ref_words, hyp_words)]
        elif chunk.type == "substitute":
            ops += [["sub", ref, hyp] for ref, hyp in zip(ref_words, hyp_words)]
        elif chunk.type == "delete":
            ops += [["del", ref, None] for ref in ref_words]
        else:
            ops += [["ins", None, hyp] for hyp in hyp_words]
    return ops


def _alignment_text(ops: list[list]) -> str:
    """Aligned words as in icefall's errs files: "the (cat->bat) sat [del: on] [ins: a] mat"."""
    marks = {
        "equal": lambda ref, hyp: ref,
        "sub": lambda ref, hyp: f"({ref}->{hyp})",
        "del": lambda ref, hyp: f"[del: {ref}]",
        "ins": lambda ref, hyp: f"[ins: {hyp}]",
    }
    return " ".join(marks[kind](ref, hyp) for kind, ref, hyp in ops)


def _worst_first(row: dict):
    errors = row["substitutions"] + row["deletions"] + row["insertions"]
    return (-row["wer"], -errors, -row["cer"], row.get("id", row.get("speaker", "")))


def _per_speaker(utterances: list[dict]) -> list[dict]:
    """Pooled (not averaged) rates per speaker, worst first; empty when no speaker is given."""
    groups = collections.defaultdict(list)
    for utterance in utterances:
        if "speaker" in utterance:
            groups[utterance["speaker"]].append(utterance)
    rows = [
        {"speaker": speaker, "utterances": len(rows), **_rates(_sum_counts(rows))}
        for speaker, rows in groups.items()
    ]
    return sorted(rows, key=_worst_first)


def _confusions(utterances: list[dict]) -> dict:
    """The commonest errors, most frequent first (ties in alphabetical order)."""
    counters = collections.defaultdict(collections.Counter)
    for utterance in utterances:
        for kind, ref, hyp in utterance["ops"]:
            if kind == "sub":
                counters["substitutions"][(ref, hyp)] += 1
            elif kind == "del":
                counters["deletions"][ref] += 1
            elif kind == "ins":
                counters["insertions"][hyp] += 1
    return {
        "substitutions": [{"reference": r, "hypothesis": h, "count": n} for (r, h), n in _top(counters["substitutions"])],
        "deletions": [{"word": word, "count": n} for word, n in _top(counters["deletions"])],
        "insertions": [{"word": word, "count": n} for word, n in _top(counters["insertions"])],
    }


def _top(counter: collections.Counter) -> list[tuple]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_CONFUSIONS]


def summary_line(report: dict) -> str:
    """One line: "WER 23.41% (S 150, D 20, I 12, N 777) CER 9.87% on 78 utterances"."""
    s = report["summary"]
    return (
        f"WER {s['wer']:.2%} (S {s['substitutions']}, D {s['deletions']}, I {s['insertions']}, "
        f"N {s['reference_words']}) CER {s['cer']:.2%} on {s['utterances']} utterances"
    )


# ---- the files --------------------------------------------------------------------------------


def check_report_dir(report_dir) -> None:
    """Fails before any decoding if report_dir cannot hold the report (a file there, no permission)."""
    check_output_dir(report_dir, "report folder (--report-dir)")


def write_report(report: dict, report_dir, command: str, model_dir: str, manifest: str,
                 decoding: dict | None = None, skipped: list[dict] | None = None, embed_audio: bool = False) -> dict:
    """Writes report.md, report.json and report.html into report_dir (created if needed).

    decoding: the decoder and its settings (decoder, beam_width, lm_dir, lm_weight, word_score,
    lexicon, oov_rate: asr.decode.Settings.describe() and the references' OOV rate);
    skipped: utterances that could not be read ({"id", "audio_filepath", "error"});
    embed_audio: report.html carries the utterances' audio files instead of pointing at them.
    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    Returns {"markdown": Path, "json": Path, "html": Path}.
    """
    from asr.html_report import render_html  # it imports this module's table helpers

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": command,
        "model_dir": str(model_dir),
        "manifest": str(manifest),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    full = {"meta": meta, "decoding": decoding or {}, "skipped": skipped or [], **report}
    texts = {
        "markdown": ("report.md", render_markdown(full)),
        "json": ("report.json", json.dumps(full, indent=1, ensure_ascii=False) + "\n"),
        "html": ("report.html", render_html(full, embed_audio=embed_audio)),
    }
    paths = {}
    for kind, (name, text) in texts.items():
        paths[kind] = report_dir / name
        atomic_write_text(paths[kind], text)
    return paths


def percent(rate: float) -> str:
    return f"{rate:.2%}"


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    rows = [
        ("WER", percent(summary["wer"])),
        ("CER", percent(summary["cer"])),
        ("substitutions", str(summary["substitutions"])),
        ("deletions", str(summary["deletions"])),
        ("insertions", str(summary["insertions"])),
        ("reference words", str(summary["reference_words"])),
        ("utterances", str(summary["utterances"])),
    ]
    if "duration" in summary:
        rows.append(("audio", f"{summary['duration'] / 60:.1f} min"))  # seconds -> minutes
    return rows


SPEAKER_COLUMNS = ("speaker", "utterances", "words", "WER", "CER", "S", "D", "I")
SKIPPED_COLUMNS = ("id", "audio file", "why")


def decoding_rows(decoding: dict) -> list[tuple[str, str]]:
    """The decoder's settings as (name, value) rows; rates as percentages."""
    return [(key.replace("_", " "), percent(v) if key.endswith("_rate") else str(v)) for key, v in decoding.items()]


def speaker_cells(row: dict) -> list[str]:
    return [
        row["speaker"], str(row["utterances"]), str(row["reference_words"]), percent(row["wer"]),
        percent(row["cer"]), str(row["substitutions"]), str(row["deletions"]), str(row["insertions"]),
    ]


def confusion_tables(confusions: dict) -> list[tuple[str, tuple, list[list[str]]]]:
    """(title, header, rows) for each kind of error."""
    return [
        ("Substitutions", ("count", "reference", "hypothesis"),
         [[str(c["count"]), c["reference"], c["hypothesis"]] for c in confusions["substitutions"]]),
        ("Deletions", ("count", "word"), [[str(c["count"]), c["word"]] for c in confusions["deletions"]]),
        ("Insertions", ("count", "word"), [[str(c["count"]), c["word"]] for c in confusions["insertions"]]),
    ]


def _utterance_title(u: dict) -> str:
    extra = [f"speaker {u['speaker']}"] if "speaker" in u else []
    extra += [f"{u['duration']:.1f} s"] if "duration" in u else []
    suffix = f" ({', '.join(extra)})" if extra else ""
    return f"{u['id']}: WER {percent(u['wer'])}, CER {percent(u['cer'])}{suffix}"


# ---- Markdown ---------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    """The report as Markdown; report carries "meta" (command, model_dir, manifest, created)."""
    meta = report["meta"]
    lines = ["# Evaluation report", "", f"**{summary_line(report)}**", ""]
    lines += ["Produced by:", "", *_md_fenced(meta["command"], "sh"), ""]
    lines += [f"- {key.replace('_', ' ')}: {_md_escape(meta[key])}" for key in ("model_dir", "manifest", "created")]
    lines.append("")
    lines += ["## Summary", "", *_md_table(("metric", "value"), _summary_rows(report["summary"])), ""]
    if report.get("decoding"):
        lines += ["## Decoding", "", *_md_table(("setting", "value"), decoding_rows(report["decoding"])), ""]
    if report.get("skipped"):
        rows = [[s["id"], s["audio_filepath"], s["error"]] for s in report["skipped"]]
        lines += [f"## Skipped utterances ({len(rows)}, not scored)", "", *_md_table(SKIPPED_COLUMNS, rows), ""]
    if report["speakers"]:
        rows = [speaker_cells(row) for row in report["speakers"]]
        lines += ["## Per speaker (worst first)", "", *_md_table(SPEAKER_COLUMNS, rows), ""]
    lines += ["## Most frequent errors", ""]
    for title, header, rows in confusion_tables(report["confusions"]):
        lines += [f"### {title}", "", *(_md_table(header, rows) if rows else ["none"]), ""]
    lines += ["## Utterances (worst first)", ""]
    for u in report["utterances"]:
        block = f"REF: {u['reference']}\nHYP: {u['hypothesis']}\nALI: {u['alignment']}"
        lines += [f"### {_md_escape(_utterance_title(u))}", "", *_md_fenced(block, "text"), ""]
    return "\n".join(lines)


def _md_escape(text: str) -> str:
    """Text safe inside a table cell or heading: no pipes, newlines or markup characters."""
    text = " ".join(str(text).split())
    for char in "\\|*_`[]<>#":
        text = text.replace(char, "\\" + char)
    return text


def _md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_escape(cell) for cell in row) + " |" for row in rows]


def _md_fenced(text: str, language: str) -> list[str]:
    """A code block whose fence is longer than any backtick run in text, so text cannot close it."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, text, fence]
