"""The gateway's HTTP routes, one module per OpenAI endpoint (and vLLM's extras), each an
APIRouter that gateway/app.py includes: a route turns its body into scheduler calls through the
app's Backend (common.py) and formats the reply, keeping no state of its own."""
