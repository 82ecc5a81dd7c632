#!/usr/bin/env python3
"""Issue 14: does adapting the top of EmbeddingGemma (low-rank adapters on the last K layers,
trained with the head) separate the human labels better than a linear head on the frozen sentence
embedding? A measurement, not a shipped judge.

Same inputs, splits and text handling as layer_experiment.py (Classification task prompt, responses
cut to 1,024 tokens, development split only for training). Hyperparameters are fixed in advance
(below), not tuned on anything: rank 8, alpha 16, adapters on q/k/v/o/gate/up/down of the last
FT_LAYERS (default 4) layers, AdamW (lr 2e-4 adapters, 1e-3 head, weight decay 0.01), 3 epochs,
batches of 8 by length, class-balanced cross-entropy, seed 0. The head is linear on the model's
normalised sentence embedding (times 10). Held-out sets are only scored, once, at the end.

Usage: finetune_experiment.py TASK NAME=TASK=FILE ... (TASK refusal or harm)
"""
import math
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layer_experiment import MAX_TOKENS, PROMPT, load_sets  # noqa: E402


def main():
    import torch
    from sentence_transformers import SentenceTransformer
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    task = sys.argv[1]
    K = int(os.environ.get("FT_LAYERS", "4"))
    epochs = int(os.environ.get("FT_EPOCHS", "3"))
    limit = int(os.environ.get("LX_LIMIT", "600"))
    folder = os.environ.get("LX_MODEL") or os.path.expanduser("~/.cache/anjeon/models/embeddinggemma-300m")
    sets = load_sets([a for a in sys.argv[2:] if a.split("=")[1] == task], limit)
    st = SentenceTransformer(folder, device="cpu")
    st.max_seq_length = MAX_TOKENS + 16
    for p in st.parameters():
        p.requires_grad_(False)

    class Lora(torch.nn.Module):
        def __init__(self, base, r=8, alpha=16):
            super().__init__()
            self.base = base
            self.a = torch.nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
            self.b = torch.nn.Parameter(torch.zeros(base.out_features, r))
            self.scale = alpha / r

        def forward(self, x):
            return self.base(x) + (x @ self.a.t() @ self.b.t()) * self.scale

    model = st[0].auto_model
    adapters = []
    for layer in model.layers[len(model.layers) - K:]:
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                              (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for n in names:
                m = Lora(getattr(parent, n))
                setattr(parent, n, m)
                adapters += [m.a, m.b]
    classes = sorted({r["y"] for k, rows in sets.items() for r in rows})
    head = torch.nn.Linear(768, len(classes))
    opt = torch.optim.AdamW([{"params": adapters, "lr": 2e-4}, {"params": head.parameters(), "lr": 1e-3}],
                            weight_decay=0.01)

    def cut(text):
        ids = st.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= MAX_TOKENS else st.tokenizer.decode(ids[:MAX_TOKENS])

    def logits(texts):
        feats = st.tokenize([PROMPT + cut(t) for t in texts])
        return head(st(feats)["sentence_embedding"] * 10.0)

    train = [r for k, rows in sets.items() if k[2] == "dev" for r in rows]
    y = torch.tensor([classes.index(r["y"]) for r in train])
    counts = torch.bincount(y, minlength=len(classes)).float()
    loss_fn = torch.nn.CrossEntropyLoss(weight=len(train) / (len(classes) * counts))
    order = sorted(range(len(train)), key=lambda i: len(train[i]["response"]))
    batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    t0 = time.time()
    for ep in range(epochs):
        random.shuffle(batches)
        total = 0.0
        for bi, b in enumerate(batches):
            out = logits([train[i]["response"] for i in b])
            loss = loss_fn(out, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
            if bi % 50 == 0:
                print(f"  epoch {ep} batch {bi}/{len(batches)} loss {float(loss):.3f} {time.time() - t0:.0f}s",
                      file=sys.stderr, flush=True)
        print(f"epoch {ep}: train loss {total / len(train):.4f} ({time.time() - t0:.0f} s)", file=sys.stderr)

    print(f"task {task}: adapters on the last {K} layers, {epochs} epochs, {len(train)} training items")
    print("| held-out set | n | accuracy | macro-F1 | κ |")
    print("|---|---:|---:|---:|---:|")
    with torch.no_grad():
        for k in sorted(sets):
            if k[2] != "test" or not sets[k]:
                continue
            rows = sorted(sets[k], key=lambda r: len(r["response"]))
            pred = []
            for i in range(0, len(rows), 8):
                pred += [classes[j] for j in logits([r["response"] for r in rows[i:i + 8]]).argmax(1).tolist()]
            yt = [r["y"] for r in rows]
            print(f"| {k[0]} | {len(yt)} | {accuracy_score(yt, pred):.3f} | {f1_score(yt, pred, average='macro'):.3f} | "
                  f"{cohen_kappa_score(yt, pred):.3f} |", flush=True)


if __name__ == "__main__":
    main()
