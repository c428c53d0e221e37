"""Model families behind one seam: a family is a ModelSpec reader and a CausalLM subclass built
from the shared blocks here, registered by the checkpoint's architecture (registry.py)."""
