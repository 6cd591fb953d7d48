"""Mutation testing with mutmut: small bugs go into one module at a time, and the module's tests must fail.

Each module of ``MODULES`` is mutated in its own work folder, ``build/mutate/<module>``: mutmut writes
its ``mutants/`` copy of the source tree there, never into ``src/``, and runs only the module's own test
files, so a module takes minutes, not hours. Tests marked ``slow`` (full-size model, multi-process,
browser) and the tests named in ``DESELECT`` / ``Module.deselect`` do not run.

    python scripts/mutate.py                      # every module, then a summary table
    python scripts/mutate.py checkpoint losses    # some modules
    python scripts/mutate.py --report             # the table and the survivors of the last runs, no new run
    python scripts/mutate.py --root ../other-checkout losses   # mutate another checkout of the project

Per module it prints killed / timeout / crashed / survived / no tests, the survival rate
((survived + no tests) / all; a timeout or a crash counts as caught) and the diff of every surviving mutant,
and writes them to ``build/mutate/<module>/summary.md``. ``mutmut show NAME`` and ``mutmut browse``, run
inside the work folder, show more.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Module:
    files: tuple[str, ...]  # source files mutmut mutates (globs relative to the checkout)
    mutants: tuple[str, ...]  # the mutants that run: globs over mutmut's names, module.function__mutmut_N
    tests: tuple[str, ...]  # the test files that must catch them
    deselect: tuple[str, ...] = ()  # tests of those files that test something else and are slow


MODULES: dict[str, Module] = {
    "checkpoint": Module(
        files=("src/lgrnet/engine/checkpoint.py", "src/lgrnet/engine/optim.py"),
        mutants=("lgrnet.engine.checkpoint.*", "lgrnet.engine.optim.*"),
        tests=("tests/test_checkpoint.py", "tests/test_checkpoint_files.py", "tests/test_optim.py",
               "tests/test_engine.py", "tests/test_train_state.py", "tests/test_train_precision.py",
               "tests/test_train_sync.py"),
    ),
    "readers": Module(
        files=("src/lgrnet/data/readers/*.py",),
        mutants=("lgrnet.data.readers.*",),
        tests=("tests/test_readers.py", "tests/test_safe_pickle.py", "tests/test_dataset.py",
               "tests/test_synth.py", "tests/test_data_cli.py", "tests/test_spatial.py",
               "tests/test_custom_dataset.py", "tests/test_hf_parquet.py", "tests/test_vg_guard.py",
               "tests/test_standard_splits.py"),
        deselect=("tests/test_data_cli.py::test_overlay_script_writes_all_30_samples",
                  "tests/test_data_cli.py::test_pipeline_benchmark_reports_rates",
                  "tests/test_data_cli.py::test_shrink_images_scales_boxes_with_the_pixels"),
    ),
    "losses": Module(
        files=("src/lgrnet/model/losses.py",),
        mutants=("lgrnet.model.losses.*",),
        tests=("tests/test_losses.py", "tests/test_loss_reductions.py", "tests/test_train_sync.py"),
    ),
    "transforms": Module(
        files=("src/lgrnet/data/transforms.py",),
        mutants=("lgrnet.data.transforms.*",),
        tests=("tests/test_transforms.py", "tests/test_crop.py", "tests/test_point_mapping.py",
               "tests/test_processor.py", "tests/test_dataset.py"),
    ),
    # The predictor's canvas -> original-image mappings: the letterbox inverse of the predicted point, the
    # attention map's crop and resize, the processor's post-processing and the predictor's forward pass.
    "mappings": Module(
        files=("src/lgrnet/inference/attention.py", "src/lgrnet/inference/processor.py",
               "src/lgrnet/inference/predictor.py"),
        mutants=("lgrnet.inference.attention.xǁLetterboxǁ*", "lgrnet.inference.processor.xǁLetterboxǁ*",
                 "lgrnet.inference.attention.x_attention_on_image*",
                 "lgrnet.inference.processor.xǁProcessorǁpost_process*",
                 "lgrnet.inference.predictor.xǁPredictorǁ_forward*"),
        tests=("tests/test_predictor.py", "tests/test_processor.py", "tests/test_point_mapping.py",
               "tests/test_visualize.py"),
    ),
}

# Tests that cannot judge a mutant: this one counts the steps done in a 12 s wall-clock budget, which a loaded
# machine misses with correct code.
DESELECT = (
    "tests/test_engine.py::"
    "test_time_limit_stops_with_a_validated_resumable_checkpoint_and_cosine_fits_the_budget",
)
# Copied beside the tests because some tests read them relative to the checkout.
ALSO_COPY = ("configs", "scripts", "benchmarks")
WORK = Path("build") / "mutate"
# Imported by the fork server before it forks a process per mutant: the heavy libraries and the whole package
# (also what functions import lazily), then WARMUP_MODULE.
PRELOAD = ["numpy", "PIL.Image", "torch", "torchvision", "torchvision.ops", "torchvision.transforms.v2",
           "timm", "transformers", "safetensors.torch", "yaml", "pytest"]
# The server's last warm-up step: collect the tests once (imports the test modules and conftest) and freeze
# the heap, so that the garbage collector of a mutant's process does not copy it page by page. Without it a
# mutant's process takes seconds to start instead of a fraction of a second.
WARMUP_MODULE = "_mutate_warmup"
WARMUP = """import gc
import os

import pytest

_cwd = os.getcwd()
os.chdir("mutants")
try:
    pytest.main(["--rootdir=.", "--collect-only", "-qqq", *{args!r}])
finally:
    os.chdir(_cwd)
gc.freeze()
"""


def pytest_args(module: Module) -> list[str]:
    deselect = [arg for test in (*DESELECT, *module.deselect) for arg in ("--deselect", test)]
    return ["-m", "not slow", "-p", "no:cacheprovider", *deselect]


def toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def prepare(root: Path, name: str, module: Module, fresh: bool) -> Path:
    """The work folder: links to the checkout's source and tests, a pyproject.toml with the mutmut table."""
    work = root / WORK / name
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    links = {"src": root / "src", "tests": root / "tests", **{p: root / p for p in ALSO_COPY}}
    # The tests find the real data at ../shared beside the checkout; mutmut runs them one level deeper.
    shared = (root.parent / "shared").resolve()
    if shared.is_dir():
        links["shared"] = shared
    for link, target in links.items():
        path = work / link
        if not path.is_symlink() and target.exists():
            path.symlink_to(target.resolve(), target_is_directory=True)
    table = "\n".join([
        "",
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {toml_list(module.files)}",
        f"also_copy = {toml_list([p for p in ALSO_COPY if (root / p).exists()])}",
        f"pytest_add_cli_args_test_selection = {toml_list(module.tests)}",
        f"pytest_add_cli_args = {toml_list(pytest_args(module))}",
        # A mutant's tests run in a process forked from a server that has imported the tests but run none, so
        # nothing a test computes once and caches (safe_pickle's allow-list) can hide a mutant.
        'process_isolation = "forkserver"',
        'forkserver_warmup = "import"',
        'preload_modules_file = "preload_modules.txt"',
        "",
    ])
    pyproject = (root / "pyproject.toml").read_text()
    if "[tool.mutmut]" in pyproject:
        raise SystemExit(f"{root / 'pyproject.toml'} has a [tool.mutmut] table; this script writes its own")
    (work / "pyproject.toml").write_text(pyproject + table)
    preload = [*PRELOAD, *package_modules(root), WARMUP_MODULE]
    (work / "preload_modules.txt").write_text("\n".join(preload) + "\n")
    # mutmut leaves files it finds in mutants/ alone. The folder must exist before mutmut starts: Python drops
    # a PYTHONPATH entry (see environment) for good if it is missing at start-up.
    (work / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    warmup = WARMUP.format(args=[*module.tests, *pytest_args(module)])
    (work / "mutants" / "src" / f"{WARMUP_MODULE}.py").write_text(warmup)
    return work


def package_modules(root: Path) -> list[str]:
    """Every module of the package but the demo (gradio)."""
    names = []
    for path in sorted((root / "src" / "lgrnet").rglob("*.py")):
        parts = path.relative_to(root / "src").with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "demo" not in parts:
            names.append(".".join(parts))
    return names


def environment(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Subprocesses the tests start (the CLI, DDP workers) import the mutated copy too, not the installed one.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "mutants" / "src"), env.get("PYTHONPATH")]))
    # One intra-op thread per test process: the mutants run side by side, and forking is safe without pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTEST_DEBUG_TEMPROOT"] = str(work / "tmp")
    (work / "tmp").mkdir(exist_ok=True)
    return env


def run(work: Path, module: Module, jobs: int) -> float:
    start, cpu_before = time.monotonic(), _children_cpu_s()
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *module.mutants]
    print(f"== {work.name}: {' '.join(cmd[1:])}", flush=True)
    with open(work / "run.log", "w") as log:
        proc = subprocess.run(cmd, cwd=work, env=environment(work), stdout=log, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        tail = (work / "run.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"mutmut failed on {work.name} (exit {proc.returncode}); "
                         f"end of {work / 'run.log'}:\n{tail}")
    (work / "elapsed_s").write_text(f"{elapsed:.0f}\n")
    # CPU time of every test process: divided by the cores, about the wall time on an idle machine.
    (work / "cpu_s").write_text(f"{_children_cpu_s() - cpu_before:.0f}\n")
    return elapsed


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


RESULT = re.compile(r"^\s*(\S+): (.+)$")
# A mutant whose tests crash (mutmut says "segfault" for any death by signal, e.g. out of memory) is caught.
CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass
class Row:
    module: str
    counts: dict[str, int]  # mutmut status -> number of mutants
    survivors: int
    elapsed_s: str
    cpu_s: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def report(work: Path, module: Module) -> Row:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work,
                         env=environment(work), capture_output=True, text=True, check=True).stdout
    statuses: dict[str, str] = {}
    for line in out.splitlines():
        match = RESULT.match(line)
        if match and any(fnmatch.fnmatchcase(match[1], pattern) for pattern in module.mutants):
            statuses[match[1]] = match[2].strip()
    counts: dict[str, int] = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = sorted((n for n, s in statuses.items() if s not in CAUGHT), key=_natural)
    lines = [f"# {work.name}: {len(statuses)} mutants", "",
             ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    diffs = _diffs(work, survivors)
    for name in survivors:
        changed = [ln for ln in diffs[name].splitlines()
                   if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        lines += [f"- `{name}` ({statuses[name]})", *(f"      {ln.strip()}" for ln in changed), ""]
    (work / "summary.md").write_text("\n".join(lines))
    elapsed, cpu = (_read(work / name) for name in ("elapsed_s", "cpu_s"))
    return Row(work.name, counts, len(survivors), elapsed, cpu)


# `mutmut show NAME` for many names in one process (one start-up instead of one per survivor).
_SHOW = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({name: get_diff_for_mutant(name) for name in json.load(sys.stdin)}))
"""


def _diffs(work: Path, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    env = environment(work)
    try:
        out = subprocess.run([sys.executable, "-c", _SHOW], cwd=work, env=env, input=json.dumps(names),
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    except (subprocess.CalledProcessError, json.JSONDecodeError):  # another mutmut version: one call each
        return {name: subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=env,
                                     capture_output=True, text=True).stdout for name in names}


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else "?"


def _natural(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def table(rows: list[Row]) -> str:
    columns = ["module", "mutants", "killed", "timeout", "crashed", "survived", "no tests", "survival rate",
               "wall time", "CPU time"]
    out = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        rate = f"{100 * row.survivors / row.total:.0f}% ({row.survivors}/{row.total})" if row.total else "-"
        get = row.counts.get
        cells = [row.module, row.total, get("killed", 0), get("timeout", 0), get("segfault", 0),
                 get("survived", 0), get("no tests", 0), rate, f"{row.elapsed_s} s", f"{row.cpu_s} s"]
        out.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to mutate (default: this one)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested side by side (default 2)")
    parser.add_argument("--report", action="store_true", help="summarise the last runs without running")
    parser.add_argument("--keep", action="store_true", help="reuse mutmut's cache of the last run")
    args = parser.parse_args()
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    root = args.root.resolve()
    rows = []
    for name in names:
        module = MODULES[name]
        work = root / WORK / name
        if not args.report:
            work = prepare(root, name, module, fresh=not args.keep)
            elapsed = run(work, module, args.jobs)
            print(f"   {name}: {elapsed / 60:.1f} min", flush=True)
        elif not (work / "mutants").is_dir():
            parser.error(f"no run of {name} in {work}")
        rows.append(report(work, module))
        print((work / "summary.md").read_text(), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
