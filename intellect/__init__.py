"""intellect: from a bare GPU cluster to a running, self-healing asynchronous RL post-training job."""

__version__ = "0.1.0"
