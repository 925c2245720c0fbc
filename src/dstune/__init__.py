"""dstune: from raw domain data to a deployed, measured, fine-tuned DeepSeek model."""

__version__ = "0.1.0"
