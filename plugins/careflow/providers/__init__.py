"""The messaging provider: HTTP client (docs/contracts.md §1), Airflow hook and a local fake provider.

``client`` (with its HTTP/1.1 transport, ``http1``) is plain asyncio; ``hook`` is the only module
that imports Airflow.
"""

from careflow.providers.client import Message, Outcome, ProviderClient, SendGate, SendResult

__all__ = ["Message", "Outcome", "ProviderClient", "SendGate", "SendResult"]
