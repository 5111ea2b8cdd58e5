"""Docker engine provider (`driver.DockerDriver`). Only this package imports the Docker SDK for
Python (the optional extra `docker`), lazily, when it first talks to an engine; `objects` (what a
cluster's containers look like) imports nothing of it."""
