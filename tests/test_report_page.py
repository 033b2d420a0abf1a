"""report.html: escaping, coloured alignments, audio players, and the page in a real headless browser."""

import base64
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data import read_manifest, write_manifest
from asr.evaluate import build_report, write_report

MODEL = Path(__file__).resolve().parents[1] / "recipes" / "librispeech_small" / "model"
RATE = 16000  # Hz, the test tones' sample rate
BROWSER_SECONDS = 60  # a headless chromium run takes 2-5 s; more means it hangs


def tone(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE)
    return path


def synthetic_results(folder: Path, count: int = 25) -> list[dict]:
    """count utterances of 3 speakers over real WAV files, the first with markup in every field."""
    words = "the cat sat on the mat".split()
    results = []
    for i in range(count):
        hyp = words[: 6 - i % 4] + ["too"] * (i % 3)  # deletions, insertions, hits
        hyp[i % 2] = "bat" if i % 5 else hyp[i % 2]  # and substitutions
        results.append({"id": f"utt{i:02d}", "reference": " ".join(words), "hypothesis": " ".join(hyp),
                        "speaker": f"spk{i % 3}", "duration": 0.5 + 0.1 * i,
                        "audio_filepath": str(tone(folder / f"utt {i:02d} #.wav", 0.5 + 0.1 * i))})
    results[0].update(id='x"><b>id', reference='</script><img src=x onerror=alert(1)> a & b', speaker="<i>s</i>")
    return results


def page(tmp_path: Path, results: list[dict], embed_audio: bool = False) -> str:
    paths = write_report(build_report(results), tmp_path / "report", "asr evaluate m d.jsonl", "m", "d.jsonl",
                         decoding={"decoder": "greedy"}, embed_audio=embed_audio)
    return paths["html"].read_text()


# ---- the page's text --------------------------------------------------------------------------


def test_page_escapes_every_field(tmp_path):
    text = page(tmp_path, synthetic_results(tmp_path, 3))
    assert "<img" not in text and "<b>id" not in text and "<i>s</i>" not in text
    assert "<span>&lt;/script&gt;&lt;img</span>" in text and 'data-id="x&quot;&gt;&lt;b&gt;id"' in text
    assert text.count("</script>") == 1  # the page's own script only


def test_page_fetches_nothing_from_elsewhere(tmp_path):
    text = page(tmp_path, synthetic_results(tmp_path, 3))
    assert "<link" not in text and "<img" not in text
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', text)
    assert sources and all(source.startswith("file:///") for source in sources)


def test_alignment_colours_each_kind_of_error(tmp_path):
    results = [{"id": "a", "reference": "the cat sat on the mat", "hypothesis": "the bat sat the mat too"}]
    text = page(tmp_path, results)
    assert '<span class="w sub" title="substitution: cat \u2192 bat"><span>cat</span><span>bat</span></span>' in text
    assert '<span class="w del" title="deletion: on deleted"><span>on</span><span></span></span>' in text
    assert '<span class="w ins" title="insertion: too inserted"><span></span><span>too</span></span>' in text
    assert text.count('<span class="w">') == 4  # the, sat, the, mat
    assert "<audio" not in text  # the results name no audio file


def test_one_player_per_utterance_at_the_files_uri(tmp_path):
    results = synthetic_results(tmp_path, 4)
    text = page(tmp_path, results)
    sources = re.findall(r'<audio controls preload="none" src="([^"]+)"', text)
    assert len(sources) == 4
    expected = {Path(r["audio_filepath"]).absolute().as_uri() for r in results}
    assert set(sources) == expected and all("%20" in s and "%23" in s for s in sources)  # space, '#'


def test_embedded_audio_is_the_file_itself(tmp_path):
    results = synthetic_results(tmp_path, 2)
    text = page(tmp_path, results, embed_audio=True)
    data = re.findall(r'src="data:audio/wav;base64,([^"]+)"', text)
    assert sorted(base64.b64decode(d) for d in data) == sorted(Path(r["audio_filepath"]).read_bytes() for r in results)
    assert "file://" not in text


def test_report_json_names_the_audio_files(tmp_path):
    results = synthetic_results(tmp_path, 2)
    write_report(build_report(results), tmp_path / "r", "c", "m", "d")
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {u["audio_filepath"] for u in saved["utterances"]} == {r["audio_filepath"] for r in results}


# ---- in a browser -----------------------------------------------------------------------------

# Loaded first: records any script error of the page into window.__errors.
_CATCH_ERRORS = '<script>window.__errors=[];addEventListener("error",function(e){__errors.push(String(e.message))});</script>'

# Loaded last: reads the page, sorts and pages it as a reader would, lets every audio player load its
# file's metadata, and writes what it saw into <pre id="test-results"> for --dump-dom.
_PROBE = """<pre id="test-results">pending</pre><script>
(function () {
  function ids() {
    return Array.prototype.map.call(document.querySelectorAll("#utterances tbody tr"), function (r) { return r.dataset.id; });
  }
  function visible() {
    return Array.prototype.filter.call(document.querySelectorAll("#utterances tbody tr"), function (r) {
      return r.offsetParent !== null;
    }).length;
  }
  function click(selector) { document.querySelector(selector).click(); }
  var out = {tables: document.querySelectorAll("table").length, svgBars: document.querySelectorAll("#speaker-chart rect.bar-wer").length,
             errorBars: document.querySelectorAll("#error-chart rect[class]").length, rows: ids().length,
             audios: document.querySelectorAll("#utterances tbody tr audio").length, worstFirst: ids(),
             visibleFirstPage: visible(), pageInfo: document.getElementById("page-info").textContent};
  click('th[data-sort="duration"]'); out.byDurationDown = ids();
  click('th[data-sort="duration"]'); out.byDurationUp = ids();
  click('th[data-sort="speaker"]'); out.bySpeaker = ids();
  click('th[data-sort="wer"]'); out.backToWorstFirst = ids();
  click("#page-next"); out.visibleSecondPage = visible(); out.pageInfoSecond = document.getElementById("page-info").textContent;
  var audios = Array.prototype.slice.call(document.querySelectorAll("audio"));
  Promise.all(audios.map(function (a) {
    return new Promise(function (done) {
      a.addEventListener("loadedmetadata", function () { done(a.duration); });
      a.addEventListener("error", function () { done("error " + (a.error && a.error.code)); });
      a.preload = "metadata"; a.load();
    });
  })).then(function (durations) {
    out.audioDurations = durations;
    out.errors = window.__errors;
    document.getElementById("test-results").textContent = JSON.stringify(out);
  });
})();
</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; missing, it skips here and fails in CI (CI=true), which installs it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=BROWSER_SECONDS, check=True)


def browse(chromium: str, report_html: Path) -> dict:
    """Opens a copy of report_html with the probe in headless chromium -> what the probe saw."""
    text = report_html.read_text()
    probed = report_html.with_name("probed.html")  # beside it: the audio URIs stay valid
    probed.write_text(text.replace("<head>", "<head>" + _CATCH_ERRORS, 1).replace("</body>", _PROBE + "</body>", 1))
    result = _headless(chromium, "--virtual-time-budget=20000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="test-results">(.*?)</pre>', result.stdout, re.S)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    assert found.group(1) != "pending", "the probe never finished (an audio file that neither loads nor fails?)"
    return json.loads(html.unescape(found.group(1)))


def screenshot(chromium: str, report_html: Path, png: Path, width: int = 1280, height: int = 1800) -> bytes:
    _headless(chromium, f"--window-size={width},{height}", f"--screenshot={png}", report_html.as_uri())
    return png.read_bytes()


def test_page_in_a_browser_sorts_pages_and_plays(tmp_path, chromium):
    results = synthetic_results(tmp_path, 25)
    page(tmp_path, results)
    seen = browse(chromium, tmp_path / "report" / "report.html")
    assert seen["errors"] == []
    # decoding, speakers, 3 kinds of confusion, utterances
    assert seen["tables"] == 6 and seen["svgBars"] == 4 and seen["errorBars"] == 3  # speakers: 3 and "<i>s</i>"
    assert seen["rows"] == seen["audios"] == 25
    report = build_report(results)
    assert seen["worstFirst"] == [u["id"] for u in report["utterances"]]
    by_duration = [r["id"] for r in sorted(results, key=lambda r: r["duration"])]
    assert seen["byDurationDown"] == by_duration[::-1] and seen["byDurationUp"] == by_duration
    assert seen["byDurationUp"] != seen["worstFirst"]  # the sort moved rows
    by_id = {r["id"]: r for r in results}
    assert seen["bySpeaker"] == sorted(seen["worstFirst"], key=lambda i: by_id[i]["speaker"])  # then worst first
    assert seen["backToWorstFirst"] == seen["worstFirst"]
    assert (seen["visibleFirstPage"], seen["pageInfo"]) == (20, "page 1 of 2")
    assert (seen["visibleSecondPage"], seen["pageInfoSecond"]) == (5, "page 2 of 2")
    assert seen["audioDurations"] == pytest.approx([by_id[i]["duration"] for i in seen["backToWorstFirst"]], abs=1e-3)

    png = screenshot(chromium, tmp_path / "report" / "report.html", tmp_path / "page.png")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a rendered page, not a blank one


def test_real_report_with_embedded_audio_plays_in_a_browser(tmp_path, chromium, librispeech_root):
    """asr evaluate --embed-audio with the shipped model on 4 dev utterances: FLAC inside the page."""
    from asr.corpora import prepare_librispeech

    _, dev = prepare_librispeech(librispeech_root, tmp_path / "data", ["train-clean-5"], dev_speakers=("32", "669", "7312"))
    utterances = read_manifest(dev)[::20][:4]  # 3 speakers
    manifest = write_manifest(tmp_path / "dev4.jsonl", utterances)
    report_dir = tmp_path / "report"
    assert main(["evaluate", str(MODEL), str(manifest), "--report-dir", str(report_dir), "--embed-audio", "--quiet"]) == 0
    text = (report_dir / "report.html").read_text()
    assert text.count('src="data:audio/flac;base64,') == 4 and "file://" not in text
    seen = browse(chromium, report_dir / "report.html")
    assert seen["errors"] == [] and seen["rows"] == seen["audios"] == 4
    by_id = {u.id: u.duration for u in utterances}
    assert seen["audioDurations"] == pytest.approx([by_id[i] for i in seen["backToWorstFirst"]], abs=0.01)
