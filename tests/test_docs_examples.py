"""Every copy-paste example in README.md and docs/*.md, run as a user would paste it.

What counts as an example (the conventions the Markdown follows):

* A ```bash, ```sh, ```shell or ```console block holds shell examples. Each command -- one
  logical line, ``\\`` continuations joined -- is one test, with the id FILE:LINE of its first
  line. In ```console blocks only lines with a ``$ `` prompt are commands (the rest is output).
  Comments, pipes, redirections (``> run.json``, ``>> "$GITHUB_STEP_SUMMARY"``) and ``&&`` chains
  run as written: the command goes to ``bash -c`` under ``set -e -o pipefail``.
* Set-up lines of a shell block (``mkdir``, ``cd``, ``export``, ``cp``, and ``echo``/``printf``/
  ``cat`` writing a file: ``echo '{...}' > mix.json``) are not examples of their own: they run
  before every later command of the same block.
* A ```yaml block is a CI recipe: each ``run:`` step is one example (GitHub Actions runs them
  with ``bash -eo pipefail`` too).
* A ```python block is one example, run as a script.
* Blocks without a language, ```text and ```json blocks are pictures or output and are not run;
  ``test_untagged_blocks_hold_no_commands`` makes sure no command hides in them.
* Exit codes: an example must exit 0, unless the doc says otherwise, by a trailing comment
  ``# exits N`` on the command or ``<!-- expect-exit: N -->`` on the line before its block.
* Not run, always with a reason the test reports as its skip message: ``<!-- not-run: REASON -->``
  on the line before a block, or a command matching one of the patterns in ``NOT_RUN`` below.
* Files a user of an example already has (a committed baseline) are made first by the commands
  in ``USER_FILES``, for every example that names the file.

An example passes when it exits with the code its doc states, prints no traceback, writes the
files it names (``--out``, ``--plot``, ``--save-images``, ``> FILE``, ...) and, with
``--format json``, writes one JSON document.

Every example runs in a fresh temporary directory with ``CI=1``, ``DPMCLI_CACHE`` pointing at one
cache shared by the examples (as a user's cache is), ``GITHUB_STEP_SUMMARY`` at a file, and
``dpmcli`` on PATH. The examples run two at a time, started by the first test that needs one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# How many examples the docs hold. A change to the docs changes these numbers on purpose; an
# extractor that finds nothing cannot pass.
EXPECTED_EXAMPLES = 93
EXPECTED_RUN = 59

SHELL_LANGS = {"bash", "sh", "shell", "console"}
SETUP_WORDS = {"mkdir", "cd", "export", "cp"}
WRITERS = {"echo", "printf", "cat"}  # set-up when they write a file
TIMEOUT_S = 300
WRITE_OPTIONS = {"--out", "-o", "--plot", "--plot-samples", "--save-images", "--save", "--trace"}
WORKERS = 2

# (pattern, reason): a command or block that matches is skipped with that reason (first match wins).
NOT_RUN = [
    (r"^\s*pip install", "installs packages; the test environment has them"),
    (r"^\s*pytest\b", "runs the test suite this test is part of"),
    (r"\bdpmcli train digits\b", "trains for minutes; tests/test_digits.py runs the training"),
    (r"^\s*python benchmarks/", "a benchmark: minutes of CPU, run by hand; the docs quote its output"),
    (r"diffusers:\./|\"\./my-", "needs a model folder of the user's; tests/test_cli_diffusers.py runs tiny ones"),
    (r"diffusers:[\w.-]+/[\w.-]+", "needs a hub model in the local cache"),
    (r"from_pretrained\(\s*\"[\w.-]+/", "downloads a hub model"),
    (r"\bpipe\.\w", "a fragment: `pipe` is the user's diffusers pipeline"),
]

# path a user already has -> commands that make it (run in the example's folder first).
USER_FILES = {
    # README's CI recipe: a baseline committed from a good run of the same sweep
    "baseline/results.json": "dpmcli compare --algo dpmsolver++,sde-dpmsolver++ --order 2,3 --steps 10,20,40 "
    "--spacing logsnr --final-sigma sigma-min --no-lower-order-final --out baseline --quiet > /dev/null",
    # docs/cli.md: an earlier, narrower run (its ODE runs are gated, the others reported as new;
    # the whole default sweep again would double the cost of the example)
    "old/results.json": "dpmcli compare --algo dpmsolver++ --out old --quiet > /dev/null",
    # docs/tune.md and the README: the recipe their first command writes (a short search: seconds)
    "ring5.json": "dpmcli tune --nfe 5 --corrector unic --evaluations 150 --out ring5.json --quiet > /dev/null",
}


@dataclass
class Example:
    path: str  # relative to the repository root
    line: int
    kind: str  # shell | python
    code: str
    setup: list[str] = field(default_factory=list)
    expect: int = 0
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def _blocks(text: str):
    """(language, first line number of the body, body lines, marker comments just above the fence)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = len(match.group(1)), match.group(2), match.group(3).lower()
        markers, j = [], i - 1
        while j >= 0 and lines[j].strip().startswith("<!--"):  # one-line comments right above
            markers.append(lines[j].strip())
            j -= 1
        body, k = [], i + 1
        while k < len(lines) and not lines[k].strip().startswith(fence):
            body.append(lines[k][indent:] if lines[k][:indent].isspace() else lines[k])
            k += 1
        yield lang, i + 2, body, markers
        i = k + 1


def _marker(markers, name):
    for m in markers:
        found = re.match(rf"<!--\s*{name}:\s*(.*?)\s*-->$", m)
        if found:
            return found.group(1)
    return None


def _logical_lines(body, first_line, console=False):
    """(line number, command) with backslash continuations joined; comment lines dropped."""
    out, current, start = [], "", None
    for n, raw in enumerate(body, first_line):
        line = raw.rstrip()
        if start is None:
            if console:
                if not line.lstrip().startswith("$ "):
                    continue  # output
                line = line.lstrip()[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = n
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append((start, current + line))
        current, start = "", None
    if start is not None:
        out.append((start, current))
    return out


def _words(command):
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote: bash will say so when it runs
        return command.split()


def _run_steps(body, first_line):
    """(line number, script) of each `run:` step of a GitHub Actions YAML block."""
    steps = yaml.safe_load("\n".join(body)) or []
    if isinstance(steps, dict):  # a whole workflow: its jobs' steps
        steps = [s for job in steps.get("jobs", {}).values() for s in job.get("steps", [])]
    runs = [s["run"] for s in steps if isinstance(s, dict) and "run" in s]
    lines = [n for n, line in enumerate(body, first_line) if re.match(r"^\s*(-\s*)?run:", line)]
    assert len(lines) == len(runs), "could not place the run: steps of a YAML block"
    return list(zip(lines, runs))


def _is_setup(command):
    """`mkdir`, `cd`, `export`, `cp`, or `echo`/`printf`/`cat` writing a file: preparation, not an example."""
    words = _words(command) or [""]
    if "dpmcli" in command or "|" in words:
        return False
    return words[0] in SETUP_WORDS or (words[0] in WRITERS and any(w.startswith(">") for w in words))


def _not_run(code):
    for pattern, reason in NOT_RUN:
        if re.search(pattern, code, re.MULTILINE):
            return reason
    return None


def _exits(command):
    found = re.search(r"#\s*exits\s+(\d+)\b[^\n]*$", command)
    return int(found.group(1)) if found else None


def collect(path: str, text: str) -> list[Example]:
    """The examples of one Markdown document (path: its name in test ids)."""
    examples = []
    for lang, first, body, markers in _blocks(text):
        skip = _marker(markers, "not-run")
        expect = int(_marker(markers, "expect-exit") or 0)
        if lang in SHELL_LANGS:
            setup = []
            for n, command in _logical_lines(body, first, console=lang == "console"):
                if _is_setup(command):
                    setup.append(command)
                    continue
                own = _exits(command)
                examples.append(Example(path, n, "shell", command, list(setup), expect if own is None else own, skip or _not_run(command)))
        elif lang in ("yaml", "yml"):
            for n, script in _run_steps(body, first):
                examples.append(Example(path, n, "shell", script, [], expect, skip or _not_run(script)))
        elif lang in ("python", "py"):
            code = "\n".join(body) + "\n"
            examples.append(Example(path, first, "python", code, [], expect, skip or _not_run(code)))
    return examples


EXAMPLES = [e for doc in DOCS for e in collect(doc.relative_to(ROOT).as_posix(), doc.read_text(encoding="utf-8"))]


# ---------------------------------------------------------------- running


def _dpmcli_prelude() -> str:
    """PATH with this Python first; `dpmcli` as a command even where the script is not installed."""
    bindir = os.path.dirname(sys.executable)
    prelude = f"export PATH={shlex.quote(bindir)}:\"$PATH\"\n"
    installed = shutil.which("dpmcli", path=bindir + os.pathsep + os.environ.get("PATH", ""))
    if installed is None:
        prelude += f"dpmcli() {{ {shlex.quote(sys.executable)} -m dpmcli \"$@\"; }}\nexport -f dpmcli\n"
    return prelude


def _script(example: Example) -> str:
    lines = ["set -e -o pipefail", _dpmcli_prelude()]
    for path, make in USER_FILES.items():
        if path in example.code:
            lines.append(make)
    lines += example.setup
    if example.kind == "python":
        lines.append(f"{shlex.quote(sys.executable)} example.py")
    else:
        lines.append(example.code)
    return "\n".join(lines) + "\n"


def _run(example: Example, root: Path, cache: Path) -> Ran:
    work = root / re.sub(r"[^\w.-]", "_", example.id)
    work.mkdir(parents=True)
    summary = root / (work.name + ".summary.md")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DPMCLI_"))}
    env.update(CI="1", DPMCLI_CACHE=str(cache), GITHUB_STEP_SUMMARY=str(summary))
    # the examples share the cores: one torch thread per core, not per example (oversubscribed
    # torch threads spin, and a sweep then takes many times as long)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    if example.kind == "python":
        (work / "example.py").write_text(example.code, encoding="utf-8")
    start = time.perf_counter()
    # its own process group, so that a time-out ends the example's commands too, not only bash
    proc = subprocess.Popen(["bash", "-c", _script(example)], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n(timed out after {TIMEOUT_S} s)"
    return Ran(proc.returncode, stdout, stderr, time.perf_counter() - start, work, summary)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    work: Path
    summary: Path


def _outputs(example: Example) -> list[str]:
    """The files and folders a command says it writes (options and `>` redirections)."""
    words = _words(example.code)
    out = []
    for before, word in zip(words, words[1:]):
        if before in WRITE_OPTIONS or before in (">", ">>"):
            out.append(word)
    return [w for w in out if w != "/dev/null"]


def _selected_examples(session) -> set[str]:
    return {item.callspec.params["example"].id for item in session.items
            if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("example"), Example)}


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """Start every selected example, WORKERS at a time; each test waits for its own."""
    root = tmp_path_factory.mktemp("docs-examples")
    cache = root / "cache"
    selected = _selected_examples(request.session)
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    # the sweeps first, so that the workers finish together; a command that two docs show word
    # for word runs once
    order = sorted((e for e in EXAMPLES if e.skip is None and e.id in selected), key=lambda e: "compare" not in e.code)
    started: dict[str, Future] = {}
    futures: dict[str, Future] = {}
    for e in order:
        key = repr((e.kind, e.setup, e.code if e.kind == "python" else _words(e.code)))
        if key not in started:
            started[key] = pool.submit(_run, e, root, cache)
        futures[e.id] = started[key]
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- tests


def test_the_extractor_finds_every_example():
    ids = [e.id for e in EXAMPLES]
    assert len(ids) == len(set(ids)), "two examples share a FILE:LINE"
    found = (len(EXAMPLES), sum(e.skip is None for e in EXAMPLES))
    assert found == (EXPECTED_EXAMPLES, EXPECTED_RUN), f"found {found[0]} examples, {found[1]} to run: update the counts if the docs changed"
    assert {"README.md", "docs/cli.md", "docs/digits.md", "docs/diffusers-models.md", "docs/scheduler.md"} <= {e.path for e in EXAMPLES}
    recipe = [e for e in EXAMPLES if "GITHUB_STEP_SUMMARY" in e.code]
    assert len(recipe) == 1 and recipe[0].skip is None and "--min-order" in recipe[0].code


def test_the_conventions(tmp_path):
    """The extractor on a document that uses every convention, and bash running what it found."""
    doc = textwrap.dedent(r"""
        ```bash
        echo 'hello' > greeting.txt
        grep hello greeting.txt \
            | wc -l > count.txt       # a comment, a pipe and a redirection
        # a comment line
        test -s greeting.txt && exit 3   # exits 3 (each command in a fresh folder, after the set-up)
        pip install something
        ```

        <!-- expect-exit: 1 -->
        ```console
        $ echo hello | grep bye
        (no output: grep exits 1, and pipefail passes that on)
        ```

        <!-- not-run: needs a GPU -->
        ```python
        import torch; torch.zeros(1, device="cuda")
        ```

        ```yaml
        - run: pip install -e .
        - run: |
            echo one >> "$GITHUB_STEP_SUMMARY"
            echo two >> "$GITHUB_STEP_SUMMARY"
        ```

        ```text
        dpmcli sample        [OPTIONS]   a synopsis, not run
        ```
        """)
    found = collect("doc.md", doc)
    assert [(e.line, e.kind, e.expect, e.skip) for e in found] == [
        (4, "shell", 0, None),
        (7, "shell", 3, None),
        (8, "shell", 0, NOT_RUN[0][1]),
        (13, "shell", 1, None),
        (19, "python", 0, "needs a GPU"),
        (23, "shell", 0, NOT_RUN[0][1]),
        (24, "shell", 0, None),
    ]
    assert found[0].setup == ["echo 'hello' > greeting.txt"] and "| wc -l > count.txt" in found[0].code
    assert _outputs(found[0]) == ["count.txt"]
    for example in (found[0], found[1], found[3], found[6]):
        ran = _run(example, tmp_path, tmp_path / "cache")
        assert ran.returncode == example.expect, (example, ran.stderr)
    assert ran.summary.read_text() == "one\ntwo\n"


def test_untagged_blocks_hold_no_commands():
    command = re.compile(r"^\s*(\$ )?(dpmcli|pip|python|pytest)\s+\S")
    for doc in DOCS:
        for lang, first, body, _ in _blocks(doc.read_text(encoding="utf-8")):
            if lang in ("", "text", "json"):
                hits = [f"{doc.name}:{n}" for n, line in enumerate(body, first) if command.match(line) and "[OPTIONS]" not in line]
                assert not hits, f"commands in a block without a shell tag (tag it ```bash): {hits}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_example(example: Example, runs):
    if example.skip:
        pytest.skip(f"not run: {example.skip}")
    ran = runs[example.id].result()
    print(f"{example.id}: {ran.seconds:.1f} s")
    said = f"{example.id}\n$ {example.code}\n--- stdout (tail)\n{ran.stdout[-3000:]}\n--- stderr (tail)\n{ran.stderr[-3000:]}"
    assert ran.returncode == example.expect, f"exit code {ran.returncode}, the doc says {example.expect}: {said}"
    assert "Traceback" not in ran.stderr, said
    if example.expect != 0:
        return
    for path in _outputs(example):
        target = ran.summary if path == "$GITHUB_STEP_SUMMARY" else ran.work / path
        assert target.exists() and (target.is_dir() or target.stat().st_size > 0), f"{path} was not written: {said}"
        if "--format json" in example.code and target.is_file():
            json.loads(target.read_text())  # exactly one JSON document
    if "--format json" in example.code and not _outputs(example) and "|" not in example.code:
        json.loads(ran.stdout)
