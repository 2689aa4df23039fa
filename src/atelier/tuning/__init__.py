"""Parameter-efficient fine-tuning: configuration, data validation, the training recipe, export.

This package knows models, tokenizers and files on disk; it knows nothing of HTTP,
databases, tenants or job queues. The worker hands it a base model, examples and a work
directory, and seals what it writes.
"""
