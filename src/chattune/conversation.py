"""A conversation with one model through the prompt format training used: it keeps the history, forgets the
oldest turns when the model's context fills, and streams each reply (tools.chat, the arena and typed votes use it).
"""
from __future__ import annotations

import sys
from threading import Event, Thread

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from chattune.common.params import MIN_TEMPERATURE
from chattune.evaluation.replies import generation_config
from chattune.modeling.loading import run_in
from chattune.modeling.prompt import PromptTooLong, encode, fit

STREAM_TIMEOUT_S = 300  # a generation that sends nothing for this long has hung: stop waiting for it


class StopWhenSet(StoppingCriteria):
    """Ends generation once `event` is set (the reader went away)."""

    def __init__(self, event: Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Chat:
    """A conversation with one model: keeps the history and streams each reply.

    The prompt budget is the model's own context (config.max_position_embeddings) minus the reply's room:
    sft.max_length is what training fitted examples into, not a limit of the model."""

    def __init__(self, model, tokenizer, system: str, max_new_tokens: int, temperature: float):
        context = model.config.max_position_embeddings
        if not 1 <= max_new_tokens < context:
            raise ValueError(f"max new tokens {max_new_tokens}: from 1 to {context - 1} (the model's context, "
                             f"{context} tokens, holds the prompt and the reply)")
        if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= 100):
            raise ValueError(f"temperature {temperature}: 0 (greedy), or from {MIN_TEMPERATURE} to 100")
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.config = generation_config(tokenizer, max_new_tokens, temperature)
        self.budget = model.config.max_position_embeddings - max_new_tokens  # prompt tokens, leaving room for the reply
        self.history: list[dict] = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reply(self, text: str, out=sys.stdout, stop: Event | None = None) -> str:
        """Answer `text`, writing tokens to `out` as they come; the answer joins the history. Setting `stop`
        ends the generation early; an error in the generation is raised here, once the stream has ended."""
        self.history.append({"role": "user", "content": text})
        try:
            messages, dropped = fit(self.tokenizer, self.messages(), None, self.budget)
        except PromptTooLong:
            self.history.pop()
            out.write(f"(that message is too long: over {self.budget} tokens)\n")
            return ""
        if dropped:
            self.history = self.history[dropped:]
            out.write(f"(forgot the {dropped} oldest messages to stay within {self.budget} tokens)\n")
        ids = torch.tensor([encode(self.tokenizer, messages)[0]], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=STREAM_TIMEOUT_S)
        failed: list[BaseException] = []

        def run():
            try:
                with run_in(self.model):  # in this thread: autocast is per thread
                    self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        generation_config=self.config, streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([StopWhenSet(stop or Event())]))
            except BaseException as error:  # handed to the reader: the stream must end either way
                failed.append(error)
                streamer.end()

        worker = Thread(target=run, daemon=True)
        worker.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            out.write(piece)
            out.flush()
        worker.join()
        if failed:
            self.history.pop()
            raise failed[0]
        out.write("\n")
        answer = "".join(pieces).strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer
