"""Providers, one room each: `local.py` (processes on this machine), `ecs/` (AWS ECS Fargate,
boto3), `kubernetes/` (AKS or any Kubernetes, the kubernetes client). `base.py` is the interface.

Cloud providers are imported lazily so that importing the collection never imports boto3 or
kubernetes (every Prefect process imports collections).
"""

from __future__ import annotations

from .base import Provider, ProviderError

__all__ = ["Provider", "ProviderError"]
