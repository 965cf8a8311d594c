"""Backends: one kind of server each.

In: a request made by `rows` and one endpoint. `a1111` is the client of an AUTOMATIC1111 or Forge
server (HTTP, timeouts, every failure classified as retryable or not, the answer decoded);
`comfy` binds rows into a ComfyUI workflow and drives its queue; `inventory` reads what a server
has installed and `check` compares every name a row uses with it; `kinds` picks the client and
the checks by the job's backend. Out: a Generation (images, seeds, what the server used) or an
EndpointError, and the problems a server would hide.
"""
