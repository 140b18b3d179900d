"""The LLaMA-2-chat prompt format."""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["chat_prompt"]

ROLES = ("system", "user", "assistant")


def chat_prompt(messages: list[dict], bos: str = "<s>", eos: str = "</s>") -> str:
    """The LLaMA-2-chat prompt of a conversation, as text with the special tokens written out.

    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...], an optional system
    message first, then user/assistant alternating and ending with a user turn.  Format (Meta's
    ``chat_completion``, also the HF chat template): the system prompt is folded into the first
    user turn as ``<<SYS>>\\n...\\n<</SYS>>\\n\\n``; every user turn is ``<s>[INST] ... [/INST]``
    and every answer `` ... </s>``.  Encode the result without adding special tokens again."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for m in messages:
        if (not isinstance(m, Mapping) or not isinstance(m.get("content"), str)
                or m.get("role") not in ROLES):
            raise ValueError("each message must be {'role': 'system'|'user'|'assistant', "
                             f"'content': str}}, got {m!r}")
    system, turns = None, list(messages)
    if turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message (the model answers it)")
    out = []
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"message {i} has role {m['role']!r}: after the system prompt, "
                             "roles must alternate user/assistant/user/...")
        content = m["content"].strip()
        if i == 0 and system is not None:
            content = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{content}"
        out.append(f"{bos}[INST] {content} [/INST]" if m["role"] == "user" else f" {content} {eos}")
    return "".join(out)
