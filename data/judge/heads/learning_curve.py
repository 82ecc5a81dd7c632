#!/usr/bin/env python3
"""Issue 14: is the refusal head short of labels, or of model? Two measurements, no training
of anything shipped:

1. How well do XSTest's two human annotators agree with each other (the ceiling a judge can be
   held to on these labels)? Read straight from the completion files (`annotation_1`,
   `annotation_2`, `final_label`), all 2,250 completions.
2. A learning curve on the development split only: grouped 5-fold cross-validation (groups =
   XSTest prompt ids, as anjeon's `judge train`), training on 25/50/75/100% of each training
   fold's prompt groups, on the refusal head's features (the EmbeddingGemma embedding and the
   mean-pooled states after layer 14, `response-mid-v1`), logistic regression on standardised
   features, balanced class weights. The held-out split is not read.

The features come from anjeon's embedding cache (`$ANJEON_HOME/embeddings/<sha16>-mid14.bin`,
records of a 32-byte key sha256("Classification\\0" + text) and 2 x 768 f32), which
`data/judge/heads/train.sh` fills for every development-split text. Needs numpy and
scikit-learn. Usage: python3 data/judge/heads/learning_curve.py [SHARED_DATA_DIR]
"""
import csv
import glob
import hashlib
import os
import random
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
from sklearn.preprocessing import StandardScaler

SHARED = sys.argv[1] if len(sys.argv) > 1 else "../shared/data"
HOME = os.environ.get("ANJEON_HOME", os.path.expanduser("~/.cache/anjeon"))
CACHE = os.path.join(HOME, "embeddings", "cbf5a78393b6a033-mid14.bin")
CLASSES = ["1_full_compliance", "2_full_refusal", "3_partial_refusal"]
M64 = (1 << 64) - 1


def seed_of(s, base):
    """src/core/rng.rs `seed_of` (FNV-1a over the bytes, seeded)."""
    h = 0xCBF29CE484222325 ^ base
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def in_dev(group):
    """src/judge/labels.rs `in_dev`: 30% of request groups."""
    return seed_of(group, 0x5EED) % 10 < 3


def completions():
    rows = []
    for f in sorted(glob.glob(os.path.join(SHARED, "xstest/model_completions/*.csv"))):
        for r in csv.DictReader(open(f, encoding="utf-8")):
            rows.append(r)
    return rows


def annotators(rows):
    a1 = [r["annotation_1"] for r in rows]
    a2 = [r["annotation_2"] for r in rows]
    print(f"XSTest annotators, n={len(rows)}: annotator 1 vs 2 accuracy "
          f"{accuracy_score(a1, a2):.3f}, macro-F1 {f1_score(a1, a2, average='macro'):.3f}, "
          f"kappa {cohen_kappa_score(a1, a2):.3f}")
    for name, a in (("annotator 1", a1), ("annotator 2", a2)):
        fl = [r["final_label"] for r in rows]
        print(f"  {name} vs final_label: accuracy {accuracy_score(fl, a):.3f}, "
              f"macro-F1 {f1_score(fl, a, average='macro'):.3f}, kappa {cohen_kappa_score(fl, a):.3f}")


def load_cache():
    rec = 32 + 4 * 1536
    buf = open(CACHE, "rb").read()
    n = len(buf) // rec
    arr = np.frombuffer(buf[: n * rec], dtype=np.uint8).reshape(n, rec)
    keys = {bytes(arr[i, :32]): i for i in range(n)}
    vecs = arr[:, 32:].copy().view("<f4").reshape(n, 1536)
    return keys, vecs


def learning_curve(rows):
    keys, vecs = load_cache()
    dev = [r for r in rows if in_dev(r["id"])]
    feats, labels, groups = [], [], []
    for r in dev:
        k = hashlib.sha256(b"Classification\0" + r["completion"].encode()).digest()
        if k not in keys:
            sys.exit(f"{CACHE} lacks a development-split text: run data/judge/heads/train.sh first")
        feats.append(vecs[keys[k]])
        labels.append(CLASSES.index(r["final_label"]))
        groups.append(r["id"])
    x, y = np.stack(feats), np.array(labels)
    order = sorted(set(groups))
    random.Random(0).shuffle(order)
    fold = {g: i % 5 for i, g in enumerate(order)}
    print(f"learning curve, development split n={len(y)} ({len(order)} prompts), grouped 5-fold CV:")
    for frac in (0.25, 0.5, 0.75, 1.0):
        for c in (0.01, 0.1):
            pred = np.zeros(len(y), int)
            for k in range(5):
                train_groups = [g for g in order if fold[g] != k]
                keep = set(train_groups[: int(len(train_groups) * frac)])
                tr = [i for i, g in enumerate(groups) if g in keep]
                te = [i for i, g in enumerate(groups) if fold[g] == k]
                sc = StandardScaler().fit(x[tr])
                m = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
                m.fit(sc.transform(x[tr]), y[tr])
                pred[te] = m.predict(sc.transform(x[te]))
            print(f"  {frac:4.0%} of the training folds (~{len(tr)} labels), C={c}: accuracy "
                  f"{accuracy_score(y, pred):.3f}, macro-F1 {f1_score(y, pred, average='macro'):.3f}, "
                  f"kappa {cohen_kappa_score(y, pred):.3f}")


if __name__ == "__main__":
    rows = completions()
    annotators(rows)
    learning_curve(rows)
