#!/usr/bin/env python3
"""The docs/speed.md table in one run: `anjeon bench` (batch 1, 4, 8) and llama.cpp
(benches/llamacpp_bench.py, repacking on) on the same GGUF files and thread counts, taken model
by model so both see the same machine state. Prints a markdown table and the JSON lines.

Run from the repository root after `cargo build --release` and with the models fetched:
    python3 benches/speed_table.py [--threads 1 2] [--models NAME ...]
"""
import argparse
import json
import subprocess
import sys

NAMES = {
    "smollm2-135m-instruct": "SmolLM2-135M Q4_1",
    "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder-0.5B Q4_K_M",
    "gemma-3-270m": "Gemma 3 270M Q4_K_M",
}


def anjeon(model, threads, batch):
    out = subprocess.run(
        ["target/release/anjeon", "bench", "--model", model, "--threads", str(threads),
         "--batch", str(batch), "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def llamacpp(model, threads):
    out = subprocess.run(
        [sys.executable, "benches/llamacpp_bench.py", "--models", model, "--threads", str(threads)],
        check=True, capture_output=True, text=True).stdout
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(NAMES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    a = ap.parse_args()
    rows = []
    for m in a.models:
        for t in a.threads:
            ref = llamacpp(m, t)
            b = {n: anjeon(m, t, n) for n in (1, 4, 8)}
            for r in [ref, *b.values()]:
                print(json.dumps(r), file=sys.stderr)
            one = b[1]
            rows.append("| {} | {} | {:.1f} | {:.1f} | {:.2f} | {:.1f} | {:.1f} | {:.2f} | {:.1f} | {:.1f} | {:.2f} | {:.0f} ({:.0f}) | {:.0f} |".format(
                NAMES.get(m, m), t, one["prefill_tok_s"], ref["prefill_tok_s"],
                one["prefill_tok_s"] / ref["prefill_tok_s"], one["decode_tok_s"], ref["decode_tok_s"],
                one["decode_tok_s"] / ref["decode_tok_s"], b[4]["decode_tok_s"], b[8]["decode_tok_s"],
                b[8]["decode_tok_s"] / one["decode_tok_s"], max(x["peak_rss_mb"] for x in b.values()),
                one["model_file_mb"], ref["peak_rss_mb"]))
    print("kernels:", b[1]["kernels"])
    print("| model | threads | prefill tok/s | llama.cpp | ratio | decode tok/s, batch 1 | llama.cpp | ratio "
          "| batch 4 | batch 8 | batch 8 ÷ batch 1 | peak RSS MiB (file) | llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
