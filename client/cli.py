"""`litelang`: talk to a running litelang server from the shell.

    litelang generate "def fibonacci(n):" --max-new-tokens 48 --temperature 0
    litelang chat
    litelang info
"""

from __future__ import annotations

import argparse
import sys

import grpc

from litelang.client.api import LitelangClient
from litelang.proto import litelang_pb2 as pb


def _sampling(args: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        seed=args.seed, stop=args.stop or None,
    )


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def cmd_generate(client: LitelangClient, args: argparse.Namespace) -> int:
    if args.no_stream:
        reply = client.generate(args.prompt, **_sampling(args))
        print(reply.text)
        return 0
    for chunk in client.generate_stream(args.prompt, **_sampling(args)):
        print(chunk.text, end="", flush=True)
        if chunk.finish_reason:
            print()
            if args.verbose:
                u = chunk.usage
                print(f"[{pb.FinishReason.Name(chunk.finish_reason)}; {u.prompt_tokens} prompt + "
                      f"{u.completion_tokens} generated tokens; ttft {chunk.timings.ttft_ms:.0f} ms]", file=sys.stderr)
    return 0


def cmd_chat(client: LitelangClient, args: argparse.Namespace) -> int:
    session = client.chat(system_prompt=args.system or "", **_sampling(args))
    print("litelang chat: type a message, Ctrl-D to quit.", file=sys.stderr)
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if not line.strip():
                continue
            for msg in session.send(line):
                kind = msg.WhichOneof("msg")
                if kind == "chunk":
                    print(msg.chunk.text, end="", flush=True)
                elif kind == "end":
                    print()
                elif kind == "error":
                    print(f"\n[error: {msg.error.message}]", file=sys.stderr)
    finally:
        session.close()
    return 0


def cmd_info(client: LitelangClient, args: argparse.Namespace) -> int:
    print(client.model_info())
    print(client.stats())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="litelang", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051", help="scheduler address (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="complete a prompt")
    g.add_argument("prompt")
    g.add_argument("--no-stream", action="store_true", help="wait for the whole completion")
    g.add_argument("-v", "--verbose", action="store_true", help="print finish reason and usage")
    _add_sampling_flags(g)
    c = sub.add_parser("chat", help="a multi-turn chat over the bidirectional stream")
    c.add_argument("--system", help="system prompt")
    _add_sampling_flags(c)
    sub.add_parser("info", help="model and server figures")
    args = parser.parse_args(argv)
    handler = {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info}[args.command]
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
