"""`sam-histo stain normalize`: writes every tile, resumes, reports fallbacks, names bad input."""
import numpy as np
from PIL import Image

from sam_histo.cli import main as cli_main
from sam_histo.stain.synthetic import DEFAULT_HE, blob_concentrations, render


def write_tiles(folder, n=3, seed=0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(render(DEFAULT_HE, blob_concentrations(48, rng, n_nuclei=6))).save(folder / f"t{i}.png")
    Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(folder / "blank.png")  # no stain: fallback


def test_normalize_writes_resumes_and_counts_fallbacks(tmp_path, capsys):
    write_tiles(tmp_path / "in")
    ref = tmp_path / "in" / "t0.png"
    out = tmp_path / "out"
    argv = ["stain", "normalize", "--reference", str(ref), "--input", str(tmp_path / "in"), "--out", str(out)]
    assert cli_main(argv) == 0
    first = capsys.readouterr().out
    assert "written 4, skipped 0" in first and "fallbacks 1 of 4" in first
    assert "too few stained pixels" in first
    names = sorted(p.name for p in out.iterdir())
    assert names == ["blank.png", "stain_normalize.json", "t0.png", "t1.png", "t2.png"]  # no temporary files
    written = np.asarray(Image.open(out / "t1.png"))
    assert written.shape == (48, 48, 3) and written.dtype == np.uint8
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "t2.png").unlink()  # as if the first run had stopped before t2
    assert cli_main(argv) == 0
    second = capsys.readouterr().out
    assert "written 1, skipped 3" in second
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in out.iterdir() if p.name != "t2.png")
    assert cli_main(argv + ["--method", "reinhard"]) == 2  # resuming under other settings is refused
    assert "method='macenko' there, 'reinhard' now" in capsys.readouterr().err


def test_normalize_reports_bad_reference_and_input(tmp_path, capsys):
    write_tiles(tmp_path / "in", n=1)
    blank = tmp_path / "in" / "blank.png"
    rc = cli_main(["stain", "normalize", "--reference", str(blank), "--input", str(tmp_path / "in"),
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and "reference unusable" in capsys.readouterr().err
    rc = cli_main(["stain", "normalize", "--reference", str(blank), "--input", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "out")])
    assert rc == 2 and "nope: not a folder" in capsys.readouterr().err
