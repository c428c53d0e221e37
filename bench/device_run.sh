#!/usr/bin/env bash
# On the device machine: GPU tests and benchmarks, results into $OUT (or ./out).
#   bash bench/device_run.sh tests|kernels|model15|model7|serving|openai|structured ...
# (structured needs xgrammar's wheels in .whl: xgrammar, apache-tvm-ffi, pydantic and its needs)
# (openai needs the gateway's wheels carried in .whl: fastapi, uvicorn, httptools, httpx, ...)
source "$(dirname "$0")/device_setup.sh"
OUT=${OUT:-out}; mkdir -p "$OUT"
# tokenizer files for the serving benchmark: carried to the device, or the prepared default model
TOKENIZER=${TOKENIZER:-$( [ -d .carry/tokenizer ] && echo .carry/tokenizer || echo models/qwen2.5-coder-0.5b-instruct )}
for stage in "$@"; do
  case $stage in
    tests)   LITELANG_TEST_TOKENIZER=$PWD/$TOKENIZER python3 -m pytest -p no:cacheprovider -m gpu tests -q -s -rf 2>&1 | grep -v "Warning\|warn(" | tail -n 80 > "$OUT/gpu_tests.log" ;;
    kernels) python3 -m litelang.bench.bench_kernels 2>&1 | tail -n 80 > "$OUT/bench_kernels.md" ;;
    model15) python3 -m litelang.bench.bench_model --shape qwen2-1.5b --workloads decode1,batch40,prefill40 2>&1 | grep -v Warn | tail -n 12 > "$OUT/bench_1p5b.md" ;;
    model7)  python3 -m litelang.bench.bench_model --shape qwen2-7b --workloads decode1,decodeB --decode-batch 64 2>&1 | grep -v Warn | tail -n 10 > "$OUT/bench_7b.md" ;;
    serving) python3 -m litelang.bench.bench_serving --tokenizer "$TOKENIZER" 2>&1 | grep -v Warn | tail -n 20 > "$OUT/bench_serving.md" ;;
    openai)  python3 -m litelang.bench.bench_serving --tokenizer "$TOKENIZER" --only openai 2>&1 | grep "^|" > "$OUT/bench_openai.md" ;;
    structured) python3 -m litelang.bench.bench_structured --tokenizer "$TOKENIZER" 2>&1 | grep "^|" > "$OUT/bench_structured.md" ;;
  esac
  echo "== $stage done ($SECONDS s)"; cat "$OUT"/*.md "$OUT"/*.log 2>/dev/null | tail -n 5
done
