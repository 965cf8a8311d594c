"""Run: requests to endpoints and results back.

In: a Prepared pass (or, for replay, tasks read from a manifest) and the job's endpoints. `fleet`
starts sim:// endpoints and probes every endpoint, whose `fleet_health` says whether it is up;
`plan` checks the endpoints against every row; `scheduler` (with the pure `placement` planner)
decides which endpoint takes which row; `runner` is the one worker pool that sends, retries,
fails over and hands each Result to the outputs; `interrupts` turns Ctrl-C into a clean stop.
Out: a RunSummary, and Results written by `outputs`.
"""
