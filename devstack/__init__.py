"""Local stack for `make run` and `make test`: RabbitMQ, Redis and the Procfile processes."""
