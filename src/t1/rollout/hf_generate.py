"""The reference engine: transformers' ``model.generate``, for any architecture the fast engine lacks.

It samples with torch's global generator seeded from the batch's seeds, so its samples depend on the batch
composition (unlike :mod:`t1.rollout.fast`); use it where exact multi-process equality does not matter.
"""

from __future__ import annotations

import torch

from t1.rollout.base import Sample, SamplingParams, finish


class GenerateEngine:
    shares_weights = True  # samples from the policy's own tensors: nothing to push

    def __init__(self, model, tokenizer, max_batch: int = 256):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams) -> list[Sample]:
        out: list[Sample] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(prompts), self.max_batch):
            chunk = prompts[start: start + self.max_batch]
            torch.manual_seed(hash(tuple(seeds[start: start + self.max_batch])) & 0x7FFFFFFF)
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), self.pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, p in enumerate(chunk):
                ids[r, width - len(p):] = torch.tensor(p)
                attn[r, width - len(p):] = 1
            greedy = params.temperature <= 0
            stops = params.stops(self.eos)
            gen = self.model.generate(
                input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=not greedy,
                temperature=None if greedy else params.temperature, top_p=None if greedy else params.top_p,
                top_k=None, max_new_tokens=params.max_new_tokens, eos_token_id=list(stops), pad_token_id=self.pad,
                output_scores=False, return_dict_in_generate=False,
            )[:, width:].cpu()
            for row in gen.tolist():
                toks, _, finished = finish(row, None, False, stops)
                if not finished:  # generate pads a row only after its stop token; strip trailing pads
                    while toks and toks[-1] == self.pad and self.pad not in stops:
                        toks.pop()
                body = toks[:-1] if finished else toks
                out.append(Sample(toks, self.tokenizer.decode(body, skip_special_tokens=True), finished, None))
        return out
