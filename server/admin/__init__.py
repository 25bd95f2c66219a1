"""The admin side of the server: model versions, aliases, rollback and retrain operations, protocol-free."""
