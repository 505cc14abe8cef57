"""visionq: image classification at scale on Celery, Redis and PyTorch.

This package holds what the producer and the workers share: settings, the result
schema and the names both sides use in Redis. It never imports torch.
"""

__version__ = "0.1.0"
