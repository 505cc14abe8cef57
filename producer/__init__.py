"""The visionq producer: publish image paths, collect results. Never imports torch."""

from producer.client import Client, Job
from producer.errors import ProducerError

__all__ = ["Client", "Job", "ProducerError"]
