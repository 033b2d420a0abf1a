"""asr transcribe --format/--output-dir mistakes: one line on stderr, exit 2, before the model loads."""

import pytest

from asr.cli import main

NO_MODEL = "no-such-model-dir"  # loading it would fail: an error about the outputs came first


def one_line(capsys, argv, *culprits) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(str(c) in err for c in culprits), err
    return err


def test_subtitles_of_several_files_need_an_output_dir(capsys):
    for fmt in ("srt", "vtt", "tsv"):
        one_line(capsys, ["transcribe", NO_MODEL, "a.wav", "b.wav", "--format", fmt], f"--format {fmt}", "--output-dir")


def test_two_inputs_named_alike_would_overwrite_each_other(tmp_path, capsys):
    one_line(capsys, ["transcribe", NO_MODEL, "x/talk.wav", "y/talk.flac", "--format", "srt", "--output-dir", tmp_path],
                   "x/talk.wav", "y/talk.flac", tmp_path / "talk.srt")
    assert list(tmp_path.iterdir()) == []


def test_an_output_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line(capsys, ["transcribe", NO_MODEL, "a.wav", "--output-dir", blocker], blocker, "--output-dir")
    one_line(capsys, ["transcribe", NO_MODEL, "a.wav", "--output-dir", blocker / "sub"], blocker)


def test_an_unknown_format(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["transcribe", NO_MODEL, "a.wav", "--format", "docx"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "--format" in err and "docx" in err, err


@pytest.mark.parametrize("command, culprit", [(["transcribe", NO_MODEL, "a.wav"], NO_MODEL), (["evaluate", NO_MODEL, "m.jsonl"], "m.jsonl")])
def test_quiet_is_an_option_of_transcribe_and_evaluate(command, culprit, capsys):
    err = one_line(capsys, command + ["--quiet"], culprit)  # past the parser: the next mistake is the path's
    assert "unrecognized" not in err
