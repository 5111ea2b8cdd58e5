"""What runs inside a container: the worker and server entrypoints and their helpers.

Nothing here imports boto3, kubernetes or a Docker client (a test checks it), and only the worker
slot's `engine.py` imports Prefect, lazily: the server entrypoint starts without it.
"""
