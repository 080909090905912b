"""nano-reasoner: how reasoning models are built, from scratch, on toy arithmetic."""
