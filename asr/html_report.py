"""The evaluation report as one self-contained HTML page: charts, coloured alignments, audio players."""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

from asr.evaluate import (
    SKIPPED_COLUMNS, SPEAKER_COLUMNS, confusion_tables, decoding_rows, percent, speaker_cells, summary_line,
)

# MIME types of embedded audio, by file suffix; browsers sniff the content of any other.
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg",
               ".mp3": "audio/mpeg", ".m4a": "audio/mp4"}
PAGE_SIZES = (20, 50, 0)  # utterances per page the reader can pick; 0 = all on one page

# Colours shared by the charts (SVG) and the alignments (CSS).
WER_COLOUR, CER_COLOUR = "#3b6ea8", "#9cc0e6"
SUB_COLOUR, DEL_COLOUR, INS_COLOUR = "#e08a00", "#d43c3c", "#2e9a48"

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2329;
  background:#f4f5f7;margin:0}
main{max-width:76em;margin:0 auto;padding:1.5em 2em 3em}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.2em;margin:1.6em 0 .6em}h3{font-size:1em;margin:.8em 0 .3em}
section.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:.8em 1.2em;margin:1em 0}
.meta{color:#555;font-size:.9em}.meta code,pre{font:13px/1.4 "DejaVu Sans Mono",monospace}
pre{background:#f6f7f9;border:1px solid #e3e6ea;border-radius:4px;padding:.4em .6em;white-space:pre-wrap;
  word-break:break-all;margin:.3em 0}
.metrics{display:flex;flex-wrap:wrap;gap:.8em;margin:.6em 0}
.metric{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:.5em 1em;min-width:7em}
.metric b{display:block;font-size:1.6em}.metric span{color:#666;font-size:.85em}
table{border-collapse:collapse;margin:.4em 0}
td,th{border-bottom:1px solid #e3e6ea;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:15em;overflow-y:auto;border-bottom:1px solid #e3e6ea}
.scroll th{position:sticky;top:0}
.row{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
svg text{font:12px "DejaVu Sans",sans-serif;fill:#333}
.legend i{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin:0 .3em 0 .8em}
#utterances{width:100%}#utterances td{border-bottom:1px solid #d5d9de}
#utterances th[data-sort]{cursor:pointer;user-select:none}
#utterances th[data-sort]::after{content:" \\2195";color:#aaa}
#utterances th[aria-sort=ascending]::after{content:" \\2191";color:#000}
#utterances th[aria-sort=descending]::after{content:" \\2193";color:#000}
#utterances td:last-child{width:58%}
td.id{font:13px "DejaVu Sans Mono",monospace;white-space:nowrap}
audio{height:2.2em;width:100%;max-width:26em;display:block;margin-bottom:.3em}
.ali{line-height:1.2}
.w{display:inline-grid;grid-template-rows:auto auto;margin:0 .12em .35em 0;padding:0 .15em;border-radius:3px}
.w>span{white-space:pre}.w>span:empty::before{content:"\\00a0"}
.w.label{color:#888;font-size:.75em;font-weight:600;line-height:1.6}
.w.sub{background:#fde9c8}.w.sub>span{color:#8a4b00;font-weight:600}
.w.del{background:#fbd9d9}.w.del>span:first-child{color:#a01818;text-decoration:line-through;font-weight:600}
.w.ins{background:#d5f2dc}.w.ins>span:last-child{color:#16662b;font-weight:600}
.gap{color:#bbb}
.pager{display:flex;gap:.6em;align-items:center;margin:.6em 0;flex-wrap:wrap}
button,select{font:inherit;padding:.15em .6em}
"""

# Sorts the utterance table by a column (click its header; again to reverse) and pages it.
_SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("utterances");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var headers = Array.prototype.slice.call(table.querySelectorAll("th[data-sort]"));
  var sizeSelect = document.getElementById("page-size");
  var state = {key: "wer", descending: true, page: 0, size: parseInt(sizeSelect.value, 10)};
  var textKeys = {id: true, speaker: true};
  function value(row, key) {
    var text = row.getAttribute("data-" + key) || "";
    return textKeys[key] ? text : parseFloat(text);
  }
  function compare(a, b) {
    var x = value(a, state.key), y = value(b, state.key), order;
    if (textKeys[state.key]) {
      order = x.localeCompare(y, undefined, {numeric: true});
    } else {
      order = x < y ? -1 : x > y ? 1 : 0;
    }
    if (state.descending) order = -order;
    return order || value(a, "rank") - value(b, "rank");  // ties in worst-first order
  }
  function pageCount() {
    return state.size > 0 ? Math.max(1, Math.ceil(rows.length / state.size)) : 1;
  }
  function show() {
    var pages = pageCount();
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    rows.forEach(function (row, index) {
      row.hidden = state.size > 0 && Math.floor(index / state.size) !== state.page;
      var audio = row.querySelector("audio");
      if (audio && !row.hidden) audio.preload = "metadata";  // durations for this page's players only
    });
    document.getElementById("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("page-prev").disabled = state.page === 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
  }
  function sortBy(key) {
    var header = table.querySelector('th[data-sort="' + key + '"]');
    state.descending = state.key === key ? !state.descending : header.getAttribute("data-first") === "descending";
    state.key = key;
    rows.sort(compare);
    rows.forEach(function (row) { body.appendChild(row); });
    headers.forEach(function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", state.descending ? "descending" : "ascending");
    state.page = 0;
    show();
  }
  headers.forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.getAttribute("data-sort")); });
  });
  document.getElementById("page-prev").addEventListener("click", function () { state.page -= 1; show(); });
  document.getElementById("page-next").addEventListener("click", function () { state.page += 1; show(); });
  sizeSelect.addEventListener("change", function () {
    state.size = parseInt(sizeSelect.value, 10);
    state.page = 0;
    show();
  });
  show();
})();
"""


def render_html(report: dict, embed_audio: bool = False) -> str:
    """The report (as write_report saves it, with "meta") as one self-contained HTML page.

    Utterances that carry an "audio_filepath" get an <audio> player: its src is the file's
    absolute file:// URI, or with embed_audio the file itself (base64), so that the page can be
    sent on. Every piece of text is escaped; no script, style or image is fetched from elsewhere.
    """
    summary = report["summary"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Evaluation report: WER {percent(summary['wer'])}</title>",
        f"<style>{_STYLE}</style></head><body><main>",
        *_header(report),
        *_speaker_section(report),
        *_error_section(report),
        *_utterance_section(report["utterances"], embed_audio),
        f"</main><script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---- summary ----------------------------------------------------------------------------------


def _header(report: dict) -> list[str]:
    meta, summary, esc = report["meta"], report["summary"], html.escape
    metrics = [
        ("WER", percent(summary["wer"])), ("CER", percent(summary["cer"])),
        ("utterances", str(summary["utterances"])), ("reference words", str(summary["reference_words"])),
    ]
    if "duration" in summary:
        metrics.append(("audio", f"{summary['duration'] / 60:.1f} min"))  # seconds -> minutes
    parts = [
        "<h1>Evaluation report</h1>",
        f"<p><strong>{esc(summary_line(report))}</strong></p>",
        '<div class="metrics">',
        *(f'<div class="metric"><b>{esc(value)}</b><span>{esc(name)}</span></div>' for name, value in metrics),
        "</div>",
        '<section class="card meta">',
        f"<div>Produced by:</div><pre>{esc(meta['command'])}</pre>",
        f"<div>model <code>{esc(meta['model_dir'])}</code>, manifest <code>{esc(meta['manifest'])}</code>, "
        f"created {esc(meta['created'])}</div>",
    ]
    if report.get("decoding"):
        parts += ["<h3>Decoding</h3>", _table(("setting", "value"), decoding_rows(report["decoding"]))]
    parts.append("</section>")
    if report.get("skipped"):
        rows = [[s["id"], s["audio_filepath"], s["error"]] for s in report["skipped"]]
        parts += [f"<h2>Skipped utterances ({len(rows)}, not scored)</h2>", _table(SKIPPED_COLUMNS, rows)]
    return parts


def _speaker_section(report: dict) -> list[str]:
    speakers = report["speakers"]
    if not speakers:
        return []
    return [
        "<h2>Per speaker (worst first)</h2>", '<section class="card"><div class="row">',
        _speaker_chart(speakers, report["summary"]),
        _table(SPEAKER_COLUMNS, [speaker_cells(row) for row in speakers], numeric_from=1),
        "</div></section>",
    ]


def _axis_step(largest: float) -> float:
    """A round tick step (as a fraction) such that five ticks cover largest."""
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0):
        if 5 * step >= largest:
            return step
    return 10.0 ** math.ceil(math.log10(largest / 5))


def _speaker_chart(speakers: list[dict], summary: dict) -> str:
    """Horizontal bars: WER and CER per speaker, worst first, with the corpus WER as a dashed line."""
    label_w, plot_w, value_w, bar_h, top = 90, 360, 56, 11, 28  # pixels
    group_h = 2 * bar_h + 10
    largest = max([summary["wer"]] + [max(s["wer"], s["cer"]) for s in speakers])
    step = _axis_step(largest)
    axis_max = step * max(1, math.ceil(largest / step - 1e-9))  # rates can exceed 100% (insertions)
    height = top + group_h * len(speakers) + 22
    x = lambda rate: label_w + plot_w * rate / axis_max  # noqa: E731
    esc = html.escape
    parts = [
        f'<svg id="speaker-chart" xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + value_w}" '
        f'height="{height}" role="img" aria-label="WER and CER per speaker">',
        f'<rect x="{label_w}" y="4" width="10" height="10" fill="{WER_COLOUR}"/>'
        f'<text x="{label_w + 14}" y="13">WER</text>'
        f'<rect x="{label_w + 60}" y="4" width="10" height="10" fill="{CER_COLOUR}"/>'
        f'<text x="{label_w + 74}" y="13">CER</text>'
        f'<text x="{label_w + 120}" y="13" fill="#666">dashed: all speakers\' WER</text>',
    ]
    ticks = int(round(axis_max / step))
    for tick in range(ticks + 1):
        tx = x(tick * step)
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 18}" stroke="#e3e6ea"/>'
                     f'<text x="{tx:.1f}" y="{height - 4}" text-anchor="middle">{tick * step:.0%}</text>')
    for index, s in enumerate(speakers):
        y = top + index * group_h
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h + 4}" text-anchor="end">{esc(s["speaker"])}</text>')
        for offset, key, colour in ((0, "wer", WER_COLOUR), (bar_h, "cer", CER_COLOUR)):
            width = x(s[key]) - label_w
            parts.append(
                f'<rect class="bar-{key}" x="{label_w}" y="{y + offset}" width="{width:.1f}" height="{bar_h - 1}" '
                f'fill="{colour}"><title>speaker {esc(s["speaker"])}: {key.upper()} {percent(s[key])} '
                f'({s["utterances"]} utterances)</title></rect>'
                f'<text x="{label_w + width + 4:.1f}" y="{y + offset + bar_h - 2}">{percent(s[key])}</text>'
            )
    wx = x(summary["wer"])
    parts.append(f'<line x1="{wx:.1f}" y1="{top - 4}" x2="{wx:.1f}" y2="{height - 18}" stroke="#222" '
                 f'stroke-dasharray="4 3"><title>all speakers: WER {percent(summary["wer"])}</title></line>')
    return "".join(parts) + "</svg>"


def _error_section(report: dict) -> list[str]:
    summary = report["summary"]
    parts = ["<h2>Errors by type</h2>", '<section class="card">', _error_chart(summary), '<div class="row">']
    for title, header, rows in confusion_tables(report["confusions"]):
        table = _table(header, rows, numeric_from=0, numeric_to=0) if rows else "<p>none</p>"
        parts.append(f'<div><h3>Most frequent {title.lower()}</h3><div class="scroll">{table}</div></div>')
    return parts + ["</div></section>"]


def _error_chart(summary: dict) -> str:
    """One bar split into substitutions, deletions and insertions, in proportion to their counts."""
    width, bar_h = 600, 22  # pixels
    kinds = [("substitutions", SUB_COLOUR), ("deletions", DEL_COLOUR), ("insertions", INS_COLOUR)]
    total = sum(summary[kind] for kind, _ in kinds)
    parts = [f'<svg id="error-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{bar_h + 26}" '
             'role="img" aria-label="word errors by type">']
    x = 0.0
    for kind, colour in kinds:
        share = summary[kind] / total if total else 0.0
        parts.append(f'<rect class="bar-{kind}" x="{x:.1f}" y="0" width="{width * share:.1f}" height="{bar_h}" '
                     f'fill="{colour}"><title>{kind}: {summary[kind]} ({share:.0%} of word errors)</title></rect>')
        x += width * share
    legend_x = 0
    for kind, colour in kinds:
        share = summary[kind] / total if total else 0.0
        parts.append(f'<rect x="{legend_x}" y="{bar_h + 8}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{bar_h + 17}">{kind} {summary[kind]} ({share:.0%})</text>')
        legend_x += 200
    parts.append("</svg>")
    words = summary["reference_words"]
    note = (f"<p>{total} word errors against {words} reference words: {summary['hits']} correct, "
            f"{summary['substitutions']} substituted, {summary['deletions']} deleted, "
            f"and {summary['insertions']} words inserted.</p>")
    return "".join(parts) + note


# ---- utterances -------------------------------------------------------------------------------

UTTERANCE_COLUMNS = (  # (header, sort key or None, first sort direction, numeric)
    ("#", None, None, True), ("utterance", "id", "ascending", False), ("speaker", "speaker", "ascending", False),
    ("duration", "duration", "descending", True), ("WER", "wer", "descending", True),
    ("CER", "cer", "descending", True), ("audio, reference (top) and hypothesis (bottom)", None, None, False),
)


def _utterance_section(utterances: list[dict], embed_audio: bool) -> list[str]:
    head = []
    for name, key, first, numeric in UTTERANCE_COLUMNS:
        attrs = ' class="num"' if numeric else ""
        if key:
            attrs += f' data-sort="{key}" data-first="{first}" title="sort by {name}"'
            attrs += ' aria-sort="descending"' if key == "wer" else ""
        head.append(f"<th{attrs}>{html.escape(name)}</th>")
    sizes = "".join(f'<option value="{n}">{n or "all"}</option>' for n in PAGE_SIZES)
    legend = (f'<span class="legend">colours: <i style="background:{SUB_COLOUR}"></i>substitution'
              f'<i style="background:{DEL_COLOUR}"></i>deletion<i style="background:{INS_COLOUR}"></i>insertion</span>')
    pager = (f'<div class="pager"><button id="page-prev" type="button">&larr; previous</button>'
             f'<span id="page-info"></span><button id="page-next" type="button">next &rarr;</button>'
             f'<label>per page <select id="page-size">{sizes}</select></label>{legend}</div>')
    rows = [_utterance_row(rank, u, embed_audio) for rank, u in enumerate(utterances)]
    return [
        f"<h2>Utterances ({len(utterances)}, worst first; click a column header to sort)</h2>",
        '<section class="card">', pager,
        f'<table id="utterances"><thead><tr>{"".join(head)}</tr></thead><tbody>',
        *rows, "</tbody></table></section>",
    ]


def _utterance_row(rank: int, u: dict, embed_audio: bool) -> str:
    esc = html.escape
    speaker, duration = u.get("speaker", ""), u.get("duration")
    data = (f'data-rank="{rank}" data-id="{esc(u["id"])}" data-speaker="{esc(speaker)}" '
            f'data-duration="{duration if duration is not None else -1}" data-wer="{u["wer"]}" data-cer="{u["cer"]}"')
    cells = [
        f'<td class="num">{rank + 1}</td>', f'<td class="id">{esc(u["id"])}</td>', f"<td>{esc(speaker)}</td>",
        f'<td class="num">{"" if duration is None else f"{duration:.1f} s"}</td>',
        f'<td class="num">{percent(u["wer"])}</td>', f'<td class="num">{percent(u["cer"])}</td>',
        f"<td>{_audio(u, embed_audio)}{_alignment(u['ops'])}</td>",
    ]
    return f"<tr {data}>{''.join(cells)}</tr>"


def _audio(u: dict, embed_audio: bool) -> str:
    """An <audio> player for the utterance's file ("" when the report does not name it)."""
    path = u.get("audio_filepath")
    if not path:
        return ""
    path = Path(os.path.abspath(path))
    if not embed_audio:
        return f'<audio controls preload="none" src="{html.escape(path.as_uri())}"></audio>'
    kind = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<audio controls preload="none" title="{html.escape(path.name)}" src="data:{kind};base64,{data}"></audio>'


_KIND_TITLES = {"sub": "substitution", "del": "deletion", "ins": "insertion"}


def _alignment(ops: list[list]) -> str:
    """The reference over the hypothesis, word by word as jiwer aligned them, errors coloured."""
    esc = html.escape
    tokens = ['<span class="w label"><span>REF</span><span>HYP</span></span>']
    for kind, ref, hyp in ops:
        if kind == "equal":
            tokens.append(f'<span class="w"><span>{esc(ref)}</span><span>{esc(hyp)}</span></span>')
            continue
        title = {"sub": f"{ref} \u2192 {hyp}", "del": f"{ref} deleted", "ins": f"{hyp} inserted"}[kind]
        tokens.append(f'<span class="w {kind}" title="{esc(_KIND_TITLES[kind])}: {esc(title)}">'
                      f"<span>{esc(ref or '')}</span><span>{esc(hyp or '')}</span></span>")
    return f'<div class="ali">{"".join(tokens)}</div>'


def _table(header, rows, numeric_from: int | None = None, numeric_to: int | None = None) -> str:
    """An HTML table; columns numeric_from..numeric_to (inclusive; default: to the last) align right."""
    def cls(index: int) -> str:
        numeric = numeric_from is not None and index >= numeric_from and (numeric_to is None or index <= numeric_to)
        return ' class="num"' if numeric else ""

    head = "".join(f"<th{cls(i)}>{html.escape(str(cell))}</th>" for i, cell in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{html.escape(str(cell))}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
