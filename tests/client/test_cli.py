"""The `litelang` CLI (client/cli.py), called in-process against one real worker + scheduler on a
tiny random Qwen2 with the real tokenizer. The oracle is the Python client (LitelangClient) with
the same parameters on the same server; the flag-to-proto mapping is checked against
client.api.sampling_params and the SamplingParams descriptor."""

from __future__ import annotations

import io
import json

import pytest
from google.protobuf import json_format

from litelang.client.api import SAMPLING_FIELDS, sampling_params
from litelang.client.cli import _sampling, build_parser, main
from litelang.proto import litelang_pb2 as pb

PROMPT = "def fibonacci(n):"
NEW = 8
GREEDY = ["--temperature", "0", "--max-new-tokens", str(NEW), "--ignore-eos"]
GREEDY_KW = dict(temperature=0, max_new_tokens=NEW, ignore_eos=True)
STREAMING = pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
# no prefix cache: a repeated prompt is computed the same way, so logprobs match bit for bit
SERVER_CONFIG = dict(kv_slots=512, max_batch_size=4, max_input_length=64, max_output_length=64,
                     use_radix_cache=False)
e2e = pytest.mark.slow


def cli(group, capsys, *argv: str, stream: bool = False) -> tuple[int, str, str]:
    """main(argv) against the group: (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["--address", group.address, *argv, *([] if stream else ["--no-stream"])])
    out, err = capsys.readouterr()
    return rc, out, err


def table(out: str, text: str) -> list[list[str]]:
    """The logprobs table printed after the completion text, header first, split on tabs."""
    assert out.startswith(text + "\n"), "the completion text comes first"
    return [line.split("\t") for line in out[len(text) + 1:].splitlines()]


@pytest.fixture(scope="module")
def entries(tiny_model):
    """The oracle for the tables' token columns: HF's own vocabulary lookup, ids -> entries."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model))
    return lambda ids: hf.convert_ids_to_tokens(list(ids))


def top_cells(top: pb.TopLogprobs, entries) -> list[str]:
    return [" ".join(f"{t}:{x:.4f}" for t, x in zip(top.token_ids, top.logprobs)), " ".join(entries(top.token_ids))]


def check_table(rows: list[list[str]], reply: pb.GenerateResponse, n_top: int, entries) -> None:
    assert rows[0] == ["index", "token_id", "token", "logprob"] + (["top_logprobs", "top_tokens"] if n_top else [])
    assert len(rows) - 1 == len(reply.token_ids) == NEW, "one row per generated token"
    tokens = entries(reply.token_ids)
    for i, row in enumerate(rows[1:]):
        assert row[:4] == [str(i), str(reply.token_ids[i]), tokens[i], f"{reply.logprobs[i]:.4f}"], f"row {i}"
        if n_top:
            top = reply.top_logprobs[i]
            assert row[4:] == top_cells(top, entries), f"row {i}"
            assert len(top.token_ids) == n_top
        else:
            assert len(row) == 4


# ---- flags -> SamplingParams (no server)

def parse_sampling(*flags: str) -> pb.SamplingParams:
    return sampling_params(**_sampling(build_parser().parse_args(["generate", "x", *flags])))


# fields outside the shared sampling flags: generate's own --n and --prompt-logprobs (Chat takes neither)
NOT_IN_CLI = {"n", "prompt_logprobs"}


def test_every_sampling_field_has_a_flag():
    flagged = set(_sampling(build_parser().parse_args(["generate", "x"])))
    assert flagged <= SAMPLING_FIELDS
    assert SAMPLING_FIELDS - flagged <= NOT_IN_CLI, "a SamplingParams field without a CLI flag"


def test_n_and_prompt_logprobs_are_generate_flags():
    args = build_parser().parse_args(["generate", "x", "--n", "3", "--prompt-logprobs", "2"])
    assert (args.n, args.prompt_logprobs) == (3, 2)
    for flag in ("--n", "--prompt-logprobs"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["chat", flag, "3"])


def test_absent_flags_leave_the_request_bare():
    assert parse_sampling().SerializeToString() == b""
    assert parse_sampling("--max-new-tokens", "8", "--stop", "\n").SerializeToString() == \
        pb.SamplingParams(max_new_tokens=8, stop=["\n"]).SerializeToString()


def test_flags_reach_their_fields():
    got = parse_sampling(
        "--max-new-tokens", "9", "--min-new-tokens", "2", "--temperature", "0.5", "--top-p", "0.9", "--top-k", "7",
        "--min-p", "0.1", "--repetition-penalty", "1.2", "--frequency-penalty", "-0.5", "--presence-penalty", "0.25",
        "--seed", "3", "--stop", "a", "--stop", "b", "--stop-token-id", "5", "--stop-token-id", "6", "--ignore-eos",
        "--skip-special-tokens", "--logprobs", "--top-logprobs", "4", "--logit-bias", "13=-100", "--logit-bias", "7=2.5",
        "--truncate-prompt-tokens", "20", "--include-stop-str-in-output",
    )
    assert got == sampling_params(
        max_new_tokens=9, min_new_tokens=2, temperature=0.5, top_p=0.9, top_k=7, min_p=0.1, repetition_penalty=1.2,
        frequency_penalty=-0.5, presence_penalty=0.25, seed=3, stop=["a", "b"], stop_token_ids=[5, 6], ignore_eos=True,
        skip_special_tokens=True, logprobs=True, top_logprobs=4, logit_bias={13: -100.0, 7: 2.5},
        truncate_prompt_tokens=20, include_stop_str_in_output=True,
    )


def test_output_format_flags(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object"}')
    assert parse_sampling("--json-schema", str(schema)).structured_output == pb.StructuredOutput(json_schema='{"type": "object"}')
    assert parse_sampling("--regex", "a+").structured_output == pb.StructuredOutput(regex="a+")
    assert parse_sampling("--json-object").structured_output == pb.StructuredOutput(json_object=True)
    assert parse_sampling("--choice", "yes", "--choice", "no").structured_output == \
        pb.StructuredOutput(choice=pb.ChoiceList(choices=["yes", "no"]))
    with pytest.raises(SystemExit, match="one output format"):
        parse_sampling("--regex", "a+", "--json-object")


@pytest.mark.parametrize("bad", ["13", "x=1", "13=y"])
def test_malformed_logit_bias_is_a_usage_error(bad):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "x", "--logit-bias", bad])


def test_top_logprobs_implies_logprobs():
    assert parse_sampling("--top-logprobs", "2") == sampling_params(logprobs=True, top_logprobs=2)
    assert parse_sampling("--top-logprobs", "0") == sampling_params()  # 0 asks for nothing


# ---- against the server

@e2e
def test_unary_text_matches_the_client(group, capsys):
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY)
    assert rc == 0
    assert out == group.client.generate(PROMPT, **GREEDY_KW).text + "\n"


@e2e
@STREAMING
def test_suffix_fills_in_the_middle_as_the_client(group, capsys, stream):
    suffix = "\nprint(fibonacci(3))"
    rc, out, _ = cli(group, capsys, "generate", PROMPT, "--suffix", suffix, *GREEDY, "--json", stream=stream)
    want = group.client.generate(PROMPT, suffix=suffix, **GREEDY_KW)
    reply = json.loads(out)
    assert rc == 0 and reply["text"] == want.text and reply["token_ids"] == list(want.token_ids)
    assert reply["usage"]["prompt_tokens"] == len(group.client.tokenize(PROMPT, suffix).token_ids) == want.usage.prompt_tokens
    assert want.usage.prompt_tokens > len(group.client.tokenize(PROMPT).token_ids) + 3, "the suffix reached the server"
    rc, out, _ = cli(group, capsys, "tokenize", PROMPT, "--suffix", suffix, stream=True)  # no --no-stream
    assert rc == 0 and len(out.splitlines()) >= want.usage.prompt_tokens


@e2e
def test_stream_prints_what_unary_prints(group, capsys):
    rc_stream, streamed, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, stream=True)
    rc_unary, unary, _ = cli(group, capsys, "generate", PROMPT, *GREEDY)
    assert rc_stream == rc_unary == 0
    assert streamed == unary


@e2e
@STREAMING
def test_json_carries_the_clients_logprobs(group, capsys, stream):
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--logprobs", "--top-logprobs", "3", "--json",
                     stream=stream)
    assert rc == 0
    want = group.client.generate(PROMPT, **GREEDY_KW, logprobs=True, top_logprobs=3)
    data = json.loads(out)
    assert data["text"] == want.text
    assert data["token_ids"] == list(want.token_ids)
    assert data["finish_reason"] == "FINISH_REASON_LENGTH"
    assert data["usage"]["completion_tokens"] == NEW
    for top in data["top_logprobs"]:
        assert len(top["token_ids"]) == len(top["logprobs"]) == 3
        assert top["logprobs"] == sorted(top["logprobs"], reverse=True), "most likely first"
    got = json_format.Parse(out, pb.GenerateResponse())  # back to float32, to compare exactly
    assert list(got.logprobs) == list(want.logprobs)
    assert list(got.top_logprobs) == list(want.top_logprobs)


@e2e
@STREAMING
def test_logprobs_table_matches_the_client(group, capsys, stream, entries):
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--logprobs", "--top-logprobs", "3", stream=stream)
    assert rc == 0
    want = group.client.generate(PROMPT, **GREEDY_KW, logprobs=True, top_logprobs=3)
    check_table(table(out, want.text), want, n_top=3, entries=entries)


@e2e
def test_logprobs_table_without_alternatives(group, capsys, entries):
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--logprobs", stream=True)
    assert rc == 0
    want = group.client.generate(PROMPT, **GREEDY_KW, logprobs=True)
    check_table(table(out, want.text), want, n_top=0, entries=entries)


@e2e
def test_top_logprobs_alone_implies_logprobs(group, capsys, entries):
    rc, out, err = cli(group, capsys, "generate", PROMPT, *GREEDY, "--top-logprobs", "2")
    assert rc == 0, err
    want = group.client.generate(PROMPT, **GREEDY_KW, logprobs=True, top_logprobs=2)
    check_table(table(out, want.text), want, n_top=2, entries=entries)


@e2e
@STREAMING
def test_invalid_argument_is_a_clear_error(group, capsys, stream):
    rc, out, err = cli(group, capsys, "generate", PROMPT, "--top-p", "0", stream=stream)
    assert rc == 1
    assert err.startswith("litelang: INVALID_ARGUMENT: ") and "top_p must be in (0, 1]" in err
    assert out.strip() == ""


SAMPLED = ["--temperature", "1", "--seed", "7", "--max-new-tokens", str(NEW), "--ignore-eos"]
SAMPLED_KW = dict(temperature=1.0, seed=7, max_new_tokens=NEW, ignore_eos=True)


def cli_ids(group, capsys, *argv: str) -> list[int]:
    rc, out, err = cli(group, capsys, "generate", PROMPT, *argv, "--json")
    assert rc == 0, err
    return json.loads(out).get("token_ids", [])


# Each flag changes the tiny model's tokens (checked below, deterministic: greedy, or a fixed seed),
# so a flag the CLI dropped would fail the comparison with the client.
@e2e
@pytest.mark.parametrize("base, base_kw, flags, params", [
    pytest.param(GREEDY, GREEDY_KW, ["--repetition-penalty", "1.5"], dict(repetition_penalty=1.5), id="repetition"),
    pytest.param(GREEDY, GREEDY_KW, ["--frequency-penalty", "1.5"], dict(frequency_penalty=1.5), id="frequency"),
    pytest.param(GREEDY, GREEDY_KW, ["--presence-penalty", "1.5"], dict(presence_penalty=1.5), id="presence"),
    pytest.param(SAMPLED, SAMPLED_KW, ["--min-p", "0.5"], dict(min_p=0.5), id="min-p"),
    pytest.param(SAMPLED, SAMPLED_KW, ["--top-k", "50"], dict(top_k=50), id="top-k"),
    pytest.param(SAMPLED, SAMPLED_KW, ["--top-p", "0.5"], dict(top_p=0.5), id="top-p"),
    pytest.param(SAMPLED, SAMPLED_KW, ["--seed", "8"], dict(seed=8), id="seed"),
])
def test_sampling_flags_reach_the_server(group, capsys, base, base_kw, flags, params):
    want = list(group.client.generate(PROMPT, **{**base_kw, **params}).token_ids)
    assert want != list(group.client.generate(PROMPT, **base_kw).token_ids), "the flag must matter here"
    assert cli_ids(group, capsys, *base, *flags) == want


@e2e
def test_stop_token_ids_and_min_new_tokens_reach_the_server(group, capsys):
    first = group.client.generate(PROMPT, temperature=0, max_new_tokens=1).token_ids[0]
    stop = ["--temperature", "0", "--max-new-tokens", str(NEW), "--stop-token-id", str(first)]
    assert cli_ids(group, capsys, *stop) == [first]
    want = group.client.generate(PROMPT, temperature=0, max_new_tokens=NEW, stop_token_ids=[first], min_new_tokens=3)
    assert len(want.token_ids) >= 3
    assert cli_ids(group, capsys, *stop, "--min-new-tokens", "3") == list(want.token_ids)


@e2e
def test_chat_prints_the_table_to_stderr(group, capsys, monkeypatch, entries):
    ask = dict(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=2)
    session = group.client.chat(**ask)
    try:
        msgs = list(session.send("hello"))
    finally:
        session.close()
    chunks = [m.chunk for m in msgs if m.WhichOneof("msg") == "chunk"]
    want = pb.GenerateResponse(text="".join(c.text for c in chunks), token_ids=[t for c in chunks for t in c.token_ids],
                               logprobs=[x for c in chunks for x in c.logprobs],
                               top_logprobs=[t for c in chunks for t in c.top_logprobs])
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    capsys.readouterr()
    rc = main(["--address", group.address, "chat", "--max-new-tokens", "6", "--temperature", "0", "--ignore-eos",
               "--top-logprobs", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == f"> {want.text}\n> "  # input()'s prompts around the reply; no table on stdout
    rows = [line.split("\t") for line in err.splitlines() if "\t" in line]
    assert rows[0] == ["index", "token_id", "token", "logprob", "top_logprobs", "top_tokens"]
    assert len(rows) - 1 == len(want.token_ids) == 6
    tokens = entries(want.token_ids)
    for i, row in enumerate(rows[1:]):
        assert row == [str(i), str(want.token_ids[i]), tokens[i], f"{want.logprobs[i]:.4f}", *top_cells(want.top_logprobs[i], entries)]


@e2e
def test_n_prints_every_completion(group, capsys):
    flags = ["--temperature", "1", "--seed", "4", "--max-new-tokens", "6", "--ignore-eos", "--n", "3"]
    want = group.client.generate(PROMPT, temperature=1, seed=4, max_new_tokens=6, ignore_eos=True, n=3)
    assert len(want.completions) == 3
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *flags, "--json")
    got = json_format.Parse(out, pb.GenerateResponse())
    assert rc == 0
    assert [list(c.token_ids) for c in got.completions] == [list(c.token_ids) for c in want.completions]
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *flags, stream=True)  # n > 1 waits for all either way
    assert rc == 0
    assert out == "".join(f"[completion {c.index}: {pb.FinishReason.Name(c.finish_reason)}]\n{c.text}\n"
                          for c in want.completions)


@e2e
@STREAMING
def test_prompt_logprobs_table_and_json(group, capsys, stream, entries):
    want = group.client.generate(PROMPT, prompt_logprobs=2, **GREEDY_KW)
    assert len(want.prompt_logprobs) > 1
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--prompt-logprobs", "2", "--json", stream=stream)
    got = json_format.Parse(out, pb.GenerateResponse())
    assert rc == 0 and list(got.prompt_logprobs) == list(want.prompt_logprobs)
    assert got.prompt_top_logprobs == want.prompt_top_logprobs
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--prompt-logprobs", "0", stream=stream)
    assert list(got.prompt_token_ids) == list(want.prompt_token_ids), "the stream's ids are folded in too"
    lines = out.splitlines()
    rows = [line.split("\t") for line in lines[lines.index("prompt_position\ttoken_id\ttoken\tlogprob") + 1:]]
    ids = list(want.prompt_token_ids)
    tokens = entries(ids)
    assert rows == [[str(i + 1), str(ids[i + 1]), tokens[i + 1], f"{lp:.4f}"] for i, lp in enumerate(want.prompt_logprobs)]
    rc, out, _ = cli(group, capsys, "generate", PROMPT, *GREEDY, "--prompt-logprobs", "2", stream=stream)
    lines = out.splitlines()
    rows = [line.split("\t") for line in lines[lines.index("prompt_position\ttoken_id\ttoken\tlogprob\ttop_logprobs\ttop_tokens") + 1:]]
    assert [row[4:] for row in rows] == [top_cells(top, entries) for top in want.prompt_top_logprobs]
