#!/usr/bin/env python3
"""llama.cpp side of anjeon's speed comparison (`anjeon bench`).

Measures, on the same GGUF files and thread counts as `anjeon bench --model NAME --threads N`:
prefill tokens/s of a 256-token prompt (after a 16-token warm-up) and greedy decode tokens/s of
128 tokens, plus peak RSS. Prints one JSON object per (model, threads).

Needs llama-cpp-python (builds llama.cpp from source, ~20 min on 2 cores). This project's VMs
advertise AMX they cannot run, so build with AMX off (at build time only):
    CMAKE_ARGS="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" pip install llama-cpp-python==0.3.36
llama.cpp runs at its best: its CPU weight repacking (extra buffer types) stays on unless
--no-repack is given. Each (model, threads) runs in its own process, so peak RSS is that run's.
Run from the repository root, with the models fetched (`anjeon models fetch NAME`):
    python3 benches/llamacpp_bench.py [--threads 1 2] [--models qwen2.5-coder-0.5b-instruct ...]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import llama_cpp
import llama_cpp.llama



def no_extra_bufts():
    """Llama() has no use_extra_bufts argument: turn extra buffer types (repacking) off in the
    default model params it starts from (--no-repack; the parity fixtures do the same)."""
    low = llama_cpp.llama.llama_cpp
    orig = low.llama_model_default_params

    def params():
        p = orig()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params


NO_REPACK = False

CARDS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m": "gemma-3-270m-q4_k_m.gguf",
}
TEXT = "대한민국의 수도는 서울이며, 인구는 약 950만 명입니다. The quick brown fox jumps over the lazy dog. 안전한 인공지능은 사용자를 존중하고 위험한 요청을 거절합니다. "


def home():
    if os.environ.get("ANJEON_HOME"):
        return os.environ["ANJEON_HOME"]
    if os.environ.get("XDG_CACHE_HOME"):
        return os.path.join(os.environ["XDG_CACHE_HOME"], "anjeon")
    return os.path.expanduser("~/.cache/anjeon")


def bench(name, threads, prompt_tokens, decode_tokens):
    path = os.path.join(home(), "models", name, CARDS[name])
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    load_s = time.perf_counter() - t0
    piece = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    ids = [llm.token_bos()] if llm.metadata.get("tokenizer.ggml.add_bos_token") == "true" else []
    while len(ids) < prompt_tokens:
        ids += piece
    ids = ids[:prompt_tokens]
    llm.reset()
    llm.eval(ids[:16])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t
    llm.reset()
    llm.eval(ids[:16])
    t = time.perf_counter()
    for _ in range(decode_tokens):
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        llm.eval([tok])
    decode_s = time.perf_counter() - t
    return {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": name,
        "threads": threads,
        "repack": not NO_REPACK,
        "load_s": round(load_s, 3),
        "prompt_tokens": len(ids),
        "prefill_tok_s": round(len(ids) / prefill_s, 2),
        "decode_tokens": decode_tokens,
        "decode_tok_s": round(decode_tokens / decode_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--no-repack", action="store_true", help="turn llama.cpp's CPU weight repacking off")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    global NO_REPACK
    NO_REPACK = a.no_repack
    if NO_REPACK:
        no_extra_bufts()
    if a.one:
        print(json.dumps(bench(a.models[0], a.threads[0], a.prompt_tokens, a.decode_tokens)), flush=True)
        return
    for m in a.models:
        for t in a.threads:
            cmd = [sys.executable, __file__, "--one", "--models", m, "--threads", str(t),
                   "--prompt-tokens", str(a.prompt_tokens), "--decode-tokens", str(a.decode_tokens)]
            if a.no_repack:
                cmd.append("--no-repack")
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
