"""The `rwkv-np` / `python -m rwkv_np` command line: generate, chat, perplexity, download, train.

Errors we raise on purpose (RWKVError) print one line "error: ..." on stderr and exit 2.
Ctrl-C during generation prints the stats line and exits 130, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ArgumentError, RWKVError
from .process import short_spin

ASSETS = Path(__file__).resolve().parent / "assets"
EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


def default_model_path() -> Path:
    """The model shipped in rwkv_np/assets/*.safetensors (the first by name if several)."""
    found = sorted(ASSETS.glob("*.safetensors"))
    if not found:
        raise ArgumentError(f"no --model given and no shipped model in {ASSETS}/*.safetensors: pass "
                            f"--model PATH (a checkpoint file or folder) or a name like 169m "
                            f"(after `python -m rwkv_np download 169m`)")
    return found[0]


#: the most standard input `generate -` reads for a prompt (what a tokenizer then accepts may be
#: less: see rwkv_np.tokenizer); more is refused, so `< /dev/zero` cannot fill the memory
MAX_STDIN_BYTES = 16 << 20

_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"'}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
ESCAPES_HELP = "\\n newline, \\t tab, \\r, \\0, \\xHH, \\uXXXX, \\UXXXXXXXX (code points), \\\\ a backslash"


def unescape(text: str) -> str:
    """`text` with backslash escapes replaced: a shell passes `--stop "\\n\\n"` on as backslash, n,
    backslash, n, and it means two newlines. An unknown escape or a lone trailing backslash is an
    error, not a silent literal: a stop string that never matches would only show as a run that
    does not stop."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 == len(text):
            raise argparse.ArgumentTypeError(f"{text!r} ends with a lone backslash; write \\\\ for a backslash")
        e = text[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e in _HEX_ESCAPES:
            digits = text[i + 2:i + 2 + _HEX_ESCAPES[e]]
            if len(digits) != _HEX_ESCAPES[e] or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise argparse.ArgumentTypeError(f"in {text!r}: \\{e} needs {_HEX_ESCAPES[e]} hex digits")
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise argparse.ArgumentTypeError(f"in {text!r}: \\{e}{digits} is not a Unicode character")
            out.append(chr(code))
            i += 2 + len(digits)
        else:
            raise argparse.ArgumentTypeError(f"in {text!r}: unknown escape \\{e} (known: {ESCAPES_HELP})")
    if not out:
        raise argparse.ArgumentTypeError("a stop string cannot be empty")
    return "".join(out)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the text to continue, as given (no escapes); '-' reads it from standard "
                                  f"input (at most {MAX_STDIN_BYTES >> 20} MiB, bytes that are not UTF-8 kept "
                                  "as they are for a byte-level model). An empty prompt starts a NeoX model "
                                  "from <|endoftext|>; a byte-level model needs text")
    p.add_argument("--model", "-m", default=None,
                   help="checkpoint file or folder (BlinkDL .pth, Hugging Face folder/safetensors/"
                        "pytorch_model.bin, rwkv.cpp FP32/FP16/Q8_0/Q5_1/Q5_0/Q4_1/Q4_0), or a downloaded name (see `download --help`: "
                        "169m ... 14b, rwkv7-world-0.1b, ...) (default: the model shipped in rwkv_np/assets/)")
    p.add_argument("--max-tokens", "-n", type=_int, default=200,
                   help="generate at most this many tokens, 0 to 10^7 (default: %(default)s)")
    p.add_argument("--temperature", "-t", type=float, default=1.0,
                   help="divide the logits by this before sampling; 0 = greedy, always the most likely "
                        "token (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.85,
                   help="nucleus sampling: draw only from the most likely tokens whose probabilities add up "
                        "to this, in (0, 1]; 1 = off (default: %(default)s)")
    p.add_argument("--top-k", type=_int, default=0,
                   help="draw only from the k most likely tokens; 0 = off (default: %(default)s)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token already generated once or more, to "
                        "discourage repetition; in [-1e6, 1e6] (default: %(default)s)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this times the number of times a token was generated from its logit; "
                        "in [-1e6, 1e6] (default: %(default)s)")
    p.add_argument("--seed", type=_int, default=None,
                   help="random seed (integer >= 0): the same seed, model and options give the same text "
                        "(default: a fresh random seed)")
    p.add_argument("--stop", action="append", type=unescape, default=[], metavar="TEXT",
                   help="stop when the output contains TEXT (not printed); repeat for several stop strings. "
                        f"Backslash escapes are interpreted: {ESCAPES_HELP}; so --stop '\\n\\n' stops at "
                        "a blank line")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer JSON file (GPT-NeoX-20B 20B_tokenizer.json) for vocab-50277 models (default: "
                        "the file beside the checkpoint, then the Hugging Face cache); byte-level models need none")
    p.add_argument("--mode", choices=("parallel", "recurrent"), default="parallel",
                   help="how the prompt is read: parallel (whole prompt at once, fast) or recurrent (token by "
                        "token); same result. New tokens are always one recurrent step each (default: %(default)s)")
    p.add_argument("--samples", type=_int, default=1, metavar="N",
                   help="write N continuations of the prompt, generated together (the prompt read once, its state "
                        "forked N ways, each step one pass over the weights for all N: RWKV.step_batch), each with "
                        "its own sampler seeded from --seed, printed one after another under a header line "
                        "(default: %(default)s)")
    add_running_arguments(p)


def _threads(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
    return n


def add_running_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="run on N threads (at most what the process started with: NUMBA_NUM_THREADS, "
                        "OPENBLAS_NUM_THREADS; the same output on any count). Default: the cores the other "
                        "programs on the machine leave free, measured as it runs; set it on a machine whose "
                        "load changes faster than a fraction of a second (docs/performance.md, shared machines)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8: quantize every matrix but the embedding at load time (symmetric, one float32 "
                        "scale per block of 32 weights of a row; the kernels read int8): about half the bytes "
                        "of 16-bit weights per token; the 4- and 5-bit blocks of an rwkv.cpp file stay as they "
                        "are and only its other matrices (the head) become int8 (default: the weights as stored)")


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="checkpoint file or folder in any supported format, or a downloaded name (rwkv7-g1-0.1b, "
                        "rwkv7-world-0.1b, ...; see `download --help`) (default: the model shipped in rwkv_np/assets/)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer JSON for vocab-50277 models (default: beside the checkpoint, then the Hugging "
                        "Face cache); byte-level and World models need none")
    p.add_argument("--max-tokens", "-n", type=_int, default=500,
                   help="the longest reply, in tokens (default: %(default)s)")
    p.add_argument("--temperature", "-t", type=float, default=1.0,
                   help="divide the logits by this before sampling; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.3,
                   help="draw only from the most likely tokens whose probabilities add up to this, in (0, 1]; "
                        "1 = off (default: %(default)s, as ChatRWKV chats)")
    p.add_argument("--top-k", type=_int, default=0, help="draw only from the k most likely tokens; 0 = off")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token the reply already holds")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this times the token's count in the reply from its logit")
    p.add_argument("--seed", type=_int, default=None,
                   help="random seed (integer >= 0): the same seed and messages give the same conversation")
    p.add_argument("--user", default="User", help="the name the messages are written under (default: %(default)s)")
    p.add_argument("--bot", default="Assistant", help="the name the replies are written under (default: %(default)s)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="after each reply, one line on stderr: the tokens the turn read and generated, its time, "
                        "and the tokens of conversation the state holds (it never re-reads them)")
    add_running_arguments(p)


#: the largest --data file `perplexity` reads (it holds the whole text and its tokens in memory)
MAX_DATA_BYTES = 256 << 20


def add_perplexity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None,
                   help="checkpoint file or folder in any supported format, or a downloaded name "
                        "(default: the model shipped in rwkv_np/assets/)")
    p.add_argument("--data", required=True, metavar="FILE", help="the text to score (a regular file)")
    p.add_argument("--from", dest="start_fraction", type=float, default=0.0, metavar="FRACTION",
                   help="score the file from this fraction of its bytes on: 0.9 is the held-out last 10%% the "
                        "shipped model was measured on (default: %(default)s, the whole file)")
    p.add_argument("--ctx", type=_int, default=256,
                   help="tokens per window, each read from the initial state (default: %(default)s, the shipped "
                        "model's training context)")
    p.add_argument("--stride", type=_int, default=None,
                   help="start a window every STRIDE tokens, scoring only its last STRIDE tokens, so that each "
                        "has at least ctx - stride tokens of context (default: ctx, consecutive windows that "
                        "do not overlap, as the shipped model's held-out loss is defined)")
    p.add_argument("--carry-state", action="store_true",
                   help="read the whole text as one sequence, the state carried across (as an RNN reads it); "
                        "--ctx is then only the tokens per forward call")
    p.add_argument("--max-tokens", type=_int, default=None,
                   help="use only the first this many tokens of the text (after --from)")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer JSON for vocab-50277 models (default: beside the checkpoint, then the Hugging "
                        "Face cache); byte-level models need none")
    p.add_argument("--mode", choices=("parallel", "recurrent"), default="parallel",
                   help="how each window is read; same result (default: %(default)s)")
    p.add_argument("--batch", type=_int, default=None, metavar="N",
                   help="read N windows at once, one token of each per step (the recurrent form over a batch: "
                        "every weight read once per step for all N; the same losses to float32 rounding); "
                        "1: one window at a time (default: 16 with --mode recurrent, 1 in the parallel form, "
                        "where each window's projections are already one matrix product over its tokens)")
    add_running_arguments(p)


def build_parser(with_train: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rwkv-np", description="RWKV language models (RWKV-4, 5, 6 and 7) in NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="{generate,chat,perplexity,download,train}")
    gen = sub.add_parser("generate", help="continue a prompt, streaming the text to stdout",
                         description="Continue PROMPT with an RWKV-4 model, streaming text to stdout. At the "
                                     "end one line on stderr gives prompt and generation speed in tokens/s.")
    add_generate_arguments(gen)
    chat = sub.add_parser("chat", help="talk with a model; its state carries the conversation from turn to turn",
                          description="A conversation with a model, in the User: / Assistant: format of the World "
                                      "and G1 models (any model works). Each turn reads only the new message: the "
                                      "state holds the rest. Commands: /reset /undo /save FILE /load FILE /help "
                                      "/quit; Ctrl-C stops a reply, Ctrl-D leaves.")
    add_chat_arguments(chat)
    ppl = sub.add_parser("perplexity", help="loss per token and per byte, and perplexity, of a model on a text",
                         description="Score a text with a model: mean loss (nats) per token and per byte, "
                                     "perplexity and tokens/s, like llama.cpp's perplexity tool. A progress bar "
                                     "goes to stderr, the results to stdout.")
    add_perplexity_arguments(ppl)
    from .download import model_names

    dl = sub.add_parser("download", help="fetch a released checkpoint into the Hugging Face cache",
                        description="Download one of BlinkDL's released checkpoints (RWKV-4 Pile with the "
                                    "GPT-NeoX-20B tokenizer, checking size and sha256; RWKV-4 World, RWKV-7 World "
                                    "and G1, whose sizes and hashes are not checked) into the Hugging Face cache "
                                    "(HF_HOME). Afterwards `generate --model NAME` finds them without network.")
    dl.add_argument("name", choices=model_names(), help="which release: %(choices)s")
    tr = sub.add_parser("train", help="train a small byte-level model (see `train --help`)",
                        description="Train a small byte-level RWKV-4.")
    if with_train:  # imported only for `train`: it is not needed to generate
        try:
            from .training.run import add_train_arguments
        except ImportError as e:
            raise ArgumentError(f"train: training is not available in this installation ({e})") from None
        add_train_arguments(tr)
    return parser


def _load(args):
    """(model, tokenizer) for the generate options; the tests replace this."""
    import rwkv_np
    from .tokenizer import get_tokenizer

    model_arg = args.model if args.model is not None else default_model_path()
    # 16-bit checkpoints stay 16-bit in memory: half the bytes read per token, and the products
    # widen each weight exactly to float32, so the numbers equal those of float32 weights; rwkv.cpp's
    # 4- and 5-bit matrices likewise stay in their blocks (the same numbers to float32 rounding)
    model = rwkv_np.load_model(model_arg, keep_16bit=True, lazy_embedding=True, keep_blocks=True,
                               quantize=getattr(args, "quantize", None))
    model.threads = getattr(args, "threads", None)
    model.warm_up()
    beside = getattr(model, "tokenizer_path", None) or getattr(model, "checkpoint_path", None)
    if beside is None and os.path.exists(str(model_arg)):
        beside = model_arg
    tokenizer = get_tokenizer(model.config.vocab_size, args.tokenizer, beside)
    return model, tokenizer


def read_stdin_prompt() -> str:
    """The prompt from standard input, at most MAX_STDIN_BYTES. Bytes that are not UTF-8 come back
    as lone surrogates (as in command-line arguments): the byte tokenizer turns them back into the
    exact bytes, the NeoX tokenizer into U+FFFD."""
    stream = sys.stdin
    if stream is None:
        raise ArgumentError("prompt '-': standard input is closed")
    try:
        if hasattr(stream, "buffer"):
            data = stream.buffer.read(MAX_STDIN_BYTES + 1)
        else:  # a text stream without bytes underneath (tests, embedding programs)
            data = stream.read(MAX_STDIN_BYTES + 1).encode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise ArgumentError(f"prompt '-': cannot read standard input ({e.strerror or e})") from None
    if len(data) > MAX_STDIN_BYTES:
        raise ArgumentError(f"prompt '-': standard input holds more than {MAX_STDIN_BYTES} bytes, the most a "
                            "prompt may have")
    return data.decode("utf-8", errors="surrogateescape")


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away: main() stops quietly
    except OSError as e:
        raise ArgumentError(f"cannot write to standard output ({e.strerror or e})") from None


def _stderr(text: str) -> None:
    if sys.stderr is not None:
        try:
            print(text, file=sys.stderr, flush=True)
        except OSError:
            pass


def run_generate(args) -> int:
    import numpy as np

    from .generate import generate

    if sys.stdout is None:
        raise ArgumentError("standard output is closed: generate writes the text there (redirect it to a file "
                            "or to /dev/null instead)")
    for option, value in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if value is not None and not value.strip():
            raise ArgumentError(f"{option}: an empty path")
    prompt = read_stdin_prompt() if args.prompt == "-" else args.prompt
    if args.samples != 1:
        return run_samples(args, prompt)
    # weights too large for float32 make NumPy warn about overflows; the forward pass reports
    # them as one error naming the checkpoint (rwkv_np.errors.ModelError) instead
    with np.errstate(all="ignore"):
        model, tokenizer = _load(args)
        gen = generate(model, tokenizer, prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                       top_p=args.top_p, top_k=args.top_k, presence_penalty=args.presence_penalty,
                       frequency_penalty=args.frequency_penalty, stop=tuple(args.stop), seed=args.seed,
                       mode=args.mode)
        code = 0
        try:
            for piece in gen:
                _write(piece)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
    _write("\n")
    _stderr(gen.stats.summary())
    return code


def run_samples(args, prompt: str) -> int:
    """generate --samples N: the N continuations one after another, each under a header line."""
    import numpy as np

    from .generate import MAX_SAMPLES, GenerationStats, generate_samples

    if not 1 <= args.samples <= MAX_SAMPLES:
        raise ArgumentError(f"--samples: an integer in [1, {MAX_SAMPLES}], got {args.samples}")
    stats, code, samples = GenerationStats(), 0, None
    with np.errstate(all="ignore"):
        model, tokenizer = _load(args)
        try:
            samples = generate_samples(model, tokenizer, prompt, args.samples, max_tokens=args.max_tokens,
                                       temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                       presence_penalty=args.presence_penalty,
                                       frequency_penalty=args.frequency_penalty, stop=tuple(args.stop),
                                       seed=args.seed, mode=args.mode, stats=stats)
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
    for i, sample in enumerate(samples or []):
        _write(f"{'' if i == 0 else chr(10)}===== sample {i + 1} of {len(samples)} =====\n{sample.text}\n")
    _stderr(stats.summary() + f" ({args.samples} samples together)")
    return code


def _read_data(path_text: str, start_fraction: float) -> bytes:
    path = Path(path_text)
    if not path_text.strip():
        raise ArgumentError("--data: an empty path")
    if not 0.0 <= start_fraction < 1.0:
        raise ArgumentError(f"--from: a fraction of the file in [0, 1), got {start_fraction}")
    try:
        from .files import open_regular

        f, _ = open_regular(path, f"--data {path}")
        with f:
            data = f.read(MAX_DATA_BYTES + 1)
    except OSError as e:
        raise ArgumentError(f"--data {path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_DATA_BYTES:
        raise ArgumentError(f"--data {path}: larger than {MAX_DATA_BYTES >> 20} MiB, the most perplexity reads; "
                            "pass a part of it")
    return data[int(start_fraction * len(data)):]


def run_perplexity(args) -> int:
    import numpy as np

    from . import perplexity as P
    from .tokenizer import get_tokenizer

    for option, value in (("--model", args.model), ("--tokenizer", args.tokenizer)):
        if value is not None and not value.strip():
            raise ArgumentError(f"{option}: an empty path")
    data = _read_data(args.data, args.start_fraction)
    with np.errstate(all="ignore"):  # non-finite logits are reported as a ModelError naming the checkpoint
        model, tokenizer = _load(args)
        tokens, text_bytes = P.tokenize(tokenizer, data)  # and the bytes of the file each token stands for
        if args.max_tokens is not None:
            if args.max_tokens < 2:
                raise ArgumentError(f"--max-tokens: at least 2, got {args.max_tokens}")
            tokens, text_bytes = tokens[:args.max_tokens], text_bytes[:args.max_tokens]
        P.plan(len(tokens), args.ctx, args.stride, args.carry_state)  # bad options fail before any work
        bar = P.ProgressBar(sys.stderr, len(tokens)) if sys.stderr is not None else None
        batch = args.batch if args.batch is not None else 16 if args.mode == "recurrent" else 1
        if batch < 1:
            raise ArgumentError(f"--batch: at least 1 window at a time, got {batch}")
        r = P.evaluate(model, tokens, ctx=args.ctx, stride=args.stride, carry_state=args.carry_state,
                       mode=args.mode, progress=bar, text_bytes=text_bytes, batch=batch)
    name = args.model if args.model is not None else default_model_path().name
    together = f", {batch} windows at a time (the recurrent form over a batch)" if batch > 1 else ""
    if args.carry_state:
        how = f"one sequence, state carried across ({args.ctx} tokens per call)"
    elif args.stride in (None, args.ctx):
        how = f"consecutive windows of {args.ctx} tokens, each from the initial state"
    else:
        how = f"windows of {args.ctx} tokens from the initial state every {args.stride} (scoring the last {args.stride})"
    _write(f"model: {name} (weights {model.weight_dtype}, on disk {getattr(model, 'source_dtype', '?')})\n"
           f"data: {args.data} from {args.start_fraction:g} of its bytes: {len(data)} bytes, {len(tokens)} tokens\n"
           f"read as: {how}{'' if args.carry_state else together}\n"
           f"scored: {r.tokens} tokens, {r.bytes} bytes\n"
           f"loss: {r.loss_per_token:.5f} nats/token, {r.loss_per_byte:.5f} nats/byte "
           f"({r.loss_per_byte / np.log(2):.4f} bits/byte)\n"
           f"perplexity: {r.perplexity:.4f} (per token)\n"
           f"speed: {r.tokens_per_second:.0f} tokens/s ({r.processed} tokens read in {r.seconds:.2f} s)\n")
    return 0


def run_download(args) -> int:
    from .download import download

    path = download(args.name)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # stdout may be a pipe with a narrow encoding: never die on a character it cannot show
        sys.stdout.reconfigure(errors="replace")
    except (AttributeError, ValueError):
        pass
    positionals = [a for a in argv if not a.startswith("-")]
    want_train = bool(positionals) and positionals[0] == "train"
    try:
        parser = build_parser(with_train=want_train)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        if args.command == "generate":
            short_spin()  # before any kernel starts Numba's threads (rwkv_np/process.py says why)
            return run_generate(args)
        if args.command == "download":
            return run_download(args)
        if args.command == "perplexity":
            short_spin()
            return run_perplexity(args)
        if args.command == "chat":
            from .chat import run as run_chat

            short_spin()
            return run_chat(args, _load)
        from .training.run import run_train

        return int(run_train(args) or 0)
    except RWKVError as e:
        _stderr(f"error: {e}")
        return EXIT_ERROR
    except MemoryError:
        _stderr("error: not enough memory for this model or input")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _stderr("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
