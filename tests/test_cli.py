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
