"""A finished sweep's Pareto set on an external test set: an independent data file.

    python -m unet.phantom --out runs/external.h5 --seed 1 --subjects 200 --split-fractions 0 0 1
    python -m studies.external --study unet2d-small-phantom \\
        --storage journal:runs/sweep/unet2d-small-phantom/study.journal --data runs/external.h5

The study's own test split holds a few dozen subjects: one subject whose region flips between
empty and not (the BraTS rule scores it 0 or 1) moves a region's 25-subject mean by 4 points,
so a paired 95% CI rarely excludes a 3-point loss, or shows one, on test alone. An external test
set, as in clinical validation, is data that nothing of the study has seen: not the training,
not the search, not the threshold and component choices (all made on the study's val split).
For the phantom it costs nothing: another ``--seed`` draws new subjects from the same
distribution (``--split-fractions 0 0 1`` puts all of them in the test split); for real data,
import another cohort or site with its subjects in the test split.

Every Pareto model and the baseline are evaluated on the external file's **test** split with
their stored thresholds and post-processing, and compared paired with the baseline exactly as
in `studies.report` (same margins, same columns). Refused with one ``error:`` line: the study's
own data file (same fingerprint), a file without labelled test subjects. Writes
``external.md``, ``external.csv`` and ``external.json`` into ``--out`` (default:
``<study folder>/external-<fingerprint>/``); nothing is written to the study itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from studies.pareto import LATENCY_NAMES, load_study, sweep_info
from studies.report import build_rows, parse_evaluation_arguments
from studies.report_format import markdown_table, rows_csv, summary_line
from unet.data.canonical import CanonicalDataset
from unet.io import write_text_atomic
from unet.stats import DEFAULT_MARGIN, DEFAULT_REGION_MARGIN


def open_external(study: optuna.Study, path: str | Path) -> CanonicalDataset:
    """The external data file, refused if it is the study's own data or has no test subjects."""
    info = sweep_info(study)
    data = CanonicalDataset(path, cache_mb=2048)
    if data.fingerprint == info["data_fingerprint"]:
        raise ValueError(
            f"{data.path}: the data of study {study.study_name!r} itself (fingerprint "
            f"{data.fingerprint}); an external test set is another data file"
        )
    labelled = set(data.labelled)
    if not [s for s in data.split("test") if s in labelled]:
        raise ValueError(f"{data.path}: no labelled subjects in its test split")
    return data


def external_markdown(
    study: optuna.Study, rows: Sequence[dict[str, Any]], data: CanonicalDataset
) -> str:
    """The external report's text (Markdown)."""
    info = sweep_info(study)
    backend = info.get("latency_backend", "ort_cpu")
    return f"""# Sweep `{study.study_name}` on an external test set

{summary_line(rows, backend=backend)}

External data: `{data.path}` (fingerprint {data.fingerprint}; {len(data.split("test"))} test
subjects), not the study's data (fingerprint {info["data_fingerprint"]}): no model, search,
threshold or post-processing choice has seen it. The models are the study's Pareto set (chosen
on the study's **validation** split) and its baseline, each with its stored threshold(s) and
post-processing (small-component removal, region-presence rule); *test* columns are on the
external subjects, compared **paired** with the baseline (95% bootstrap CIs over subjects;
non-inferior: the mean's lower bound above
-{rows[0].get("margin", DEFAULT_MARGIN):g} and every region's above
-{rows[0].get("region_margin", DEFAULT_REGION_MARGIN):g}). Sizes and
{LATENCY_NAMES.get(backend, backend)} speed-ups are the study's (measured during the search).

{markdown_table(rows, backend)}
"""


def write_external(
    study: optuna.Study,
    data_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    threads: int | None = None,
    device: str = "cpu",
    margin: float = DEFAULT_MARGIN,
    region_margin: float = DEFAULT_REGION_MARGIN,
) -> list[Path]:
    """Evaluate the Pareto set on ``data_path``'s test split; write the three files."""
    data = open_external(study, data_path)
    info = sweep_info(study)
    out = Path(out_dir or Path(info["study_dir"]) / f"external-{data.fingerprint}")
    rows = build_rows(
        study,
        data=data,
        threads=threads or info["threads"],
        device=device,
        margin=margin,
        region_margin=region_margin,
    )
    paths = [out / "external.md", out / "external.csv", out / "external.json"]
    write_text_atomic(paths[0], external_markdown(study, rows, data))
    write_text_atomic(paths[1], rows_csv(rows))
    payload = {
        "study": study.study_name,
        "external_data": str(data.path),
        "external_fingerprint": data.fingerprint,
        "summary": summary_line(rows, info.get("latency_backend", "ort_cpu")),
        "baseline": rows[0],
        "pareto": rows[1:],
    }
    write_text_atomic(paths[2], json.dumps(payload, indent=2))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.external",
        description="Evaluate a stored sweep's Pareto set on an external test set (another "
        "data file), paired with its baseline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, help="the external canonical file (its test split)"
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: <study folder>/external-<fingerprint>)"
    )
    args = parse_evaluation_arguments(parser, argv)
    try:
        study = load_study(args.storage, args.study)
        paths = write_external(
            study,
            args.data,
            args.out,
            threads=args.threads,
            device=args.device,
            margin=args.margin,
            region_margin=args.region_margin,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    print(Path(paths[0]).read_text(encoding="utf-8").split("\n\n")[1])
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
