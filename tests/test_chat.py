"""`python -m rwkv_np chat` (rwkv_np/chat.py): in a real pseudo-terminal (pexpect), with the shipped model
and a random-weights model whose replies run long enough to be interrupted; and the Chat object itself:
the state carried from turn to turn (turn 20 reads no more and takes no longer than turn 2), /undo back
to the very state before a turn, /save and /load through a State file and its transcript, bad input
answered with one line while the chat goes on. The terminal tests and the 20 turns are in the slow tier."""

import json
import os
import sys
import time

import numpy as np
import pytest

import rwkv_np
from rwkv_np import ArgumentError, State
from rwkv_np.chat import HELP, Chat
from rwkv_np.tokenizer import ByteTokenizer

from helpers import ASSET, REPO, safetensors_bytes, tiny_weights

pexpect = pytest.importorskip("pexpect", reason="pexpect (requirements.txt) drives the chat in a pseudo-terminal")

MESSAGE = "Good morrow, how art thou?"
TURN_TOKENS = len(f"User: {MESSAGE}\n\nAssistant:")  # bytes: the shipped model reads one token per byte


@pytest.fixture(scope="module")
def shipped():
    return rwkv_np.load_model(ASSET)


def chat_of(model, **kw):
    out = []
    kw.setdefault("sampling", dict(temperature=0))
    return Chat(model, ByteTokenizer(), write=out.append, **kw), out


# ---- the Chat object -------------------------------------------------------------------------------

@pytest.mark.slow
def test_each_turn_reads_only_its_own_tokens_and_turn_20_takes_no_longer(shipped):
    """The paper's point: the state holds the conversation, so turn 20 reads as many tokens as turn 2
    (the message, not the history) and takes as long. Re-reading the history at turn 20 would read 20
    times as many tokens; the time is checked against that, with room for a loaded machine."""
    shipped.warm_up(choose_prefetch=False)
    chat, _ = chat_of(shipped, max_tokens=8)
    turns = [chat.turn(MESSAGE) for _ in range(20)]
    reads = [t.read for t in turns]
    # the message and the reply's prompt; "+2": the blank line that closes a reply cut at max_tokens
    assert all(t.stop == "max_tokens" and t.generated == 8 for t in turns)
    assert reads == [TURN_TOKENS + 2] * 20, reads
    history = sum(t.read + t.generated for t in turns[:19])
    assert history == 19 * (TURN_TOKENS + 2 + 8)  # what a chat without a state would read again at turn 20
    early = float(np.median([t.seconds for t in turns[1:4]]))
    late = min(t.seconds for t in turns[17:20])
    assert late < 2.5 * early, (early, late)  # 20x the tokens would take ~5x longer even on this tiny model


def test_undo_returns_to_the_very_state_before_the_turn(shipped):
    chat, out = chat_of(shipped, max_tokens=12)
    chat.turn("To be, or not to be")
    after_one = chat.state
    chat.turn("that is the question")
    assert chat.command("/undo") == "undone: back to before 'that is the question' (1 turns left)"
    assert chat.state is after_one and [t.user for t in chat.turns] == ["To be, or not to be"]
    chat.command("/undo")
    assert chat.state is None and chat.turns == []
    with pytest.raises(ArgumentError, match="^/undo: no turn to undo$"):
        chat.command("/undo")
    # the same message from the same state gives the same reply (greedy): undo really went back
    out.clear()
    first = chat.turn("To be, or not to be").bot
    assert chat.state == after_one and first == chat.turns[0].bot


def test_save_and_load_carry_the_state_and_the_transcript(shipped, tmp_path):
    chat, _ = chat_of(shipped, max_tokens=10)
    chat.turn("Whither goest thou?")
    path = tmp_path / "talk.npz"
    said = chat.command(f"/save {path}")
    assert said == f"saved the state to {path} and the transcript (1 turns) to {tmp_path / 'talk.json'}"
    assert State.load(path) == chat.state  # a plain State file: rwkv_np.State.load reads it
    transcript = json.loads((tmp_path / "talk.json").read_text())
    assert transcript["turns"][0]["user"] == "Whither goest thou?" and transcript["model"]["n_layer"] == 5
    other, _ = chat_of(shipped, max_tokens=10)
    assert other.command(f"/load {path}") == f"loaded the conversation from {path} and 1 turns of transcript"
    assert other.state == chat.state and other.turns == chat.turns
    # both go on the same way from there
    assert other.turn("And then?").bot == chat.turn("And then?").bot


def test_bad_commands_and_files_are_one_line_errors(shipped, tmp_path):
    chat, _ = chat_of(shipped)
    foreign = tmp_path / "foreign.npz"
    State(np.zeros((2, 5, 8), np.float32)).save(foreign)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    cases = {"/frobnicate": r"^unknown command /frobnicate \(/help lists them\)$",
             "/save": r"^/save: give a file name, e.g. /save chat.npz$",
             f"/save {tmp_path / 'x.json'}": r"give the state file's name",
             f"/load {tmp_path / 'missing.npz'}": r"missing.npz.*No such file",
             f"/load {foreign}": r"^/load .*foreign.npz: a state of another model \(shape \(2, 5, 8\) does not fit",
             f"/load {tmp_path / 'junk.npz'}": r"junk.npz: not a valid state file"}
    for line, pattern in cases.items():
        with pytest.raises(ArgumentError, match=pattern) as e:
            chat.command(line)
        assert len(str(e.value).splitlines()) == 1
    assert chat.command("/help") == HELP and chat.state is None


# ---- in a pseudo-terminal ----------------------------------------------------------------------------

def spawn(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", TERM="dumb")
    child = pexpect.spawn(sys.executable, ["-m", "rwkv_np", "chat", *args], cwd=str(REPO), env=env,
                          encoding="utf-8", codec_errors="replace", timeout=timeout, dimensions=(40, 200))
    child.expect("Ctrl-D leaves.")
    child.expect_exact("User: ")
    return child


@pytest.mark.slow
def test_a_conversation_in_a_terminal(tmp_path):
    child = spawn("--temperature", "0", "--max-tokens", "40", "--verbose")
    try:
        child.sendline(MESSAGE)
        child.expect_exact("Assistant:")
        child.expect(r"\[turn 1: read (\d+) tokens in [\d.]+ ms, generated (\d+) in [\d.]+ s \((\w+)\); the state "
                     r"holds (\d+) tokens of conversation\]")
        read, generated, held = int(child.match.group(1)), int(child.match.group(2)), int(child.match.group(4))
        assert read >= TURN_TOKENS and held == read + generated
        child.expect_exact("User: ")
        child.sendline("/frobnicate")
        child.expect_exact("error: unknown command /frobnicate (/help lists them)")
        child.expect_exact("User: ")
        child.sendline("/help")
        child.expect_exact("/undo ")
        child.expect_exact("User: ")
        child.sendline("What say you?")
        child.expect(r"\[turn 2: read (\d+) tokens .* the state holds (\d+) tokens")
        assert int(child.match.group(2)) > held  # the state carried turn 1
        child.expect_exact("User: ")
        child.sendline("/undo")
        child.expect_exact("undone: back to before 'What say you?' (1 turns left)")
        child.expect_exact("User: ")
        child.sendline(f"/save {tmp_path / 'c.npz'}")
        child.expect_exact("saved the state to")
        child.expect_exact("User: ")
        child.sendline(f"/load {tmp_path / 'nope.npz'}")
        child.expect(r"error: state file .*nope.npz: cannot open it")
        child.expect_exact("User: ")
        child.sendline("/reset")
        child.expect_exact("the conversation is forgotten")
        child.expect_exact("User: ")
        child.sendline(f"/load {tmp_path / 'c.npz'}")
        child.expect_exact("and 1 turns of transcript")
        child.expect_exact("User: ")
        child.sendintr()  # Ctrl-C at the prompt: a hint, and the chat goes on
        child.expect_exact("(Ctrl-D or /quit leaves; Ctrl-C during a reply stops the reply)")
        child.expect_exact("User: ")
        child.sendeof()  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert State.load(tmp_path / "c.npz").n_layer == 5


@pytest.mark.slow
def test_ctrl_c_mid_reply_stops_the_reply_and_keeps_the_conversation(tmp_path):
    """A random-weights byte model babbles (a blank line, its end of turn, is rare), so its reply runs
    until interrupted."""
    weights = tiny_weights(n_layer=2, C=32, V=256, F=64, seed=5)
    model = tmp_path / "babbler.safetensors"
    model.write_bytes(safetensors_bytes(weights))
    child = spawn("--model", str(model), "--max-tokens", "1000000", "--temperature", "1", "--top-p", "1",
                  "--seed", "3", "--verbose")
    try:
        child.sendline("Speak")
        child.expect_exact("Assistant:")
        start = time.monotonic()
        child.expect(r"[\s\S]{300}")  # the reply is streaming
        child.sendintr()
        child.expect_exact(" [stopped]")
        assert time.monotonic() - start < 30
        child.expect(r"\[turn 1: read \d+ tokens .*, generated (\d+) in [\d.]+ s \(interrupted\); the state holds "
                     r"(\d+) tokens")
        generated, held = int(child.match.group(1)), int(child.match.group(2))
        assert 300 <= generated < 1000000
        child.expect_exact("User: ")
        child.sendline("Again")  # the conversation goes on from the interrupted reply
        child.expect_exact("Assistant:")
        child.expect(r"[\s\S]{50}")
        child.sendintr()
        child.expect(r"\[turn 2: .*the state holds (\d+) tokens")
        assert int(child.match.group(1)) > held
        child.expect_exact("User: ")
        child.sendline("/undo")
        child.expect_exact("undone: back to before 'Again' (1 turns left)")
        child.expect_exact("User: ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
