import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from t1.cli import main
from t1.config import ConfigError
from t1.model.load import load


def test_saved_tiny_model_loads_with_auto_classes(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = "use 3 5 7 to make 22 : try 3 * 5 = 15 , 15 + 7 = 22 ? 22 yes . answer \\boxed{ 3 * 5 + 7 } ."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # word-level: every number is one token, text round-trips
    assert len(ids) == len(text.split())
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>" and tok.padding_side == "left"
    assert model.config.model_type == "llama"
    m2, tok2 = load(tiny_model_dir)
    x = torch.tensor([ids])
    torch.testing.assert_close(model(x).logits, m2(x).logits)


def test_t1_init_writes_model_and_config(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["init", f"out={out}", "model.layers=1", "model.hidden=16", "model.heads=2",
                 "model.kv_heads=1", "model.ffn=32", "task.max_value=50", "task.max_target=50"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and model.config.num_key_value_heads == 1
    assert len(AutoTokenizer.from_pretrained(out)) == 3 + 24 + 51
    assert "layers: 1" in (out / "t1_config.yaml").read_text()


def test_t1_init_bad_override_is_a_clear_error(capsys):
    assert main(["init", "model.layrs=2"]) == 2
    assert "did you mean 'model.layers'" in capsys.readouterr().err


def test_hub_names_with_dots_reach_the_hub_and_missing_local_paths_are_clear(monkeypatch):
    import pytest
    import transformers

    asked = []

    def fake_from_pretrained(name, **kw):
        asked.append(name)
        raise OSError("stub: no hub here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(ConfigError, match="cannot load the weights of .*: stub"):
        load("Qwen/Qwen2.5-7B")  # Path(...).suffix is ".5-7B": once mistaken for a missing local file
    assert asked == ["Qwen/Qwen2.5-7B"]
    with pytest.raises(FileNotFoundError, match="model path ./no/such/model does not exist"):
        load("./no/such/model")
    assert asked == ["Qwen/Qwen2.5-7B"]


def test_a_model_that_cannot_be_one_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    """An empty directory, a file, a missing path and an unreachable hub name: one line each, exit 2."""
    from t1.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {str(tmp_path / "empty"): "has no config.json", str(tmp_path / "file"): "is a file",
             str(tmp_path / "missing"): "does not exist", "no-such-org/no-such-model": "cannot load the weights"}
    for model, message in cases.items():
        assert main(["sft", f"model={model}", f"out={tmp_path / 'run'}", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "untied_model_dir", "qwen_model_dir"])
def test_a_skeleton_has_the_loaded_models_parameters_ties_and_buffers(fixture, request):
    """What the non-main processes build under FSDP (t1.model.load.skeleton) must wrap exactly like the loaded
    model: the same parameter names, shapes and dtypes in the same order, the same ties (a tied lm_head left
    untied gives the processes different FSDP units — a collective mismatch at the first step) and the same
    computed buffers (rotary frequencies, which FSDP does not take from the main process when unsharded)."""
    from t1.model.load import skeleton

    path = request.getfixturevalue(fixture)
    built, loaded = skeleton(path), load(path, dtype="float32")[0]
    shapes = [(n, p.shape, p.dtype) for n, p in built.named_parameters()]
    assert shapes == [(n, p.shape, p.dtype) for n, p in loaded.named_parameters()]
    tied = loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert (built.lm_head.weight is built.get_input_embeddings().weight) == tied
    assert fixture != "untied_model_dir" or not tied
    buffers = dict(loaded.named_buffers())
    assert {n for n, _ in built.named_buffers()} == set(buffers)
    for name, value in built.named_buffers():
        assert torch.equal(value, buffers[name]), name
    ptrs = {p.data_ptr() for p in built.parameters()}
    assert len(ptrs) == len(list(built.parameters())) and 0 not in ptrs  # accelerate maps them by address
