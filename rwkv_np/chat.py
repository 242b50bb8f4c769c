"""`python -m rwkv_np chat`: a conversation with a model whose state carries it from turn to turn.

Each turn reads only the new text, `User: MESSAGE\\n\\nAssistant:` (the World and G1 models' format; any
model runs it, the shipped byte-level one too), and streams the reply until the model ends its turn (a
blank line, or its end-of-text token) or --max-tokens. The conversation so far lives in the state alone,
which never re-reads the history: that is the paper's point about an RNN, and `--verbose` prints the
tokens each turn read and how long it took. States are values (rwkv_np.State), so the state before each
turn is kept and /undo is free.

Commands: /reset, /save FILE, /load FILE, /undo, /help, /quit. Ctrl-C during a reply stops the reply and
keeps the conversation (the reply so far, closed by a blank line); Ctrl-C at the prompt clears the line;
Ctrl-D leaves. A bad command or file gets one line "error: ..." and the chat goes on.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArgumentError, RWKVError
from .state import State

END_OF_TURN = "\n\n"
TRANSCRIPT_FORMAT = "rwkv_np chat transcript 1"
HELP = """commands:
  /reset       forget the conversation: back to the state before any turn
  /undo        back to the state before the last turn (its message and reply are forgotten)
  /save FILE   write the state to FILE (rwkv_np.State.load reads it) and the transcript beside it (.json)
  /load FILE   continue the conversation saved in FILE (and its transcript, if beside it)
  /help        this list
  /quit        leave (as does Ctrl-D); Ctrl-C during a reply stops the reply and keeps the conversation"""


@dataclass
class Turn:
    user: str
    bot: str
    read: int  # tokens read for this turn (the message, the prompt of the reply, a closing blank line)
    generated: int
    read_seconds: float
    seconds: float  # the whole turn: reading, generating, closing
    stop: str  # "end" (the model ended its turn), "max_tokens", "interrupted"


@dataclass
class Chat:
    """The conversation: the model, the state after the last turn, and the turns so far.

    Only `turn` runs the model; the commands move between states that were already computed."""

    model: object
    tokenizer: object
    user: str = "User"
    bot: str = "Assistant"
    max_tokens: int = 500
    sampling: dict = field(default_factory=dict)  # generate's temperature, top_p, top_k, penalties
    seed: int | None = None
    write: object = None  # text -> None: where replies stream (default: stdout)
    state: State | None = None
    turns: list = field(default_factory=list)
    _before: list = field(default_factory=list)  # the state before each turn, for /undo
    _interrupted: bool = False

    def __post_init__(self):
        import numpy as np

        self.write = self.write or _stdout
        self._rng = np.random.default_rng(self.seed)  # one generator for the whole conversation

    # ---- a turn -------------------------------------------------------------------------------

    def turn(self, message: str) -> Turn:
        """Read the message, stream the reply; the state afterwards holds both."""
        from .generate import generate

        message = re.sub(r"\n\s*\n", "\n", message.strip())  # a blank line would end the user's turn
        if not message:
            raise ArgumentError("message: empty")
        start = time.perf_counter()
        before = self.state
        gen = generate(self.model, self.tokenizer, f"{self.user}: {message}{END_OF_TURN}{self.bot}:",
                       max_tokens=self.max_tokens, stop=(END_OF_TURN,), rng=self._rng, state=self.state,
                       **self.sampling)
        self._interrupted = False
        old = signal.signal(signal.SIGINT, self._on_interrupt) if _main_thread() else None
        pieces = []
        try:
            self.write(f"{self.bot}:")
            for piece in gen:
                pieces.append(piece)
                self.write(piece)
                if self._interrupted:
                    break
        finally:
            gen.close()
            if old is not None:
                signal.signal(signal.SIGINT, old)
        reply, state, read = "".join(pieces), gen.state, gen.stats.prompt_tokens
        stop = "interrupted" if self._interrupted else "end" if gen.stop_reason in ("stop", "eos") else "max_tokens"
        if stop != "end" or gen.stop_reason == "eos":  # close the turn as the model would have
            closing = self.tokenizer.encode(END_OF_TURN)
            _, state = self.model.forward(closing, state)
            read += len(closing)
        self.write("\n" + (" [stopped]\n" if stop == "interrupted" else ""))
        self._before.append(before)
        self.state = state
        turn = Turn(message, reply.strip(), read, len(gen.tokens), gen.stats.prompt_seconds,
                    time.perf_counter() - start, stop)
        self.turns.append(turn)
        return turn

    def _on_interrupt(self, signum, frame):
        self._interrupted = True  # the reply stops after the token being computed

    # ---- the commands -------------------------------------------------------------------------

    def command(self, line: str) -> str | None:
        """Run one /command; returns what to print, or None for /quit. Bad input: ArgumentError."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return None
        if name == "/help":
            return HELP
        if name == "/reset":
            self.state, self.turns, self._before = None, [], []
            return "the conversation is forgotten: starting afresh"
        if name == "/undo":
            if not self._before:
                raise ArgumentError("/undo: no turn to undo")
            self.state = self._before.pop()
            turn = self.turns.pop()
            return f"undone: back to before {_quote(turn.user)} ({len(self.turns)} turns left)"
        if name == "/save":
            return self.save(_file_arg(name, arg))
        if name == "/load":
            return self.load(_file_arg(name, arg))
        raise ArgumentError(f"unknown command {name} (/help lists them)")

    def save(self, path: Path) -> str:
        transcript = _transcript_path(path)
        state = self.state if self.state is not None else self.model.init_state()
        state.save(path)
        data = {"format": TRANSCRIPT_FORMAT, "model": _identity(self.model), "user": self.user, "bot": self.bot,
                "turns": [vars(t) for t in self.turns]}
        try:
            transcript.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as e:
            raise ArgumentError(f"/save: cannot write the transcript {transcript} ({e.strerror or e})") from None
        return f"saved the state to {path} and the transcript ({len(self.turns)} turns) to {transcript}"

    def load(self, path: Path) -> str:
        state = State.load(path)  # a missing, foreign or corrupt file: one ArgumentError naming it
        try:
            self.model._check_state(state)
        except ArgumentError as e:
            raise ArgumentError(f"/load {path}: a state of another model ({str(e).removeprefix('state: ')})") from None
        transcript, turns = _transcript_path(path), []
        if transcript.exists():
            try:
                data = json.loads(transcript.read_text(encoding="utf-8"))
                if data.get("format") != TRANSCRIPT_FORMAT:
                    raise ValueError("not a chat transcript")
                if data.get("model") != _identity(self.model):
                    raise ArgumentError(f"/load {transcript}: the transcript of another model ({data.get('model')})")
                turns = [Turn(**t) for t in data["turns"]]
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise ArgumentError(f"/load {transcript}: not a transcript /save wrote ({e})") from None
        self.state, self.turns, self._before = state, turns, []
        note = f" and {len(turns)} turns of transcript" if transcript.exists() else " (no transcript beside it)"
        return f"loaded the conversation from {path}{note}"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _quote(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n - 3] + "...")


def _file_arg(command: str, arg: str) -> Path:
    if not arg:
        raise ArgumentError(f"{command}: give a file name, e.g. {command} chat.npz")
    return Path(arg).expanduser()


def _transcript_path(path: Path) -> Path:
    if path.suffix == ".json":
        raise ArgumentError(f"{path}: give the state file's name (say chat.npz); its transcript goes beside it as .json")
    return path.with_suffix(".json")


def _identity(model) -> dict:
    c = model.config
    return {"version": c.version, "n_layer": c.n_layer, "n_embd": c.n_embd, "vocab_size": c.vocab_size}


# ---- the REPL ----------------------------------------------------------------------------------------

def run(args, load) -> int:
    """The REPL of `python -m rwkv_np chat`; load(args) -> (model, tokenizer) as for generate."""
    import numpy as np

    from .sampling import check_sampling_args

    for option, value in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if value is not None and not value.strip():
            raise ArgumentError(f"{option}: an empty path")
    for option, value in (("--user", args.user), ("--bot", args.bot)):
        if not value.strip() or "\n" in value or ":" in value:
            raise ArgumentError(f"{option}: a name on one line, without ':', got {value!r}")
    if args.max_tokens < 1:
        raise ArgumentError(f"--max-tokens: at least 1, got {args.max_tokens}")
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)
    check_sampling_args(**sampling)
    if args.seed is not None and args.seed < 0:
        raise ArgumentError(f"--seed: an integer >= 0, got {args.seed}")
    with np.errstate(all="ignore"):
        model, tokenizer = load(args)
        chat = Chat(model, tokenizer, user=args.user, bot=args.bot, max_tokens=args.max_tokens,
                    sampling=sampling, seed=args.seed)
        return repl(chat, verbose=args.verbose)


def repl(chat: Chat, read=input, verbose: bool = False) -> int:
    """Read messages and commands until Ctrl-D or /quit."""
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    c = chat.model.config
    _stdout(f"Chatting with an RWKV-{c.version} model ({c.n_layer} layers x {c.n_embd}, weights "
            f"{chat.model.weight_dtype}). /help lists the commands; Ctrl-D leaves.\n")
    while True:
        try:
            line = read(f"{chat.user}: ")
        except EOFError:
            _stdout("\n")
            return 0
        except KeyboardInterrupt:
            _stdout("\n(Ctrl-D or /quit leaves; Ctrl-C during a reply stops the reply)\n")
            continue
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("/"):
                said = chat.command(line)
                if said is None:
                    return 0
                _stdout(said + "\n")
                continue
            turn = chat.turn(line)
        except RWKVError as e:
            _stdout(f"error: {e}\n")
            continue
        if verbose:
            held = sum(t.read + t.generated for t in chat.turns)
            print(f"[turn {len(chat.turns)}: read {turn.read} tokens in {turn.read_seconds * 1e3:.1f} ms, generated "
                  f"{turn.generated} in {turn.seconds - turn.read_seconds:.2f} s ({turn.stop}); the state holds "
                  f"{held} tokens of conversation]", file=sys.stderr, flush=True)
