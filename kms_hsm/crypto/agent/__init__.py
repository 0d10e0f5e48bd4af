"""The HSM agent: the child process that alone loads PKCS#11, and the worker's client of it."""

from kms_hsm.crypto.agent.client import AgentPool, AgentToken
from kms_hsm.crypto.agent.protocol import AgentConfig

__all__ = ["AgentConfig", "AgentPool", "AgentToken"]
