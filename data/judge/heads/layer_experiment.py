#!/usr/bin/env python3
"""Issue 14: do EmbeddingGemma's intermediate layers, or a fine-tuned top of the encoder, separate
the human labels better than the final sentence embedding the shipped heads read?

A measurement, not a shipped judge. EmbeddingGemma-300M runs in sentence-transformers / transformers
(torch f32 CPU) on each response with the Classification task prompt, cut to 1,024 tokens, as
anjeon's heads embed it. Features per item: the mean-pooled hidden state of every layer (0 = token
embeddings, 24 = last) and the final sentence embedding. A multinomial logistic regression on
standardised features is fitted on the development split only (C by grouped 5-fold CV on macro-F1)
and scored on held-out items, with the splits of src/judge/labels.rs (`in_dev`, `group_of`; the
same code as probe_experiment.py). PyRIT's and JailbreakBench's sets are not read.

Inputs: per-item JSON lines from `anjeon judge-eval --labels KIND:PATH --split all --verdicts FILE`
(one per label set), given as NAME=TASK=FILE. Environment: LX_LIMIT (held-out items per set, default
600), LX_CACHE (feature cache), LX_LAYERS (comma-separated feature sets to report, each a layer
or layers joined by "+", 25 = the sentence embedding; default every layer alone), LX_TASKS
(default refusal,harm). The runs behind docs/judges.md:
  LX_LAYERS=6,10,14,18,22,24,25 python3 layer_experiment.py \
      xstest=refusal=/tmp/v-xstest.jsonl sample=refusal=/tmp/v-sample.jsonl \
      kosbi_valid=harm=/tmp/v-kv.jsonl kosbi_test=harm=/tmp/v-kt.jsonl square=harm=/tmp/v-sq.jsonl \
      sample_risk=harm=/tmp/v-sample.jsonl
  LX_TASKS=refusal LX_LAYERS=12,16,14+25,12+18+25,8+14+20+25 python3 layer_experiment.py \
      xstest=refusal=/tmp/v-xstest.jsonl sample=refusal=/tmp/v-sample.jsonl
"""
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_experiment import group_of, in_dev, is_korean, seed_of  # noqa: E402

PROMPT = "task: classification | query: "
MAX_TOKENS = 1024


def label_of(task, human):
    if task == "refusal":
        return human if human in ("compliance", "refusal", "partial") else None
    if human in ("harmful", "unharmful"):
        return human
    if human in "12345" and len(human) == 1:
        return "harmful" if int(human) >= 4 else "unharmful"
    return None


def load_sets(args, limit):
    sets = {}
    for arg in args:
        name, task, path = arg.split("=", 2)
        rows = []
        for r in map(json.loads, open(path)):
            y = label_of(task, r["human"])
            if y is not None:
                r["y"] = y
                rows.append(r)
        for split in ("dev", "test"):
            part = [r for r in rows if in_dev(r["id"]) == (split == "dev")]
            part.sort(key=lambda r: seed_of(r["id"], 7))
            sets[(name, task, split)] = part if split == "dev" else part[:limit]
    return sets


class Embedder:
    def __init__(self, folder, cache):
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(2)
        self.torch = torch
        self.st = SentenceTransformer(folder, device="cpu")
        self.tok = self.st.tokenizer
        self.cache = cache
        os.makedirs(cache, exist_ok=True)

    def cut(self, text):
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= MAX_TOKENS:
            return text
        return self.tok.decode(ids[:MAX_TOKENS])

    def features(self, texts):
        """[n, 26, 768]: mean-pooled layers 0..24, then the sentence embedding."""
        torch = self.torch
        out = [None] * len(texts)
        todo = []
        for i, t in enumerate(texts):
            key = hashlib.sha256(("lx1\n" + PROMPT + t).encode()).hexdigest()
            f = os.path.join(self.cache, key + ".npy")
            if os.path.exists(f):
                out[i] = np.load(f)
            else:
                todo.append((i, f))
        todo.sort(key=lambda x: len(texts[x[0]]))
        t0, n_tok = time.time(), 0
        for b in range(0, len(todo), 8):
            chunk = todo[b:b + 8]
            batch = [PROMPT + self.cut(texts[i]) for i, _ in chunk]
            feats = self.st.tokenize(batch)
            n_tok += int(feats["attention_mask"].sum())
            with torch.no_grad():
                o = self.st[0].auto_model(input_ids=feats["input_ids"], attention_mask=feats["attention_mask"],
                                          output_hidden_states=True)
                m = feats["attention_mask"].unsqueeze(-1).float()
                pooled = [(h * m).sum(1) / m.sum(1) for h in o.hidden_states]
                d = {"token_embeddings": o.hidden_states[-1], "attention_mask": feats["attention_mask"]}
                for mod in list(self.st)[1:]:
                    d = mod(d)
                emb = d["sentence_embedding"]
            stack = torch.stack(pooled + [emb], 1).numpy().astype(np.float32)
            for (i, f), v in zip(chunk, stack):
                np.save(f, v)
                out[i] = v
            if b % 200 == 0:
                dt = time.time() - t0
                print(f"  {b + len(chunk)}/{len(todo)} new, {n_tok / max(dt, 1e-9):.0f} tok/s", file=sys.stderr)
        return np.stack(out)


def main():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    folder = os.environ.get("LX_MODEL") or os.path.expanduser("~/.cache/anjeon/models/embeddinggemma-300m")
    limit = int(os.environ.get("LX_LIMIT", "600"))
    sets = load_sets(sys.argv[1:], limit)
    emb = Embedder(folder, os.environ.get("LX_CACHE", "/tmp/lx-cache"))
    feats = {k: emb.features([r["response"] for r in rows]) for k, rows in sets.items() if rows}
    # A layer, or layers joined by "+" (their features side by side).
    layers = [[int(x) for x in spec.split("+")]
              for spec in os.environ.get("LX_LAYERS", ",".join(map(str, range(26)))).split(",")]
    tasks = os.environ.get("LX_TASKS", "refusal,harm").split(",")

    print("| task | layer | held-out set | n | accuracy | macro-F1 | κ | C |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for task in tasks:
        dev = [k for k in feats if k[1] == task and k[2] == "dev"]
        if not dev:
            continue
        X_all = np.concatenate([feats[k] for k in dev])
        y = np.array([r["y"] for k in dev for r in sets[k]])
        groups = [group_of(r["id"]) for k in dev for r in sets[k]]
        for layer in layers:
            X = X_all[:, layer].reshape(len(X_all), -1)
            scaler = StandardScaler().fit(X)
            Xs = scaler.transform(X)
            best = None
            for C in (0.003, 0.01, 0.03, 0.1):
                preds = np.empty(len(y), dtype=object)
                for tr, te in GroupKFold(n_splits=5).split(Xs, y, groups):
                    m = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(Xs[tr], y[tr])
                    preds[te] = m.predict(Xs[te])
                f1 = f1_score(y, list(preds), average="macro")
                if best is None or f1 > best[0]:
                    best = (f1, C)
            clf = LogisticRegression(C=best[1], max_iter=2000, class_weight="balanced").fit(Xs, y)
            print(f"| {task} | {'+'.join(map(str, layer))} | dev (5-fold CV) | {len(y)} | | {best[0]:.3f} | | {best[1]} |")
            for k in sorted(feats):
                if k[1] != task or k[2] != "test":
                    continue
                Xt = feats[k][:, layer].reshape(len(feats[k]), -1)
                yt = [r["y"] for r in sets[k]]
                pt = clf.predict(scaler.transform(Xt))
                print(f"| {task} | {'+'.join(map(str, layer))} | {k[0]} | {len(yt)} | {accuracy_score(yt, pt):.3f} | "
                      f"{f1_score(yt, pt, average='macro'):.3f} | {cohen_kappa_score(yt, pt):.3f} | |", flush=True)


if __name__ == "__main__":
    main()
