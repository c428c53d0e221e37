"""The engine's bookkeeping of the workers' KV pool: slots free, cached (radix tree) or in use."""
