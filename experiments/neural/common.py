import numpy as np
import os
DIR = os.environ.get("SHOPREC_DIGINETICA", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "diginetica", "srgnn_split")) + "/"

def load():
    raw = [np.array(l.split(), dtype=np.int64) for l in open(DIR + "train_sessions.txt") if l.strip()]
    ids = np.unique(np.concatenate(raw))
    idx = {int(v): i + 1 for i, v in enumerate(ids)}
    lut = np.zeros(ids.max() + 1, dtype=np.int64); lut[ids] = np.arange(1, len(ids) + 1)
    sessions = [lut[s] for s in raw]
    prefixes, targets = [], []
    with open(DIR + "test.tsv") as f:
        next(f)
        for line in f:
            p, t = line.rstrip("\n").split("\t")
            prefixes.append([idx.get(int(x), 0) for x in p.split()])
            targets.append(idx.get(int(t), 0))
    return sessions, len(ids), prefixes, targets
