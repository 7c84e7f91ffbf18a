"""`xlmr-fast bench`: lists the repository's benchmarks and refuses unknown names."""
from xlmr_fast import cli


def test_bench_lists_and_refuses(capsys):
    assert cli.main(["bench"]) == 0
    listed = capsys.readouterr().out
    for name in ("attention", "linear_cross_entropy", "mlm_mask", "train", "data"):
        assert name in listed
    assert cli.main(["bench", "nope"]) == 1
    assert "unknown benchmark(s) ['nope']" in capsys.readouterr().err


def test_bench_outside_a_checkout(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("XLMR_FAST_REPO", str(tmp_path))
    assert cli.main(["bench", "attention"]) == 1
    assert "XLMR_FAST_REPO" in capsys.readouterr().err
