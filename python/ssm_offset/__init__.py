"""ssm-offset: state-based parameter-efficient fine-tuning of state-space language models."""

__version__ = "0.1.0"
