"""Bad paths and corrupt inputs on the command line: a one-line error that names the path and
exit code 1, never a Python traceback."""
import pytest

from xlmr_fast import cli


def _fails_naming(capsys, argv, *names):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"xlmr-fast {argv[0]}: error:"), err
    for n in names:
        assert n in err, err
    return err


def test_output_path_under_or_at_a_file(tmp_path, capsys):
    # an --out that is a file (or lies under one): an OSError from mkdir, not a traceback
    f = tmp_path / "afile.txt"
    f.write_text("x")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("hello world\n\nanother document\n")
    _fails_naming(capsys, ["train-tokenizer", "--corpus", str(corpus), "--out", str(f / "sub"),
                           "--vocab-size", "20", "--sentences", "10"], "afile.txt")
    _fails_naming(capsys, ["pretrain", "--corpus", str(corpus), "--prepared", str(f)],
                  "afile.txt")


@pytest.mark.parametrize("content", [b"", b"hello\n", b"PK\x03\x04 truncated zip"])
def test_convert_unreadable_file(tmp_path, capsys, content):
    src = tmp_path / "model.pt"
    src.write_bytes(content)
    _fails_naming(capsys, ["convert", str(src), str(tmp_path / "out")], str(src),
                  "not a readable checkpoint")


def test_convert_corrupt_hf_dir(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "xlm-roberta", "hidden_size": 8}')
    (d / "model.safetensors").write_bytes(b"garbage")
    _fails_naming(capsys, ["convert", str(d), str(tmp_path / "out")], str(d),
                  "not a readable checkpoint")
    (d / "config.json").write_text("{bad json")
    _fails_naming(capsys, ["convert", str(d), str(tmp_path / "out")], str(d))
