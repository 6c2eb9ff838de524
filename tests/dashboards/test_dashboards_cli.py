"""The `dashboards` and `autointerp` subcommands chained on saved statistics."""

from __future__ import annotations

import json

import pytest

from sae_lens_maira.cli import main
from sae_lens_maira.dashboards.commands import parse_features
from sae_lens_maira.dashboards.schemas import validate_neuronpedia_export, validate_saedashboard_dir


def test_cli_chain(tmp_path, capsys):
    stats = tmp_path / "stats"
    assert (
        main(["dashboards", "synthetic", "--out", str(stats), "--n-studies", "48", "--d-sae", "12"])
        == 0
    )
    exp = tmp_path / "exp.jsonl"
    assert main(["autointerp", "--stats", str(stats), "--out", str(exp), "--features", "0-3"]) == 0
    rows = [json.loads(line) for line in exp.read_text().splitlines()]
    assert sorted(r["feature"] for r in rows) == [0, 1, 2, 3]
    assert '"effusion"' in next(r["text"] for r in rows if r["feature"] == 0)
    args = ["dashboards", "export", "--stats", str(stats), "--out", str(tmp_path / "out"),
            "--explanations", str(exp)]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 1  # the offline backend is no model Neuronpedia knows: refused, nothing written
    err = capsys.readouterr().err
    assert "'offline-contrast' is not registered on Neuronpedia" in err
    # the way out it names exists for export (which has no --no-explanations flag)
    assert "`dashboards export` without --explanations" in err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--explanation-model", "gpt-4o-mini"]) == 0
    np_dir = tmp_path / "out" / "exports" / "maira-2-synthetic" / "3-res-syn"
    assert validate_neuronpedia_export(np_dir)["explanations"] == 4
    (sd,) = (tmp_path / "out" / "saedashboard").iterdir()
    assert validate_saedashboard_dir(sd) > 0
    assert main(["dashboards", "viewer", "--stats", str(stats), "--out", str(tmp_path / "view"),
                 "--features", "0,1", "--private"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "view" / "features").iterdir()) == [
        "0.html",
        "1.html",
    ]
    assert main(["dashboards", "viewer", "--saedashboard", str(sd), "--out", str(tmp_path / "v2")]) == 0
    assert (tmp_path / "v2" / "features" / "0.html").is_file()
    capsys.readouterr()
    assert main(["dashboards", "viewer", "--out", str(tmp_path / "v3")]) == 1
    assert "give either --stats" in capsys.readouterr().err
    assert main(["dashboards", "upload", "--export", str(np_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "feature/upload-batch" in out and "MB" in out


def test_cli_errors(tmp_path, capsys):
    assert main(["dashboards", "viewer", "--stats", str(tmp_path), "--out", str(tmp_path / "v")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no feature statistics" in err[0]
    assert "`sae-lens-maira dashboards collect --config ...`" in err[0]  # the command that makes them
    assert main(["autointerp", "--stats", str(tmp_path / "nope"), "--out", str(tmp_path / "e")]) == 1
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="bad feature list"):
        parse_features("1,x")
    assert parse_features("0,3,5-7") == [0, 3, 5, 6, 7]
