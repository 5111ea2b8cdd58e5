"""Kubernetes / AKS provider (`driver.KubernetesDriver`). Only this package imports `kubernetes`
(on first API use) and httpx for Azure ARM/AAD (`azure.py`)."""
