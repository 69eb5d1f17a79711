import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from t1 import config as C
from t1.batching import collate, micro_batches
from t1.cli import main
from t1.data.sft import Pair, SFTDataConfig, encode, load_examples
from t1.io import DataError
from t1.model.load import build_tokenizer
from t1.runtime.run import RunError
from t1.stages.sft import SFTConfig, token_nll_sum, train_sft

SMALL = ["tiny.hidden=32", "tiny.layers=2", "tiny.heads=2", "tiny.kv_heads=2", "tiny.ffn=64",
         "data.num_examples=96", "train.epochs=1", "train.batch_size=16", "train.micro_batch_tokens=600",
         "train.log_every=1", "train.precision=fp32", "train.optim.lr=0.003"]


def small_cfg(out, *extra):
    return C.load(SFTConfig, None, SMALL + [f"out={out}", *extra])


def weights(path):
    return load_file(str(path / "model.safetensors"))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


LONGER = ["data.num_examples=400", "train.epochs=2", "train.batch_size=32", "train.optim.lr=0.01"]


def test_loss_falls_and_output_loads_with_transformers(tmp_path):
    out = tmp_path / "run"
    train_sft(small_cfg(out, *LONGER), progress=False)
    losses = [m["loss"] for m in metrics(out)]
    assert losses[-1] < 0.7 * losses[0], losses
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "pad_fraction"} <= set(metrics(out)[0])
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    tok = AutoTokenizer.from_pretrained(out / "final")
    ids = tok("use 3 5 7 to make 22 :", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    assert C.load(SFTConfig, out / "config.yaml") == small_cfg(out, *LONGER)


def test_prompt_tokens_carry_no_loss():
    tok = build_tokenizer(100)
    cfg = SFTDataConfig()
    ex = encode(Pair("use 3 5 7 to make 22 :", "try 3 * 5 = 15 , 15 + 7 = 22 ? 22 yes .", "x"), tok, cfg)
    assert ex.n_prompt == 8 and ex.ids[-1] == tok.eos_token_id
    assert tok.decode(ex.ids[ex.n_prompt:-1]) == "try 3 * 5 = 15 , 15 + 7 = 22 ? 22 yes ."
    ids, attn, mask = collate([ex], tok.pad_token_id, "cpu")
    assert mask[0].tolist() == [False] * 8 + [True] * (len(ex.ids) - 8)
    # the loss is exactly the response tokens' NLL: changing a prompt token's prediction target changes nothing
    from t1.model.load import ModelConfig, build_model
    model = build_model(ModelConfig(hidden=32, layers=1, heads=2, kv_heads=2, ffn=64), tok)
    logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
    by_hand = -sum(logp[t - 1, ids[0, t]] for t in range(8, len(ex.ids)))
    nll = token_nll_sum(lambda i, a: model(input_ids=i, attention_mask=a).logits, ids, attn, mask)
    torch.testing.assert_close(nll, by_hand)


def test_micro_batches_are_length_sorted_and_divisible():
    lengths = [10, 50, 12, 48, 11, 49, 30]
    mbs = micro_batches(list(range(7)), lengths, token_budget=100, world=1, ratio=0.8)
    assert sorted(i for mb in mbs for i in mb) == list(range(7))
    for mb in mbs:
        assert len(mb) * lengths[mb[0]] <= 100 and min(lengths[i] for i in mb) >= 0.8 * lengths[mb[0]]
    assert len(micro_batches(list(range(7)), lengths, 100, world=4, ratio=0.8)) % 4 == 0
    assert micro_batches([0], [5], 100, world=2) == [[0], []]


def test_resume_gives_bit_identical_weights(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_sft(small_cfg(full, "train.epochs=2", "train.save_every=2"), progress=False)
    train_sft(small_cfg(cut, "train.epochs=2", "train.save_every=2", "train.max_steps=5"), progress=False)
    with pytest.raises(C.ConfigError, match="already holds a run"):
        train_sft(small_cfg(cut, "train.epochs=2"), progress=False)
    train_sft(small_cfg(cut, "train.epochs=2", "train.save_every=2"), resume=True, progress=False)
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in metrics(cut)] == list(range(1, 13))
    assert [m["loss"] for m in metrics(cut)] == [m["loss"] for m in metrics(full)]
    assert len(list((cut / "checkpoints").iterdir())) == 2  # keep_checkpoints


def test_resume_falls_back_past_a_broken_newest_checkpoint(tmp_path, capsys):
    """The newest checkpoint's model file is empty (a power cut before the data reached the disk): --resume
    continues from the previous whole one, says so, and still ends bit-identical to an uninterrupted run."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_sft(small_cfg(full, "train.save_every=2"), progress=False)
    train_sft(small_cfg(cut, "train.save_every=2", "train.max_steps=5"), progress=False)
    (cut / "checkpoints" / "step-0000005" / "model.safetensors").write_bytes(b"")
    train_sft(small_cfg(cut, "train.save_every=2"), resume=True, progress=False)
    assert "step-0000005: incomplete (model.safetensors: Error while" in capsys.readouterr().err
    a, b = weights(full / "final"), weights(cut / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in metrics(cut)] == [m["step"] for m in metrics(full)]


def test_non_finite_loss_skips_then_stops(tmp_path, monkeypatch, capsys):
    """As in `t1 rl`: a NaN loss skips the optimizer step with a warning; train.max_bad_steps in a row stop."""
    import t1.stages.sft as sft

    real = sft.token_nll_sum
    monkeypatch.setattr(sft, "token_nll_sum", lambda *args: real(*args) * float("nan"))
    with pytest.raises(RunError, match="sft: 2 consecutive steps with a non-finite loss"):
        train_sft(small_cfg(tmp_path / "nan", "train.max_bad_steps=2"), progress=False)
    assert capsys.readouterr().err.count("update skipped") == 2
    assert not (tmp_path / "nan" / "final").exists()
    # the command says it in one line, no traceback
    assert main(["sft", *SMALL, f"out={tmp_path / 'nan2'}", "train.max_bad_steps=2", "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("t1 sft: error: sft: 2 consecutive steps")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_sft(small_cfg(one), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "t1", "sft", *SMALL, f"out={two}", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    a, b = weights(one / "final"), weights(two / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    for m1, m2 in zip(metrics(one), metrics(two)):
        assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------- bad input


def _jsonl(path, rows):
    with open(path, "wb") as f:
        for r in rows:
            f.write(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode())
    return path


def _cfg(path, **kw):
    return C.from_dict(SFTDataConfig, {"source": "jsonl", "paths": [str(path)], **kw})


@pytest.mark.parametrize("bad_row, message", [
    ({"prompt": "use 1 2 to make 3 :"}, ":2: missing field 'response'"),
    ({"prompt": "use 1 2 to make 3 :", "response": "  "}, ":2: empty response"),
    (b"{oops\n", ":2: not a valid JSON object"),
    (b'{"prompt": "\xff", "response": "x"}\n', ":2: not valid UTF-8"),
    ({"prompt": 3, "response": "x"}, ":2: field 'prompt' must be a string"),
])
def test_bad_rows_name_file_and_line_or_are_counted(tmp_path, bad_row, message):
    good = {"prompt": "use 1 2 to make 3 :", "response": "try 1 + 2 = 3 ? 3 yes ."}
    path = _jsonl(tmp_path / "d.jsonl", [good, bad_row, good])
    tok = build_tokenizer(100)
    with pytest.raises(DataError) as e:
        load_examples(_cfg(path), tok)
    assert str(path) + message in str(e.value)
    examples, stats = load_examples(_cfg(path, on_bad="skip"), tok)
    assert len(examples) == 2 and stats.skipped_bad == 1


def test_overlong_examples_are_truncated_or_dropped_and_counted(tmp_path):
    long = {"prompt": "use 1 2 to make 3 :", "response": " ".join(["1"] * 100)}
    short = {"prompt": "use 1 2 to make 3 :", "response": "try 1 + 2 = 3 ? 3 yes ."}
    path = _jsonl(tmp_path / "d.jsonl", [long, short])
    tok = build_tokenizer(100)
    ex, stats = load_examples(_cfg(path, max_length=40, overlong="truncate"), tok)
    assert stats.truncated == 1 and len(ex) == 2 and len(ex[0].ids) == 40
    ex, stats = load_examples(_cfg(path, max_length=40, overlong="drop"), tok)
    assert stats.dropped_overlong == 1 and len(ex) == 1


def test_chat_messages_and_chat_template(tmp_path):
    tok = build_tokenizer(100)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {{ eos_token }} {% endfor %}"
                        "{% if add_generation_prompt %}assistant : {% endif %}")
    path = _jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "use 1 2 to make 3"}, {"role": "assistant", "content": "try 1 + 2 = 3"}]}])
    for word in ("user", "assistant"):
        tok.add_tokens([word])
    (ex,), _ = load_examples(_cfg(path, messages_field="messages"), tok)
    assert tok.decode(ex.ids[:ex.n_prompt]).endswith("assistant :")
    assert tok.decode(ex.ids[ex.n_prompt:]).startswith("try 1 + 2 = 3")
    assert ex.ids[-1] == tok.eos_token_id


def test_hub_source_falls_back_to_local_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = _jsonl(tmp_path / "t1.jsonl", [{"prompt": "use 1 2 to make 3 :", "response": "try 1 + 2 = 3 ."}])
    cfg = C.from_dict(SFTDataConfig, {"source": "hub", "hub_name": "THUDM/T1", "paths": [str(path)]})
    examples, _ = load_examples(cfg, build_tokenizer(100))
    assert len(examples) == 1 and "unavailable" in capsys.readouterr().out
    with pytest.raises(DataError, match="give a local copy in data.paths"):
        load_examples(C.from_dict(SFTDataConfig, {"source": "hub", "hub_name": "THUDM/T1"}), build_tokenizer(100))


def test_cli_sft_reports_bad_data_cleanly(tmp_path, capsys):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "x"}])
    assert main(["sft", "data.source=jsonl", f"data.paths=[{path}]", f"out={tmp_path / 'r'}", "--quiet"]) == 2
    assert f"{path}:1: missing field 'response'" in capsys.readouterr().err


def test_countdown_source_survives_degenerate_problems():
    """(1, 1, 1) -> 1 has only a few distinct wrong attempts; the reader uses as many as exist."""
    cfg = C.from_dict(SFTDataConfig, {"num_examples": 3000, "failed_attempts": 6, "exclude_heldout": 0,
                                      "countdown": {"max_number": 2}})
    examples, stats = load_examples(cfg, build_tokenizer(100))
    assert stats.rows == 3000
