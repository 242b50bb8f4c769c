"""What every check runs on: cases, the learner's function held to its contract under a time limit,
the comparison with the reference, and the message that explains the first failure.

An `Exercise` is a reference function (the learner's signature, the reference's arithmetic), its cases,
the names of what one call returns, a view (what is compared: a state as a/b and ln b, say), tolerances
and its known mistakes. A `Mistake` is recognised in one of three ways, all declared in the exercise's
own module:

- a *variant*: a function with the learner's signature that makes exactly that mistake. It is run on
  the same case through the same calls (its answers cached), and the mistake is named when the
  learner's answer matches it and the reference's does not;
- a *detect* test on the learner's answer (a signature: nan in row 0 and the rest right, say);
- an `explain` hook for a call that broke the contract, or an `on_raise` hook for an exception that
  says what went wrong (a decay rate w <= 0 given to the notebook's `wkv`).

`check(exercise, fn)` runs the cases in order and stops at the first that fails. Each call of the
learner's function is held to the contract the reference's own call shows: a tuple where it returns a
tuple, of the same length; a NumPy array (never a list) of the same shape and exactly the same dtype
(float32 in, float32 out: widening and narrowing are both named); a list of ints for token ids. Then
its inputs must be unchanged. Then the answer is compared with the reference's, and the first value
outside the tolerances is shown with as many digits as it takes to see the difference. Reading a return
never calls the learner's code where it can be avoided (no repr, str or len of their objects); where it
cannot (a protocol unpacking a tuple of their own class), an exception from their code is reported as
theirs, with its line, while an exception from this package's own code is raised as the bug it is.

The time limit: each case may take `TIME_LIMIT` seconds (or the check's `time_limit=`). On Linux and
macOS, in the main thread (a notebook's cells run there), an alarm (SIGALRM) interrupts the learner's
function at the limit, even inside an endless pure-Python loop that swallows exceptions, and the message
shows the line it was on. Where there is no SIGALRM (Windows), off the main thread, or when another timer is already set
(pytest-timeout, say; it is left alone), nothing can interrupt it: a function that returns late is
reported the same way, but one that never returns has to be stopped by hand (Kernel > Interrupt).
NumPy's own loops are interrupted only when they return.
"""

from __future__ import annotations

import inspect
import itertools
import linecache
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
import types

import numpy as np

NOT_IMPLEMENTED = "not implemented yet"
TIME_LIMIT = 10.0  # seconds per case; every correct solution takes well under 1 s per case

_NUMPY_DIR = os.path.dirname(np.__file__)
_HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------- results, mistakes

class CheckResult:
    """What a check found. True when every case passed; its text (repr) is the message to read.

    status: "passed", "failed", "not implemented", "error" (the function raised), or "time limit"."""

    def __init__(self, exercise, status, message, case=None, mistake=None):
        self.exercise = exercise  # the name of the learner's function
        self.status = status
        self.message = message
        self.case = case  # the name of the first failing case
        self.mistake = mistake  # the name of the recognised mistake, if any

    @property
    def passed(self):
        return self.status == "passed"

    def __bool__(self):
        return self.passed

    def __repr__(self):
        return self.message


class Mistake:
    """A known mistake: its name, a hint saying what to change, and how it is recognised.

    variant(*args) -> what a function with this mistake returns (the learner's signature); detect(case,
    answer) -> True when the learner's answer (as the case's calls returned it) shows the mistake.
    With neither, the mistake is named by a hook of its exercise (or by the harness itself)."""

    def __init__(self, name, hint, variant=None, detect=None):
        self.name, self.hint, self.variant, self.detect = name, hint, variant, detect

    def __repr__(self):
        return f"Mistake({self.name!r})"


# The mistakes the harness names for every exercise: the contract, inputs changed, inf/nan, time.
NONE_RETURNED = Mistake("nothing returned (None)",
                        "end the function with `return ...`: without it Python returns None.")
WRONG_TYPE = Mistake("a value of the wrong type (a list where an array is asked, an array where a list is, a "
                     "generator...)", "return what the exercise asks for.")
WRONG_COUNT = Mistake("the wrong number of values returned", "return exactly the values the exercise lists.")
WRONG_NESTING = Mistake("the returned values grouped wrongly",
                        "keep the grouping the exercise gives: (out, state), the state itself one tuple.")
WRONG_ORDER = Mistake("the returned values in the wrong order",
                      "return them in the order the exercise lists them.")
WRONG_SHAPE = Mistake("a wrong shape", "check which axis is which in the shapes the exercise gives.")
TRANSPOSED = Mistake("rows and columns swapped (a transposed array)",
                     "time runs down the rows (T, C): one row per token, one column per channel.")
WIDENED = Mistake("a wider dtype than the inputs' (float64 for float32 inputs)",
                  "compute in the inputs' dtype: an array made without dtype= (np.zeros(C), np.empty(shape)) "
                  "is float64 and widens everything it touches; np.zeros_like(x) or dtype=x.dtype keeps it.")
NARROWED = Mistake("a narrower dtype than the inputs' (float32 for float64 inputs)",
                   "compute in the inputs' dtype: no dtype=np.float32 or .astype(np.float32) when they are float64.")
NOT_FLOAT = Mistake("an integer (or other non-float) dtype",
                    "an array made from integers (np.zeros(shape, int), np.empty_like of an int array) holds "
                    "integers only: make it from the float inputs (np.empty_like(x)).")
IN_PLACE = Mistake("modified the inputs in place",
                   "work on new arrays (x = x * mu, np.concatenate, .copy()) instead of writing into the ones "
                   "passed in: the caller still needs them (the reference leaves every input as it was).")
OVERFLOW = Mistake("exp overflow (inf/nan)",
                   "an exponential overflowed (float32: e^x is inf above x ≈ 88.7; float64: above 709.8) or a "
                   "0/0 appeared. Keep every exponent relative to the largest one, so that no e^x exceeds 1.")
TIME_OUT = Mistake("still running at the time limit (an endless loop?)",
                   "look at the loop it was stopped in: does its condition ever change? (a `while` whose "
                   "counter is never increased, a loop over a list it appends to)")
COMMON = (NONE_RETURNED, WRONG_TYPE, WRONG_COUNT, WRONG_NESTING, WRONG_ORDER, WRONG_SHAPE, TRANSPOSED, WIDENED,
          NARROWED, NOT_FLOAT, IN_PLACE, OVERFLOW, TIME_OUT)


# ---------------------------------------------------------------------------------- cases, exercises

def one_call(call, args):
    """The default protocol: the learner's function called once on the case's arguments."""
    return call(*args)


class Case:
    """One test case: a name, the arguments, and the protocol that calls a function on them.

    protocol(call, args) -> the answer: `call` is the function under test (guarded, for the learner's;
    every call's return is checked before the protocol sees it, so it may unpack freely). Several calls
    carry the function's own state from one to the next. `shared` are indices of arguments too large to
    snapshot at every call (a model's parameters): they are checked for changes once, after the case.
    tol: (rtol, atol) for this case, when not the exercise's."""

    def __init__(self, name, args, protocol=one_call, shared=(), tol=None):
        self.name, self.args, self.protocol = name, args, protocol
        self.shared = tuple(shared)
        self.tol = tol
        self._expected = None
        self._variants = {}

    def expected(self, reference):
        """(answer, the reference's return of every call): computed once."""
        if self._expected is None:
            returns = []

            def record(*args):
                out = reference(*args)
                returns.append(out)
                return out
            with np.errstate(all="ignore"):
                answer = self.protocol(record, self._copy())
            self._expected = (answer, returns)
        return self._expected

    def _copy(self):
        # the reference and the variants are this package's code: they leave the shared arguments alone
        return tuple(a if j in self.shared else copy_args(a) for j, a in enumerate(self.args))

    def variant(self, mistake):
        """What mistake.variant answers on this case (None if it raises): computed once."""
        key = id(mistake)
        if key not in self._variants:
            try:
                with np.errstate(all="ignore"):
                    self._variants[key] = self.protocol(mistake.variant, self._copy())
            except Exception:  # noqa: BLE001 - a variant that cannot run on this case does not apply
                self._variants[key] = None
        return self._variants[key]


class Exercise:
    """One function of one notebook: what is checked and how. See the module's docstring.

    returns: the names of what one call returns, nested as the call returns them ("shifted x", or
    ("out", ("x_prev", "aa", "bb", "pp"))). view(answer) -> the arrays compared, named view_names
    (default: the answer's leaves, named as `returns`). explain(case, call, args, wrong) (wrong.returned:
    what the call returned) and on_raise(case, exc) may return a Mistake (or (Mistake, hint)) that names a broken contract or an
    exception. time_hint: said after the time limit's own hint (what else than an endless loop makes this
    exercise slow). `recognised` lists every mistake the exercise can name (TEACHERS.md lists them)."""

    def __init__(self, name, notebook, reference, cases, returns, rtol, atol, mistakes=(), view=None,
                 view_names=None, overflow_hint=None, explain=None, on_raise=None, named_by_hooks=(), time_hint=None):
        self.name, self.notebook, self.reference = name, notebook, reference
        self._make_cases, self._cases = cases, None
        self.returns, self.rtol, self.atol = returns, rtol, atol
        self.mistakes = list(mistakes)
        self.view = view or (lambda answer: tuple(np.asarray(a) for a in leaves(answer)))
        self.view_names = view_names or tuple(leaves(returns))
        self.overflow = Mistake(OVERFLOW.name, overflow_hint or OVERFLOW.hint)
        self.explain, self.on_raise = explain, on_raise
        self.named_by_hooks = list(named_by_hooks)
        self.time_hint = time_hint

    @property
    def cases(self):
        if self._cases is None:
            self._cases = self._make_cases()
        return self._cases

    @property
    def recognised(self):
        """Every mistake this exercise names, its own first, in the order they are tried."""
        return self.mistakes + self.named_by_hooks


def leaves(tree):
    if isinstance(tree, tuple):
        return [x for item in tree for x in leaves(item)]
    return [tree]


def format_names(tree):
    if isinstance(tree, tuple):
        return "(" + ", ".join(format_names(t) for t in tree) + ")"
    return str(tree)


def copy_args(obj):
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: copy_args(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_args(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------- the time limit

class TimeLimitExceeded(BaseException):
    """Raised inside the learner's function by the alarm. A BaseException, so that a learner's
    `except Exception:` does not swallow it; the alarm repeats every 0.25 s, so that a bare `except:`
    inside a loop cannot either."""


class Alarm:
    """The time limit of one case (see the module's docstring). Once the limit has passed, a trace
    function raises TimeLimitExceeded again at the next line the learner's code runs, so that an
    `except:` that swallowed the alarm's exception raises it from its own body."""

    def __init__(self, seconds):
        self.seconds, self.armed, self.expired, self.elapsed = seconds, False, False, 0.0

    def usable(self):
        return (self.seconds is not None and self.seconds > 0 and hasattr(signal, "setitimer")
                and threading.current_thread() is threading.main_thread()
                and signal.getitimer(signal.ITIMER_REAL)[0] == 0)

    def _trace(self, frame, event, arg):
        if self.armed and event == "line" and not _ours(frame):
            raise TimeLimitExceeded
        return self._trace

    def _fire(self, signum, frame):
        if not self.armed:
            return
        ours = _ours(frame)  # before the trace function is on: it would raise in the code this calls
        if not self.expired:
            self.expired = True
            self._previous_trace = sys.gettrace()
        sys.settrace(self._trace)  # (a trace function that raised is unset: set it again at every alarm)
        f = frame
        while f is not None:
            f.f_trace, f.f_trace_lines = self._trace, True
            f = f.f_back
        if not ours:  # in this package's own code (the check between two calls, this class's
            raise TimeLimitExceeded  # __exit__), the trace raises at the learner's next line instead

    def __enter__(self):
        if self.usable():
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds, 0.25)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.elapsed = time.perf_counter() - self.start
        if self.armed:
            self.armed = False  # an alarm still on its way does nothing from here on
            signal.setitimer(signal.ITIMER_REAL, 0)  # no more alarms, then the old handler back
            signal.signal(signal.SIGALRM, self.previous if self.previous is not None else signal.SIG_DFL)
            if self.expired:
                sys.settrace(self._previous_trace)
        return False

    def late(self):
        return self.seconds is not None and self.seconds > 0 and self.elapsed > self.seconds


_OURS = {}


def _ours(frame):
    """Is the frame's code this package's (rwkv_np/exercises/)?"""
    name = frame.f_code.co_filename
    if name not in _OURS:
        _OURS[name] = os.path.dirname(os.path.abspath(name)) == _HERE
    return _OURS[name]


# ---------------------------------------------------------------------------------- describing things

_PLAIN = (str, bytes, int, float, complex, bool, type(None), np.generic)


def _plain(x, depth=0):
    if isinstance(x, _PLAIN):
        return True
    if isinstance(x, np.ndarray):
        return x.dtype != object
    if isinstance(x, (tuple, list)) and depth < 3:
        return all(_plain(y, depth + 1) for y in x)
    return False


def describe_exception(e):
    """'TypeName: its message', without running any of the learner's code: str() is taken only when
    the exception's __str__ is Python's or NumPy's own and its arguments are plain values."""
    cls = type(e)
    name = cls.__name__ if isinstance(getattr(cls, "__name__", None), str) else "an exception"
    owner = next((c for c in cls.__mro__ if "__str__" in c.__dict__), BaseException)
    module = owner.__dict__.get("__module__", "builtins") if owner is not BaseException else "builtins"
    try:
        args = BaseException.__dict__["args"].__get__(e)  # the C slot, not a property it may define
    except Exception:  # noqa: BLE001
        args = None
    if not (isinstance(module, str) and (module == "builtins" or module.split(".")[0] == "numpy")
            and args is not None and _plain(args)):
        return f"{name} (its message is not shown: str() of it would run code of its own)"
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - even a builtin __str__ may fail on odd arguments
        return f"{name} (its message could not be read)"
    text = text.splitlines()[0][:200] if text else ""
    return f"{name}: {text}" if text else name


def describe(x):
    """What a value is, in words, without calling anything of the learner's (no repr, no len of
    unknown types)."""
    if x is None:
        return "None"
    if isinstance(x, np.ndarray):
        return f"an array of shape {x.shape}, dtype {x.dtype}"
    if isinstance(x, tuple):
        return f"a tuple of {tuple.__len__(x)}"
    if isinstance(x, list):
        return f"a list of {list.__len__(x)}"
    if isinstance(x, np.generic):
        return f"a NumPy scalar ({type(x).__name__})"
    if isinstance(x, bool):
        return "a bool"
    if isinstance(x, int):
        return "an int"
    if isinstance(x, float):
        return "a float"
    if isinstance(x, (bytes, bytearray)):
        return f"{type(x).__name__} (length {type(x).__len__(x)})"
    if isinstance(x, str):
        return "a str"
    if isinstance(x, dict):
        return "a dict"
    if isinstance(x, types.GeneratorType):
        return "a generator (a function with `yield` returns one)"
    if hasattr(type(x), "__next__"):
        return f"an iterator ({type(x).__name__})"
    return f"a {type(x).__name__}"


def _fmt_value(e, g):
    """expected and got as text, with as many significant digits as it takes to tell them apart."""
    if isinstance(e, (int, np.integer)) and isinstance(g, (int, np.integer)):
        return str(int(e)), str(int(g)), ""
    e, g = float(e), float(g)
    if not (np.isfinite(e) and np.isfinite(g)):
        f = lambda x: f"{x:.6g}" if np.isfinite(x) else str(x)  # noqa: E731
        return f(e), f(g), ""
    for digits in range(6, 18):
        es, gs = f"{e:.{digits}g}", f"{g:.{digits}g}"
        if es != gs:
            break
    extra = ""
    if digits > 6:  # the two agree to 6 digits: say by how much they differ
        rel = abs(g - e) / abs(e) if e else float("inf")
        extra = f" (they differ by {abs(g - e):.2g}, {rel:.2g} relative)"
    return es, gs, extra


def first_difference(expected, got, names, rtol, atol):
    """(kind, text) for the first value of `got` not within rtol, atol of `expected`, or None.
    kind: "nonfinite" when the learner's value there is inf or nan, else "value"."""
    for name, e, g in zip(names, expected, got):
        bad = ~np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            where = f"{name}[{', '.join(map(str, i))}]" if i else name
            es, gs, extra = _fmt_value(e[i], g[i])
            kind = "nonfinite" if np.issubdtype(g.dtype, np.floating) and not np.isfinite(g[i]) else "value"
            if extra:
                extra += f"; the tolerance is {atol:g} + {rtol:g} × |expected|"
            return kind, f"{where}: expected {es}, got {gs}{extra}"
    return None


def _same(a, b, names, rtol, atol):
    return first_difference(a, b, names, rtol, atol) is None


def frame_of_learner(exc):
    """' (in name, line N: code)' of the deepest frame outside NumPy and this package, if any."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith(_NUMPY_DIR) or os.path.dirname(os.path.abspath(frame.filename)) == _HERE:
            continue
        line = frame.line or linecache.getline(frame.filename, frame.lineno).strip()
        return f" (in {frame.name}, line {frame.lineno}: {line})" if line else f" (in {frame.name})"
    return ""


# not the learner's code: rwkv_np (the reference the checks run included), Python's own library, installed packages
_NOT_LEARNERS = tuple(os.path.abspath(p) + os.sep for p in {
    os.path.dirname(_HERE), *(sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    if p)


def _learner_code_in(exc):
    """Does the traceback pass through code outside rwkv_np, Python's library and installed packages
    (the learner's: a method of a class of theirs that the check called while reading a return)?"""
    return any(not os.path.abspath(f.filename).startswith(_NOT_LEARNERS)
               for f in traceback.extract_tb(exc.__traceback__))


def arg_name(fn, i):
    """The name of fn's i-th parameter ("argument i" when it cannot be read)."""
    try:
        return list(inspect.signature(fn).parameters)[i]
    except (TypeError, ValueError, IndexError):
        return f"argument {i}"


def changed(before, after, path="argument"):
    """The name of the first array that differs between two copies of the arguments, or None."""
    if isinstance(before, np.ndarray):
        same = (isinstance(after, np.ndarray) and after.shape == before.shape
                and np.array_equal(before, after, equal_nan=True))
        return None if same else path
    if isinstance(before, dict):
        for k in before:
            found = changed(before[k], after.get(k) if isinstance(after, dict) else None, f"{path}[{k!r}]")
            if found:
                return found
    if isinstance(before, (list, tuple)) and not isinstance(before, str):
        for i, (b, a) in enumerate(zip(before, after)):
            found = changed(b, a, f"{path}[{i}]")
            if found:
                return found
    return None


# ---------------------------------------------------------------------------------- the contract

class Wrong(Exception):
    """A call's return broke the contract: the message says how; mistake names it (hint: its own)."""

    def __init__(self, message, mistake, hint=None):
        super().__init__(message)
        self.mistake, self.hint = mistake, hint or mistake.hint
        self.returned = None  # what the call returned


class _Raised(Exception):
    def __init__(self, exc, call):
        self.exc, self.call = exc, call


class _InPlace(Exception):
    def __init__(self, name, call):
        self.name, self.call = name, call


class _Stub(Exception):
    pass


def _array_text(like):
    return f"a NumPy array of shape {like.shape}, dtype {like.dtype}"


def conform(got, like, names, who="your function", top=True):
    """Raise Wrong unless `got` has the structure, types, shapes and dtypes of `like` (the reference's
    return of the same call). names: the names tree of `like`; top: `got` is the whole return."""
    if isinstance(like, tuple):
        n = len(like)
        what = f"{n} values, {format_names(names)}"
        if got is None:
            raise Wrong(f"{who} returned None; it should return {what}", NONE_RETURNED)
        if not isinstance(got, tuple):
            one = isinstance(got, (np.ndarray, np.generic, int, float))  # one value where several are due
            ret = f"`return {', '.join(format_names(x) for x in names)}`"
            hint = f"return all {n}: {ret}" if one else f"return them as a tuple: {ret} makes one"
            raise Wrong(f"{who} returned {describe(got)}; it should return a tuple of {what}",
                        WRONG_COUNT if one else WRONG_TYPE, hint)
        m = tuple.__len__(got)
        if m != n:
            flat = len(leaves(names))
            if _leaf_count(got) == flat:
                raise Wrong(f"{who} returned {_shape_of(got)}; it should return {format_names(names)}",
                            WRONG_NESTING, f"group them as {format_names(names)}: `return "
                                           f"{', '.join(format_names(x) for x in names)}`")
            raise Wrong(f"{who} returned a tuple of {m}; it should return {what}", WRONG_COUNT,
                        f"return exactly these {n}: {format_names(names)}")
        if isinstance(names, tuple) and _leaf_count(got) == len(leaves(names)) and any(
                isinstance(g, tuple) != isinstance(nm, tuple) for g, nm in zip(tuple.__iter__(got), names)):
            raise Wrong(f"{who} returned {_shape_of(got)}; it should return {format_names(names)}", WRONG_NESTING,
                        f"group them as {format_names(names)}: `return "
                        f"{', '.join(format_names(x) for x in names)}`")
        for g, lk, nm in zip(tuple.__iter__(got), like, names):
            conform(g, lk, nm, who, top=False)
        return
    name = names
    is_ = f"{who} returned" if top else f"{name} is"
    if isinstance(like, np.ndarray):
        if not isinstance(got, np.ndarray):
            if got is None:
                raise Wrong(f"{is_} None; expected {_array_text(like)}", NONE_RETURNED, NONE_RETURNED.hint if top
                            else f"return {name} itself (a None here is usually a missing `return` in a helper, "
                                 f"or a variable that was never set)")
            if isinstance(got, (list, tuple)):
                hint = ("return a NumPy array: np.array(...) or np.stack(...) of the list (the exercise's arrays are "
                        "arrays all the way, so that a caller can slice them and do arithmetic on them)")
            elif isinstance(got, types.GeneratorType):
                hint = "a function with `yield` gives a generator: build the array and `return` it"
            elif isinstance(got, (int, float, np.generic)):
                hint = f"return an array of shape {like.shape}: a single number here means a sum or an index too many"
            else:
                hint = f"return an array of shape {like.shape}"
            raise Wrong(f"{is_} {describe(got)}; expected {_array_text(like)}", WRONG_TYPE, hint)
        if got.shape != like.shape:
            raise _shape_wrong(name if not top else f"the array {who} returned", got, like)
        if got.dtype != like.dtype:
            name = name if not top else f"the array {who} returned"
            if not np.issubdtype(got.dtype, np.floating):
                raise Wrong(f"{name} has dtype {got.dtype}; expected {like.dtype}, the dtype of the inputs",
                            NOT_FLOAT)
            if np.finfo(got.dtype).bits > np.finfo(like.dtype).bits:
                raise Wrong(f"{name} has dtype {got.dtype}; expected {like.dtype}, the dtype of the inputs: "
                            f"your function widened {like.dtype} to {got.dtype}", WIDENED)
            raise Wrong(f"{name} has dtype {got.dtype}; expected {like.dtype}, the dtype of the inputs: "
                        f"your function narrowed {like.dtype} to {got.dtype}", NARROWED)
        return
    if isinstance(like, list):  # token ids: a list of ints
        n = len(like)
        if not isinstance(got, list):
            hint = {np.ndarray: "return a list: .tolist() of the array, or collect the ids with out.append(int(id))",
                    bytes: "return the ids as a list of ints (list(b) gives the byte values)"}.get(
                type(got), f"return a list of {n} ints: out = [], then out.append(int(id)) for each")
            raise Wrong(f"{name}: your function returned {describe(got)}; expected a list of {n} ints",
                        NONE_RETURNED if got is None else WRONG_TYPE, hint)
        m = list.__len__(got)
        if m != n:
            raise Wrong(f"{name}: your function returned {m} ids; expected {n}", WRONG_COUNT,
                        f"return exactly n = {n} new ids")
        for i, x in enumerate(list.__iter__(got)):
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                raise Wrong(f"{name}[{i}] is {describe(x)}; expected an int (a token id)", WRONG_TYPE,
                            "make each id an int: int(np.argmax(...))")
        return
    raise TypeError(f"no contract for {type(like).__name__}")  # pragma: no cover - a checker's own bug


def _leaf_count(x, depth=0):
    if isinstance(x, tuple) and depth < 4:
        return sum(_leaf_count(y, depth + 1) for y in tuple.__iter__(x))
    return 1


def _shape_of(x, depth=0):
    """A returned tuple's nesting in words: (a, (b, c)) -> "(value, (value, value))"."""
    if isinstance(x, tuple) and depth < 4:
        return "(" + ", ".join(_shape_of(y, depth + 1) for y in tuple.__iter__(x)) + ")"
    return "value"


def _shape_wrong(name, got, like):
    gs, es = got.shape, like.shape
    text = f"{name} has shape {gs}; expected {es}"
    if len(es) == 2 and gs == es[::-1] and es[0] != es[1]:
        return Wrong(text, TRANSPOSED)
    if gs == (1,) + es:
        return Wrong(text, WRONG_SHAPE, f"an extra axis of length 1 in front: one value of shape {es} is "
                                        f"wanted (take [0], or do not add the axis)")
    if len(gs) == len(es) - 1 and gs == es[1:]:
        return Wrong(text, WRONG_SHAPE, f"the first axis is missing: {name} has one row per position, {es}")
    if gs == ():
        return Wrong(text, WRONG_SHAPE, "a single number where an array is wanted: a sum over every axis "
                                        "(np.sum without axis=) or an index too many?")
    return Wrong(text, WRONG_SHAPE)


class _Guard:
    """The learner's function as a case's protocol calls it: each call timed with the case, its
    exceptions wrapped, its inputs snapshotted and compared after, its return held to the contract
    of the reference's return of the same call."""

    def __init__(self, fn, exercise, case, likes):
        self.fn, self.exercise, self.case, self.likes = fn, exercise, case, likes
        self.calls = 0
        self.args = None

    def __call__(self, *args):
        i = self.calls
        self.calls += 1
        self.args = args
        before = [None if j in self.case.shared else copy_args(a) for j, a in enumerate(args)]
        try:
            got = self.fn(*args)
        except NotImplementedError:
            raise _Stub() from None
        except (KeyboardInterrupt, TimeLimitExceeded):
            raise
        except BaseException as e:  # noqa: BLE001 - the learner's code may raise anything, SystemExit too
            raise _Raised(e, i) from None
        for j, (b, a) in enumerate(zip(before, args)):
            if b is not None:
                name = changed(b, a, arg_name(self.fn, j))
                if name:
                    raise _InPlace(name, i)
        like = self.likes[i] if i < len(self.likes) else None
        if like is not None:
            try:
                conform(got, like, self.exercise.returns)
            except Wrong as w:
                w.returned = got  # for the exercise's explain hook
                raise
        return got


# ---------------------------------------------------------------------------------- running a check

def _title(exercise):
    return f"check_{exercise.name}"


def _call_text(likes, call):
    return f"call {call + 1} of {len(likes)}: " if len(likes) > 1 else ""


def check(exercise, fn, time_limit=None):
    """Run `fn` on every case of `exercise`; stop at the first failure and explain it. NumPy's
    overflow and 0/0 warnings are silenced meanwhile: an inf or nan in the answer is explained by the
    message."""
    title = _title(exercise)
    if not callable(fn):
        return CheckResult(exercise.name, "error", f"✗ {title}: expected your function `{exercise.name}`, got "
                                                   f"{describe(fn)}")
    limit = TIME_LIMIT if time_limit is None else time_limit
    with np.errstate(all="ignore"):
        for case in exercise.cases:
            try:
                result = _run_case(exercise, fn, case, limit)
            except Exception as e:  # noqa: BLE001 - code of the learner's ran while the check read a return
                if not _learner_code_in(e):
                    raise  # the check's own bug: not to be blamed on the learner
                return CheckResult(exercise.name, "error",
                                   f"✗ {title}: case '{case.name}': what your function returned could not be read: "
                                   f"reading it ran code of yours, which raised {describe_exception(e)}"
                                   f"{frame_of_learner(e)}", case.name)
            if result is not None:
                return result
    names = "; ".join(c.name for c in exercise.cases)
    return CheckResult(exercise.name, "passed", f"✓ {title}: all {len(exercise.cases)} cases passed ({names}).")


def _run_case(exercise, fn, case, limit):
    title = _title(exercise)
    expected, likes = case.expected(exercise.reference)
    names = exercise.view_names
    rtol, atol = case.tol or (exercise.rtol, exercise.atol)
    want = exercise.view(expected)
    guard = _Guard(fn, exercise, case, likes)
    args = copy_args(case.args)
    shared_before = {j: case.args[j] for j in case.shared}
    alarm = Alarm(limit)
    try:
        with alarm:
            answer = case.protocol(guard, args)
    except _Stub:
        return CheckResult(exercise.name, "not implemented",
                           f"… {title}: {NOT_IMPLEMENTED}: fill in `{exercise.name}` above "
                           f"(it still raises NotImplementedError), run its cell, then this one.")
    except TimeLimitExceeded as e:
        return _time_limit(exercise, case, limit, frame_of_learner(e), interrupted=True)
    except _Raised as r:
        named = exercise.on_raise(case, r.exc) if exercise.on_raise else None
        where = _call_text(likes, r.call)
        if named:
            mistake, hint = named if isinstance(named, tuple) else (named, named.hint)
            return _fail(exercise, case, f"{where}your function raised {describe_exception(r.exc)}"
                                         f"{frame_of_learner(r.exc)}", mistake, hint)
        return CheckResult(exercise.name, "error",
                           f"✗ {title}: case '{case.name}': {where}your function raised "
                           f"{describe_exception(r.exc)}{frame_of_learner(r.exc)}", case.name)
    except _InPlace as p:
        return _fail(exercise, case, f"{_call_text(likes, p.call)}`{p.name}` was changed by your "
                                     f"function", IN_PLACE, IN_PLACE.hint)
    except Wrong as w:
        call = guard.calls - 1
        order = _wrong_order(exercise, case, w.returned, likes, want, rtol, atol)
        named = exercise.explain(case, call, guard.args, w) if exercise.explain and not order else None
        if order:
            mistake, hint = WRONG_ORDER, order
        elif named:
            mistake, hint = named if isinstance(named, tuple) else (named, named.hint)
        else:
            mistake, hint = w.mistake, w.hint
        return _fail(exercise, case, f"{_call_text(likes, call)}{w}", mistake, hint)
    if alarm.late():
        return _time_limit(exercise, case, limit, "", interrupted=False, took=alarm.elapsed)
    for j, before in shared_before.items():
        name = changed(before, args[j], arg_name(fn, j))
        if name:
            return _fail(exercise, case, f"`{name}` was changed by your function", IN_PLACE, IN_PLACE.hint)
    try:
        got = exercise.view(answer)
    except Wrong as w:
        return _fail(exercise, case, str(w), w.mistake, w.hint)
    diff = first_difference(want, got, names, rtol, atol)
    if diff is None:
        return None
    detail = f"first wrong value: {diff[1]}"
    for m in exercise.mistakes:
        if m.variant is not None:
            wrong = case.variant(m)
            if wrong is None:
                continue
            try:
                wrong = exercise.view(wrong)
            except Exception:  # noqa: BLE001 - a variant answer the view cannot read: it does not apply
                continue
            if not all(np.isfinite(a).all() for a in wrong if np.issubdtype(a.dtype, np.number)):
                continue  # an overflowing variant would match every overflow
            if not _same(want, wrong, names, rtol, atol) and _same(wrong, got, names, rtol, atol):
                return _fail(exercise, case, detail, m, m.hint)
        elif m.detect is not None:
            try:
                fired = m.detect(case, answer)
            except Exception:  # noqa: BLE001 - a detect that cannot read this answer does not fire
                fired = False
            if fired:
                return _fail(exercise, case, detail, m, m.hint)
    order = _wrong_order(exercise, case, answer, likes, want, rtol, atol)
    if order:
        return _fail(exercise, case, detail, WRONG_ORDER, order)
    if diff[0] == "nonfinite":
        return _fail(exercise, case, detail, exercise.overflow, exercise.overflow.hint)
    return _fail(exercise, case, detail, None, None)


def _wrong_order(exercise, case, answer, likes, want, rtol, atol):
    """A hint naming the order, when the answer's values (one call's) are the reference's in another
    order; else None."""
    if len(likes) != 1 or not isinstance(exercise.returns, tuple) or not isinstance(answer, tuple):
        return None
    names = exercise.returns
    nodes = [()]  # the tuples to permute: the top one and each nested one
    nodes += [(i,) for i, n in enumerate(names) if isinstance(n, tuple)]
    for path in nodes:
        node = answer
        node_names = names
        for i in path:
            node, node_names = node[i], node_names[i]
        if not isinstance(node, tuple) or len(node) != len(node_names) or len(node) > 5:
            continue
        n = len(node)
        for perm in itertools.permutations(range(n)):
            if perm == tuple(range(n)):
                continue
            candidate = _replace(answer, path, tuple(node[perm[j]] for j in range(n)))  # yours at perm[j] is j
            try:
                conform(candidate, likes[0], names)
                got = exercise.view(candidate)
            except Exception:  # noqa: BLE001 - not this order
                continue
            if _same(want, got, exercise.view_names, rtol, atol):
                yours = [None] * n
                for j in range(n):
                    yours[perm[j]] = node_names[j]
                return (f"your function returned {format_names(_replace(names, path, tuple(yours)))}; the order is "
                        f"{format_names(names)}")
    return None


def _replace(tree, path, new):
    if not path:
        return new
    items = list(tree)
    items[path[0]] = _replace(tree[path[0]], path[1:], new)
    return tuple(items)


def _time_limit(exercise, case, limit, where, interrupted, took=None):
    if interrupted:
        text = f"your function was still running after {limit:g} s{where}: stopped {'there' if where else 'it'}."
    else:
        text = (f"your function took {took:.1f} s, over the limit of {limit:g} s (it could not be interrupted "
                f"here: no alarm signal on this platform or thread)")
    lines = [f"✗ check_{exercise.name}: case '{case.name}': {text}",
             f"  This looks like: {TIME_OUT.name}.",
             f"  Hint: {TIME_OUT.hint}{' ' + exercise.time_hint if exercise.time_hint else ''} A correct "
             f"solution takes well under a second per case; check_{exercise.name}({exercise.name}, time_limit=...) "
             f"sets another limit."]
    return CheckResult(exercise.name, "time limit", "\n".join(lines), case.name, TIME_OUT.name)


def _fail(exercise, case, detail, mistake, hint):
    """The message for a failed case."""
    lines = [f"✗ check_{exercise.name}: case '{case.name}' failed.", f"  {detail}"]
    if mistake is not None:
        lines.append(f"  This looks like: {mistake.name}.")
        lines.append(f"  Hint: {hint}")
    else:
        lines.append("  No known mistake matches; compare your formula with the equation above, term by term, "
                     "on this case.")
    return CheckResult(exercise.name, "failed", "\n".join(lines), case.name,
                       mistake.name if mistake is not None else None)
