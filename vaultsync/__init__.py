"""vaultsync: move docker-compose ``.env`` secrets into Vault/OpenBao and keep them alive."""

__version__ = "0.1.0"
