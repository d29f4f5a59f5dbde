"""Config overrides are accepted anywhere on every subcommand's line (sam_histo/config/argv.py)."""
import json

import pytest

from sam_histo import cli
from sam_histo.config import load_config
from sam_histo.config.argv import add_overrides_help, is_override, parse_with_overrides
from sam_histo.data.synth.layouts import write_bcss


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--config")
    p.add_argument("--out")
    p.add_argument("--flag", action="store_true")
    return add_overrides_help(p)


@pytest.mark.parametrize("argv", [
    ["a.b=1", "--config", "c", "--out", "o", "x=[1, 2]"],
    ["--config", "c", "a.b=1", "--out", "o", "--flag", "x=[1, 2]"],
    ["--out", "o", "--config", "c", "a.b=1", "x=[1, 2]"],
])
def test_overrides_anywhere_keep_their_order(argv):
    args = parse_with_overrides(_parser(), argv)
    assert (args.config, args.out, args.overrides) == ("c", "o", ["a.b=1", "x=[1, 2]"])


def test_a_stray_word_is_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        parse_with_overrides(_parser(), ["--config", "c", "--confg", "d", "a=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --confg d" in err and "a=1" not in err.split("arguments:")[1].split("(")[0]
    assert not is_override("--out=x") and not is_override("x") and is_override("em.min_size=15")


def test_usage_names_the_overrides():
    assert "[key=value ...]" in _parser().format_usage()
    assert "anywhere on the line" in _parser().format_help()


def test_stats_takes_overrides_after_split(tmp_path, monkeypatch, capsys):
    write_bcss(tmp_path / "d", 3, 0, size=128)
    rc = cli.main(["stats", "--config", "bcss", "--split", "all", f"data.root={tmp_path / 'd'}",
                   "data.tile_size=128", "data.tile_stride=128", "--json"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["split"] == "all" and rep["root"] == str(tmp_path / "d")


def test_bare_config_name_ignores_a_folder_of_that_name(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").name == "demo"


def test_threads_option_env_and_default(monkeypatch):
    import torch

    from sam_histo.cli import THREADS_ENV, apply_threads, default_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(THREADS_ENV, raising=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        argv, n = apply_threads(["train", "--config", "c", "--threads", "3", "a=1"])
        assert argv == ["train", "--config", "c", "a=1"] and n == 3 and torch.get_num_threads() == 3
        monkeypatch.setenv(THREADS_ENV, "2")
        assert apply_threads(["demo"])[1] == 2 and apply_threads(["demo", "--threads=1"])[1] == 1
        monkeypatch.delenv(THREADS_ENV)
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert apply_threads(["demo"])[1] == default_threads() >= 1
        import os

        assert default_threads() == max(1, min(8, len(os.sched_getaffinity(0)) // 2))
        with pytest.raises(SystemExit, match="must be a positive integer, got '0'"):
            apply_threads(["demo", "--threads", "0"])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv", [["model", "info"], ["fetch-weights"], ["validate"], ["em", "predict"],
                                  ["em", "sweep"], ["release"], ["train"], ["stats"], ["score"], ["predict"]])
def test_help_texts_are_whole_sentences(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1].strip()
    assert description and description[-1] in ".)", description
