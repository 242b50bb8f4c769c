"""Checks for the exercises of notebooks/exercises/: build RWKV-4 yourself, each piece checked against
rwkv_np/rwkv4/reference.py.

Each `check_*` function takes the learner's function, runs it on its exercise's cases (random and, from
exercise 5 on, real weights; T = 1, large keys, u very negative, a state carried from one call to the
next) and returns a `CheckResult`: its text says which cases passed or, for the first case that failed,
what was wrong (the first wrong value with its index, expected and got; or what the function returned
instead of the arrays, tuple or list the exercise asks for) and, when the answer is that of a known
mistake, the mistake by name with a hint. A stub that still raises NotImplementedError is reported as
"not implemented yet"; any other exception as one line naming it, the case and the learner's line; a
function still running after the time limit is stopped (see harness.py).

    harness.py          cases, the contract (types, shapes, dtypes), the time limit, the messages
    exNN_*.py           one module per notebook: its cases, its known mistakes and their hints
    wkv_mistakes.py     eq. 14's mistakes, shared by exercises 2-5 and 7
    model_mistakes.py   the whole model's, shared by exercises 7 and 8
    given.py            what a notebook gives beyond the reference's helpers (`wkv`, refusing w <= 0)
    data.py             the cases' inputs: random, tiny models, the shipped model
    solutions.py        the teacher's solutions

    python -m rwkv_np.exercises write-solutions DIR   # the exercise notebooks, solved (for a teacher)
    python -m rwkv_np.exercises mistakes              # the recognised mistakes, as TEACHERS.md lists them
"""

import inspect
import json
import sys

from . import harness
from .data import reference_wkv, shipped_params
from .ex01_token_shift import MIX, TOKEN_SHIFT, check_mix, check_token_shift
from .ex02_wkv_naive import WKV_NAIVE, check_wkv_naive
from .ex03_wkv_recurrent import WKV_RECURRENT, check_wkv_recurrent
from .ex04_wkv_stable import WKV_STABLE, check_wkv_stable
from .ex05_time_mixing import TIME_MIXING, check_time_mixing
from .ex06_channel_mixing import CHANNEL_MIXING, check_channel_mixing
from .ex07_recurrent_step import STEP, check_step
from .ex08_whole_model import FORWARD, GENERATE, check_forward, check_generate, show_generation
from .ex09_wkv_grad import WKV_GRAD, check_wkv_grad
from .harness import TIME_LIMIT, CheckResult

__all__ = ["CheckResult", "TIME_LIMIT", "EXERCISES", "reference_wkv", "shipped_params", "show_generation",
           "check_token_shift", "check_mix", "check_wkv_naive", "check_wkv_recurrent", "check_wkv_stable",
           "check_time_mixing", "check_channel_mixing", "check_step", "check_forward", "check_generate",
           "check_wkv_grad", "write_solutions", "mistakes_markdown"]

# every checked function, in the notebooks' order
EXERCISES = (TOKEN_SHIFT, MIX, WKV_NAIVE, WKV_RECURRENT, WKV_STABLE, TIME_MIXING, CHANNEL_MIXING, STEP, FORWARD,
             GENERATE, WKV_GRAD)


def _unique(mistakes):
    seen, out = set(), []
    for m in mistakes:
        if m.name not in seen:
            seen.add(m.name)
            out.append(m.name)
    return out


def mistakes_markdown():
    """The recognised mistakes as TEACHERS.md lists them: every exercise's own, then those every check
    names. Generated from the modules (tests/test_exercises.py checks that TEACHERS.md holds exactly this)."""
    lines = []
    for notebook in dict.fromkeys(e.notebook for e in EXERCISES):
        for e in (e for e in EXERCISES if e.notebook == notebook):
            names = _unique(e.recognised)
            lines.append(f"- `{notebook}`, `{e.name}` ({len(names)}): " + "; ".join(names) + ".")
    common = _unique(harness.COMMON)
    lines.append(f"- every check, where its exercise's return allows ({len(common)}): " + "; ".join(common) + ".")
    return "\n".join(lines) + "\n"


def _solution_sources():
    """{function name: source} of the teacher's solutions (rwkv_np/exercises/solutions.py)."""
    from . import solutions

    return {name: inspect.getsource(getattr(solutions, name)) for name in solutions.__all__}


def write_solutions(out_dir, src_dir=None):
    """Write the exercise notebooks with every stub cell replaced by its solution: to out_dir.

    A stub cell is one whose metadata names its function ("exercise": "token_shift"); src_dir holds the
    exercise notebooks (default: notebooks/exercises/ of the checkout this package sits in).
    Returns the paths written."""
    from pathlib import Path

    src = Path(src_dir) if src_dir is not None else Path(__file__).resolve().parents[2] / "notebooks" / "exercises"
    paths = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        from ..errors import ArgumentError

        raise ArgumentError(f"no exercise notebooks (NN_*.ipynb) in {src}: give their folder as src_dir")
    sources = _solution_sources()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            names = cell.get("metadata", {}).get("exercise")
            if names:
                names = [names] if isinstance(names, str) else names
                cell["source"] = "\n\n".join(sources[n].rstrip() for n in names) + "\n"
        target = out / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        written.append(target)
    return written


USAGE = ("usage: python -m rwkv_np.exercises write-solutions OUT_DIR [EXERCISE_NOTEBOOKS_DIR]\n"
         "       python -m rwkv_np.exercises mistakes")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["mistakes"]:
        print(mistakes_markdown(), end="")
        return 0
    if len(argv) not in (2, 3) or argv[0] != "write-solutions":
        print(USAGE, file=sys.stderr)
        return 2
    for path in write_solutions(*argv[1:]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
