"""A Python client of kms-hsm's REST API (httpx, sync and async); see issue 18 §4."""
