"""How a prompt becomes the token ids a model continues: the tokenizer's chat template when it has one,
else plain text. One renderer for every stage (training, sampling, evaluation)."""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, prompt: str | list, use_chat_template: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it before its response (also used for generation)."""
    if use_chat_template and has_chat_template(tokenizer):
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False))
    if isinstance(prompt, list):
        prompt = "\n".join(m["content"] for m in prompt)
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]
