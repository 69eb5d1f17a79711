"""Training tokens per second: `t1 sft` vs transformers' Trainer, same tiny model, data, batch and precision,
measured in one run.

    .venv/bin/python benchmarks/sft.py [--examples 4000] [--batch 64] [--precision bf16]

Both start from the same freshly built model (the ~1M-parameter Countdown default), train one epoch on the
same tokenized Countdown traces with the same global batch, loss on response tokens only, under the same
autocast precision. Tokens/s counts real (non-padding) tokens over the training loop's wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from t1 import config as C
from t1.data.sft import load_examples
from t1.model.load import build_model, build_tokenizer
from t1.stages.sft import SFTConfig, train_sft


def run_t1(cfg: SFTConfig) -> float:
    """Seconds of the training loop (the last metric row's elapsed time; setup excluded, as for Trainer)."""
    train_sft(cfg, progress=False)
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["elapsed_s"]


def run_trainer(cfg: SFTConfig, out: Path) -> float:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tok = build_tokenizer(cfg.data.countdown.max_value)
    model = build_model(cfg.tiny, tok)
    examples, _ = load_examples(cfg.data, tok)
    rows = [{"input_ids": list(e.ids), "attention_mask": [1] * len(e.ids),
             "labels": [-100] * e.n_prompt + list(e.ids[e.n_prompt:])} for e in examples]
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.train.batch_size, num_train_epochs=cfg.train.epochs,
        learning_rate=cfg.train.optim.lr, lr_scheduler_type="cosine",
        warmup_steps=cfg.train.optim.warmup_ratio,  # transformers ≥ 5: a float < 1 is a ratio
        weight_decay=cfg.train.optim.weight_decay, adam_beta1=cfg.train.optim.beta1,
        adam_beta2=cfg.train.optim.beta2, max_grad_norm=cfg.train.optim.grad_clip,
        bf16=cfg.train.precision == "bf16", use_cpu=not torch.cuda.is_available(), save_strategy="no",
        report_to=[], logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False, seed=cfg.train.seed,
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    tok.padding_side = "right"
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = C.load(SFTConfig, None, [f"out={tmp}/t1", f"data.num_examples={args.examples}", "train.epochs=1",
                                       f"train.batch_size={args.batch}", f"train.precision={args.precision}",
                                       "train.optim.lr=1e-3", "train.log_every=1000000"])
        tok = build_tokenizer(cfg.data.countdown.max_value)
        examples, _ = load_examples(cfg.data, tok)
        tokens = sum(len(e.ids) for e in examples)
        t_hf = run_trainer(cfg, Path(tmp) / "hf")
        t_t1 = run_t1(cfg)
    threads = torch.get_num_threads()
    print(f"SFT, one epoch: {len(examples)} Countdown traces, {tokens} tokens, batch {args.batch}, "
          f"{args.precision}, {threads} threads")
    print(f"{'trainer':28s} {'seconds':>8s} {'tokens/s':>10s}")
    print(f"{'transformers Trainer':28s} {t_hf:8.2f} {tokens / t_hf:10,.0f}")
    print(f"{'t1 sft':28s} {t_t1:8.2f} {tokens / t_t1:10,.0f}")
    print(f"speed-up: {t_hf / t_t1:.2f}x")


if __name__ == "__main__":
    main()
