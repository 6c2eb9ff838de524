import os
import subprocess
import sys

from sae_lens_maira import quickstart
from sae_lens_maira.cli import main


def test_quickstart_fires_vision_projector_and_block_hooks():
    lines: list[str] = []
    shapes = quickstart.run(print_fn=lines.append, max_new_tokens=3)
    assert shapes["hook_vision_out"] == (2, 256, 96) and shapes["hook_projector_out"] == (
        2,
        256,
        256,
    )
    assert shapes["blocks.3.hook_resid_post"][2] == 256
    assert any(line.startswith("greedy generation") for line in lines)


def test_cli_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip()


def test_cli_rejects_unknown_command():
    r = subprocess.run(
        [sys.executable, "-m", "sae_lens_maira.cli", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_user_errors_print_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    assert main(["cache", "--config", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: config file {tmp_path / 'missing.yaml'} does not exist\n"
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not valid YAML" in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    import pytest

    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["cache", "--config", str(tmp_path / "missing.yaml"), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "cache", "--config", str(tmp_path / "missing.yaml")])
    monkeypatch.setenv("SAE_LENS_MAIRA_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["cache", "--config", str(tmp_path / "missing.yaml")])
    r = subprocess.run(
        [sys.executable, "-m", "sae_lens_maira.cli", "cache", "--config", str(tmp_path / "m.yaml")],
        capture_output=True, text=True, env={**__import__("os").environ, "SAE_LENS_MAIRA_DEBUG": "1"},
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" in r.stderr and "FileNotFoundError" in r.stderr


def test_internal_errors_name_the_class_and_the_way_to_see_more(monkeypatch, capsys):
    import sae_lens_maira.cli as cli

    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)

    def boom(args):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(cli, "_cmd_version", boom)
    assert main(["version"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: internal error (TypeError: unsupported operand second line); rerun with --debug "
        "(or SAE_LENS_MAIRA_DEBUG=1) for the traceback and report it\n"
    )


def test_a_broken_sae_folder_is_one_clear_line(experiment_yaml, tmp_path, capsys, monkeypatch):
    import json

    from sae_lens import StandardSAE, StandardSAEConfig

    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    config = experiment_yaml("acts")
    sae_dir = config.parent / "sae"
    StandardSAE(StandardSAEConfig(d_in=64, d_sae=16)).save_model(str(sae_dir))
    cfg = json.loads((sae_dir / "cfg.json").read_text())
    (sae_dir / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matryoshak"}))
    assert (
        main(["dashboards", "collect", "--config", str(config), "--out", str(tmp_path / "s")]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {sae_dir / 'cfg.json'}: unknown SAE architecture 'matryoshak'")
    assert "did you mean 'matryoshka'" in err


def test_steer_number_lists_name_the_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    (tmp_path / "exp.yaml").write_text("model: {checkpoint: nowhere}\n")
    for flag, value in (("--coefficients", "1,x"), ("--features", "3,a")):
        assert main(["steer", "--config", str(tmp_path / "exp.yaml"), flag, value]) == 1
        err = capsys.readouterr().err.strip()
        # was: "could not convert string to float: 'x'", naming neither the flag nor the form
        assert err.startswith(f"error: {flag} takes comma-separated") and repr(value) in err


_DISPLAY_WAIT_POLICY = """
import os, sys
os.environ.pop("OMP_WAIT_POLICY", None)  # whatever the environment (or a sitecustomize) set
if len(sys.argv) > 1:
    os.environ["OMP_WAIT_POLICY"] = sys.argv[1]
from sae_lens_maira import cli
cli.calm_idle_threads()
import torch  # libgomp reads the policy here and, with OMP_DISPLAY_ENV, prints it
torch.ones(4).sum()
"""


def _wait_policy_shown(*args: str) -> str:
    env = {**os.environ, "OMP_DISPLAY_ENV": "TRUE"}
    out = subprocess.run(
        [sys.executable, "-c", _DISPLAY_WAIT_POLICY, *args],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    shown = [line for line in (out.stdout + out.stderr).splitlines() if "OMP_WAIT_POLICY" in line]
    assert shown, "libgomp printed no OMP_WAIT_POLICY line (not the GNU OpenMP runtime?)"
    return shown[0]


def test_cli_lets_idle_openmp_threads_sleep_before_torch_loads() -> None:
    """Spinning idle threads made 2-thread runs 10-20x slower on a busy machine."""
    assert "PASSIVE" in _wait_policy_shown()


def test_cli_keeps_the_users_own_wait_policy() -> None:
    assert "ACTIVE" in _wait_policy_shown("ACTIVE")
    assert "PASSIVE" not in _wait_policy_shown("ACTIVE")
