"""`litelang`: talk to a running litelang server from the shell.

    litelang generate "def fibonacci(n):" --max-new-tokens 48 --temperature 0
    litelang generate "def f(x):" --max-new-tokens 8 --temperature 0 --logprobs --top-logprobs 3
    litelang generate "def f(x):" --max-new-tokens 8 --no-stream --json | jq .text
    litelang generate "def f(x):" --max-new-tokens 16 --temperature 0.8 --seed 1 --n 3
    litelang chat --temperature 0.7 --repetition-penalty 1.1
    litelang tokenize "def f(x):"
    litelang info

Sampling flags left out leave their field unset, so the server's defaults apply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format

from litelang.client.api import LitelangClient
from litelang.proto import litelang_pb2 as pb


def _sampling(args: argparse.Namespace) -> dict:
    """SamplingParams keywords. Absent flags become None (field unset, server default), store_true
    flags False -> None too, so a request that uses none of them is byte-identical to a bare one."""
    return dict(
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, seed=args.seed,
        stop=args.stop or None, stop_token_ids=args.stop_token_id or None,
        ignore_eos=args.ignore_eos or None, skip_special_tokens=args.skip_special_tokens or None,
        # asking for alternatives implies asking for logprobs (the server would refuse otherwise)
        logprobs=(args.logprobs or bool(args.top_logprobs)) or None, top_logprobs=args.top_logprobs,
        logit_bias=dict(args.logit_bias) if args.logit_bias else None,
        truncate_prompt_tokens=args.truncate_prompt_tokens,
        include_stop_str_in_output=args.include_stop_str_in_output or None,
        structured_output=_output_format(args),
        allowed_token_ids=args.allowed_token_id or None, bad_words=args.bad_word or None,
    )


def _output_format(args: argparse.Namespace) -> pb.StructuredOutput | None:
    """--json-schema FILE, --json-object, --regex, --grammar FILE or --choice: at most one."""
    given = [name for name in ("json_schema", "json_object", "regex", "grammar", "choice") if getattr(args, name)]
    if not given:
        return None
    if len(given) > 1:
        raise SystemExit(f"litelang: give one output format, not {', '.join('--' + g.replace('_', '-') for g in given)}")
    kind = given[0]
    if kind == "choice":
        return pb.StructuredOutput(choice=pb.ChoiceList(choices=args.choice))
    if kind in ("json_schema", "grammar"):  # from a file
        return pb.StructuredOutput(**{kind: Path(getattr(args, kind)).read_text()})
    return pb.StructuredOutput(**{kind: getattr(args, kind)})


def _token_bias(text: str) -> tuple[int, float]:
    """TOKEN=BIAS for --logit-bias."""
    token, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS (e.g. 13=-100), got {text!r}") from None


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--min-new-tokens", type=int, default=None, help="EOS and stop strings are ignored before this many")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=None, help="in (0, 1]")
    p.add_argument("--top-k", type=int, default=None, help="0 = off")
    p.add_argument("--min-p", type=float, default=None, help="in [0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 0, 1 = off")
    p.add_argument("--frequency-penalty", type=float, default=None, help="in [-2, 2]")
    p.add_argument("--presence-penalty", type=float, default=None, help="in [-2, 2]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--include-stop-str-in-output", action="store_true",
                   help="keep the matched stop string at the end of the text")
    p.add_argument("--truncate-prompt-tokens", type=int, default=None, metavar="N",
                   help="keep only the prompt's last N tokens (after the chat template)")
    p.add_argument("--stop-token-id", type=int, action="append", help="extra stop token id besides EOS (repeatable)")
    p.add_argument("--logit-bias", type=_token_bias, action="append", metavar="TOKEN_ID=BIAS",
                   help="add BIAS ([-100, 100]) to a token's logit before sampling (repeatable)")
    p.add_argument("--allowed-token-id", type=int, action="append", metavar="ID",
                   help="generate only these token ids (repeatable; EOS too only when given)")
    p.add_argument("--bad-word", action="append", metavar="WORD", help="a word never to generate (repeatable)")
    p.add_argument("--json-schema", metavar="FILE", help="the output is JSON that this JSON Schema (a file) accepts")
    p.add_argument("--json-object", action="store_true", help="the output is a JSON object")
    p.add_argument("--regex", help="the whole output matches this regular expression")
    p.add_argument("--grammar", metavar="FILE", help="the output follows this EBNF grammar (a file; start rule root)")
    p.add_argument("--choice", action="append", help="the output is exactly one of these strings (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the model's EOS tokens (stop strings and --stop-token-id still stop)")
    p.add_argument("--skip-special-tokens", action="store_true", help="drop special tokens from the text")
    p.add_argument("--logprobs", action="store_true",
                   help="print each generated token's log-probability: a table after the text (chat: on stderr)")
    p.add_argument("--top-logprobs", type=int, default=None, metavar="N",
                   help="also print the N (0-20) most likely tokens at each position; implies --logprobs")


def _vocab_entries(client: LitelangClient, ids: Iterable[int]) -> dict[int, str]:
    """id -> vocabulary entry for the tables, in one Detokenize call (the CLI loads no tokenizer)."""
    unique = sorted(set(ids))
    return dict(zip(unique, client.convert_ids_to_tokens(unique))) if unique else {}


def _top_cells(tops: pb.TopLogprobs, entries: dict[int, str]) -> list[str]:
    """The alternatives at one position: `id:logprob` and their vocabulary entries, in one order."""
    return [" ".join(f"{t}:{x:.4f}" for t, x in zip(tops.token_ids, tops.logprobs)),
            " ".join(entries[t] for t in tops.token_ids)]


def _print_logprobs(client: LitelangClient, msg: pb.GenerateResponse | pb.Completion | pb.TurnChunk,
                    file: TextIO) -> None:
    """One tab-separated row per generated token: its id, vocabulary entry (byte-level BPE spells a
    space "Ġ"; entries hold no spaces or tabs) and log-probability, then the alternatives asked for.
    Entries, not text: the replies carry no per-token text (the detokenizer holds back partial
    characters)."""
    tops = msg.top_logprobs
    entries = _vocab_entries(client, [*msg.token_ids, *(t for top in tops for t in top.token_ids)])
    print("\t".join(["index", "token_id", "token", "logprob"] + (["top_logprobs", "top_tokens"] if tops else [])),
          file=file)
    for i, (token, lp) in enumerate(zip(msg.token_ids, msg.logprobs)):
        row = [str(i), str(token), entries[token], f"{lp:.4f}"]
        if tops:
            row += _top_cells(tops[i], entries)
        print("\t".join(row), file=file)


def _print_prompt_logprobs(client: LitelangClient, reply: pb.GenerateResponse, file: TextIO) -> None:
    """One row per prompt token after the first (the server's tokenization of the prompt): its
    position, id, vocabulary entry and log-probability, and the alternatives asked for."""
    tops = reply.prompt_top_logprobs
    ids = reply.prompt_token_ids
    entries = _vocab_entries(client, [*ids, *(t for top in tops for t in top.token_ids)])
    print("\t".join(["prompt_position", "token_id", "token", "logprob"] + (["top_logprobs", "top_tokens"] if tops else [])),
          file=file)
    for i, lp in enumerate(reply.prompt_logprobs):
        row = [str(i + 1), str(ids[i + 1]), entries[ids[i + 1]], f"{lp:.4f}"]
        if tops:
            row += _top_cells(tops[i], entries)
        print("\t".join(row), file=file)


def _fold(reply: pb.GenerateResponse, chunk: pb.GenerateStreamChunk) -> None:
    """Add a stream chunk to a GenerateResponse, so both paths print (table, JSON) the same way."""
    reply.request_id = chunk.request_id
    reply.text += chunk.text
    reply.token_ids.extend(chunk.token_ids)
    reply.logprobs.extend(chunk.logprobs)
    reply.top_logprobs.extend(chunk.top_logprobs)
    reply.prompt_logprobs.extend(chunk.prompt_logprobs)
    reply.prompt_top_logprobs.extend(chunk.prompt_top_logprobs)
    reply.prompt_token_ids.extend(chunk.prompt_token_ids)
    if chunk.finish_reason:
        reply.finish_reason = chunk.finish_reason
        reply.stop_string = chunk.stop_string
        reply.usage.CopyFrom(chunk.usage)
        reply.timings.CopyFrom(chunk.timings)


def _print_completions(client: LitelangClient, reply: pb.GenerateResponse, with_logprobs: bool) -> None:
    """n > 1: each completion under a header line, its logprobs table after it."""
    for c in reply.completions:
        print(f"[completion {c.index}: {pb.FinishReason.Name(c.finish_reason)}]")
        print(c.text)
        if with_logprobs:
            _print_logprobs(client, c, sys.stdout)


def cmd_generate(client: LitelangClient, args: argparse.Namespace) -> int:
    sampling = dict(_sampling(args), n=args.n, prompt_logprobs=args.prompt_logprobs)
    if args.n and args.n > 1:  # several completions: wait for all of them (no interleaved stream)
        reply = client.generate(args.prompt, priority=args.priority, suffix=args.suffix, **sampling)
        if not args.json:
            _print_completions(client, reply, bool(sampling["logprobs"]))
    elif args.no_stream:
        reply = client.generate(args.prompt, priority=args.priority, suffix=args.suffix, **sampling)
        if not args.json:
            print(reply.text)
    else:
        reply = pb.GenerateResponse()
        for chunk in client.generate_stream(args.prompt, priority=args.priority, suffix=args.suffix, **sampling):
            _fold(reply, chunk)
            if not args.json:
                print(chunk.text, end="", flush=True)
        if not args.json:
            print()
    if args.json:  # every field, default values included, so scripts can rely on the keys
        print(json_format.MessageToJson(reply, preserving_proto_field_name=True, indent=None,
                                        always_print_fields_with_no_presence=True))
    elif sampling["logprobs"] and not reply.completions:
        _print_logprobs(client, reply, sys.stdout)
    if not args.json and args.prompt_logprobs is not None:
        _print_prompt_logprobs(client, reply, sys.stdout)
    if args.verbose:
        u = reply.usage
        print(f"[{pb.FinishReason.Name(reply.finish_reason)}; {u.prompt_tokens} prompt + "
              f"{u.completion_tokens} generated tokens; ttft {reply.timings.ttft_ms:.0f} ms]", file=sys.stderr)
    return 0


def cmd_chat(client: LitelangClient, args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    session = client.chat(system_prompt=args.system or "", **sampling)
    print("litelang chat: type a message, Ctrl-D to quit.", file=sys.stderr)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if not line.strip():
                continue
            turn = pb.TurnChunk()  # the turn's tokens and logprobs, for the table
            for msg in session.send(line):
                kind = msg.WhichOneof("msg")
                if kind == "chunk":
                    print(msg.chunk.text, end="", flush=True)
                    turn.MergeFrom(msg.chunk)
                elif kind == "end":
                    print()
                    if sampling["logprobs"]:  # stderr: the conversation on stdout stays readable
                        _print_logprobs(client, turn, sys.stderr)
                elif kind == "error":
                    print(f"\n[error: {msg.error.message}]", file=sys.stderr)
    finally:
        session.close()
    return 0


def cmd_tokenize(client: LitelangClient, args: argparse.Namespace) -> int:
    """One row per token: its id and vocabulary entry, as the server tokenizes a prompt."""
    reply = client.tokenize(args.prompt, args.suffix)
    for token_id, token in zip(reply.token_ids, reply.tokens):
        print(f"{token_id}\t{token}")
    return 0


def cmd_info(client: LitelangClient, args: argparse.Namespace) -> int:
    print(client.model_info())
    print(client.stats())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litelang", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051", help="scheduler address (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete a prompt")
    g.add_argument("prompt")
    g.add_argument("--no-stream", action="store_true", help="wait for the whole completion")
    g.add_argument("--json", action="store_true",
                   help="print the whole reply as one JSON object (GenerateResponse fields)")
    g.add_argument("-v", "--verbose", action="store_true", help="print finish reason and usage")
    g.add_argument("--n", type=int, default=None,
                   help="completions of the prompt (1-64), printed one after another once all are done")
    g.add_argument("--priority", type=int, default=0, help="lower is served first (default 0)")
    g.add_argument("--suffix", default="", metavar="TEXT",
                   help="fill in the middle: the model writes what goes between the prompt and TEXT")
    g.add_argument("--prompt-logprobs", type=int, default=None, metavar="N",
                   help="also score the prompt: each prompt token's logprob, with the N (0-20) most likely tokens")
    _add_sampling_flags(g)
    c = sub.add_parser("chat", help="a multi-turn chat over the bidirectional stream")
    c.add_argument("--system", help="system prompt")
    _add_sampling_flags(c)
    t = sub.add_parser("tokenize", help="the server's token ids for a prompt (for --logit-bias, --stop-token-id)")
    t.add_argument("prompt")
    t.add_argument("--suffix", default="", metavar="TEXT", help="the fill-in-the-middle prompt, as generate --suffix")
    sub.add_parser("info", help="model and server figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"generate": cmd_generate, "chat": cmd_chat, "tokenize": cmd_tokenize, "info": cmd_info}[args.command]
    try:
        with LitelangClient(args.address) as client:
            return handler(client, args)
    except grpc.RpcError as e:
        print(f"litelang: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
