"""The flow-run (driver) side behind `DockerParallelTaskRunner`: configuration from blocks,
task payloads, futures and their result listener, progress messages and the summary artifact."""
