"""Webhook notifications: endpoint settings, events written to the outbox in the same
transaction as the change, and delivery from the outbox."""
