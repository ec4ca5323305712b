"""Benchmarks of matrix_p2p against the broker's ceiling, the fleet's capacity and
the paper's baselines, measured side by side in one run: ``python -m bench``.

Modules: ``procs`` (child processes, started and stopped by PID), ``harness``
(broker, preload, completion), ``relay`` (raw nats-py relay: the ceiling),
``runtime`` (hop throughput of the real worker), ``simfleet`` (the simulated
vLLM fleet in its own process), ``fleet`` (saturation and our runtime on the
fleet), ``baselines`` (batch barrier, Ray Data, central coordinator),
``central_worker`` (the coordinator's worker process), ``llm_client`` (issue 3:
client vs fixed semaphore vs new session per request), ``report`` (table,
RESULTS.md, plots, JSON).
"""
