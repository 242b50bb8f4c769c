"""Exercise 8 (notebooks/exercises/08_whole_model.ipynb): the parallel form on the shipped checkpoint,
and greedy generation with it.

forward(params, tokens (T,), state=None) -> (logits (T, V), state (L, 5, C)): float32 arrays, as a tuple.
generate(params, prompt (bytes), n) -> the n next token ids, greedy (argmax), as a list of ints.
"""

import itertools

import numpy as np

from ..rwkv4 import reference
from .data import shipped_params, text_tokens, tiny_params
from .harness import (NOT_IMPLEMENTED, WRONG_COUNT, Case, Exercise, Mistake, TimeLimitExceeded, Alarm,
                      check, describe, describe_exception, frame_of_learner)
from .model_mistakes import STATE_NOT_RETURNED, VIEW_NAMES, forward_variant, mistakes, view

KEYS = ("no_ln0", "no_ln_out", "no_residual", "no_residual_att", "no_residual_ffn", "same_ln", "residual_state",
        "residual_state_att", "residual_state_ffn", "layer0_state", "layer0_rows", "state_ignored", "state_not_returned")
MISTAKES = mistakes(KEYS, forward_variant)
NOT_RETURNED = next(m for m in MISTAKES if m.name == STATE_NOT_RETURNED[0])
LAST_ONLY = Mistake("the logits of the last position only",
                    "forward returns the logits at every position, (T, V): one row per token (generate then "
                    "takes the last row).")


def two_calls(split):
    def protocol(call, args):
        params, tokens, state = args
        lg1, s1 = call(params, tokens[:split], state)
        lg2, s2 = call(params, tokens[split:], s1)
        return np.concatenate([lg1, lg2]), s2
    return protocol


def explain(case, call, args, wrong):
    got = wrong.returned
    if not (isinstance(got, tuple) and len(got) == 2):
        return None
    if got[1] is None and args[2] is None:
        return NOT_RETURNED, STATE_NOT_RETURNED[1] + " (It returned None, the state it was given.)"
    logits, V = got[0], args[0]["head"].shape[0]
    if isinstance(logits, np.ndarray) and logits.shape == (V,) and len(args[1]) >= 1:
        return LAST_ONLY
    return None


def forward_cases():
    tiny = tiny_params(seed=8)
    real = shipped_params()
    given = reference.forward(tiny, [2, 7])[1]
    return [Case("random weights (L = 2, C = 8), T = 5, state None", (tiny, [1, 2, 3, 4, 5], None), shared=(0,)),
            Case("T = 1", (tiny, [9], None), shared=(0,)),
            Case("starting from a given state (after tokens 2 7)", (tiny, [4, 4, 0], given), shared=(0,)),
            Case("state carried across two calls (T = 3 then 2)", (tiny, [6, 1, 8, 3, 2], None), two_calls(3),
                 shared=(0,)),
            Case("the shipped model on 'ROMEO:\\nWhat light'", (real, text_tokens(), None), shared=(0,))]


FORWARD = Exercise(
    "forward", "08_whole_model", reference.forward, forward_cases, returns=("logits", "state"), view=view,
    view_names=VIEW_NAMES, rtol=1e-4, atol=1e-4,  # as exercise 7: float32 through the layers, logits ~10
    mistakes=MISTAKES, explain=explain, named_by_hooks=[LAST_ONLY])


def check_forward(forward, time_limit=None):
    """forward(params, tokens (T,), state=None) -> (logits (T, V), state (L, 5, C)): the parallel form."""
    return check(FORWARD, forward, time_limit)


# ---------------------------------------------------------------------------------- generate

def greedy(mistake=None):
    """generate as the reference computes it (mistake None), or with one mistake."""
    def generate(params, prompt, n):
        logits, state = reference.forward(params, list(prompt))
        out = []
        if mistake == "last_prompt_token_twice":
            logits, state = reference.forward(params, [prompt[-1]], state)
        for _ in range(n):
            row = logits[0] if mistake == "first_position" and not out else logits[-1]
            nxt = int(np.argmax(row))
            out.append(nxt)
            if mistake == "state_not_carried":
                logits, _ = reference.forward(params, [nxt])
            else:
                logits, state = reference.forward(params, [nxt], state)
        return out
    return generate


GENERATE_MISTAKES = [
    Mistake("the state not carried (each new token read from the initial state)",
            "keep the state forward returns and pass it with the next token: without it the model sees only "
            "the last byte.", greedy("state_not_carried")),
    Mistake("the first token picked from the prompt's first position",
            "the next token is predicted by the logits of the last position: logits[-1].", greedy("first_position")),
    Mistake("the prompt's last token read twice",
            "forward over the prompt already read its last byte: its logits[-1] predict the first new token. "
            "Feed each new token once, after picking it.", greedy("last_prompt_token_twice")),
]
ARGMAX_FLAT = Mistake("argmax over all the logits, not the last row's (a token id >= the vocabulary)",
                      "np.argmax of a (T, V) array is an index into the flattened array (up to T V - 1), which "
                      "forward then cannot embed: take the last row first, np.argmax(logits[-1]).")
PROMPT_INCLUDED = Mistake("the prompt included in the returned ids",
                          "return only the n new ids: the caller has the prompt already.")
OFF_BY_ONE = Mistake("one id too many or too few (the loop's count)",
                     "the loop must run exactly n times, appending one id each time.")


def _generate_explain(case, call, args, wrong):
    got, prompt, n = wrong.returned, case.args[1], case.args[2]
    if wrong.mistake is not WRONG_COUNT or not isinstance(got, list):
        return None
    if len(got) == n + len(prompt) and [int(x) for x in got[:len(prompt)]] == list(prompt):
        return PROMPT_INCLUDED
    if abs(len(got) - n) == 1:
        return OFF_BY_ONE
    return None


def _generate_on_raise(case, exc):
    V = case.args[0]["head"].shape[0]
    if isinstance(exc, IndexError) and f"with size {V}" in describe_exception(exc):
        return ARGMAX_FLAT
    return None


def generate_cases():
    real = shipped_params()
    tiny = tiny_params(seed=9, vocab_size=256)
    return [Case("random weights, prompt b'ab', 5 tokens", (tiny, b"ab", 5), shared=(0,)),
            Case("the shipped model, prompt b'ROMEO:', 40 tokens", (real, b"ROMEO:", 40), shared=(0,)),
            Case("one-byte prompt b'\\n', 10 tokens", (real, b"\n", 10), shared=(0,))]


GENERATE = Exercise(
    "generate", "08_whole_model", greedy(), generate_cases, returns="generated ids",
    view=lambda ids: (np.asarray([int(i) for i in ids], np.int64),),
    # token ids: exact equality. On these cases the two largest logits are never closer than 0.0066,
    # far above the ~1e-5 by which a correct float32 forward can differ from the reference's
    rtol=0, atol=0, mistakes=GENERATE_MISTAKES, explain=_generate_explain, on_raise=_generate_on_raise,
    named_by_hooks=[ARGMAX_FLAT, PROMPT_INCLUDED, OFF_BY_ONE],
    time_hint="Or no endless loop, but work that grows at every token: forward over the prompt and everything "
              "generated so far, again for each new token, does the right thing n times over. Read the prompt "
              "once, then feed forward only the new token, with the state it returned.")


def check_generate(generate, time_limit=None):
    """generate(params, prompt (bytes), n) -> the n next token ids (a list of ints), greedy (argmax)."""
    return check(GENERATE, generate, time_limit)


def show_generation(generate, params, prompt=b"ROMEO:\n", n=200, time_limit=60.0):
    """Print prompt + n bytes of the learner's `generate`, or say why not (no traceback). Takes at
    most n + 1 ids (one more tells that there were more) from whatever it returns (a generator that never
    ends included), within time_limit
    seconds (see rwkv_np.exercises.harness on where that limit can interrupt)."""
    alarm = Alarm(time_limit)
    try:
        with alarm:
            ids = generate(params, prompt, n)
            if ids is None:
                print("✗ generate returned None (no `return` at its end?)")
                return
            if isinstance(ids, (bytes, bytearray)):
                ids = list(ids)
            elif isinstance(ids, np.ndarray):
                ids = ids.ravel().tolist()
            taken = list(itertools.islice(iter(ids), n + 1))  # n + 1: to tell that there were more
    except NotImplementedError:
        print(f"… generate: {NOT_IMPLEMENTED}: fill in `generate` above.")
        return
    except TimeLimitExceeded as e:
        print(f"✗ generate was still running after {time_limit:g} s{frame_of_learner(e)}: stopped there.")
        return
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - the learner's code; one line, not a traceback
        print(f"✗ generate raised {describe_exception(e)}{frame_of_learner(e)}")
        return
    notes = []
    if len(taken) > n:
        notes.append(f"generate gave more than n = {n} ids; showing the first {n}")
        taken = taken[:n]
    elif len(taken) < n:
        notes.append(f"generate gave {len(taken)} ids, not n = {n}")
    # ids are checked without running any code of the learner's (no int() of an object of theirs)
    is_int = [type(i) is int or isinstance(i, np.integer) for i in taken]
    bad = next((j for j, (i, ok) in enumerate(zip(taken, is_int)) if not ok or not 0 <= i < 256), None)
    if bad is not None:
        what = f"the id {int(taken[bad])}" if is_int[bad] else describe(taken[bad])
        print(f"✗ generate returned {what} at position {bad} of its ids: token ids here are bytes, ints from 0 "
              f"to 255")
        return
    text = (prompt + bytes(int(i) for i in taken)).decode("utf-8", "replace")
    if alarm.late():
        notes.append(f"it took {alarm.elapsed:.1f} s")
    print(text)
    for note in notes:
        print(f"({note})")
