"""expertsteer: steer a target LLM with steering vectors built from an expert model."""

from __future__ import annotations

__version__ = "0.1.0"
