"""Every command line answers ``--help`` (and each sub-command's ``--help``) with its usage.

argparse formats help strings lazily: a stray ``%`` in a help text, or a default the
formatter cannot print, only fails when somebody asks for help. This runs them all.
"""

from __future__ import annotations

import importlib

import pytest

CLIS = (
    "unet.evaluate",
    "unet.phantom",
    "unet.predict",
    "unet.train",
    "unet.zoo",
    "unet.data.import_kaggle",
    "unet.data.import_nifti",
    "compress.apply",
    "studies.bench",
    "studies.external",
    "studies.figures",
    "studies.pair_sensitivity",
    "studies.prune_sweep",
    "studies.report",
)
SUBCOMMANDS = {"studies.bench": ("train", "compress", "recovery", "ceiling", "peers", "macs")}


def _cases() -> list[tuple[str, list[str]]]:
    cases = [(module, ["--help"]) for module in CLIS]
    for module, commands in SUBCOMMANDS.items():
        cases += [(module, [command, "--help"]) for command in commands]
    return cases


@pytest.mark.parametrize(
    ("module", "argv"), _cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else v
)
def test_help_prints_usage_and_exits_0(
    module: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m " + module), out[:200]
    assert "show this help message and exit" in out
