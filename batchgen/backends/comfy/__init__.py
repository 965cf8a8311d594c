"""The ComfyUI backend: a workflow template bound to sheet fields, and the client that runs it."""
