"""Prompts: chat messages rendered into token ids, prompt-engineering templates, token counts.

This package knows only tokenizers and text: nothing about HTTP, models or tenants.
``formats.render_chat`` is the one place where messages become ids, shared by serving
(the generation prompt) and fine-tuning (the assistant mask that selects the loss).
"""
