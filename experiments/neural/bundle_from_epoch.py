"""A bundle from one epoch's weights saved by ``run_tracked.py --save-each-epoch``.

The model config, item index and service tables come from a reference bundle of the same
experiment (same model settings and dataset); only the weights are replaced.

    .venv/bin/python experiments/neural/bundle_from_epoch.py \
        --reference runs/diginetica_gru4rec_7ep/bundle \
        --weights runs/diginetica_gru4rec_7ep_weights/epoch5.pt \
        --output runs/diginetica_gru4rec_epoch5
"""

from __future__ import annotations

import argparse

import torch

from shoprec.export import load_bundle, save_bundle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--output", required=True)
    a = ap.parse_args()
    ref = load_bundle(a.reference)
    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    model = ref.model
    model.load_state_dict(state)  # type: ignore[attr-defined]
    extra = {k: ref.meta.get(k) for k in ("experiment", "seed")}
    extra["weights_from"] = a.weights
    out = save_bundle(
        a.output,
        model,
        ref.items,
        dataset=ref.meta.get("dataset") or {},
        extra=extra,
        aux=ref.aux or None,
    )
    print(out)


if __name__ == "__main__":
    main()
