"""Serving: an OpenAI-compatible HTTP API (`dstune serve`), online A/B tests, and a terminal chat.

Production throughput is vLLM's job (continuous batching, paged attention); dstune's server keeps
the training chat template, the limits and the A/B log in one small process. See
``dstune.serve.server`` and ``docs/deploy.md`` for the vLLM commands.
"""
