"""Providers: local processes, AWS ECS Fargate (boto3) and Kubernetes/AKS (kubernetes client).

Cloud providers are imported lazily so that importing the collection never imports boto3 or
kubernetes (every Prefect process imports collections).
"""

from __future__ import annotations

from .base import Provider, ProviderError

__all__ = ["Provider", "ProviderError"]
