"""Training tokens per second: `t1 sft` vs transformers' Trainer, same tiny model, data, batch and precision,
measured in one run; and the loss over a real 151,936-token vocabulary, whole vs ``train.logits_chunk``.

    .venv/bin/python benchmarks/sft.py [--examples 4000] [--batch 64] [--precision bf16] [--part all]

Trainer part: both start from the same freshly built model (the ~1M-parameter Countdown default), train one
epoch on the same tokenized Countdown traces with the same global batch, loss on response tokens only, under
the same autocast precision. Tokens/s counts real (non-padding) tokens over the training loop's wall time.

Vocabulary part: the same tiny shape as a Qwen2 model with Qwen2.5's 151,936-entry (tied) vocabulary, saved
once and trained by `t1 sft` for one epoch over ``--vocab-examples`` traces with ``micro_batch_tokens`` 2048,
once with ``train.logits_chunk=0`` (a micro-batch's logits at once, as before) and once chunked, each in its
own process: tokens/s as above, and the process's peak resident set (``getrusage`` max RSS: what the machine
had to hold, allocator slack included; t1 keeps freed memory in the heap, see
:func:`t1.runtime.device.keep_freed_memory`), next to the same process's resident set before training.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from t1 import config as C
from t1.data.sft import load_examples
from t1.model.load import ModelConfig, build_model, build_tokenizer, save
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


QWEN_VOCAB = 151936  # Qwen2.5's embedding rows


def _max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def vocab_child(model: str, out: str, chunk: int, args) -> None:
    """One variant, in this (fresh) process: one epoch of `t1 sft` on ``model``; prints a JSON line. With
    ``--glibc-malloc``, malloc keeps its defaults (t1 otherwise keeps freed memory in the heap: fewer page
    faults, but a heap that fragments under micro-batches of varying shapes and only grows)."""
    if args.glibc_malloc:
        import t1.runtime.device as device

        device.keep_freed_memory = lambda: False
    cfg = C.load(SFTConfig, None, [
        f"out={out}", f"model={model}", f"data.num_examples={args.vocab_examples}", "train.epochs=1",
        f"train.batch_size={args.batch}", "train.micro_batch_tokens=2048", f"train.precision={args.precision}",
        f"train.logits_chunk={chunk}", "train.optim.lr=1e-3", "train.log_every=1000000"])
    start_rss = _max_rss_gib()
    seconds = run_t1(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"seconds": seconds, "loss": rows[-1]["loss"], "start_rss": start_rss,
                      "peak_rss": _max_rss_gib()}))


def _vocab_run(model_dir: Path, tmp: Path, chunk: int, glibc: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(chunk), "--model", str(model_dir), "--out",
           str(tmp / f"vocab{chunk}{'g' if glibc else ''}"), "--vocab-examples", str(args.vocab_examples),
           "--batch", str(args.batch), "--precision", args.precision] + (["--glibc-malloc"] if glibc else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def vocab_part(args, tmp: Path) -> None:
    tok = build_tokenizer(SFTConfig().data.countdown.max_value)
    shape = ModelConfig()
    model_dir = save(build_model(shape, tok, "qwen2", vocab_size=QWEN_VOCAB), tok, tmp / "qwen_vocab")
    cfg = C.load(SFTConfig, None, [f"data.num_examples={args.vocab_examples}"])
    tokens = sum(len(e.ids) for e in load_examples(cfg.data, tok)[0])
    chunks = [0, *args.chunks]
    res = {(c, g): _vocab_run(model_dir, tmp, c, g, args) for g in (False, True) for c in chunks}
    print(f"\nSFT on a {QWEN_VOCAB:,}-token vocabulary: Qwen2-shaped, hidden {shape.hidden}, {shape.layers} "
          f"layers, tied; one epoch of {args.vocab_examples} traces ({tokens} tokens), batch {args.batch}, "
          f"micro-batch 2048 tokens, {args.precision}, {torch.get_num_threads()} threads, one process per run; "
          f"RSS before training: {res[0, False]['start_rss']:.2f} GiB")
    print(f"{'':34s} {'t1 as run (keeps freed memory)':^34s}   {'glibc malloc defaults':^34s}")
    print(f"{'loss':34s} {'tokens/s':>9s} {'speed':>6s} {'peak RSS':>10s} {'less':>6s}   "
          f"{'tokens/s':>9s} {'speed':>6s} {'peak RSS':>10s} {'less':>6s}   {'final loss':>10s}")
    for c in chunks:
        name = f"logits_chunk={c}" + (" (whole, as before)" if c == 0 else "")
        cells = []
        for g in (False, True):
            r, whole = res[c, g], res[0, g]
            cells.append(f"{tokens / r['seconds']:9,.0f} {whole['seconds'] / r['seconds']:5.2f}x "
                         f"{r['peak_rss']:6.2f} GiB {whole['peak_rss'] / r['peak_rss']:5.2f}x")
        print(f"{name:34s} {cells[0]}   {cells[1]}   {res[c, False]['loss']:10.4f}")


def trainer_part(args, tmp: str) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--part", default="all", choices=["all", "trainer", "vocab"])
    ap.add_argument("--vocab-examples", type=int, default=384, help="traces for the vocabulary part")
    ap.add_argument("--chunks", type=lambda v: [int(c) for c in v.split(",")],
                    default=[SFTConfig().train.logits_chunk], help="the chunked variants, e.g. 256,512,2048")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one vocabulary variant
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--glibc-malloc", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return vocab_child(args.model, args.out, args.child, args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "trainer"):
            trainer_part(args, tmp)
        if args.part in ("all", "vocab"):
            vocab_part(args, Path(tmp))


if __name__ == "__main__":
    main()
