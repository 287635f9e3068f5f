"""Training and evaluation throughput of the real MiniLM on this machine's accelerator (a script that prints a
table, not a test). Prepared for a GPU machine (`device` tool): it runs the loop's own training job
(tasks/train.fine_tune: bf16 on a GPU that supports it, else fp16; fp32 on a CPU) and the loop's own batched
prediction, so the figures are what an iteration gets. On a CPU it runs the same code and leaves MFU out.

Model FLOPs utilisation (MFU) = achieved model FLOPs / the chip's peak dense bf16 FLOPs, with model FLOPs per
trained token = 6 x non-embedding parameters + 12 x layers x tokens x hidden (attention), as in Kaplan et al.
2020 and the PaLM paper's appendix B; the tokens are the real ones after truncation (padding not counted).

    .venv/bin/python bench/gpu.py [--rows 4096] [--epochs 2] [--max-length 128] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Dense bf16 peaks from the vendors' data sheets (SXM parts), by a substring of torch's device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def model_flops_per_token(config, tokens: float) -> float:
    layers, hidden, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    non_embedding = layers * (4 * hidden * hidden + 2 * hidden * inter)  # attention projections + the MLP
    return 6 * non_embedding + 12 * layers * tokens * hidden


def peak_flops(device: str, given: float | None) -> float | None:
    import torch

    if given:
        return given * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4096, help="training rows (real movie and Amazon snippets)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the chip's peak, if not in the table")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from kaizen.tasks.data import stream
    from kaizen.tasks.model.predict import pick_device, predict
    from kaizen.tasks.training.train import fine_tune, resolve_backbone
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import load_settings

    settings = load_settings(template("params.yaml"))
    sources = ROOT / ".kaizen" / "sources"
    stream.fetch_sources(sources)
    pool = pd.concat([stream.load_domain(d, sources) for d in ("movies", "amazon")])
    pool = pool[pool["label"].isin(["negative", "positive"])].sample(frac=1.0, random_state=0)
    train, test = pool.iloc[: args.rows], pool.iloc[args.rows: args.rows + max(1024, args.rows // 4)]
    backbone = resolve_backbone("minilm")
    device = pick_device("auto")
    model = settings.model.model_copy(update={"max_length": args.max_length})
    train_settings = settings.train.model_copy(update={"batch_size": args.batch_size, "device": device})
    tokens = float(np.mean([len(ids) for ids in AutoTokenizer.from_pretrained(backbone)(
        train["text"].tolist(), truncation=True, max_length=args.max_length)["input_ids"]]))
    per_token = model_flops_per_token(AutoConfig.from_pretrained(backbone), tokens)
    peak = peak_flops(device, args.peak_tflops)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    precision = "bf16" if bf16 else "fp16" if device == "cuda" else "fp32"

    rows = []
    with tempfile.TemporaryDirectory() as work:
        # A 32-row validation: the timed span includes each epoch's evaluation and checkpoint, kept small
        result = fine_tune(backbone, train, test.iloc[:32], ["negative", "positive"], model=model,
                           train_settings=train_settings, epochs=args.epochs, out_dir=Path(work) / "run")
        samples = len(train) * args.epochs / result.seconds
        mfu = f"{100 * samples * tokens * per_token / peak:.1f}%" if peak else "n/a"
        rows.append((f"training ({precision}, batch {args.batch_size})", f"{samples:.0f}", mfu))
        texts = test["text"].tolist()
        for autocast in ([False, True] if device == "cuda" else [False]):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                predict(result.model_dir, texts[:64], max_length=args.max_length, device=device)  # warm-up
                began = time.perf_counter()
                predict(result.model_dir, texts, max_length=args.max_length, batch_size=256, device=device)
                seconds = time.perf_counter() - began
            rows.append((f"evaluation ({'bf16 autocast' if autocast else 'fp32'}, batch 256)",
                         f"{len(texts) / seconds:.0f}", "n/a"))
    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU"
    print(f"\nMiniLM-L6 on {name}; {len(train)} rows x {args.epochs} epochs, max_length {args.max_length}, "
          f"{tokens:.1f} tokens per row; training {result.seconds:.1f} s\n")
    print("| step | samples/s | MFU |\n|---|---|---|")
    for step, rate, mfu in rows:
        print(f"| {step} | {rate} | {mfu} |")


if __name__ == "__main__":
    main()
