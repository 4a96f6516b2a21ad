"""Instruction data: records, BIG-bench, mixtures, Hugging Face adapters, batching, paraphrases, tokenizers."""
