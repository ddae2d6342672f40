"""Which word of an instance prompt is the subject's identifier (the DreamBooth paper's "[V]").

The rule matches the evaluation's (`[evaluation] identifier`, added in parallel): an explicit identifier when
the spec gives one, else the one word an instance prompt has and every class prompt lacks (stop words aside);
"" when that is not exactly one word or there is no class prompt to compare with.
"""

from __future__ import annotations

import re

from dbspec.spec.model import Spec

STOP_WORDS = frozenset({"a", "an", "the", "of", "photo", "picture", "in", "on", "with"})


def words(text: str) -> list[str]:
    return re.findall(r"[\w'-]+", text.lower())


def prompt_identifier(instance_prompt: str, class_prompts: list[str], explicit: str = "") -> str:
    """One instance prompt's identifier: `explicit` when given, else the one word the class prompts lack."""
    if explicit:
        return explicit
    if not class_prompts:
        return ""
    class_words = {w for p in class_prompts for w in words(p)}
    only = [w for w in dict.fromkeys(words(instance_prompt)) if w not in class_words and w not in STOP_WORDS]
    return only[0] if len(only) == 1 else ""


def instance_identifiers(spec: Spec, explicit: str = "") -> list[tuple[int, str]]:
    """(dataset index, identifier) for each instance dataset with a prompt whose identifier is known."""
    class_prompts = [d.prompt for d in spec.datasets if d.role == "class" and d.prompt]
    found = []
    for i, d in enumerate(spec.datasets):
        # a preserve_output dataset trains towards the base model, not the subject: no identifier there
        if d.role == "instance" and d.prompt and not d.preserve_output:
            if explicit and explicit.lower() not in words(d.prompt):
                continue  # the spec's identifier is not in this prompt: nothing of it to check
            identifier = prompt_identifier(d.prompt, class_prompts, explicit)
            if identifier:
                found.append((i, identifier))
    return found
