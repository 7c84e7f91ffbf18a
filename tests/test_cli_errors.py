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


@pytest.mark.parametrize("extra, names", [
    (["--device", "foo"], ["--device 'foo'"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["--epochs", "0"], ["--epochs must be >= 1"]),
    (["--lr", "0"], ["--lr must be > 0"]),
])
def test_finetune_bad_options(tmp_path, capsys, extra, names):
    # checked before anything is read: a one-line error, not a ZeroDivisionError or a
    # RuntimeError from torch.device deep in the run (or a table of an untrained model)
    _fails_naming(capsys, ["finetune", "xnli", "--model", str(tmp_path), "--train", "a.tsv",
                           "--eval", "b.tsv"] + extra, *names)


def test_evaluate_bad_device(tmp_path, capsys):
    import torch
    _fails_naming(capsys, ["evaluate", "xnli", "--model", str(tmp_path), "--eval", "b.tsv",
                           "--device", "foo"], "--device 'foo'")
    if not torch.cuda.is_available():
        _fails_naming(capsys, ["evaluate", "xnli", "--model", str(tmp_path), "--eval", "b.tsv",
                               "--device", "cuda"], "sees no CUDA device here")


def test_tune_bad_device(capsys):
    _fails_naming(capsys, ["tune", "--device", "foo"], "--device 'foo'")


def test_one_device_parser_for_every_option(monkeypatch):
    """finetune / evaluate / tune --device and pretrain's run.device go through one parser:
    the same strings accepted, the same one-line ValueErrors naming the option (run.device=
    cudafoo passed the config check and failed as a RuntimeError inside torch.device; an index
    past the visible GPUs failed in torch.cuda.set_device)."""
    import pytest
    import torch

    from xlmr_fast._device import parse_device
    from xlmr_fast.train import distributed as D
    assert parse_device("cpu", "--device") == torch.device("cpu")
    assert parse_device("auto", "--device").type == ("cuda" if torch.cuda.is_available()
                                                     else "cpu")
    for bad, says in (("cudafoo", "is not a device"), ("meta", "runs on auto, cpu, cuda"),
                      ("cuda:-1", "is not a device")):
        with pytest.raises(ValueError, match=f"run.device '{bad}'.*{says}"):
            D._pick_device(bad, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"run.device cuda: torch .* sees no CUDA device here "
                                         r"\(use run.device=cpu\)"):
        D._pick_device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"--device cuda:2: only 2 CUDA device\(s\) visible "
                                         r"\(cuda:0 \.\. cuda:1\)"):
        parse_device("cuda:2", "--device")
    assert parse_device("cuda:1", "--device") == torch.device("cuda", 1)
