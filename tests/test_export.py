"""The library writes what ``dpmcli compare --out`` writes: run once, export many."""

import csv
import io
import json

from typer.testing import CliRunner

from dpmcli import SolverConfig
from dpmcli.cli.main import app
from dpmcli.compare import Sweep, run_sweep
from dpmcli.export import compare_csv, csv_columns, markdown_summary, write_compare_folder

SWEEP = {"algo": ["dpmsolver++", "sde-dpmsolver++"], "order": [1, 2], "steps": [4, 8]}
ARGS = ["--algo", "dpmsolver++,sde-dpmsolver++", "--order", "1,2", "--steps", "4,8", "--batch", "64", "--reference-steps", "40"]


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "cache")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _csv_rows(text: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(text))]


def _markdown_without_timings(text: str) -> list[str]:
    lines, runs = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            runs = line.startswith("## Runs")
        if line.startswith("Model `"):
            line = line.rsplit(",", 1)[0]  # "..., 1.2 s."
        elif runs and line.startswith("| ") and not line.startswith("| |"):
            line = line.rsplit("|", 2)[0]  # the seconds column
        lines.append(line)
    return lines


def test_export_functions_write_the_files_of_compare_out(tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["compare", *ARGS, "--cache-dir", str(cache), "--out", str(tmp_path / "cli"), "-q", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    cli = tmp_path / "cli"

    # its own cache, so that the reference section counts the same cache misses
    report = run_sweep(Sweep(base=SolverConfig(), values=SWEEP, batch=64, reference_steps=40, cache_dir=tmp_path / "cache2"))
    document = report.document()
    document["gates"] = json.loads((cli / "results.json").read_text())["gates"]  # the command line's gates section
    write_compare_folder(report, tmp_path / "api", document=document)
    api = tmp_path / "api"

    assert sorted(p.name for p in api.iterdir()) == sorted(p.name for p in cli.iterdir())
    assert {"results.json", "results.csv", "summary.md", "config.json", "error_vs_nfe.png", "samples.png"} <= {p.name for p in api.iterdir()}
    read = lambda folder, name: (folder / name).read_text()
    assert read(api, "config.json") == read(cli, "config.json")
    assert _without_timings(json.loads(read(api, "results.json"))) == _without_timings(json.loads(read(cli, "results.json")))
    assert _csv_rows(read(api, "results.csv")) == _csv_rows(read(cli, "results.csv"))
    assert _markdown_without_timings(read(api, "summary.md")) == _markdown_without_timings(read(cli, "summary.md"))
    # the same report, exported again, writes the same text
    assert compare_csv(report) == read(api, "results.csv")
    assert markdown_summary(report, document) == read(api, "summary.md")
    assert read(api, "results.csv").splitlines()[0].split(",") == csv_columns(report)
