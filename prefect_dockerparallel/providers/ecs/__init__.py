"""AWS ECS Fargate provider (`driver.EcsDriver`). Only this package imports boto3.

Importing the package imports nothing of boto3; `driver` does. `sizes` (Fargate's valid task
sizes) and `settings` are boto3-free so that blocks can validate without the SDK.
"""
