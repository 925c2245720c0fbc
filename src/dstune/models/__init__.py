"""Models: the registry of DeepSeek checkpoints, loading, and the fine-tuning method (adapters).

Submodules are imported where they are used, so that ``import dstune.models`` stays cheap.
"""
