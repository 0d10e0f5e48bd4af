"""Prometheus metrics of kms-hsm (prometheus-client, multi-process mode); see issue 18 §5."""
