"""Atelier: a self-hosted generative-AI service (chat, embeddings, RAG, fine-tuning)."""

__version__ = "0.1.0"
